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
import math
import sys
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


@dataclass
class EvalConfig:
    """Settings of `minigpt eval`."""

    out_dir: str = "runs/tiny"
    split: str = "val"
    max_batches: int = 200  # windows are read in order; the evaluation stops after this many
    batch_size: int = 16
    device: str = "auto"


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

    evaluate = sub.add_parser("eval", help="loss and perplexity of a trained model",
                              epilog=_settings_help(EvalConfig), formatter_class=raw)
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
    bench.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    bench.add_argument("--warmup", type=int, default=3,
                       help="untimed steps first, compilation included (default 3)")
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
    try:
        return COMMANDS[command](args)
    except (ValueError, FileNotFoundError, ImportError, ConnectionError, OSError) as exc:
        print(f"minigpt {command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # CheckpointError, TrainingDiverged, DownloadError
        print(f"minigpt {command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def cmd_train(args) -> int:
    from minigpt import distributed
    from minigpt.train import TrainConfig, Trainer

    config = configs.build(TrainConfig, args.config, args.settings)
    trainer = Trainer(config, resume=args.resume)
    try:
        last = trainer.fit()
        if trainer.dist.is_main and trainer.step >= config.max_iters:
            _report(trainer, last)
    finally:
        distributed.teardown()
    return 0


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


def cmd_prepare(args) -> int:
    from minigpt.train import TrainConfig, Trainer

    config = configs.build(TrainConfig, args.config, args.settings)
    data_dir, _ = Trainer.prepare_data(config)
    print(f"token files ready in {data_dir}")
    return 0


def cmd_sample(args) -> int:
    from minigpt import platform
    from minigpt.generate import generate_text
    from minigpt.train import load_run

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
    from minigpt.train import evaluate_run

    config = configs.build(EvalConfig, None, args.settings)
    result = evaluate_run(config.out_dir, config.split, config.max_batches, config.batch_size,
                          config.device)
    print(f"{config.split} loss {result['loss']:.4f}  perplexity {result['perplexity']:.2f}  "
          f"over {result['tokens']} tokens")
    return 0


def cmd_finetune(args) -> int:
    from minigpt.finetune import FinetuneConfig, finetune

    method = [f"method={args.method}"] if args.method else []
    config = configs.build(FinetuneConfig, args.config, [*args.settings, *method])
    scores = finetune(config, resume=args.resume)
    shown = "  ".join(f"{k} {v:.4f}" for k, v in scores.items()
                      if isinstance(v, float) and k != "share")
    print(f"\n{shown}\nmodel, tokenizer and scores: {config.out_dir}")
    return 0


def cmd_bench(args) -> int:
    import json
    import tempfile
    from pathlib import Path

    from minigpt import benchmark
    from minigpt.train import TrainConfig

    with tempfile.TemporaryDirectory(prefix="minigpt_bench_") as scratch:  # nothing to keep
        config = configs.build(TrainConfig, args.config,
                               [f"out_dir={scratch}", "progress=False", *args.settings])
        result = benchmark.measure_training(config, steps=args.steps, warmup=args.warmup)
    print(benchmark.format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


COMMANDS = {"train": cmd_train, "prepare": cmd_prepare, "sample": cmd_sample, "eval": cmd_eval,
            "finetune": cmd_finetune, "bench": cmd_bench}

if __name__ == "__main__":
    sys.exit(main())
