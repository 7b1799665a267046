"""Finetuning a pretrained GPT on task data, full or LoRA. Derived in notebooks/10_finetuning.ipynb.

Pretraining maximises the likelihood of every token; finetuning on instructions learns only the
answers, the loss of eq. 10.1 with the prompt tokens masked out. The data side (JSONL layouts,
the prompt template, the masked encoding, batches) is in `minigpt.instruct`; its names are
re-exported here. For classification the language-model head is replaced by a linear layer on
the hidden state of each sequence's last real token (it has seen the whole text, causally):

    z = W_c h_{T_b} + b_c,   T_b = last real position of sequence b,   L = CE(z, label)  (eq. 10.2)

LoRA (eqs. 10.3-10.5) lives in `minigpt.lora`. Evaluation scores generated answers against
references:

    ROUGE-L = 2·P·R / (P + R),  P = LCS / |prediction|,  R = LCS / |reference|           (eq. 10.6)
    exact match, accuracy = 1/N Σ_i [prediction_i = reference_i]                        (eq. 10.7)

with LCS the longest common subsequence of words (ROUGE-1/2 count shared words/word pairs
instead). ROUGE comes from `rouge-score`, the reference implementation (pip install
"minigpt[finetune]").

From the command line (`minigpt finetune --help` lists every setting):

    minigpt train out_dir=runs/tiny                               # a base model, ~2 min on a CPU
    minigpt finetune --method lora base=runs/tiny data=train.jsonl out_dir=runs/ft

GPT-2 medium (355M) with LoRA on one 24 GB GPU, with network access for the first download (or
with the weights in the Hugging Face cache); bf16 autocast, sequences up to 512 tokens:

    minigpt finetune --method lora base=gpt2-medium data=train.jsonl out_dir=runs/gpt2m-lora \\
        dtype=bfloat16 max_length=512 batch_size=8 grad_accum_steps=4 steps=2000 \\
        rank=16 alpha=32 dropout=0.05 targets=all learning_rate=2e-4 warmup_steps=100 \\
        eval_interval=200

(`minigpt finetune --config finetune-gpt2-medium data=train.jsonl` holds these settings.)
Full finetuning of gpt2 (124M) fits too: `--method full base=gpt2 learning_rate=5e-5
batch_size=8 max_length=512`.

The run writes into out_dir: the merged model (`model.safetensors`, `config.json`, loadable with
`GPT.from_pretrained(out_dir)` and `minigpt sample out_dir=...`), `tokenizer.json`, the adapter
alone (`adapter.safetensors`, LoRA only), the classification head (`classifier.safetensors`,
classification only), `finetune.json` (settings and scores), and the trainer's checkpoint and
metrics under `out_dir/train/`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minigpt.checkpoint import (
    SAVED_MODEL_FILES,
    CheckpointError,
    atomic_write_bytes,
    refuse_saved_model,
)
from minigpt.instruct import (  # noqa: F401  (re-exported: finetune.format_prompt etc.)
    END_OF_TEXT,
    FORMATS,
    IGNORE_INDEX,
    PAD_INPUT,
    ROLES,
    ExampleBatches,
    detect_format,
    encode_example,
    encode_examples,
    end_ids,
    format_prompt,
    load_examples,
    prompt_ids,
    read_jsonl,
    segments,
)
from minigpt.lora import apply_lora, count_parameters, merge_lora, save_lora
from minigpt.model import GPT

RECORD = "finetune.json"  # settings, status ("running", "interrupted", "finished") and scores
# Settings a resumed finetune must share with the run it continues.
RESUME_FIELDS = ("data", "base", "method", "format", "val_data", "val_fraction", "tokenizer",
                 "max_length", "rank", "alpha", "targets", "seed", "batch_size")
LORA_TARGETS = {"attention": ("qkv_proj", "out_proj"),
                "all": ("qkv_proj", "out_proj", "fc", "proj")}


# ---------------------------------------------------------------------------------------------
# A classification head (eq. 10.2)


class GPTClassifier(nn.Module):
    """A GPT whose output is one of `labels`, read from the last real token (eq. 10.2).

    forward(x, y) takes x (B, T) right-padded with PAD_INPUT (-1) and labels y (B,) and returns
    (logits (B, K), loss or None), so `minigpt.train.Trainer` trains it like a GPT.
    """

    def __init__(self, backbone: GPT, labels):
        super().__init__()
        self.labels = [str(label) for label in labels]
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"a classifier needs two or more distinct labels, got {self.labels}")
        self.backbone = backbone
        self.config = backbone.config
        self.head = nn.Linear(backbone.config.n_embd, len(self.labels))
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def pooled(self, idx: torch.Tensor) -> torch.Tensor:
        """The hidden state at each sequence's last real token: (B, T) -> (B, C)."""
        real = idx != PAD_INPUT  # (B, T)
        last = real.sum(dim=1) - 1  # (B,) right padding: real tokens come first
        if bool((last < 0).any()):
            raise ValueError("a sequence in the batch has no tokens")
        hidden = self.backbone.hidden_states(idx.masked_fill(~real, 0))  # (B, T, C)
        return hidden[torch.arange(idx.size(0), device=idx.device), last]  # (B, C)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.head(self.pooled(idx))  # (B, K)
        loss = None if targets is None else F.cross_entropy(logits.float(), targets)
        return logits, loss

    @torch.no_grad()
    def predict(self, idx: torch.Tensor) -> list[str]:
        return [self.labels[i] for i in self.forward(idx)[0].argmax(dim=-1).tolist()]

    def flops_per_token(self, seq_len: int | None = None, training: bool = True) -> float:
        """The backbone's FLOPs (eq. 7.6) without its output head, which is not used."""
        c = self.config
        head = 2 * c.n_embd * c.vocab_size * (3 if training else 1)
        return self.backbone.flops_per_token(seq_len, training) - head

    def save_pretrained(self, directory) -> None:
        """The backbone as a GPT folder, plus `classifier.safetensors` (head and labels)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        self.backbone.save_pretrained(directory)
        head = {k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()}
        save_file(head, str(directory / "classifier.safetensors"),
                  metadata={"labels": json.dumps(self.labels)})

    @classmethod
    def from_pretrained(cls, directory) -> GPTClassifier:
        from safetensors import safe_open

        path = Path(directory) / "classifier.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{directory} holds no classifier.safetensors")
        with safe_open(str(path), framework="pt") as f:
            labels = json.loads(f.metadata()["labels"])
            head = {key: f.get_tensor(key) for key in f.keys()}
        model = cls(GPT.from_pretrained(directory), labels)
        model.head.load_state_dict(head)
        return model


# ---------------------------------------------------------------------------------------------
# Generation and scores (eqs. 10.6, 10.7)


@torch.no_grad()
def generate_response(model: GPT, tokenizer, prompt, max_new_tokens: int = 128) -> str:
    """Greedy answer to `prompt` (formatted text, or token ids), up to <end> or max_new_tokens."""
    ids = tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    room = model.config.block_size - len(ids)
    if room < 1:
        raise ValueError(f"the prompt has {len(ids)} tokens but block_size="
                         f"{model.config.block_size}; shorten it")
    end = end_ids(tokenizer)
    idx = torch.tensor([ids], dtype=torch.long, device=model.device)
    out = model.generate(idx, min(max_new_tokens, room), temperature=0,
                         eos_token=end[0] if len(end) == 1 else None)
    new = out[0, len(ids):].tolist()
    for i in range(len(new)):  # cut at <end>
        if new[i: i + len(end)] == end:
            new = new[:i]
            break
    return tokenizer.decode([t for t in new if t < tokenizer.vocab_size])


def reference_of(example: dict) -> str:
    if "messages" in example:
        return [m for m in example["messages"] if m["role"] == "assistant"][-1]["content"]
    return example["output"]


def predict(model: GPT, tokenizer, examples, max_new_tokens: int = 128) -> list[str]:
    """Greedy answers for instruction examples (Alpaca or chat)."""
    return [generate_response(model, tokenizer, prompt_ids(e, tokenizer), max_new_tokens)
            for e in examples]


@torch.no_grad()
def rank_choices(model: GPT, tokenizer, prompt: str, choices) -> int:
    """Index of the choice the language model finds most likely after `prompt`: the sum of
    log-probabilities of the choice's tokens and <end>. A zero-shot classifier."""
    prompt_ids, end = tokenizer.encode(prompt), end_ids(tokenizer)
    scores = []
    for choice in choices:
        answer = tokenizer.encode(choice) + end
        ids = (prompt_ids + answer)[-(model.config.block_size + 1):]
        x = torch.tensor([ids[:-1]], device=model.device)
        logp = torch.log_softmax(model(x)[0][0].float(), dim=-1)  # (T, V)
        targets = torch.tensor(ids[1:], device=model.device)
        picked = logp[torch.arange(len(targets)), targets][-len(answer):]
        scores.append(picked.sum().item())
    return int(np.argmax(scores))


