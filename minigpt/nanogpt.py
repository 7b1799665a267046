"""nanoGPT checkpoints in: the ``ckpt.pt`` of karpathy/nanoGPT's train.py as a minigpt `GPT`.

nanoGPT's train.py saves ``dict(model=state_dict, optimizer=..., model_args=dict(n_layer, n_head,
n_embd, block_size, bias, vocab_size, dropout), iter_num, best_val_loss, config)``. Its model is
GPT-2's network (notebook 07) with choices that `GPTConfig` expresses directly:

    nanoGPT                                        minigpt
    nn.GELU(), the exact erf form                  activation="gelu"
    bias=False: no bias in Linear nor LayerNorm    bias=False (one switch for both, as there)
    LayerNorm eps 1e-5                             layer_norm_eps=1e-5
    lm_head tied to wte                            tie_weights=True
    vocab_size often padded to 50304               vocab_size=50304 (ids past 50256 never occur)

Its layers are `nn.Linear`, stored (out, in) like minigpt's, so unlike GPT-2's Conv1D weights
(`minigpt.hf`, eq. 11.7) nothing is transposed: loading is renaming.

    transformer.wte / transformer.wpe       token_emb / pos_enc.embedding
    transformer.h.{i}.ln_1, ln_2            blocks.{i}.ln_1, ln_2
    transformer.h.{i}.attn.c_attn, c_proj   blocks.{i}.attn.qkv_proj, out_proj
    transformer.h.{i}.mlp.c_fc, c_proj      blocks.{i}.mlp.fc, proj
    transformer.ln_f, lm_head               ln_f, lm_head

A model saved after `torch.compile` has ``_orig_mod.`` before every name, and without flash
attention (PyTorch < 2) each layer also saved its causal mask as a buffer ``attn.bias``; both are
handled. The file is read with ``torch.load(weights_only=True)``: a checkpoint is data, never
code, and a file that needs more than plain values and tensors is refused with a message.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from minigpt.checkpoint import CheckpointError
from minigpt.model import GPT, GPTConfig

__all__ = [
    "MODEL_ARGS",
    "config_from_nanogpt",
    "is_nanogpt_checkpoint",
    "load_nanogpt",
    "read_checkpoint",
    "state_dict_from_nanogpt",
    "suggest_tokenizer",
]

MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")
COMPILED_PREFIX = "_orig_mod."

_TOP_NAMES = {
    "transformer.wte.weight": "token_emb.weight",
    "transformer.wpe.weight": "pos_enc.embedding.weight",
    "transformer.ln_f.weight": "ln_f.weight",
    "transformer.ln_f.bias": "ln_f.bias",
}
_BLOCK_MODULES = {  # transformer.h.{i}.<nanoGPT> -> blocks.{i}.<minigpt>, + .weight / .bias
    "ln_1": "ln_1",
    "attn.c_attn": "attn.qkv_proj",
    "attn.c_proj": "attn.out_proj",
    "ln_2": "ln_2",
    "mlp.c_fc": "mlp.fc",
    "mlp.c_proj": "mlp.proj",
}


# ------------------------------------------------------------------------ reading


def is_nanogpt_checkpoint(checkpoint) -> bool:
    """Does a loaded object look like nanoGPT's checkpoint: a dict whose 'model' is a state dict
    of tensors and whose 'model_args' is a dict?"""
    return (isinstance(checkpoint, dict) and isinstance(checkpoint.get("model_args"), dict)
            and isinstance(checkpoint.get("model"), dict)
            and all(isinstance(v, torch.Tensor) for v in checkpoint["model"].values()))


def read_checkpoint(path) -> dict:
    """The checkpoint dict of a nanoGPT ``ckpt.pt``, tensors on the CPU, read as data only."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no nanoGPT checkpoint at {path}; pass the ckpt.pt that "
                                "nanoGPT's train.py wrote into its out_dir")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if refused:
            raise CheckpointError(
                f"{path} holds a Python object ({refused.group(1)}) that torch.load("
                "weights_only=True) will not build, and minigpt never runs code from a "
                "checkpoint; if you trust the file, load it in your own session and save only "
                "its tensors and plain values ('model', 'model_args') with torch.save"
            ) from None
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({exc}); pass nanoGPT's "
                              "ckpt.pt") from None
    except Exception as exc:
        raise CheckpointError(f"{path} is not a PyTorch checkpoint that torch.load can read "
                              f"({type(exc).__name__}: {exc}); pass nanoGPT's ckpt.pt") from None
    if not is_nanogpt_checkpoint(checkpoint):
        raise CheckpointError(_not_nanogpt(path, checkpoint))
    return checkpoint


def _not_nanogpt(path: Path, checkpoint) -> str:
    if isinstance(checkpoint, dict) and "model_config" in checkpoint:
        return (f"{path} is a minigpt training checkpoint, not a nanoGPT one; load its run "
                "folder with minigpt.runs.load_run(out_dir)")
    if isinstance(checkpoint, dict) and {"model", "model_args"} <= set(checkpoint):
        return (f"{path} is not a nanoGPT checkpoint: its 'model' must be a state dict of "
                "tensors and its 'model_args' a dict")
    if isinstance(checkpoint, dict):
        keys = sorted(map(str, checkpoint))
        found = f"keys {keys[:6]}{' ...' if len(keys) > 6 else ''}"
    else:
        found = f"a {type(checkpoint).__name__}"
    return (f"{path} is not a nanoGPT checkpoint: expected a dict with 'model' (a state dict) and "
            f"'model_args', as nanoGPT's train.py saves, but found {found}")


