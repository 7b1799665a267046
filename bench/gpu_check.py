"""GPU check: precision agreement, torch.compile on/off, MFU of GPT-2 small, generation speed.

    python bench/gpu_check.py [--json gpu_check.json] [--budget 420] [--tiny]

Phases, each timed and written to the JSON as soon as it finishes (so a run cut short still
reports what it measured):

1. matmul   - bf16 matrix-multiply FLOP/s on random data: the ceiling this card reaches in practice,
              measured in the same run as everything else.
2. precision - the gpt2-124m model trained for a few steps on a learnable synthetic sequence in
              float32 (TF32 matmuls) and in bf16 autocast, from the same weights and batches:
              the two loss curves must agree.
3. training - tokens/s and MFU of the real training step (`Trainer.train_step`: bf16 autocast,
              fused AdamW, clipping, gradient accumulation) on synthetic tokens, eager and
              compiled. MFU uses the datasheet peak (minigpt.platform.PEAK_FLOPS) and FLOPs per
              token from `GPT.flops_per_token` at the real sequence length.
4. generation - tokens/s of greedy decoding with and without the KV cache, and of Hugging Face's
              `generate` on the same weights as an anchor, with a check that the tokens agree.

On a machine without CUDA it says so and exits cleanly (status 0). `--tiny` shrinks every size
so the script itself can be tested on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from minigpt import benchmark, platform
from minigpt.model import GPT, GPTConfig
from minigpt.train import TrainConfig

GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304)
TINY = dict(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=512)


def make_trainer(sizes, device, dtype, compile_, batch, accum, out_dir, pattern=False):
    config = train_config(sizes, device, dtype, compile_, batch, accum, out_dir)
    return benchmark.make_trainer(config, vocab_size=sizes["vocab_size"], pattern=pattern)


def train_config(sizes, device, dtype, compile_, batch, accum, out_dir) -> TrainConfig:
    return TrainConfig(
        out_dir=out_dir, n_layer=sizes["n_layer"], n_head=sizes["n_head"],
        n_embd=sizes["n_embd"], block_size=sizes["block_size"], batch_size=batch,
        grad_accum_steps=accum, device=str(device), dtype=dtype, compile=compile_,
        learning_rate=6e-4, min_lr=6e-5, warmup_iters=5, max_iters=10_000, progress=False,
    )


def phase_matmul(device, tiny):
    n = 512 if tiny else 8192
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    platform.synchronize(device)
    start, reps = time.perf_counter(), 10
    for _ in range(reps):
        a @ b
    platform.synchronize(device)
    seconds = (time.perf_counter() - start) / reps
    return {"n": n, "dtype": str(dtype), "tflops": 2 * n**3 / seconds / 1e12}


def phase_precision(device, sizes, tiny, out_dir):
    steps, batch = (6, 2) if tiny else (30, 8)
    curves = {}
    for dtype in ("float32", "bfloat16"):
        trainer = make_trainer(sizes, device, dtype, False, batch, 1, out_dir, pattern=True)
        curves[dtype] = [trainer.train_step().item() for _ in range(steps)]
        del trainer
        _free(device)
    first_gap = abs(curves["float32"][0] - curves["bfloat16"][0]) / curves["float32"][0]
    last_gap = abs(curves["float32"][-1] - curves["bfloat16"][-1]) / curves["float32"][-1]
    return {"steps": steps, "loss_fp32": curves["float32"], "loss_bf16": curves["bfloat16"],
            "relative_gap_first": first_gap, "relative_gap_last": last_gap,
            "agree": first_gap < 0.01 and last_gap < 0.05,
            "loss_fell": curves["bfloat16"][-1] < curves["bfloat16"][0] - 0.5}


def phase_training(device, sizes, compile_, tiny, out_dir, batch, accum):
    warmup, steps = (2, 3) if tiny else (8, 30)
    dtype = "float32" if device.type == "cpu" else "bfloat16"
    config = train_config(sizes, device, dtype, compile_, batch, accum, out_dir)
    result = benchmark.measure_training(config, steps, warmup, vocab_size=sizes["vocab_size"])
    _free(device)
    return result


def phase_generation(device, sizes, tiny):
    from minigpt.generate import generate

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = GPT(GPTConfig(**{**sizes, "vocab_size": 50257 if not tiny else sizes["vocab_size"]}))
    model = model.to(device=device, dtype=dtype).eval()
    prompt = torch.randint(0, model.config.vocab_size, (1, 16), device=device)
    new_cached, new_plain = (32, 16) if tiny else (512, 128)
    results = {"dtype": str(dtype), "batch_size": 1, "prompt_tokens": 16}
    for name, cache, n in (("cache", True, new_cached), ("no_cache", False, new_plain)):
        generate(model, prompt, 8, temperature=0, use_cache=cache)  # warm-up
        platform.synchronize(device)
        start = time.perf_counter()
        out = generate(model, prompt, n, temperature=0, use_cache=cache)
        platform.synchronize(device)
        results[f"tokens_per_s_{name}"] = n / (time.perf_counter() - start)
        results[f"tokens_{name}"] = out[0, 16:].tolist()
    results["cache_speedup"] = results["tokens_per_s_cache"] / results["tokens_per_s_no_cache"]
    results["cache_matches_no_cache"] = (
        results["tokens_cache"][:new_plain] == results["tokens_no_cache"]
    )
    results.update(_hf_generation(model, prompt, new_cached, results["tokens_cache"], device))
    for key in ("tokens_cache", "tokens_no_cache"):
        del results[key]
    return results


def _hf_generation(model, prompt, n, ours, device):
    try:
        from minigpt.hf import to_hf

        hf = to_hf(model.float().cpu()).to(device=device, dtype=model.token_emb.weight.dtype)
    except Exception as exc:  # transformers missing or too old: the anchor is optional
        return {"hf_error": f"{type(exc).__name__}: {exc}"}
    model.to(device)
    kwargs = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True,
                  pad_token_id=0, attention_mask=torch.ones_like(prompt))
    with torch.no_grad():
        hf.generate(prompt, **{**kwargs, "max_new_tokens": 8, "min_new_tokens": 8})
        platform.synchronize(device)
        start = time.perf_counter()
        out = hf.generate(prompt, **kwargs)
        platform.synchronize(device)
    seconds = time.perf_counter() - start
    theirs = out[0, prompt.size(1):].tolist()
    agree = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), n)
    return {"hf_tokens_per_s_cache": n / seconds, "hf_matching_prefix_tokens": agree}


def _free(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default="gpu_check.json", help="where to write the results")
    parser.add_argument("--budget", type=float, default=330.0,
                        help="seconds; phases that would start after this are skipped")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (tests the script on CPU)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--grad-accum", type=int, default=2)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.tiny:
        print("gpu_check: no CUDA device on this machine; nothing to measure.")
        return 0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = TINY if args.tiny else GPT2_124M
    batch, accum = (2, 1) if args.tiny else (args.batch_size, args.grad_accum)
    report = {"environment": _environment(device), "phases": {}}
    started = time.perf_counter()
    out_dir = tempfile.mkdtemp(prefix="gpu_check_")
    phases = [
        ("matmul", lambda: phase_matmul(device, args.tiny)),
        ("train_eager", lambda: phase_training(device, sizes, False, args.tiny, out_dir + "/e",
                                               batch, accum)),
        ("train_compiled", lambda: phase_training(device, sizes, True, args.tiny,
                                                  out_dir + "/c", batch, accum)),
        ("precision", lambda: phase_precision(device, sizes, args.tiny, out_dir + "/p")),
        ("generation", lambda: phase_generation(device, sizes, args.tiny)),
    ]
    for name, run in phases:
        if time.perf_counter() - started > args.budget:
            report["phases"][name] = {"skipped": "over the time budget"}
            continue
        phase_start = time.perf_counter()
        try:
            report["phases"][name] = run()
        except Exception as exc:  # report the failure and go on with the other phases
            report["phases"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        report["phases"][name]["phase_seconds"] = time.perf_counter() - phase_start
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"[{time.perf_counter() - started:6.1f}s] {name}: {_summary(report['phases'][name])}",
              flush=True)
    report["total_seconds"] = time.perf_counter() - started
    Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def _summary(result: dict) -> str:
    keys = ("error", "skipped", "tflops", "agree", "relative_gap_last", "tokens_per_s", "mfu",
            "warmup_seconds", "tokens_per_s_cache", "tokens_per_s_no_cache",
            "hf_tokens_per_s_cache", "cache_matches_no_cache", "hf_matching_prefix_tokens")
    parts = []
    for key in keys:
        if key in result and result[key] is not None:
            value = result[key]
            parts.append(f"{key}={value:.4g}" if isinstance(value, float) and
                         math.isfinite(value) else f"{key}={value}")
    return ", ".join(parts)


def _environment(device) -> dict:
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["bf16"] = torch.cuda.is_bf16_supported()
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        env["transformers"] = None
    return env


if __name__ == "__main__":
    sys.exit(main())