def _normalize(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def exact_match(predictions, references) -> float:
    """Share of predictions equal to their reference (eq. 10.7), ignoring whitespace at the
    ends of the text and of each line."""
    predictions, references = list(predictions), list(references)
    _check_pairs(predictions, references)
    return sum(_normalize(p) == _normalize(r) for p, r in zip(predictions, references,
                                                              strict=True)) / len(references)


def accuracy(predictions, labels) -> float:
    """Share of predicted labels equal to the true ones (eq. 10.7)."""
    predictions, labels = list(predictions), list(labels)
    _check_pairs(predictions, labels)
    return sum(p == t for p, t in zip(predictions, labels, strict=True)) / len(labels)


def rouge(predictions, references, types=("rouge1", "rouge2", "rougeL")) -> dict[str, float]:
    """Mean ROUGE F-measures (eq. 10.6) from `rouge-score`, Google's reference implementation
    (the one Hugging Face `evaluate` wraps): words are lower-cased runs of letters and digits,
    no stemming."""
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ImportError('ROUGE needs the rouge-score package: pip install "minigpt[finetune]"'
                          " (or pip install rouge-score)") from None
    predictions, references = list(predictions), list(references)
    _check_pairs(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(types))
    totals = dict.fromkeys(types, 0.0)
    for p, r in zip(predictions, references, strict=True):
        for name, score in scorer.score(r, p).items():  # score(target, prediction)
            totals[name] += score.fmeasure
    return {name: total / len(references) for name, total in totals.items()}


def _check_pairs(predictions, references) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("nothing to score: no examples")


# ---------------------------------------------------------------------------------------------
# Settings and the run


@dataclass
class FinetuneConfig:
    """Every setting of `minigpt finetune`."""

    data: str = ""  # JSONL file of examples (Alpaca, chat, or text/label)
    base: str = "runs/tiny"  # a minigpt run or model folder, or a GPT-2 folder or name
    method: str = "lora"  # "lora" (adapters only) or "full" (every weight)
    out_dir: str = "runs/finetune"
    format: str = "auto"  # "auto", "alpaca", "chat" or "classification"
    val_data: str = ""  # a validation JSONL; empty holds out val_fraction of `data`
    val_fraction: float = 0.1
    tokenizer: str = "auto"  # "auto": the base's own (GPT-2's for GPT-2 weights)
    max_length: int = 0  # longest example in tokens; 0 means the model's block_size
    skip_long: bool = False  # leave out examples whose prompt fills max_length (else an error)
    # LoRA (eq. 10.3)
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0  # on the adapter's input
    targets: str = "attention"  # "attention", "all", or names such as "qkv_proj,fc"
    # optimisation
    steps: int = 200  # optimizer steps
    batch_size: int = 8
    grad_accum_steps: int = 1
    learning_rate: float = 0.0  # 0 means the method's default: LoRA 1e-3, full 1e-4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # evaluation and system
    eval_interval: int = 50
    eval_iters: int = 0  # validation batches per evaluation; 0 covers the validation set once
    eval_examples: int = 50  # validation examples answered and scored at the end (0: none)
    max_new_tokens: int = 128
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    progress: bool = True

    def __post_init__(self):
        from minigpt.config import check_types

        check_types(self)
        if self.method not in ("lora", "full"):
            raise ValueError(f"FinetuneConfig.method={self.method!r}: use 'lora' or 'full'")
        if self.format not in ("auto", *FORMATS):
            raise ValueError(f"FinetuneConfig.format={self.format!r}: use auto or one of "
                             f"{FORMATS}")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"FinetuneConfig.val_fraction={self.val_fraction}: must be in [0, 1)")
        for name in ("rank", "steps", "batch_size", "grad_accum_steps", "eval_interval",
                     "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"FinetuneConfig.{name}={getattr(self, name)}: must be ≥ 1")
        for name in ("max_length", "warmup_steps", "weight_decay", "grad_clip", "eval_iters",
                     "eval_examples", "learning_rate", "dropout"):
            if getattr(self, name) < 0:
                raise ValueError(f"FinetuneConfig.{name}={getattr(self, name)}: must be ≥ 0")
        if not self.alpha > 0:
            raise ValueError(f"FinetuneConfig.alpha={self.alpha}: must be > 0")
        if not self.dropout < 1:
            raise ValueError(f"FinetuneConfig.dropout={self.dropout}: must be < 1")
        self.lora_targets()

    def lora_targets(self) -> tuple[str, ...]:
        if self.targets in LORA_TARGETS:
            return LORA_TARGETS[self.targets]
        names = tuple(t.strip() for t in self.targets.split(",") if t.strip())
        if not names:
            raise ValueError(f"FinetuneConfig.targets={self.targets!r}: use attention, all, or "
                             "comma-separated layer names such as qkv_proj,fc")
        return names

    @property
    def lr(self) -> float:
        return self.learning_rate or (1e-3 if self.method == "lora" else 1e-4)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_base(base: str, tokenizer: str = "auto"):
    """(model, tokenizer) of a base: a minigpt run or model folder, or GPT-2 (folder or name)."""
    from minigpt.runs import load_run
    from minigpt.tokenizer import gpt2_tokenizer, load_tokenizer

    path = Path(base)
    native = (path / "ckpt.pt").is_file() or (
        (path / "config.json").is_file()
        and json.loads((path / "config.json").read_text()).get("model_type") == "minigpt")
    if native:
        model, tok = load_run(path)
    else:
        model, tok = GPT.from_pretrained(base), None
        if model.config.vocab_size == 50257:
            tok = gpt2_tokenizer()
    if tokenizer != "auto":
        tok = load_tokenizer(tokenizer)
    if tok is None:
        raise ValueError(f"{base} comes without a tokenizer; pass tokenizer=<name or file>")
    if tok.vocab_size > model.config.vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} ids but the model only "
                         f"{model.config.vocab_size}; they do not belong together")
    return model.train(), tok