# ------------------------------------------------------------------------ converting


def _strip_compiled(state: dict) -> dict:
    return {k.removeprefix(COMPILED_PREFIX): v for k, v in state.items()}


def _n_layers(state: dict) -> int:
    layers = {int(m.group(1)) for k in state if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    return max(layers) + 1 if layers else 0


def config_from_nanogpt(model_args: dict, state: dict, **overrides) -> GPTConfig:
    """The GPTConfig of a nanoGPT model: sizes from `model_args`, checked against the tensors.

    Dropout is set to 0.0 (as for GPT-2 weights in `minigpt.hf`); pass dropout= to finetune.
    """
    unknown = sorted(set(model_args) - set(MODEL_ARGS))
    if unknown:
        raise CheckpointError(f"model_args has {unknown}, which karpathy/nanoGPT's model does not "
                              "have; this checkpoint comes from a modified nanoGPT, whose "
                              "architecture minigpt cannot vouch for")
    state = _strip_compiled(state)
    if "transformer.wte.weight" not in state or "transformer.wpe.weight" not in state:
        raise CheckpointError("the checkpoint's model has no transformer.wte / transformer.wpe "
                              "tensors; it is not a nanoGPT GPT")
    vocab_size, n_embd = state["transformer.wte.weight"].shape
    from_tensors = dict(vocab_size=vocab_size, n_embd=n_embd, n_layer=_n_layers(state),
                        block_size=state["transformer.wpe.weight"].shape[0],
                        bias="transformer.ln_f.bias" in state)
    for name, value in from_tensors.items():
        if model_args.get(name) is not None and model_args[name] != value:
            raise CheckpointError(f"model_args says {name}={model_args[name]!r} but the weights "
                                  f"have {name}={value!r}; the checkpoint is inconsistent")
    if not model_args.get("n_head"):
        raise CheckpointError("model_args has no n_head, and the weights cannot tell it; "
                              "the checkpoint is incomplete")
    values = dict(from_tensors, n_head=model_args["n_head"], dropout=0.0, activation="gelu",
                  layer_norm_eps=1e-5, pos_encoding="learned", norm_position="pre",
                  tie_weights=_tied(state))
    return GPTConfig.from_dict({**values, **overrides})


def _tied(state: dict) -> bool:
    """nanoGPT ties lm_head to wte, and saves the one tensor under both names."""
    head = state.get("lm_head.weight")
    return head is None or torch.equal(head, state["transformer.wte.weight"])


def state_dict_from_nanogpt(state: dict, n_layer: int) -> dict:
    """Rename a nanoGPT state dict into minigpt's names (no tensor changes)."""
    state = _strip_compiled(state)
    out = {name: state.pop(key) for key, name in _TOP_NAMES.items() if key in state}
    for i in range(n_layer):
        for old, new in _BLOCK_MODULES.items():
            for kind in ("weight", "bias"):
                key = f"transformer.h.{i}.{old}.{kind}"
                if key in state:
                    out[f"blocks.{i}.{new}.{kind}"] = state.pop(key)
        state.pop(f"transformer.h.{i}.attn.bias", None)  # causal mask of the slow path
    if "lm_head.weight" in state:
        out["lm_head.weight"] = state.pop("lm_head.weight")
    if state:
        extra = sorted(state)
        raise CheckpointError(f"the checkpoint's model has tensors nanoGPT's GPT does not: "
                              f"{extra[:4]}{' ...' if len(extra) > 4 else ''}; it comes from a "
                              "modified nanoGPT that minigpt cannot load")
    return out


def load_nanogpt(path, **overrides) -> GPT:
    """A minigpt GPT with the weights of a nanoGPT ``ckpt.pt`` (also `GPT.from_pretrained(path)`).

    `overrides` replace GPTConfig fields that do not change the weights' shapes (e.g.
    dropout=0.1). The model comes back in training mode, like every freshly built module.
    """
    checkpoint = read_checkpoint(path)
    try:
        config = config_from_nanogpt(checkpoint["model_args"], checkpoint["model"], **overrides)
        state = state_dict_from_nanogpt(checkpoint["model"], config.n_layer)
    except (CheckpointError, ValueError, TypeError) as exc:  # name the file in the message
        raise CheckpointError(f"{path}: {exc}") from None
    if config.tie_weights or "lm_head.weight" not in state:
        state["lm_head.weight"] = state["token_emb.weight"]
    model = GPT(config)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    if missing:
        raise CheckpointError(f"{path}: the model has no {missing[:4]} for its config "
                              f"(n_layer={config.n_layer}, bias={config.bias}); the checkpoint "
                              "is incomplete")
    reshaped = [k for k in own if own[k].shape != state[k].shape]
    if reshaped:
        name = reshaped[0]
        raise CheckpointError(f"{path}: {name} has shape {tuple(state[name].shape)} but the "
                              f"config with {overrides} needs {tuple(own[name].shape)}; override "
                              "only settings that keep the weights' shapes")
    model.load_state_dict(state)
    return model


def suggest_tokenizer(checkpoint: dict) -> str | None:
    """The tokenizer of a checkpoint's model: "gpt2" for GPT-2's BPE (50257 ids, or nanoGPT's
    padding to 50304), else None: a character-level run keeps its vocabulary in nanoGPT's
    data/<dataset>/meta.pkl, which is not in the checkpoint."""
    state = _strip_compiled(checkpoint["model"])
    vocab_size = state["transformer.wte.weight"].shape[0]
    return "gpt2" if vocab_size in (50257, 50304) else None
