"""Low-rank adaptation (LoRA). Derived in notebooks/10_finetuning.ipynb (eqs. 10.3-10.5).

Finetuning changes a pretrained weight W (d_out × d_in) by some ΔW. LoRA (Hu et al., 2021) bets
that the useful ΔW has low rank and writes it as a product of two thin matrices:

    h = W x + (α / r) · B A x,     A: r × d_in,  B: d_out × r,  r ≪ min(d_in, d_out)   (eq. 10.3)

Only A and B train: r·(d_in + d_out) numbers instead of d_in·d_out (eq. 10.4). B starts at zero,
so a fresh adapter leaves the model unchanged, and A starts random so the gradient of B is not
zero. After training, ΔW = (α/r)·B A folds into W (eq. 10.5): the merged model is a plain GPT
with no extra cost at inference.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

DEFAULT_TARGETS = ("qkv_proj", "out_proj")  # the attention projections, as in the LoRA paper


class LoRALinear(nn.Linear):
    """An `nn.Linear` with a trainable low-rank update; the base weight and bias are frozen.

    It keeps the parameter names of the layer it replaces (`weight`, `bias`), so checkpoints of
    the base model load into it unchanged; the adapter adds `lora_A` and `lora_B`.
    """

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        if rank < 1:
            raise ValueError(f"LoRA rank={rank}: must be a positive integer")
        # built on the meta device (no memory), then handed the pretrained tensors themselves
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None,
                         device="meta", dtype=base.weight.dtype)
        self.weight = base.weight
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        # A as nn.Linear initialises its weight; B = 0 makes the adapter start as a no-op.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._unmerged_weight: torch.Tensor | None = None

    @property
    def merged(self) -> bool:
        return self._unmerged_weight is not None

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r) · B A, shape (d_out, d_in)   (eq. 10.5)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # W x + b
        if self.merged:
            return y  # ΔW already lives inside W
        update = self.lora_dropout(x) @ self.lora_A.t() @ self.lora_B.t()  # (…, r) → (…, d_out)
        return y + update * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold ΔW into W. The original W is kept so that `unmerge` restores it bit for bit."""
        if not self.merged:
            self._unmerged_weight = self.weight.detach().clone()
            self.weight.add_(self.delta_weight())

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.weight.copy_(self._unmerged_weight)
            self._unmerged_weight = None

    def to_linear(self) -> nn.Linear:
        """A plain `nn.Linear` holding W + ΔW (for export)."""
        merged = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            delta = 0 if self.merged else self.delta_weight()
            merged.weight.copy_(self.weight + delta)
            if self.bias is not None:
                merged.bias.copy_(self.bias)
        return merged

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}"


def _targets_of(model: nn.Module, targets) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, layer) for every nn.Linear whose name ends with one of `targets`."""
    found = []
    for name, module in model.named_modules():
        for attribute, child in module.named_children():
            full = f"{name}.{attribute}" if name else attribute
            if isinstance(child, nn.Linear) and not isinstance(child, LoRALinear) and any(
                full == t or full.endswith("." + t) for t in targets
            ):
                found.append((module, attribute, child))
    return found


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               targets=DEFAULT_TARGETS) -> nn.Module:
    """Replace the targeted linear layers by `LoRALinear` and freeze everything else.

    targets: names or name suffixes of linear layers, e.g. ("qkv_proj", "out_proj") for the
    attention projections, or add ("fc", "proj") for the feed-forward layers too.
    """
    layers = _targets_of(model, tuple(targets))
    if not layers:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                        if isinstance(m, nn.Linear)})
        raise ValueError(f"no linear layer matches targets={tuple(targets)}; "
                         f"the model's linear layers are named {names}")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parent, attribute, layer in layers:
        setattr(parent, attribute, LoRALinear(layer, rank, alpha, dropout))
    model.lora_config = {"rank": rank, "alpha": alpha, "dropout": dropout,
                         "targets": list(targets)}
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module, unload: bool = True) -> nn.Module:
    """Fold every adapter into its weight (eq. 10.5).

    unload=True replaces each LoRALinear by a plain nn.Linear (the model is an ordinary GPT
    again, ready to save or export); unload=False keeps the adapters, merged, so that
    `unmerge_lora` can restore the separate weights exactly.
    """
    for name, layer in lora_layers(model).items():
        if unload:
            parent_name, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attribute,
                    layer.to_linear())
        else:
            layer.merge()
    if unload:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        model.__dict__.pop("lora_config", None)
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    for layer in lora_layers(model).values():
        layer.unmerge()
    return model


def count_parameters(model: nn.Module) -> dict:
    """Trainable and total parameters (each shared tensor once)."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    return {"trainable": trainable, "total": total, "share": trainable / total if total else 0.0}


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters()
            if name.endswith(("lora_A", "lora_B"))}


def save_lora(model: nn.Module, path) -> None:
    """Write only the adapters (a small safetensors file) with their rank, alpha and targets."""
    from safetensors.torch import save

    from minigpt.checkpoint import atomic_write_bytes

    config = getattr(model, "lora_config", None)
    if config is None or not lora_layers(model):
        raise ValueError("the model has no LoRA adapters; call apply_lora first")
    data = save(lora_state_dict(model), metadata={"lora_config": json.dumps(config)})
    atomic_write_bytes(Path(path), data)


def load_lora(model: nn.Module, path) -> nn.Module:
    """Apply adapters saved by `save_lora` to a base model with the same architecture."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LoRA adapter file at {path}")
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if "lora_config" not in metadata:
            raise ValueError(f"{path} is not a minigpt LoRA adapter file (no lora_config)")
        config = json.loads(metadata["lora_config"])
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    if not lora_layers(model):
        apply_lora(model, **config)
    expected = set(lora_state_dict(model))
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(f"{path} does not fit this model: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}")
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for key, tensor in tensors.items():
            parameters[key].copy_(tensor)
    return model
