"""The `minigpt` command: prepare data, train, sample, evaluate, finetune, benchmark.

    minigpt train                                   train the `tiny` preset on the stdlib corpus
    minigpt train --config tiny max_iters=60 out_dir=runs/a
    minigpt train --config tiny max_iters=120 out_dir=runs/a --resume
    minigpt sample out_dir=runs/a prompt="def " max_new_tokens=100 seed=1
    minigpt eval out_dir=runs/a
    minigpt finetune --method lora base=runs/a data=train.jsonl out_dir=runs/ft
    minigpt prepare --config shakespeare-char
    minigpt bench --config gpt2-124m                tokens/s and MFU of a preset on this machine

Settings are `KEY=VALUE` pairs on top of `--config NAME_OR_TOML`; `minigpt train --help` lists
them. Errors in what you typed are reported in one line, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass

from minigpt import config as configs


@dataclass
class SampleConfig:
    """Settings of `minigpt sample`."""

    out_dir: str = "runs/tiny"  # a training run folder (or a saved model folder)
    prompt: str = ""
    max_new_tokens: int = 200
    num_samples: int = 1
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None
    seed: int = 1
    stop_at_eot: bool = True  # end a sample where the model ends its document
    device: str = "auto"

    def __post_init__(self):
        configs.check_types(self)
        _at_least(self, num_samples=1, max_new_tokens=0)
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be ≥ 0 (0 means greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k={self.top_k}: must be ≥ 1, or none")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1], or none")


@dataclass
class EvalConfig:
    """Settings of `minigpt eval`."""

    out_dir: str = "runs/tiny"
    split: str = "val"
    max_batches: int = 200  # windows are read in order; the evaluation stops after this many
    batch_size: int = 16
    dataset: str = ""  # a corpus to evaluate on; empty: the one the run trained on
    data: str = ""  # --task hellaswag: a local jsonl; empty: the official file, cached
    limit: int = 0  # --task hellaswag: the first this many examples (0: all)
    device: str = "auto"

    def __post_init__(self):
        configs.check_types(self)
        _at_least(self, max_batches=1, batch_size=1, limit=0)
        if self.split not in ("train", "val"):
            raise ValueError(f"split={self.split!r}: use train or val")


def _at_least(config, **bounds) -> None:
    for name, low in bounds.items():
        if getattr(config, name) < low:
            raise ValueError(f"{name}={getattr(config, name)}: must be ≥ {low}")


def _settings_help(cls) -> str:
    lines = ["settings (KEY=VALUE):"]
    for field in dataclasses.fields(cls):
        default = field.default
        lines.append(f"  {field.name}={default!r}" if default != "" else f"  {field.name}=''")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from minigpt.train import TrainConfig

    parser = argparse.ArgumentParser(prog="minigpt", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter
    presets = ", ".join(n for n in configs.preset_names() if not n.startswith("finetune-"))

    train = sub.add_parser("train", help="train a model (default: the tiny preset)",
                           epilog=_settings_help(TrainConfig), formatter_class=raw)
    train.add_argument("--config", default="tiny", help=f"a preset ({presets}) or a .toml file")
    train.add_argument("--resume", action="store_true",
                       help="continue the checkpoint in out_dir (starts fresh if there is none)")
    train.add_argument("settings", nargs="*", metavar="KEY=VALUE")

    prepare = sub.add_parser("prepare", help="download and tokenize a corpus ahead of training",
                             epilog=_settings_help(TrainConfig), formatter_class=raw)
    prepare.add_argument("--config", default="tiny", help=f"a preset ({presets}) or a .toml file")
    prepare.add_argument("settings", nargs="*", metavar="KEY=VALUE")

    sample = sub.add_parser("sample", help="generate text from a trained model",
                            epilog=_settings_help(SampleConfig), formatter_class=raw)
    sample.add_argument("settings", nargs="*", metavar="KEY=VALUE")

    evaluate = sub.add_parser(
        "eval", help="loss and perplexity of a trained model, or its HellaSwag accuracy",
        description="Loss and perplexity over a split of the run's corpus (or dataset=), or, "
        "with --task hellaswag, zero-shot HellaSwag accuracy scored as lm-evaluation-harness "
        "scores it. out_dir is a run folder, a saved model folder, or a nanoGPT ckpt.pt.",
        epilog=_settings_help(EvalConfig), formatter_class=raw)
    evaluate.add_argument("--task", choices=("loss", "hellaswag"), default="loss",
                          help="what to measure (default: loss)")
    evaluate.add_argument("--json", default=None,
                          help="also write the result to this file (HellaSwag: with the "
                               "log-likelihood of every ending)")
    evaluate.add_argument("settings", nargs="*", metavar="KEY=VALUE")

    from minigpt.finetune import FinetuneConfig

    finetune = sub.add_parser(
        "finetune", help="finetune a model on JSONL examples (LoRA or full)",
        description="Finetune a base model (a minigpt run, or GPT-2) on instruction, chat or "
        "classification examples in JSONL; see minigpt/finetune.py for the layouts.",
        epilog=_settings_help(FinetuneConfig), formatter_class=raw)
    finetune.add_argument("--method", choices=("lora", "full"), default=None,
                          help="train LoRA adapters only, or every weight (default: lora)")
    finetune.add_argument("--config", default=None,
                          help="a preset (e.g. finetune-gpt2-medium) or a .toml file")
    finetune.add_argument("--resume", action="store_true",
                          help="continue the checkpoint in out_dir/train")
    finetune.add_argument("settings", nargs="*", metavar="KEY=VALUE")

    bench = sub.add_parser(
        "bench", help="training tokens/s, FLOP/s and MFU of a preset on this machine",
        description="Time the real training step of a config on synthetic tokens (no data, no "
        "checkpoint): tokens/s, achieved FLOP/s and, on a GPU with a known peak, MFU.",
        epilog=_settings_help(TrainConfig), formatter_class=raw)
    bench.add_argument("--config", default="tiny", help=f"a preset ({presets}) or a .toml file")
    bench.add_argument("--steps", type=int, default=None,
                       help="timed steps (default 20; 3 for a GPU preset on a CPU)")
    bench.add_argument("--warmup", type=int, default=None,
                       help="untimed steps first, compilation included (default 3; 1 for a GPU "
                            "preset on a CPU)")
    bench.add_argument("--json", default=None, help="also write the figures to this file")
    bench.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `--resume` may come after some settings, which argparse then hands back as leftovers
    stray = [item for item in extra if "=" not in item or item.startswith("-")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    command = args.command or "train"
    if args.command is None:  # `minigpt` alone runs the default job
        args = parser.parse_args(["train"])
    args.settings = [*getattr(args, "settings", []), *extra]
    from minigpt.train import TrainingInterrupted

    try:
        return COMMANDS[command](args)
    except TrainingInterrupted as exc:
        print(f"minigpt {command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, the last checkpoint stays
        print(f"minigpt {command}: stopped at once; the last checkpoint written is kept",
              file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, ImportError, ConnectionError, OSError) as exc:
        print(f"minigpt {command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # CheckpointError, TrainingDiverged, DownloadError, RunLocked
        print(f"minigpt {command}: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, with the way to see where it came from
        if os.environ.get("MINIGPT_DEBUG"):
            raise
        print(f"minigpt {command}: unexpected {type(exc).__name__}: {_one_line(exc)} (a bug in "
              "minigpt: run again with MINIGPT_DEBUG=1 for the traceback, and report it)",
              file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    """An error as one line: messages that span lines (a list of known corpora) are joined."""
    text = str(exc).strip() or type(exc).__name__
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


def cmd_train(args) -> int:
    from minigpt import distributed
    from minigpt.train import TrainConfig, Trainer

    config = configs.build(TrainConfig, args.config, args.settings)
    trainer = Trainer(config, resume=args.resume)
    try:
        if trainer.dist.is_main:
            _announce(trainer)
        last = trainer.fit(on_log=_EtaLine(trainer) if trainer.dist.is_main else None)
        if trainer.dist.is_main and trainer.step >= config.max_iters:
            _report(trainer, last)
    finally:
        trainer.close()
        distributed.teardown()
    if trainer.interrupted_by:
        return 128 + trainer.interrupted_by
    return 0


def _announce(trainer) -> None:
    """What is about to happen, in two lines, before the first step."""
    c, model = trainer.config, trainer.model
    tokens = trainer.grad_accum_steps * c.batch_size * min(c.block_size, model.config.block_size)
    start = (f"resuming from step {trainer.resumed_from} of {c.max_iters}"
             if trainer.resumed_from is not None else f"{c.max_iters} steps")
    print(f"training {_count(model.num_params())} parameters on {c.dataset}: {start}, "
          f"{tokens:,} tokens per step, {trainer.device.type} {str(trainer.dtype)[6:]}")
    data_dir = getattr(trainer, "data_dir", None)
    if data_dir is not None:
        print(f"token files: {data_dir}")
    print(f"run folder: {trainer.out_dir} (checkpoint, metrics.jsonl, loss.png, tokenizer)")


class _EtaLine:
    """Prints, once, how long the run will take: the pace of the first logged steps plus, for
    each evaluation still to come, the time the step-0 evaluation took."""

    def __init__(self, trainer):
        self.trainer, self.mark = trainer, time.perf_counter()
        self.eval_seconds, self.done = 0.0, False

    def __call__(self, record: dict) -> None:
        now = time.perf_counter()
        if record["step"] == 0:  # a new run starts with an evaluation: time it
            self.eval_seconds, self.mark = now - self.mark, now
            return
        if self.done:
            return
        self.done = True
        t, c = self.trainer, self.trainer.config
        per_step = (now - self.mark) / max(1, t.step - (t.resumed_from or 0))
        left = c.max_iters - t.step
        seconds = left * per_step + (left // c.eval_interval + 1) * self.eval_seconds
        from tqdm import tqdm

        tqdm.write(f"about {_duration(seconds)} to go on this machine "
                   f"({1 / per_step:.1f} steps/s, evaluations included)")


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _report(trainer, last: dict) -> None:
    val = last.get("val_loss")
    summary = f"step {trainer.step}: val loss {val:.4f}" if val is not None else ""
    if val is not None:
        summary += f" (perplexity {math.exp(val):.2f})"
    print(f"\n{summary}\ncheckpoint: {trainer.checkpoint_path}")
    if trainer.tokenizer is not None and trainer.config.sample_tokens:
        print("sample:\n" + "-" * 60)
        print(trainer.sample())
        print("-" * 60)
        n = _count(trainer.model.num_params())
        print(f"(a {n}-parameter model after {trainer.step} steps writes text with the "
              "flavour of its corpus, not sense; more steps, a larger model (n_layer, n_embd) and "
              "more data improve it: see the presets in `minigpt train --help`)")


def cmd_prepare(args) -> int:
    from minigpt.train import TrainConfig, Trainer

    config = configs.build(TrainConfig, args.config, args.settings)
    data_dir, _ = Trainer.prepare_data(config)
    print("token files ready in:")
    print(data_dir)  # alone on the last line, for scripts: DIR=$(minigpt prepare | tail -1)
    return 0


def cmd_sample(args) -> int:
    from minigpt import platform
    from minigpt.generate import generate_text
    from minigpt.runs import load_run

    config = configs.build(SampleConfig, None, args.settings)
    device = platform.resolve_device(config.device)
    model, tokenizer = load_run(config.out_dir, device)
    for i in range(config.num_samples):
        if config.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        text = generate_text(model, tokenizer, config.prompt, config.max_new_tokens,
                             seed=config.seed + i, temperature=config.temperature,
                             top_k=config.top_k, top_p=config.top_p,
                             stop_at_eot=config.stop_at_eot)
        print(text)
    return 0


def cmd_eval(args) -> int:
    from minigpt.runs import evaluate_run

    config = configs.build(EvalConfig, None, args.settings)
    if args.task == "hellaswag":
        result = _eval_hellaswag(config)
        print(f"hellaswag acc {result['acc']:.4f}  acc_norm {result['acc_norm']:.4f}  "
              f"over {result['n']} examples")
    else:
        result = evaluate_run(config.out_dir, config.split, config.max_batches,
                              config.batch_size, config.device, dataset=config.dataset or None)
        for note in result.get("notes", []):
            print(f"note: {note}", file=sys.stderr)
        print(f"{config.split} loss {result['loss']:.4f}  perplexity "
              f"{result['perplexity']:.2f}  over {result['tokens']} "
              f"{result.get('unit', 'tokens')}")
        print(result["about"])
    if args.json:
        from pathlib import Path

        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _eval_hellaswag(config: EvalConfig) -> dict:
    from minigpt import hellaswag, platform
    from minigpt.runs import load_run

    device = platform.resolve_device(config.device)
    model, tokenizer = load_run(config.out_dir, device)
    examples = hellaswag.load_examples(config.data or None, limit=config.limit or None)
    dtype = platform.resolve_dtype("auto", device)
    with platform.autocast(device, dtype):
        return hellaswag.evaluate(model, tokenizer, examples, batch_size=config.batch_size,
                                  device=device)


def cmd_finetune(args) -> int:
    from minigpt.finetune import FinetuneConfig, finetune

    method = [f"method={args.method}"] if args.method else []
    config = configs.build(FinetuneConfig, args.config, [*args.settings, *method])
    scores = finetune(config, resume=args.resume)  # an interruption raises: see main()
    shown = "  ".join(f"{k} {v:.4f}" for k, v in scores.items()
                      if isinstance(v, float) and k != "share")
    print(f"\n{shown}\nmodel, tokenizer and scores: {config.out_dir}")
    return 0


def cmd_bench(args) -> int:
    import tempfile
    from pathlib import Path

    from minigpt import benchmark
    from minigpt.train import TrainConfig

    with tempfile.TemporaryDirectory(prefix="minigpt_bench_") as scratch:  # nothing to keep
        config = configs.build(TrainConfig, args.config,
                               [f"out_dir={scratch}", "progress=False", *args.settings])
        config, steps, warmup = _fit_to_this_machine(config, args)
        result = benchmark.measure_training(config, steps=steps, warmup=warmup)
    print(benchmark.format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


# A GPU preset timed on a CPU as written would run for hours (GPT-2 small: 16 micro-batches of
# 32 x 1024 tokens per step). Where the machine has no GPU, these settings replace the preset's,
# unless typed on the command line; tokens/s does not depend on accumulation.
CPU_BENCH = {"dtype": "float32", "compile": False, "batch_size": 1, "total_batch_tokens": 0,
             "grad_accum_steps": 1}


def _fit_to_this_machine(config, args):
    from minigpt import platform

    given = lambda value, default: default if value is None else value  # noqa: E731
    steps, warmup = given(args.steps, 20), given(args.warmup, 3)
    device = platform.resolve_device(config.device)
    wants_gpu = config.compile or config.dtype in ("bfloat16", "float16") or (
        config.total_batch_tokens > 0)
    if device.type != "cpu" or not wants_gpu:
        return config, steps, warmup
    typed = {pair.split("=", 1)[0].strip().replace("-", "_") for pair in args.settings}
    changes = {k: v for k, v in CPU_BENCH.items() if k not in typed}
    steps, warmup = given(args.steps, 3), given(args.warmup, 1)
    print(f"{args.config} is a GPU preset and this machine has no GPU: timing it on the CPU with "
          + ", ".join(f"{k}={v}" for k, v in changes.items())
          + f", {steps} steps after {warmup} warm-up (set any of them to override)",
          file=sys.stderr, flush=True)
    return dataclasses.replace(config, **changes), steps, warmup


COMMANDS = {"train": cmd_train, "prepare": cmd_prepare, "sample": cmd_sample, "eval": cmd_eval,
            "finetune": cmd_finetune, "bench": cmd_bench}

if __name__ == "__main__":
    sys.exit(main())