def _split_validation(examples: list, config: FinetuneConfig):
    if config.val_data:
        return examples, load_examples(config.val_data, config.format)[0]
    if config.val_fraction == 0 or len(examples) < 2:
        return examples, []
    order = list(range(len(examples)))
    random.Random(config.seed).shuffle(order)
    n_val = max(1, round(len(examples) * config.val_fraction))
    val = set(order[:n_val])
    return ([e for i, e in enumerate(examples) if i not in val],
            [e for i, e in enumerate(examples) if i in val])


def train_config(config: FinetuneConfig, n_val_batches: int):
    """The `TrainConfig` that runs a finetune through `minigpt.train.Trainer`."""
    from minigpt.train import TrainConfig

    lr = config.lr
    return TrainConfig(
        out_dir=str(Path(config.out_dir) / "train"), dataset=config.data, seed=config.seed,
        batch_size=config.batch_size, grad_accum_steps=config.grad_accum_steps,
        max_iters=config.steps, learning_rate=lr, min_lr=lr / 10,
        warmup_iters=min(config.warmup_steps, config.steps), weight_decay=config.weight_decay,
        grad_clip=config.grad_clip, eval_interval=config.eval_interval,
        eval_iters=config.eval_iters or max(1, n_val_batches), log_interval=10,
        device=config.device, dtype=config.dtype, compile=config.compile,
        progress=config.progress, sample_tokens=0,
    )


