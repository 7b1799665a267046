"""Pretraining: maximise the likelihood of the next token (notebooks/08_pretraining.ipynb).

    θ* = argmin_θ  -1/N Σ_t log p_θ(x_t | x_<t)                     the objective     (eq. 8.1)
    AdamW with decoupled weight decay on matrices only                the optimiser    (eq. 8.2)
    lr(s) = linear warm-up, then cosine decay to min_lr              the schedule     (eq. 8.3)
    g ← g · min(1, c / ‖g‖)                                          clipping         (eq. 8.4)
    MFU = achieved FLOP/s / peak FLOP/s, with FLOPs per token from eq. (7.6)        (eq. 8.5)

`TrainConfig` holds every setting (the CLI and the TOML presets in configs/ fill it) and `Trainer`
runs the loop on CPU, CUDA or MPS, alone or under torchrun, and resumes exactly. What changes on
a GPU (bf16, compile, data parallelism, MFU) is the subject of notebooks/13_scaling_up.ipynb.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from minigpt import config as configs
from minigpt import distributed, platform
from minigpt.checkpoint import (
    CheckpointError,
    load_checkpoint,
    refuse_saved_model,
    save_checkpoint,
)
from minigpt.generate import generate_text
from minigpt.metrics import MetricsLog, mfu, plot_loss_curve, truncate_metrics
from minigpt.model import GPT, GPTConfig, load_weights
from minigpt.runlock import RunLock, RunLockedError, took_over_message

# Fields of TrainConfig that define the network; a resumed run must agree on all of them.
MODEL_FIELDS = (
    "n_layer", "n_head", "n_embd", "block_size", "bias", "pos_encoding", "norm_position",
    "vocab_multiple",
)
# Fields that choose the token stream; a resumed run must agree on them too (shard_tokens only
# cuts the same stream into files, so it may change).
DATA_FIELDS = ("dataset", "tokenizer", "dataset_config", "dataset_split", "text_field",
               "max_tokens")


# What a resumed run needs from a checkpoint (load_run needs only "model" and "model_config").
CHECKPOINT_KEYS = ("model", "optimizer", "scaler", "step", "best_val_loss", "config",
                   "model_config", "train_data", "rng")
# Signals that stop training gracefully: Ctrl-C, and what `kill`, `docker stop` and job
# schedulers send. A run they stop exits with 128 + the signal's number, as a shell expects.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


CORPUS_CHANGED = ("the corpus (or tokenizer) differs from the one this run's checkpoint was "
                  "trained on: a new Python has another stdlib, or the files changed")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(Exception):
    """A signal stopped a run before it finished; its checkpoint lets `--resume` continue it."""

    def __init__(self, signum: int, step: int, out_dir):
        self.signum, self.step, self.out_dir = signum, step, out_dir
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name} at step {step}; the checkpoint in {out_dir} "
                         "lets --resume continue it")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@dataclass
class TrainConfig:
    """Every setting of a training run. Defaults are the `tiny` CPU preset."""

    # where and what
    out_dir: str = "runs/tiny"  # checkpoints, metrics.jsonl, loss.png, tokenizer.json
    dataset: str = "stdlib"  # a corpus name or path (see minigpt.data.load_corpus)
    tokenizer: str = "byte"  # "byte", "char", "gpt2", "bpe:<vocab size>" or a tokenizer.json
    dataset_config: str = ""  # a Hugging Face dataset's configuration, e.g. "sample-10BT"
    dataset_split: str = "train"  # the Hugging Face split to read; val is held out of it
    text_field: str = "text"  # the field holding a record's text (hf:, .jsonl, .parquet)
    max_tokens: int = 0  # train tokens to prepare, read in corpus order (0: every document)
    shard_tokens: int = 100_000_000  # tokens per token file (shard) that prepare writes
    init_from: str = "scratch"  # "scratch", a minigpt model folder, or a GPT-2 name/folder
    seed: int = 1337
    # model (see GPTConfig)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    dropout: float = 0.0
    bias: bool = True
    pos_encoding: str = "learned"
    norm_position: str = "pre"
    vocab_multiple: int = 1  # pad the vocabulary to a multiple of this (64 is faster on GPUs)
    # optimisation
    batch_size: int = 16  # sequences per micro-batch on each process
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    total_batch_tokens: int = 0  # if > 0, sets grad_accum_steps to reach this global batch
    max_iters: int = 600  # optimizer steps
    learning_rate: float = 2e-3
    min_lr: float = 2e-4
    warmup_iters: int = 30
    lr_decay_iters: int = 0  # 0 means max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    # evaluation, logging, checkpoints
    eval_interval: int = 100
    eval_iters: int = 20
    log_interval: int = 10
    checkpoint_interval: int = 0  # 0 means eval_interval
    hellaswag_interval: int = 0  # HellaSwag accuracy every this many steps (0: never)
    hellaswag_examples: int = 0  # the first this many validation examples (0: all 10,042)
    hellaswag_data: str = ""  # a local HellaSwag jsonl; empty: the official file, cached
    # system
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", "mps"
    dtype: str = "auto"  # "auto", "float32", "bfloat16", "float16"
    compile: bool = False
    progress: bool = True  # a tqdm progress bar
    # the sample printed at the end
    sample_tokens: int = 300
    sample_prompt: str = "def "

    def __post_init__(self):
        configs.check_types(self)
        positive = ("batch_size", "grad_accum_steps", "max_iters", "eval_interval",
                    "eval_iters", "log_interval", "vocab_multiple", "shard_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)}: must be ≥ 1")
        for name in ("total_batch_tokens", "max_tokens", "warmup_iters", "lr_decay_iters",
                     "weight_decay", "grad_clip", "checkpoint_interval", "sample_tokens",
                     "min_lr", "hellaswag_interval", "hellaswag_examples"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)}: must be ≥ 0")
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig.learning_rate={self.learning_rate}: must be > 0")
        if self.min_lr > self.learning_rate:
            raise ValueError(f"TrainConfig.min_lr={self.min_lr} exceeds learning_rate="
                             f"{self.learning_rate}; the schedule decays from one to the other")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)}: must be in [0, 1)")
        if self.dtype not in ("auto", *platform.DTYPES):
            raise ValueError(
                f"TrainConfig.dtype={self.dtype!r}: use auto, {', '.join(platform.DTYPES)}"
            )
        self.model_config(vocab_size=256)  # checks the model fields now, with GPTConfig's words

    def model_config(self, vocab_size: int) -> GPTConfig:
        padded = math.ceil(vocab_size / self.vocab_multiple) * self.vocab_multiple
        return GPTConfig(
            vocab_size=padded, block_size=self.block_size, n_layer=self.n_layer,
            n_head=self.n_head, n_embd=self.n_embd, dropout=self.dropout, bias=self.bias,
            pos_encoding=self.pos_encoding, norm_position=self.norm_position,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        return configs.from_dict(cls, values)


# --------------------------------------------------------------------------- pieces of the loop

def learning_rate_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to learning_rate, then cosine decay to min_lr (eq. 8.3)."""
    if step < config.warmup_iters:
        return config.learning_rate * (step + 1) / config.warmup_iters
    decay_iters = config.lr_decay_iters or config.max_iters
    if step >= decay_iters:
        return config.min_lr
    progress = (step - config.warmup_iters) / max(1, decay_iters - config.warmup_iters)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 → 0
    return config.min_lr + cosine * (config.learning_rate - config.min_lr)


