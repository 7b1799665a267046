"""Time to validation loss on character-level Tiny Shakespeare: the `shakespeare-char` preset
against the well-known CPU recipe, measured in one run on the same machine.

    python bench/bench_shakespeare.py [--data PATH] [--target 1.88] [--json out.json]

The anchor recipe is the usual small CPU configuration for this corpus: 4 layers, 4 heads, width
128, context 64, batch 12, 2000 iterations, learning rate 1e-3 (decayed to 1e-4 after 100
warm-up steps), no dropout, which ends near validation loss 1.88. Both runs use minigpt's
Trainer, so the difference is in the settings alone.

Only training steps are timed, and the two runs take turns (`--eval-every` steps each) so that a
busy machine slows both alike. After each turn a run is scored the same way: the mean loss over
*all* consecutive windows of the validation split (not a random subsample), so "reached 1.88"
means the same thing for both. Evaluation time is excluded from the clock.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch

from minigpt.config import load_preset
from minigpt.data import SequentialSampler, load_corpus, load_tokens, prepare
from minigpt.tokenizer import CharTokenizer
from minigpt.train import TrainConfig, Trainer

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"

ANCHOR = dict(
    n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, max_iters=2000,
    learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2000, dropout=0.0,
    beta2=0.99, weight_decay=0.1, grad_clip=1.0,
)


@torch.no_grad()
def full_val_loss(model, val_tokens, block_size: int) -> float:
    model.eval()
    sampler = SequentialSampler(val_tokens, block_size, 64, split="val", drop_last=False)
    total, count = 0.0, 0
    for _ in range(len(sampler)):
        x, y = sampler.next_batch()
        _, loss = model(x, y)
        total, count = total + loss.item() * y.numel(), count + y.numel()
    model.train()
    return total / count


class TimedRun:
    """One training run advanced a chunk at a time, timing only its training steps."""

    def __init__(self, name: str, settings: dict, data_dir: Path, tokenizer, target: float):
        from minigpt.data import RandomWindowSampler

        self.name, self.settings, self.target = name, settings, target
        self.config = TrainConfig(**{**settings, "device": "cpu", "dtype": "float32",
                                     "out_dir": tempfile.mkdtemp(prefix=f"bench_{name}_"),
                                     "progress": False})
        train_tokens = load_tokens(data_dir, "train")
        self.val_tokens = load_tokens(data_dir, "val")
        sampler = RandomWindowSampler(train_tokens, self.config.block_size,
                                      self.config.batch_size, seed=self.config.seed)
        torch.manual_seed(self.config.seed)
        self.trainer = Trainer(self.config, model=_model(self.config, tokenizer),
                               train_data=sampler, tokenizer=tokenizer)
        self.curve, self.train_seconds, self.reached = [], 0.0, None

    @property
    def done(self) -> bool:
        return self.trainer.step >= self.config.max_iters

    def advance(self, steps: int) -> None:
        start = time.perf_counter()
        for _ in range(min(steps, self.config.max_iters - self.trainer.step)):
            self.trainer.train_step()
        self.train_seconds += time.perf_counter() - start
        val = full_val_loss(self.trainer.model, self.val_tokens, self.config.block_size)
        step = self.trainer.step
        self.curve.append({"step": step, "seconds": round(self.train_seconds, 2),
                           "val_loss": val})
        print(f"  {self.name:>16} step {step:5d}  {self.train_seconds:7.1f}s  val {val:.4f}",
              flush=True)
        if self.reached is None and val <= self.target:
            self.reached = {"step": step, "seconds": self.train_seconds, "val_loss": val}

    def result(self) -> dict:
        return {"settings": self.settings, "curve": self.curve, "reached_target": self.reached,
                "final_val_loss": self.curve[-1]["val_loss"],
                "train_seconds": self.train_seconds, "params": self.trainer.model.num_params()}


def run_interleaved(runs: list[TimedRun], eval_every: int) -> None:
    """Advance the runs in turns, a chunk each, so that whatever else the machine is doing
    slows them alike: the ratio of their times is fair even on a busy computer."""
    while not all(r.done for r in runs):
        for r in runs:
            if not r.done:
                r.advance(eval_every)


def _model(config: TrainConfig, tokenizer):
    from minigpt.model import GPT

    return GPT(config.model_config(tokenizer.vocab_size))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="tinyshakespeare.txt")
    parser.add_argument("--target", type=float, default=1.88)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"no Tiny Shakespeare text at {args.data}; pass --data PATH")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    corpus = load_corpus(args.data)
    tokenizer = CharTokenizer.from_text(corpus.text("train") + corpus.text("val"))
    data_dir = prepare(corpus, tokenizer, Path(tempfile.mkdtemp(prefix="bench_tokens_")))
    preset = {k: v for k, v in load_preset("shakespeare-char").items()
              if k in TrainConfig.__dataclass_fields__ and k not in
              ("out_dir", "dataset", "tokenizer", "sample_tokens", "sample_prompt",
               "eval_interval", "eval_iters", "log_interval")}
    results = {"target": args.target, "threads": torch.get_num_threads(),
               "torch": torch.__version__}
    print(f"anchor recipe: {ANCHOR}\nshakespeare-char preset: {preset}")
    anchor = TimedRun("anchor", ANCHOR, data_dir, tokenizer, args.target)
    ours = TimedRun("shakespeare-char", preset, data_dir, tokenizer, args.target)
    run_interleaved([anchor, ours], args.eval_every)
    results["anchor"], results["preset"] = anchor.result(), ours.result()
    anchor_time = results["anchor"]["train_seconds"]
    reached = results["preset"]["reached_target"]
    results["ratio_to_anchor"] = reached["seconds"] / anchor_time if reached else math.inf
    print(f"\nanchor: {anchor_time:.1f}s for {ANCHOR['max_iters']} steps, final val "
          f"{results['anchor']['final_val_loss']:.4f}")
    if reached:
        print(f"preset: val {reached['val_loss']:.4f} <= {args.target} at step {reached['step']} "
              f"after {reached['seconds']:.1f}s = {results['ratio_to_anchor']:.2f} x anchor time")
    else:
        print(f"preset: never reached {args.target} (final "
              f"{results['preset']['final_val_loss']:.4f})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