def finetune(config: FinetuneConfig, resume: bool = False) -> dict:
    """Finetune `config.base` on `config.data` through the Trainer; save and score the result.

    Returns the scores: validation loss (language model) and, on up to eval_examples validation
    examples, exact match and ROUGE of the greedy answers, or accuracy for classification.
    out_dir must be new (or, with `resume`, hold this same finetune): it never overwrites the
    base model or another run. A run stopped by Ctrl-C or SIGTERM keeps its checkpoint, writes
    no model, and raises `minigpt.train.TrainingInterrupted`; `resume=True` continues it.
    """
    from minigpt.runlock import RunLock

    if not config.data:
        raise ValueError("no data: pass data=FILE.jsonl (`python -m minigpt.tasks classify "
                         "data/classify` writes an offline example task)")
    check_out_dir(config, resume)
    with RunLock(config.out_dir):
        check_out_dir(config, resume)  # again: another run may have written it meanwhile
        return _finetune(config, resume)


def check_out_dir(config: FinetuneConfig, resume: bool) -> None:
    """Refuse an out_dir that is the base model's folder, or that holds a model, a checkpoint
    or a finetune other than the one `resume` continues."""
    out, base = Path(config.out_dir).expanduser(), Path(config.base).expanduser()
    if base.exists() and out.resolve() == base.resolve():
        raise CheckpointError(f"out_dir={config.out_dir} is the base model's folder; finetuning "
                              "there would overwrite the base. Choose another out_dir")
    if (out / "ckpt.pt").is_file():
        raise CheckpointError(f"{out} holds a training run (ckpt.pt); a finetune there would "
                              "mix with it. Choose another out_dir")
    record = _read_record(out)
    if not resume:
        # finetune.json alone is a run that died before its first checkpoint: nothing to lose
        found = [name for name in (*SAVED_MODEL_FILES, "train/ckpt.pt") if (out / name).is_file()]
        if found:
            again = (" or pass --resume to continue the same finetune"
                     if (out / "train/ckpt.pt").is_file() else "")
            raise CheckpointError(f"{out} already holds {', '.join(found)} of another run; "
                                  f"choose another out_dir{again}")
    elif record is None and any((out / name).is_file() for name in SAVED_MODEL_FILES):
        refuse_saved_model(out, "a finetune")
    elif record is not None:
        saved = record.get("config", {})
        differ = [f"{k}: then {saved.get(k)!r}, now {getattr(config, k)!r}"
                  for k in RESUME_FIELDS if saved.get(k) != getattr(config, k)]
        if differ:
            raise CheckpointError(f"cannot resume the finetune in {out}: "
                                  + "; ".join(differ) + ". Use its settings or a new out_dir")


