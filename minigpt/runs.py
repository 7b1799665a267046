"""A run's folder after training: load its model and tokenizer, and measure its loss.

A folder is one of three things: a training run (ckpt.pt, written by `minigpt.train.Trainer`),
a saved model (config.json + model.safetensors + tokenizer.json, written by
`GPT.save_pretrained`, e.g. a finetune's output), or, as a file, a nanoGPT ckpt.pt.
`minigpt sample` and `minigpt eval` read all three through `load_run`.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path

import torch

from minigpt import platform
from minigpt.checkpoint import CheckpointError, load_checkpoint, require_entries
from minigpt.model import GPT, GPTConfig, load_weights
from minigpt.train import CORPUS_CHANGED, TrainConfig, Trainer


def load_run(out_dir, device="cpu"):
    """(model, tokenizer) of a training run folder (ckpt.pt) or of a saved model folder
    (config.json + model.safetensors, e.g. a finetune's output), in eval mode on `device`."""
    from minigpt.tokenizer import load_tokenizer

    out_dir = Path(out_dir)
    if out_dir.is_file():  # a nanoGPT ckpt.pt (minigpt's own runs are folders)
        model = GPT.from_pretrained(out_dir).to(device).eval()
        return model, load_tokenizer(_file_tokenizer(out_dir, model))
    has_checkpoint = (out_dir / "ckpt.pt").is_file()
    if (out_dir / "config.json").is_file():  # a folder written by save_pretrained
        if has_checkpoint:
            print(f"note: {out_dir} holds both a training checkpoint and a saved model; "
                  "loading the saved model (model.safetensors)", file=sys.stderr)
        model = GPT.from_pretrained(out_dir).to(device).eval()
        return model, load_tokenizer(out_dir / "tokenizer.json")
    if not has_checkpoint:
        raise FileNotFoundError(f"{out_dir} holds no checkpoint (ckpt.pt); train a model there "
                                "first, e.g. `minigpt train out_dir=" + str(out_dir) + "`")
    return _from_checkpoint(out_dir, _training_checkpoint(out_dir), device)


def _training_checkpoint(out_dir: Path) -> dict | None:
    """The checkpoint of a training run folder (ckpt.pt and no saved model), loaded once for
    all that is read from it; None for any other folder or file."""
    if out_dir.is_file() or (out_dir / "config.json").is_file() or not (
            out_dir / "ckpt.pt").is_file():
        return None
    return load_checkpoint(out_dir / "ckpt.pt", require=("model", "model_config"))


def _from_checkpoint(out_dir: Path, checkpoint: dict, device):
    """(model, tokenizer) of a training run from its loaded checkpoint."""
    from minigpt.tokenizer import load_tokenizer, tokenizer_from_dict

    try:
        model = GPT(GPTConfig.from_dict(checkpoint["model_config"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{out_dir / 'ckpt.pt'}: its model_config is invalid ({exc})"
                              ) from None
    load_weights(model, checkpoint["model"], out_dir / "ckpt.pt")
    if (out_dir / "tokenizer.json").is_file():
        tokenizer = load_tokenizer(out_dir / "tokenizer.json")
    elif checkpoint.get("tokenizer"):
        tokenizer = tokenizer_from_dict(checkpoint["tokenizer"])
    else:
        raise FileNotFoundError(f"{out_dir} has no tokenizer.json to turn ids back into text")
    return model.to(device).eval(), tokenizer


def _file_tokenizer(path: Path, model: GPT) -> str:
    """The tokenizer of a model file that carries none: GPT-2's when the vocabulary is GPT-2's
    (50257 ids, or 50304 padded as nanoGPT pads it), else a clear error."""
    if model.config.vocab_size in (50257, 50304):
        return "gpt2"
    raise ValueError(f"{path} holds a model with {model.config.vocab_size} token ids and no "
                     "tokenizer; minigpt can only assume GPT-2's for 50257 or 50304 ids. Save it "
                     "with GPT.save_pretrained and a tokenizer.json beside it")


@torch.no_grad()
def evaluate_run(out_dir, split="val", max_batches=200, batch_size=16, device="auto",
                 dataset: str | None = None) -> dict:
    """Mean next-token loss of a run's model over consecutive windows of a split of the corpus
    it trained on, or of `dataset`. A finetune's folder is scored on its own validation
    examples (`minigpt.finetune.evaluate_finetune`). The result's "about" says what was read."""
    from minigpt.data import SequentialSampler, load_tokens

    out_dir = Path(out_dir)
    device = platform.resolve_device(device)
    if dataset is None and (out_dir / "finetune.json").is_file():
        from minigpt.finetune import evaluate_finetune

        return evaluate_finetune(out_dir, split, max_batches, batch_size, device)
    from minigpt.data import load_meta

    # a training run's checkpoint (weights of GPT-2 size: 1.5 GB) is read once, not per use
    checkpoint = _training_checkpoint(out_dir)
    model, tokenizer = (load_run(out_dir, device) if checkpoint is None
                        else _from_checkpoint(out_dir, checkpoint, device))
    config = _evaluation_config(out_dir, dataset, model, checkpoint)
    data_dir, _ = Trainer.prepare_data(config, tokenizer)
    notes = []
    if dataset is None and checkpoint is not None:
        trained_on = checkpoint.get("data_fingerprint")
        if trained_on and trained_on != load_meta(data_dir).get("fingerprint"):
            notes.append(f"{CORPUS_CHANGED}; this loss is over today's {split} split")
    sampler = SequentialSampler(load_tokens(data_dir, split), model.config.block_size,
                                batch_size, split=split)
    total, count, windows = 0.0, 0, 0
    for _ in range(min(max_batches, len(sampler))):
        x, y = sampler.next_batch(device)
        _, loss = model(x, y)
        total, count, windows = total + loss.item() * y.numel(), count + y.numel(), windows + len(y)
    if count == 0:
        raise ValueError(f"the {split} split of {config.dataset} is shorter than one window of "
                         f"{model.config.block_size + 1} tokens; evaluate on a larger corpus")
    about = (f"({windows} consecutive windows of {model.config.block_size} tokens of the {split} "
             f"split of {config.dataset}, read in order from its start; the training log's "
             "val_loss averages eval_iters random windows instead, so the two differ a little)")
    return {"loss": total / count, "perplexity": math.exp(total / count), "tokens": count,
            "about": about, "notes": notes}


def _evaluation_config(out_dir: Path, dataset: str | None, model: GPT,
                       checkpoint: dict | None) -> TrainConfig:
    """The data settings to evaluate a folder's model with: its training run's (from its
    `checkpoint`), with `dataset` swapped in when given; a saved model needs `dataset`."""
    if checkpoint is not None:
        require_entries(checkpoint, out_dir / "ckpt.pt", ("config",))
        saved = checkpoint["config"]
        try:
            config = TrainConfig.from_dict(saved)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{out_dir / 'ckpt.pt'}: its config is invalid ({exc})"
                                  ) from None
        return dataclasses.replace(config, dataset=dataset) if dataset else config
    if not dataset:
        raise ValueError(f"{out_dir} holds a saved model, not a training run, so it has no corpus "
                         "of its own: pass dataset=NAME (e.g. dataset=stdlib) to evaluate it")
    tokenizer = (_file_tokenizer(out_dir, model) if out_dir.is_file()
                 else str(out_dir / "tokenizer.json"))
    return TrainConfig(out_dir=str(out_dir.parent if out_dir.is_file() else out_dir),
                       dataset=dataset, tokenizer=tokenizer)