def configure_optimizer(model: nn.Module, config: TrainConfig, device: torch.device):
    """AdamW that decays matrices and embeddings but not biases or layer-norm gains (eq. 8.2).

    Decay pulls weights toward zero; on a gain it would fight the normalisation, on a bias it
    buys nothing, so both are left alone.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = platform.fused_adamw_available(device)
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2),
                             fused=fused)


def _rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "python": _python_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_plain(state):
    # weights_only checkpoints hold tensors and plain Python values, not numpy arrays
    kind, keys, pos, has_gauss, gauss = state
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _python_state_to_plain(state):
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


# --------------------------------------------------------------------------- the trainer

class Trainer:
    """Runs the training loop of a `TrainConfig`.

    With no arguments besides the config, it loads the corpus, builds or loads the tokenizer,
    prepares token files and creates the model. Finetuning passes its own `model`, `train_data`
    and `val_data` (anything with `next_batch(device)`, `state_dict()`, `load_state_dict()`).
    """

    def __init__(self, config: TrainConfig, model: GPT | None = None, train_data=None,
                 val_data=None, tokenizer=None, resume: bool = False):
        self.config = config
        self.out_dir = Path(config.out_dir)
        self.dist, self.device = distributed.setup(platform.resolve_device(config.device))
        self.dtype = platform.resolve_dtype(config.dtype, self.device)
        platform.configure_matmul(self.device)
        self.tokenizer = tokenizer
        self.train_data, self.val_data = train_data, val_data
        self.checkpoint_path = self.out_dir / "ckpt.pt"
        self.resumed_from: int | None = None  # the step a resumed run continues from
        self.data_dir = self.data_fingerprint = None  # token files (None when data is given)
        self.interrupted_by: int | None = None  # the signal that stopped fit(), if one did
        self._stop_signal = 0
        self._lock = self._take_run_lock()
        try:
            self._setup(config, model, resume)
        except BaseException:
            self.close()
            raise

    def _setup(self, config: TrainConfig, model: GPT | None, resume: bool) -> None:
        checkpoint = self._read_checkpoint(resume)
        torch.manual_seed(config.seed)
        if self.train_data is None:
            self._build_data()
        # Evaluation replays the same batches every time: each source from its initial state.
        self._eval_starts = {split: source.state_dict() for split, source in
                             (("train", self.train_data), ("val", self.val_data)) if source}
        self.model = (model or self._build_model()).to(self.device)
        self.grad_accum_steps = self._grad_accum_steps()
        self.optimizer = configure_optimizer(self.model, config, self.device)
        # fp16 needs loss scaling: its small range underflows small gradients to zero
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.step, self.best_val_loss = 0, math.inf
        if checkpoint is not None:
            self._restore(checkpoint)
        self.train_model = self._wrap_model()
        self.peak_flops = platform.peak_flops(self.device, self.dtype)
        self.flops_per_token = self.model.flops_per_token(self._seq_len())
        self.hellaswag = self._load_hellaswag()

    def close(self) -> None:
        """Give back the run lock of out_dir (the end of the process does it too)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----------------------------------------------------------------- setup

    def _take_run_lock(self) -> RunLock | None:
        """One run per out_dir: the first process (rank 0 under torchrun) takes the folder's
        lock; every rank learns whether it did, so all stop together when it could not."""
        lock, error = None, None
        if self.dist.is_main:
            try:
                lock = RunLock(self.out_dir).acquire()
            except RunLockedError as exc:
                error = exc
            if lock is not None and lock.took_over:
                print(took_over_message(lock.took_over, self.out_dir), file=sys.stderr)
        failed = torch.tensor(float(error is not None), device=self.device)
        if distributed.mean_across_ranks(failed, self.dist).item() > 0:
            raise error or RunLockedError(f"rank 0 could not lock {self.out_dir}")
        return lock

    def _read_checkpoint(self, resume: bool):
        refuse_saved_model(self.out_dir, "training")
        if not self.checkpoint_path.exists():
            if resume and self.dist.is_main:
                print(f"no checkpoint in {self.out_dir} yet: starting a new run")
            return None
        if not resume:
            raise CheckpointError(
                f"{self.out_dir} already holds a checkpoint; pass --resume (resume=True) to "
                "continue it, or choose another out_dir"
            )
        checkpoint = load_checkpoint(self.checkpoint_path, require=CHECKPOINT_KEYS)
        self._check_compatible(checkpoint["config"])
        self.resumed_from = checkpoint["step"]
        return checkpoint

    def _check_compatible(self, saved: dict) -> None:
        current = self.config.to_dict()
        # a setting newer than the checkpoint had, in effect, its default value
        defaults = TrainConfig.__dataclass_fields__
        then = {k: saved.get(k, defaults[k].default) for k in MODEL_FIELDS + DATA_FIELDS}
        differ = [f"{k}: checkpoint {then[k]!r}, now {current[k]!r}"
                  for k in MODEL_FIELDS + DATA_FIELDS if then[k] != current[k]]
        if differ:
            raise CheckpointError(
                f"cannot resume {self.checkpoint_path}: the model or data settings differ ("
                + "; ".join(differ) + "). Use the checkpoint's settings or a new out_dir"
            )

    @staticmethod
    def prepare_data(config: TrainConfig, tokenizer=None, write: bool = True):
        """Token files for the config's dataset and tokenizer (made once, then reused);
        returns (folder, tokenizer). With write=False only the tokenizer is resolved."""
        from minigpt.data import corpus_from_settings, prepare
        from minigpt.download import cache_dir

        c = config
        corpus = corpus_from_settings(c.dataset, c.dataset_config, c.dataset_split, c.text_field)
        if tokenizer is None:
            saved = Path(c.out_dir) / "tokenizer.json"
            tokenizer = build_tokenizer(c.tokenizer, corpus, saved)
        # One folder per token stream: another configuration, split or budget gets its own.
        parts = [corpus.name, c.dataset_config, c.dataset_split if c.dataset_split != "train"
                 else "", c.tokenizer, f"max{c.max_tokens}" if c.max_tokens else ""]
        data_dir = cache_dir() / "tokens" / _slug("-".join(part for part in parts if part))
        if write:
            prepare(corpus, tokenizer, data_dir, progress=c.progress,
                    shard_tokens=c.shard_tokens, max_tokens=c.max_tokens)
        return data_dir, tokenizer

    def _build_data(self) -> None:
        from minigpt.data import RandomWindowSampler, load_meta, load_tokens

        c = self.config
        # Only the first process writes the token files; the others wait, then map them.
        data_dir, self.tokenizer = self.prepare_data(c, self.tokenizer, write=self.dist.is_main)
        distributed.barrier(self.dist)
        self.data_dir = data_dir
        self.data_fingerprint = load_meta(data_dir).get("fingerprint")
        train_tokens, val_tokens = load_tokens(data_dir, "train"), load_tokens(data_dir, "val")
        d = self.dist
        self.train_data = RandomWindowSampler(train_tokens, c.block_size, c.batch_size,
                                              seed=c.seed, rank=d.rank, world_size=d.world_size)
        self.val_data = RandomWindowSampler(val_tokens, c.block_size, c.batch_size,
                                            seed=c.seed + 1, rank=d.rank, world_size=d.world_size)

    def _build_model(self) -> GPT:
        c = self.config
        if c.init_from == "scratch":
            return GPT(c.model_config(self.tokenizer.vocab_size))
        return GPT.from_pretrained(c.init_from, dropout=c.dropout)

    def _grad_accum_steps(self) -> int:
        c = self.config
        if not c.total_batch_tokens:
            return c.grad_accum_steps
        per_step = c.batch_size * self._seq_len() * self.dist.world_size
        if c.total_batch_tokens % per_step:
            raise ValueError(
                f"total_batch_tokens={c.total_batch_tokens} is not a multiple of batch_size × "
                f"block_size × processes = {per_step}; change one of them"
            )
        return c.total_batch_tokens // per_step

    def _seq_len(self) -> int:
        return min(self.config.block_size, self.model.config.block_size)

    def _wrap_model(self) -> nn.Module:
        model = self.model
        if self.config.compile:
            ok, why = platform.compile_available(self.device)
            if ok:
                model = torch.compile(model)
            elif self.dist.is_main:
                print(f"compile=True ignored: {why}")
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        return model

    # ----------------------------------------------------------------- checkpoints

    def checkpoint_state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "best_val_loss": self.best_val_loss,
            "config": self.config.to_dict(),
            "model_config": self.model.config.to_dict(),
            "train_data": self.train_data.state_dict(),
            "rng": _rng_state(),
            "tokenizer": self.tokenizer.to_dict() if self.tokenizer is not None else None,
            "data_fingerprint": self.data_fingerprint,  # corpus + tokenizer the run trained on
        }

    def save(self) -> None:
        if self.dist.is_main:
            save_checkpoint(self.checkpoint_state(), self.checkpoint_path)
        distributed.barrier(self.dist)

    def _restore(self, checkpoint: dict) -> None:
        load_weights(self.model, checkpoint["model"], self.checkpoint_path)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.step = checkpoint["step"]
        self.best_val_loss = checkpoint["best_val_loss"]
        self.train_data.load_state_dict(checkpoint["train_data"])
        _set_rng_state(checkpoint["rng"])
        saved = checkpoint.get("data_fingerprint")
        if saved and self.data_fingerprint and saved != self.data_fingerprint and self.dist.is_main:
            print(f"note: {CORPUS_CHANGED}; training goes on with today's token files",
                  file=sys.stderr)
        if self.dist.is_main:
            truncate_metrics(self.out_dir / "metrics.jsonl", self.step)

    # ----------------------------------------------------------------- the loop

    def train_step(self) -> torch.Tensor:
        """One optimizer step over grad_accum_steps micro-batches; returns the mean loss."""
        lr = learning_rate_at(self.step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for micro in range(self.grad_accum_steps):
            x, y = self.train_data.next_batch(self.device)
            last = micro == self.grad_accum_steps - 1
            # DDP all-reduces gradients on every backward; only the last micro-batch needs it
            sync = nullcontext() if last or not self.dist.enabled else self.train_model.no_sync()
            with sync:  # one context for both: no_sync() cannot be entered twice
                with platform.autocast(self.device, self.dtype):
                    _, loss = self.train_model(x, y)
                self.scaler.scale(loss / self.grad_accum_steps).backward()
            total += loss.detach()
        if self.config.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total / self.grad_accum_steps

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean loss over eval_iters batches of each split. The batches come from fresh samplers
        with fixed seeds, so every evaluation sees the same windows and the curve is smooth."""
        self.model.eval()
        losses = {}
        for split, source in (("train", self.train_data), ("val", self.val_data)):
            if source is None:
                continue
            sampler = copy.copy(source)
            sampler.load_state_dict(self._eval_starts[split])
            total = torch.zeros((), device=self.device)
            for _ in range(self.config.eval_iters):
                x, y = sampler.next_batch(self.device)
                with platform.autocast(self.device, self.dtype):
                    _, loss = self.model(x, y)
                total += loss.float()
            mean = distributed.mean_across_ranks(total / self.config.eval_iters, self.dist)
            losses[f"{split}_loss"] = mean.item()
        self.model.train()
        return losses

    def fit(self, stop_at: int | None = None, on_log=None) -> dict:
        """Train until max_iters (or `stop_at`), evaluating, logging and checkpointing on the
        way. Returns the last metrics; `on_log(record)` is called with each logged record.

        Ctrl-C (SIGINT) or SIGTERM stops at the next step boundary with a checkpoint and a last
        metrics line; `interrupted_by` then holds the signal. A second signal stops at once.
        Each step's metrics line is written before its checkpoint, so after a kill between the
        two, resuming drops the line and logs the step again: never a step lost or doubled.
        """
        c = self.config
        stop_at = c.max_iters if stop_at is None else min(stop_at, c.max_iters)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.tokenizer is not None and self.dist.is_main:
            self.tokenizer.save(self.out_dir / "tokenizer.json")
        log = MetricsLog(self.out_dir / "metrics.jsonl", enabled=self.dist.is_main)
        self.interrupted_by = None
        with self._graceful_interrupt():  # from here on a signal stops at a step boundary
            last = self._loop(stop_at, log, on_log)
        if self.interrupted_by and self.dist.is_main:
            print(f"\ninterrupted ({signal.Signals(self.interrupted_by).name}): checkpoint "
                  f"saved at step {self.step} in {self.out_dir}", file=sys.stderr)
        if self.dist.is_main and self.step >= c.max_iters:
            plot_loss_curve(self.out_dir / "metrics.jsonl", self.out_dir / "loss.png")
        return last

    def _loop(self, stop_at: int, log: MetricsLog, on_log) -> dict:
        """The steps of fit(): train, log, evaluate, checkpoint; stop at `stop_at` or when a
        signal asks."""
        c = self.config
        if self.step == 0:
            if self.dist.is_main:  # records of a run that died before its first checkpoint
                log.path.unlink(missing_ok=True)
            first = {"step": 0, **self.evaluate()}
            if c.hellaswag_interval:
                first.update(self.evaluate_hellaswag())
            log.write(first)
            if on_log is not None:
                on_log(first)
        checkpoint_every = c.checkpoint_interval or c.eval_interval
        bar = self._progress_bar(stop_at)
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        last = {}
        timer = _Timer(self.device, self.step)
        while self.step < stop_at:
            loss = self.train_step()
            nonfinite |= ~torch.isfinite(loss)
            stopping = self._stop_agreed()
            record = {}
            if self.step % c.log_interval == 0 or self.step == stop_at or stopping:
                self._check_finite(nonfinite)
                record.update(self._throughput(loss, timer))
            if self.step % c.eval_interval == 0 or self.step == c.max_iters:
                self._check_finite(nonfinite)
                record.update(self.evaluate())
                self.best_val_loss = min(self.best_val_loss, record.get("val_loss", math.inf))
            if c.hellaswag_interval and (self.step % c.hellaswag_interval == 0
                                         or self.step == c.max_iters):
                record.update(self.evaluate_hellaswag())
            if record:  # before the checkpoint: see the docstring
                last = {"step": self.step, **record}
                log.write(last)
                bar.set_postfix(loss=f"{last.get('loss', last.get('val_loss')):.3f}")
                if on_log is not None:
                    on_log(last)
            if self.step % checkpoint_every == 0 or self.step == stop_at or stopping:
                self._check_finite(nonfinite, weights=True)
                self.save()
            if record:
                timer.restart(self.step)
            bar.update(1)
            if stopping:
                self.interrupted_by = stopping
                break
        bar.close()
        return last

    def _load_hellaswag(self) -> list[dict] | None:
        """This rank's share of the HellaSwag examples, when the run evaluates them; loaded now
        so that a missing file fails before training, not hours into it."""
        c = self.config
        if not c.hellaswag_interval:
            return None
        from minigpt import hellaswag

        load = lambda: hellaswag.load_examples(  # noqa: E731
            c.hellaswag_data or None, limit=c.hellaswag_examples or None,
            progress=c.progress and self.dist.is_main)
        if self.dist.is_main:  # the first process downloads; the others read the cached copy
            examples = load()
        distributed.barrier(self.dist)
        if not self.dist.is_main:
            examples = load()
        return examples[self.dist.rank::self.dist.world_size]

    @torch.no_grad()
    def evaluate_hellaswag(self) -> dict:
        """HellaSwag acc and acc_norm (minigpt.hellaswag) over every rank's share."""
        from minigpt import hellaswag

        totals = torch.zeros(3, device=self.device)  # hits, normalised hits, examples
        if self.hellaswag:
            with platform.autocast(self.device, self.dtype):
                result = hellaswag.evaluate(self.model, self.tokenizer, self.hellaswag,
                                            batch_size=self.config.batch_size,
                                            device=self.device, progress=False)
            totals += torch.tensor([result["acc"] * result["n"], result["acc_norm"] * result["n"],
                                    result["n"]], device=self.device)
        if self.dist.enabled:
            torch.distributed.all_reduce(totals)
        hits, hits_norm, n = totals.tolist()
        return {"hellaswag_acc": hits / n, "hellaswag_acc_norm": hits_norm / n}

    def _stop_agreed(self) -> int:
        """The signal that asked to stop (0 if none). Under torchrun every rank must stop at the
        same step, so the ranks agree on the largest signal any of them received."""
        if not self.dist.enabled:
            return self._stop_signal
        wanted = torch.tensor(float(self._stop_signal), device=self.device)
        torch.distributed.all_reduce(wanted, op=torch.distributed.ReduceOp.MAX)
        return int(wanted.item())

    def _check_finite(self, nonfinite: torch.Tensor, weights: bool = False) -> None:
        """Raise TrainingDiverged if a loss so far was NaN/inf, or (before a checkpoint) if the
        weights are: a step's loss is computed before its update, so it cannot vouch for them."""
        bad = nonfinite
        if weights:
            finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()])
            bad = bad | ~finite.all()
        # every rank must agree, or one would raise while the others wait at the next barrier
        if distributed.mean_across_ranks(bad.float(), self.dist).item() > 0:
            kept = (f"the last good checkpoint in {self.out_dir} is kept"
                    if self.checkpoint_path.exists() else "no checkpoint was written yet")
            raise TrainingDiverged(
                f"the loss or the weights became NaN or infinite at or before step {self.step}; "
                f"{kept}. Lower learning_rate, lengthen warmup_iters, keep grad_clip on, or "
                "check the data"
            )

    def _throughput(self, loss: torch.Tensor, timer: _Timer) -> dict:
        loss_value = distributed.mean_across_ranks(loss, self.dist).item()  # syncs the device
        elapsed = timer.elapsed()
        steps = self.step - timer.start_step
        tokens = steps * self.grad_accum_steps * self.config.batch_size * self._seq_len()
        tokens_per_s = tokens * self.dist.world_size / elapsed if elapsed > 0 else 0.0
        record = {"loss": loss_value, "lr": learning_rate_at(self.step - 1, self.config),
                  "tokens_per_s": round(tokens_per_s, 1)}
        utilisation = mfu(self.flops_per_token, tokens_per_s / self.dist.world_size,
                          self.peak_flops)
        if utilisation is not None:
            record["mfu"] = round(utilisation, 4)
        return record

    def _progress_bar(self, stop_at: int):
        from tqdm import tqdm

        disable = not (self.config.progress and self.dist.is_main)
        return tqdm(total=stop_at, initial=self.step, disable=disable, desc="train",
                    dynamic_ncols=True, file=sys.stdout)

    def _graceful_interrupt(self):
        """The first Ctrl-C (SIGINT) or SIGTERM (what `kill`, `docker stop` and schedulers
        send) asks the loop to stop at the next step boundary, with a checkpoint; a second one
        interrupts at once (KeyboardInterrupt)."""
        trainer = self

        class _Handler:
            def __enter__(self):
                self.previous = {}
                if threading_is_main():
                    for signum in STOP_SIGNALS:
                        self.previous[signum] = signal.signal(signum, self.handle)
                return self

            def handle(self, signum, frame):
                if trainer._stop_signal:
                    raise KeyboardInterrupt
                trainer._stop_signal = signum

            def __exit__(self, *exc):
                for signum, previous in self.previous.items():
                    signal.signal(signum, previous)
                trainer._stop_signal = 0
                return False

        return _Handler()

    # ----------------------------------------------------------------- after training

    def sample(self, prompt: str | None = None, max_new_tokens: int | None = None,
               seed: int | None = None) -> str:
        return generate_text(self.model, self.tokenizer,
                           self.config.sample_prompt if prompt is None else prompt,
                           self.config.sample_tokens if max_new_tokens is None else max_new_tokens,
                           seed=self.config.seed if seed is None else seed)


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class _Timer:
    """Wall-clock time and optimizer steps since the last restart (evaluation excluded)."""

    def __init__(self, device: torch.device, step: int):
        self.device = device
        self.restart(step)

    def restart(self, step: int) -> None:
        platform.synchronize(self.device)
        self.start, self.start_step = time.perf_counter(), step

    def elapsed(self) -> float:
        platform.synchronize(self.device)
        return time.perf_counter() - self.start


def build_tokenizer(spec: str, corpus, save_to: Path | None = None):
    """A tokenizer by spec: "byte", "gpt2", "char" (from the corpus), "bpe:<size>" (trained on
    the corpus's train split), or the path of a saved tokenizer.json. A tokenizer trained here is
    reused from `save_to` when it exists, so a resumed run encodes text the same way."""
    from minigpt.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer

    trained_here = spec == "char" or spec.startswith("bpe:")
    if trained_here and save_to is not None and Path(save_to).exists():
        return load_tokenizer(save_to)
    if spec == "char":
        # "\n\n" separates documents in the token files when there is no end-of-text token,
        # so it belongs in the vocabulary even when no document contains a newline
        return CharTokenizer.from_text(corpus.text("train") + "\n\n" + corpus.text("val"))
    if spec.startswith("bpe:"):
        size = spec.split(":", 1)[1]
        if not size.isdigit():
            raise ValueError(f"tokenizer={spec!r}: write bpe:<vocabulary size>, e.g. bpe:4096")
        return BPETokenizer.train_fast(corpus.train, int(size), special_tokens=["<|endoftext|>"])
    return load_tokenizer(spec)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)[:120]