def _read_record(out: Path) -> dict | None:
    path = out / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} is damaged (not JSON); choose another out_dir") from None


def _write_record(config: FinetuneConfig, **fields) -> None:
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = json.dumps({"config": config.to_dict(), **fields}, indent=2) + "\n"
    atomic_write_bytes(out / RECORD, data.encode())


def _finetune(config: FinetuneConfig, resume: bool) -> dict:
    from minigpt.train import Trainer, TrainingInterrupted

    examples, format = load_examples(config.data, config.format)
    train_examples, val_examples = _split_validation(examples, config)
    torch.manual_seed(config.seed)  # the classification head and LoRA's A start from here
    base, tokenizer = load_base(config.base, config.tokenizer)
    max_length = _max_length(config, base.config.block_size)
    labels = None
    if format == "classification":
        labels = sorted({e["label"] for e in train_examples})
        unseen = sorted({e["label"] for e in val_examples} - set(labels))
        if unseen:
            raise ValueError(f"validation labels {unseen} never occur in the training data")
        model = GPTClassifier(base, labels)
        backbone = model.backbone
    else:
        model = backbone = base
    if config.method == "lora":
        apply_lora(backbone, config.rank, config.alpha, config.dropout, config.lora_targets())
        if labels is not None:
            model.head.requires_grad_(True)  # a new head always trains
    pad = PAD_INPUT if labels is not None else (tokenizer.eot_token or 0)
    encode = lambda data, name: encode_examples(data, tokenizer, max_length, format,  # noqa: E731
                                                labels, name, skip_long=config.skip_long)
    train_data = ExampleBatches(encode(train_examples, config.data), config.batch_size,
                                seed=config.seed, pad_id=pad)
    val_data = (ExampleBatches(encode(val_examples, config.val_data or "validation data"),
                               config.batch_size, shuffle=False, pad_id=pad)
                if val_examples else None)
    _write_record(config, format=format, status="running")
    with Trainer(train_config(config, len(val_data) if val_data else 0), model=model,
                 train_data=train_data, val_data=val_data, tokenizer=tokenizer,
                 resume=resume) as trainer:
        last = trainer.fit()
    if trainer.interrupted_by:
        _write_record(config, format=format, status="interrupted", steps=trainer.step)
        raise TrainingInterrupted(trainer.interrupted_by, trainer.step, config.out_dir)
    model.eval()
    scores = {"val_loss": last.get("val_loss"), "train_loss": last.get("loss"),
              **count_parameters(model)}
    scores.update(_score(model, tokenizer, _scored(val_examples, config), labels,
                         max_length, config.max_new_tokens))
    _save(model, tokenizer, config, labels)
    _write_record(config, format=format, status="finished", steps=trainer.step, scores=scores)
    return scores


def _scored(examples: list, config: FinetuneConfig) -> list:
    """The eval_examples validation examples answered and scored at the end: all of them, or a
    seeded draw (files are often sorted, say by label, and their first rows would be one
    class), kept in file order."""
    if len(examples) <= config.eval_examples:
        return examples
    chosen = sorted(random.Random(config.seed).sample(range(len(examples)),
                                                      config.eval_examples))
    return [examples[i] for i in chosen]


