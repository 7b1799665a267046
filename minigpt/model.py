"""GPTConfig and GPT: the whole model. Assembled in notebooks/07_gpt_model.ipynb (eqs. 7.1-7.6).

    h⁰ = E[idx] + P[0..T)                 token embedding plus position encoding   (eq. 7.1)
    hˡ = Block(hˡ⁻¹),  l = 1..L             the transformer blocks of layers.py     (eq. 7.2)
    logits = LN_f(hᴸ) Eᵀ                    output head tied to the embedding       (eq. 7.3)
    loss = -1/N Σ log softmax(logits)[target]   cross-entropy, notebook 02           (eq. 2.4)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minigpt.attention import KVCache
from minigpt.layers import Block, LayerNorm
from minigpt.positional import build_additive_encoding, build_rotary

POS_ENCODINGS = ("learned", "sinusoidal", "rope", "none")

# The four released GPT-2 sizes (Radford et al., 2019): layers, heads, width.
GPT2_SIZES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}


@dataclass
class GPTConfig:
    """Every size and switch of the model. The defaults are GPT-2 small (124M parameters)."""

    vocab_size: int = 50257  # number of token ids; GPT-2's BPE has 50257
    block_size: int = 1024  # context length: the most tokens the model sees at once
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads per block; must divide n_embd
    n_embd: int = 768  # width C of the residual stream
    n_inner: int | None = None  # feed-forward hidden width; None means 4 * n_embd
    dropout: float = 0.0  # on attention weights, residual branches and embeddings
    bias: bool = True  # biases in linear layers and layer norms (GPT-2: True)
    pos_encoding: str = "learned"  # "learned" (GPT-2), "sinusoidal", "rope" or "none"
    rope_base: float = 10000.0  # base of the rotary frequencies (only for "rope")
    norm_position: str = "pre"  # "pre" (GPT-2) or "post" (original Transformer)
    activation: str = "gelu_tanh"  # GPT-2's tanh approximation, or "gelu" (exact erf form)
    layer_norm_eps: float = 1e-5
    tie_weights: bool = True  # share the token embedding with the output head

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name}={value!r}: must be a positive integer")
        n_inner = self.n_inner
        if n_inner is not None and (
            not isinstance(n_inner, int) or isinstance(n_inner, bool) or n_inner < 1
        ):
            raise ValueError(f"GPTConfig.n_inner={self.n_inner!r}: use a positive integer or None")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                f"each head gets n_embd / n_head features, so pick e.g. n_head="
                f"{_nearest_divisor(self.n_embd, self.n_head)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout={self.dropout!r}: must be in [0, 1)")
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(
                f"GPTConfig.pos_encoding={self.pos_encoding!r}: choose one of {POS_ENCODINGS}"
            )
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(
                f"GPTConfig: pos_encoding='rope' rotates feature pairs, so the head dimension "
                f"n_embd / n_head = {self.n_embd // self.n_head} must be even"
            )
        if self.pos_encoding == "sinusoidal" and self.n_embd % 2:
            raise ValueError(
                f"GPTConfig: pos_encoding='sinusoidal' needs an even n_embd, got {self.n_embd}"
            )
        if not (self.rope_base > 0 and math.isfinite(self.rope_base)):
            raise ValueError(f"GPTConfig.rope_base={self.rope_base!r}: must be a finite number > 0")
        if self.norm_position not in ("pre", "post"):
            raise ValueError(f"GPTConfig.norm_position={self.norm_position!r}: use 'pre' or 'post'")
        if self.activation not in ("gelu_tanh", "gelu"):
            raise ValueError(f"GPTConfig.activation={self.activation!r}: use 'gelu_tanh' or 'gelu'")
        if not (self.layer_norm_eps > 0 and math.isfinite(self.layer_norm_eps)):
            raise ValueError(f"GPTConfig.layer_norm_eps={self.layer_norm_eps!r}: must be a finite "
                             "number > 0")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> GPTConfig:
        from minigpt.config import from_dict

        return from_dict(cls, values)


def _nearest_divisor(n: int, target: int) -> int:
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - target), d))


class GPT(nn.Module):
    """A decoder-only transformer language model (GPT-2 architecture by default)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.token_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_enc = build_additive_encoding(config)  # None for "rope" and "none"
        self.drop = nn.Dropout(config.dropout)
        rotary = build_rotary(config)  # one table shared by every layer (buffers only)
        self.blocks = nn.ModuleList(Block(config, rotary) for _ in range(config.n_layer))
        self.ln_f = LayerNorm(config.n_embd, bias=config.bias, eps=config.layer_norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.token_emb.weight  # eq. (7.3): one matrix, two uses
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 initialisation (eq. 7.4): N(0, 0.02²) everywhere, zero biases, and the two
        projections that write into the residual stream scaled by 1/√(2·n_layer), because each
        of the 2·n_layer residual branches adds its variance to the stream."""
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_scaled_init", False):
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.token_emb.weight.device

    # ----------------------------------------------------------------- forward

    def hidden_states(self, idx: torch.Tensor, kv_caches: list[KVCache] | None = None):
        """The final normalised residual stream LN_f(hᴸ), shape (B, T, C)."""
        self._check_input(idx, kv_caches)
        start = kv_caches[0].length if kv_caches else 0
        x = self.token_emb(idx)  # (B, T, C)
        if self.pos_enc is not None:
            x = x + self.pos_enc(start, idx.size(1))  # (T, C) broadcast over the batch
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, kv_caches[i] if kv_caches else None)
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_caches=None):
        """idx (B, T) token ids -> (logits (B, T, V), loss or None).

        targets (B, T): the next token at each position; -100 marks positions left out of the
        loss (e.g. the prompt of an instruction example).
        """
        logits = self.lm_head(self.hidden_states(idx, kv_caches))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-100
            )
        return logits, loss

    def _check_input(self, idx: torch.Tensor, kv_caches) -> None:
        if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"idx must be a (batch, time) tensor of integer token ids, got shape "
                f"{tuple(idx.shape)} and dtype {idx.dtype}; use idx[None] for a single sequence"
            )
        start = kv_caches[0].length if kv_caches else 0
        if start + idx.size(1) > self.config.block_size:
            raise ValueError(
                f"block_size={self.config.block_size} but the input reaches position "
                f"{start + idx.size(1)}; crop it to the last {self.config.block_size} tokens "
                "(generate() does this for you) or raise block_size"
            )
        # A value check needs the ids on the host; on accelerators it would cost a sync per step.
        on_host = idx.device.type == "cpu" and idx.numel() > 0
        if on_host and (idx.min() < 0 or idx.max() >= self.config.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.config.vocab_size}), got min {int(idx.min())} "
                f"and max {int(idx.max())}; the tokenizer and GPTConfig.vocab_size disagree"
            )

    # ----------------------------------------------------------------- counting

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of distinct parameters (a tied matrix counts once), eq. (7.5).

        non_embedding=True leaves out the token and position tables, the convention of scaling
        laws (Kaplan et al., 2020).
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        if non_embedding:
            n -= self.token_emb.weight.numel()
            n -= sum(p.numel() for p in self.pos_enc.parameters()) if self.pos_enc else 0
        return n

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """FLOPs to process one token at context length `seq_len` (eq. 7.6).

        Forward: 2 FLOPs (multiply + add) per weight of every matrix multiply, N_mm of them,
        plus the attention scores QKᵀ and the weighted sum AV, 2·T·C each per layer:
            F_fwd = 2·N_mm + 4·L·T·C.
        Training adds a backward pass of twice the forward's cost: F_train = 3·F_fwd ≈ 6·N.
        (Full T×T attention is counted, as in the usual MFU convention, though a causal
        kernel skips about half of it.)
        """
        c = self.config
        seq_len = c.block_size if seq_len is None else seq_len
        n_matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        forward = 2 * n_matmul + 4 * c.n_layer * seq_len * c.n_embd
        return 3 * forward if training else forward

    # ----------------------------------------------------------------- generation

    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token: int | None = None,
        use_cache: bool = True,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append `max_new_tokens` sampled tokens to idx (B, T); see minigpt.generate."""
        from minigpt.generate import generate

        return generate(
            self, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            eos_token=eos_token, use_cache=use_cache, generator=generator,
        )

    def new_kv_caches(self, batch_size: int) -> list[KVCache]:
        c, w = self.config, self.token_emb.weight
        return [
            KVCache(batch_size, c.n_head, c.block_size, c.head_dim, device=w.device, dtype=w.dtype)
            for _ in range(c.n_layer)
        ]

    # ----------------------------------------------------------------- save / load

    def save_pretrained(self, directory) -> None:
        """Write `model.safetensors` and `config.json` into `directory` (created if needed)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if self.config.tie_weights:
            state.pop("lm_head.weight")  # the same tensor as token_emb.weight
        _atomic_write(directory / "config.json", json.dumps(
            {"model_type": "minigpt", "config": self.config.to_dict()}, indent=2).encode())
        tmp = directory / "model.safetensors.tmp"
        save_file(state, str(tmp), metadata={"format": "pt"})
        tmp.replace(directory / "model.safetensors")

    @classmethod
    def from_pretrained(cls, name_or_dir, **overrides) -> GPT:
        """Load a model saved by `save_pretrained`, or Hugging Face GPT-2 weights.

        `name_or_dir` is a minigpt folder, a Hugging Face GPT-2 folder, one of "gpt2",
        "gpt2-medium", "gpt2-large", "gpt2-xl" (from the Hugging Face cache, or the hub when
        reachable), or a nanoGPT checkpoint file (`ckpt.pt`, see minigpt.nanogpt). `overrides`
        (e.g. dropout=0.1) replace config fields that do not change the weights' shapes.
        """
        path = Path(name_or_dir)
        if path.is_file():  # folders and hub names are not files; nanoGPT saves one ckpt.pt
            from minigpt.nanogpt import load_nanogpt

            return load_nanogpt(path, **overrides)
        config_file = path / "config.json"
        if config_file.is_file():
            saved = read_json_config(config_file)
            if saved.get("model_type") == "minigpt":
                return cls._load_native(path, overrides)
        from minigpt.hf import load_hf_gpt2

        return load_hf_gpt2(name_or_dir, **overrides)

    @classmethod
    def _load_native(cls, path: Path, overrides: dict) -> GPT:
        from minigpt.checkpoint import CheckpointError, load_safetensors

        config_file = path / "config.json"
        saved = read_json_config(config_file)
        if not isinstance(saved.get("config"), dict):
            raise CheckpointError(f"{config_file} has no 'config' table; it was not written by "
                                  "GPT.save_pretrained. Save the model again")
        try:
            GPTConfig.from_dict(saved["config"])
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{config_file}: {exc}") from None
        config = GPTConfig.from_dict({**saved["config"], **overrides})  # the caller's errors
        model = cls(config)
        state = load_safetensors(path / "model.safetensors")
        if config.tie_weights and "token_emb.weight" in state:
            state["lm_head.weight"] = state["token_emb.weight"]
        load_weights(model, state, path / "model.safetensors")
        return model


def read_json_config(path) -> dict:
    """A model folder's config.json as a dict, or an error that names the file."""
    from minigpt.checkpoint import CheckpointError

    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); restore or re-save the "
                              "model") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} holds a {type(saved).__name__}, not a JSON object")
    return saved


def load_weights(model: nn.Module, state: dict, source) -> None:
    """model.load_state_dict(state), with an error that names `source` and says which tensors
    are missing, unexpected or of the wrong shape (not PyTorch's page-long listing)."""
    from minigpt.checkpoint import CheckpointError

    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{label} {names[:3]}{' ...' if len(names) > 3 else ''}"
                 for label, names in (("missing", missing), ("unexpected", unexpected),
                                      ("of another shape", wrong)) if names]
        raise CheckpointError(f"the weights in {source} do not fit the model's config ("
                              + "; ".join(parts) + "); were they saved with another config?")
    model.load_state_dict(state)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