def _max_length(config: FinetuneConfig, block_size: int) -> int:
    if config.max_length > block_size:
        raise ValueError(f"max_length={config.max_length} exceeds the base model's context "
                         f"(block_size={block_size}); use at most {block_size}")
    return config.max_length or block_size


@torch.no_grad()
def evaluate_finetune(out_dir, split="val", max_batches=200, batch_size=16, device="cpu"):
    """The loss of a finished finetune on its own validation examples (split "val") or training
    examples ("train"): answer tokens only for instructions (eq. 10.1), the label's cross-entropy
    and the accuracy for classification. The same split and encoding as in training."""
    from minigpt.config import from_dict
    from minigpt.tokenizer import load_tokenizer

    out = Path(out_dir)
    record = _read_record(out) or {}
    if record.get("status") != "finished":
        raise ValueError(f"the finetune in {out} has not finished (status "
                         f"{record.get('status')!r}); continue it with --resume first")
    config = from_dict(FinetuneConfig, record["config"])
    examples, format = load_examples(config.data, config.format)
    examples = dict(zip(("train", "val"), _split_validation(examples, config), strict=True))[split]
    if not examples:
        raise ValueError(f"the finetune in {out} has no {split} examples (val_fraction=0 and no "
                         "val_data); pass dataset=NAME to evaluate it on a corpus instead")
    classify = format == "classification"
    model = GPTClassifier.from_pretrained(out) if classify else GPT.from_pretrained(out)
    model = model.to(device).eval()
    tokenizer = load_tokenizer(out / "tokenizer.json")
    encoded = encode_examples(examples, tokenizer, _max_length(config, model.config.block_size),
                              format, model.labels if classify else None, str(config.data),
                              skip_long=config.skip_long)
    batches = ExampleBatches(encoded, batch_size, shuffle=False,
                             pad_id=PAD_INPUT if classify else (tokenizer.eot_token or 0))
    total, count, correct = 0.0, 0, 0
    for _ in range(min(max_batches, len(batches))):
        x, y = batches.next_batch(device)
        logits, loss = model(x, y)
        counted = y.numel() if classify else int((y != IGNORE_INDEX).sum())
        total, count = total + loss.item() * counted, count + counted
        correct += int((logits.argmax(-1) == y).sum()) if classify else 0
    what = "examples" if classify else "answer tokens"
    result = {"loss": total / count, "perplexity": math.exp(total / count), "tokens": count,
              "unit": what,
              "about": f"(the finetune's own {split} examples, from {_source(config, split)}: "
                       f"the loss over {what} only, as in training)"}
    if classify:
        result["accuracy"] = correct / count
        result["about"] += f"; accuracy {correct / count:.4f}"
    return result


def _source(config: FinetuneConfig, split: str) -> str:
    if split == "val" and config.val_data:
        return config.val_data
    share = config.val_fraction if split == "val" else 1 - config.val_fraction
    return config.data if config.val_data else f"{config.data} ({share:.0%} of it, by seed)"


@torch.no_grad()
def _score(model, tokenizer, examples, labels, max_length, max_new_tokens) -> dict:
    if not examples:
        return {}
    if labels is not None:
        predicted = []
        for example in examples:
            ids = tokenizer.encode(example["text"])[:max_length]
            predicted += model.predict(torch.tensor([ids], device=model.device))
        return {"accuracy": accuracy(predicted, [e["label"] for e in examples])}
    predictions = predict(model, tokenizer, examples, max_new_tokens)
    references = [reference_of(e) for e in examples]
    scores = {"exact_match": exact_match(predictions, references)}
    try:
        scores.update(rouge(predictions, references))
    except ImportError:
        pass  # the optional extra is not installed: report exact match alone
    return scores


def _save(model, tokenizer, config: FinetuneConfig, labels) -> None:
    """The adapter alone (LoRA), then the merged model and the tokenizer, into out_dir."""
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = model.backbone if labels is not None else model
    if config.method == "lora":
        save_lora(backbone, out / "adapter.safetensors")
        merge_lora(backbone)  # now a plain GPT: the adapters are folded in (eq. 10.5)
    model.save_pretrained(out)  # GPTClassifier adds its head to the GPT folder
    tokenizer.save(out / "tokenizer.json")
