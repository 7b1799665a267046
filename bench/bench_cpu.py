"""CPU benchmark: minigpt against Hugging Face GPT-2 at the same size, measured in the same run.

    python bench/bench_cpu.py [--quick] [--json out.json] [--threads N] [--sizes a,b]
                              [--clock wall|cpu]

For each size the same random weights are loaded into `minigpt.GPT` and, through
`minigpt.hf.to_hf`, into `transformers.GPT2LMHeadModel` (float32, built from a config; nothing
is downloaded). Before timing, the script checks that the comparison is fair: both models give
the same training loss and gradients on the same batch, and greedy decoding gives the same
tokens. It then measures, alternating the two models repeat by repeat:

* training: one step of forward + backward (no optimizer: AdamW would add the same time to
  both), tokens/s = batch · sequence length / step time. Hugging Face is called with
  `labels=` (it shifts them itself) and `use_cache=False`, minigpt with the shifted targets;
  both average the loss over the same batch · (T - 1) positions.
* generation: greedy decoding with the KV cache, minigpt's `generate(temperature=0)` against
  Hugging Face's `generate(do_sample=False, use_cache=True)`, from the same prompt; tokens/s =
  batch · new tokens / time of the whole call (prompt prefill included).

Each figure is the median of several repeats; the ratio column is the median of the per-repeat
ratios (each repeat times both models back to back, so a slow moment of the machine hits both).
Both models run in one process with the same `torch.set_num_threads`, dtype and attention
kernel: Hugging Face's default attention implementation on CPU is SDPA, the same
`F.scaled_dot_product_attention` minigpt calls.

The clock is wall time by default. On a machine shared with other jobs, `--clock cpu` counts the
CPU seconds of this process instead (`time.process_time`), which leaves out the time the process
waited for a core; with `--threads 1` that is the steadiest measure a busy machine allows.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from minigpt.hf import to_hf  # noqa: E402
from minigpt.model import GPT, GPTConfig  # noqa: E402

# Goals: minigpt / Hugging Face tokens/s.
TRAIN_GOAL = 1.2
GENERATE_GOAL = 1.5


@dataclass(frozen=True)
class Size:
    """One model size and the workload run at it."""

    name: str
    n_layer: int
    n_head: int
    n_embd: int
    block_size: int  # the model's context (GPT-2's n_positions)
    vocab_size: int
    train_batch: int
    train_len: int  # tokens per sequence in the training step
    prompt_len: int
    new_tokens: int
    gen_batches: tuple[int, ...] = (1, 4)

    def config(self) -> GPTConfig:
        return GPTConfig(n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
                         block_size=self.block_size, vocab_size=self.vocab_size, dropout=0.0)

    def label(self) -> str:
        return f"{self.n_layer}L {self.n_head}H {self.n_embd}C V={self.vocab_size}"


# The course's CPU sizes: character-level (vocabulary 256 = bytes) and GPT-2 BPE (50257).
SIZES = [
    Size("char-tiny", 4, 4, 128, 128, 256, train_batch=32, train_len=128,
         prompt_len=8, new_tokens=120),
    Size("char-small", 6, 6, 384, 256, 256, train_batch=8, train_len=256,
         prompt_len=16, new_tokens=128),
    Size("bpe-small", 4, 4, 256, 128, 50257, train_batch=16, train_len=128,
         prompt_len=8, new_tokens=120),
    Size("gpt2-124M", 12, 12, 768, 1024, 50257, train_batch=4, train_len=64,
         prompt_len=16, new_tokens=64, gen_batches=(1, 2)),
]
QUICK_SIZES = ("char-tiny", "char-small")


# ------------------------------------------------------------------------ environment

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def environment(threads: int) -> dict:
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "dtype": "float32",
        "load_average_start": load_average(),
    }


# ------------------------------------------------------------------------ timing

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def paired_times(run_a, run_b, repeats: int, clock) -> tuple[list[float], list[float]]:
    """Times of `repeats` calls of each, alternating which goes first (AB, BA, AB, ...)."""
    times_a, times_b = [], []
    for r in range(repeats):
        order = ((run_a, times_a), (run_b, times_b))
        for run, times in order if r % 2 == 0 else order[::-1]:
            gc.collect()
            start = clock()
            run()
            times.append(clock() - start)
    return times_a, times_b


def summarise(work: int, times_mini: list[float], times_hf: list[float]) -> dict:
    ratios = [t_hf / t_mini for t_mini, t_hf in zip(times_mini, times_hf, strict=True)]
    return {
        "minigpt_tok_s": work / statistics.median(times_mini),
        "hf_tok_s": work / statistics.median(times_hf),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "repeats": len(ratios),
    }


# ------------------------------------------------------------------------ models

def build_models(size: Size) -> tuple[GPT, torch.nn.Module]:
    from transformers.utils import logging

    logging.set_verbosity_error()  # GPT2Config's own notices would interleave with the table
    torch.manual_seed(0)
    model = GPT(size.config())
    hf_model = to_hf(model)  # same weights, GPT-2 layout
    hf_model.generation_config.eos_token_id = None  # never stop early: both make every token
    hf_model.generation_config.pad_token_id = 0
    return model, hf_model


def attention_implementation(hf_model) -> str:
    return str(getattr(hf_model.config, "_attn_implementation", "unknown"))


# ------------------------------------------------------------------------ training

def bench_training(size: Size, model, hf_model, repeats: int, clock) -> dict:
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, size.vocab_size, (size.train_batch, size.train_len), generator=gen)
    targets = torch.cat((idx[:, 1:], torch.full_like(idx[:, :1], -100)), dim=1)  # next token
    model.train()
    hf_model.train()

    def step_minigpt():
        model.zero_grad(set_to_none=True)
        _, loss = model(idx, targets)
        loss.backward()
        return loss

    def step_hf():
        hf_model.zero_grad(set_to_none=True)
        loss = hf_model(input_ids=idx, labels=idx, use_cache=False).loss
        loss.backward()
        return loss

    # Warm-up step of each, which is also the fairness check: same loss, same gradients.
    loss_mini, loss_hf = step_minigpt().item(), step_hf().item()
    grad_mini = model.token_emb.weight.grad
    grad_hf = hf_model.transformer.wte.weight.grad
    grad_diff = ((grad_mini - grad_hf).abs().max() / grad_hf.abs().max()).item()
    times_mini, times_hf = paired_times(step_minigpt, step_hf, repeats, clock)
    model.zero_grad(set_to_none=True)
    hf_model.zero_grad(set_to_none=True)
    row = summarise(size.train_batch * size.train_len, times_mini, times_hf)
    row.update(
        task="train", batch=size.train_batch, seq_len=size.train_len,
        loss_minigpt=loss_mini, loss_hf=loss_hf,
        same_loss=abs(loss_mini - loss_hf) <= 1e-5 * max(1.0, abs(loss_hf)),
        grad_rel_diff=grad_diff, same_grad=grad_diff <= 1e-4,
    )
    return row


# ------------------------------------------------------------------------ generation

def bench_generation(size: Size, model, hf_model, batch: int, repeats: int,
                     clock) -> dict:
    gen = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, size.vocab_size, (batch, size.prompt_len), generator=gen)
    mask = torch.ones_like(prompt)
    model.eval()
    hf_model.eval()
    new = size.new_tokens

    def generate_minigpt():
        return model.generate(prompt, new, temperature=0.0)

    def generate_hf():
        return hf_model.generate(
            prompt, attention_mask=mask, max_new_tokens=new, do_sample=False, use_cache=True
        )

    # Warm-up call of each, which is also the fairness check: identical greedy tokens.
    out_mini, out_hf = generate_minigpt(), generate_hf()
    same = out_mini.shape == out_hf.shape and torch.equal(out_mini, out_hf)
    agree = _agreeing_prefix(out_mini, out_hf) - size.prompt_len
    times_mini, times_hf = paired_times(generate_minigpt, generate_hf, repeats, clock)
    row = summarise(batch * new, times_mini, times_hf)
    row.update(task="generate", batch=batch, prompt_len=size.prompt_len, new_tokens=new,
               same_tokens=same, agreeing_new_tokens=agree)
    return row


def _agreeing_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    """Length of the longest prefix on which every row of a and b agrees."""
    n = min(a.size(1), b.size(1))
    differs = (a[:, :n] != b[:, :n]).any(dim=0).nonzero()
    return int(differs[0]) if len(differs) else n


# ------------------------------------------------------------------------ diagnosis

def gemv_layout_probe(n_embd: int, n_layer: int, batch: int, repeats: int, clock) -> dict:
    """Time one decoding step's four matrix products (qkv, out, fc, proj) over `n_layer`
    layers, with the weights stored as minigpt stores them (nn.Linear: (out, in), product
    x Wᵀ) and as GPT-2's Conv1D stores them ((in, out), product x W). Same numbers, same
    shapes; only the memory layout, and with it the BLAS code path, differs."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(3 * n_embd, n_embd), (n_embd, n_embd), (4 * n_embd, n_embd), (n_embd, 4 * n_embd)]
    weights = [torch.randn(shape, generator=gen) * 0.02 for _ in range(n_layer)
               for shape in shapes]  # (out, in), like nn.Linear
    conv_weights = [w.t().contiguous() for w in weights]  # (in, out), like Conv1D
    biases = [torch.zeros(w.size(0)) for w in weights]
    x = {n: torch.randn(batch, n, generator=gen) for n in (n_embd, 4 * n_embd)}

    def linear_layout():
        for w, b in zip(weights, biases, strict=True):
            torch.nn.functional.linear(x[w.size(1)], w, b)

    def conv1d_layout():
        for w, b in zip(conv_weights, biases, strict=True):
            torch.addmm(b, x[w.size(0)], w)

    linear_layout(), conv1d_layout()  # warm-up
    times_linear, times_conv = paired_times(linear_layout, conv1d_layout, repeats, clock)
    return {
        "n_embd": n_embd, "n_layer": n_layer, "batch": batch,
        "weights_mb": sum(w.numel() for w in weights) * 4 / 1e6,
        "linear_ms": statistics.median(times_linear) * 1e3,
        "conv1d_ms": statistics.median(times_conv) * 1e3,
    }


# ------------------------------------------------------------------------ report

def fmt_row(size: Size, row: dict) -> str:
    if row["task"] == "train":
        work = f"train B={row['batch']} T={row['seq_len']}"
        check = "same loss+grad" if row["same_loss"] and row["same_grad"] else "MISMATCH"
        goal = TRAIN_GOAL
    else:
        work = f"generate B={row['batch']} +{row['new_tokens']}"
        check = "same tokens" if row["same_tokens"] else (
            f"DIFFER after {row['agreeing_new_tokens']}")
        goal = GENERATE_GOAL
    met = "yes" if row["ratio"] >= goal else "no"
    spread = f"{row['ratio_min']:.2f}-{row['ratio_max']:.2f}"
    return (f"| {size.name} | {work} | {row['minigpt_tok_s']:,.0f} | {row['hf_tok_s']:,.0f} "
            f"| {row['ratio']:.2f}x | {spread} | {goal}x: {met} | {check} |")


TABLE_HEADER = (
    "| size | workload | minigpt tok/s | HF tok/s | minigpt/HF | range | goal met | check |\n"
    "|---|---|---:|---:|---:|---:|---|---|"
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"only {', '.join(QUICK_SIZES)}, fewer repeats (under a minute)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch.set_num_threads for both models (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per measurement (default 5, --quick 3)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time (default) or this process's CPU time (busy machines)")
    parser.add_argument("--sizes", default=None,
                        help="comma-separated subset of: " + ", ".join(s.name for s in SIZES))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    names = args.sizes.split(",") if args.sizes else [s.name for s in SIZES]
    if args.quick and not args.sizes:
        names = list(QUICK_SIZES)
    unknown = sorted(set(names) - {s.name for s in SIZES})
    if unknown:
        parser.error(f"unknown size(s) {unknown}; choose from {[s.name for s in SIZES]}")
    sizes = [s for s in SIZES if s.name in names]

    env = environment(args.threads)
    env["clock"] = args.clock
    clock = CLOCKS[args.clock]
    began = time.perf_counter()
    print("minigpt vs transformers.GPT2LMHeadModel on CPU, same weights, same process")
    print(f"torch {env['torch']}, transformers {env['transformers']}, Python {env['python']}")
    print(f"CPU: {env['cpu']} ({env['logical_cpus']} logical CPUs), "
          f"torch threads: {args.threads}, float32, repeats: {repeats}, clock: {args.clock}")
    print(f"load average at start: {env['load_average_start']}")
    busy = env["load_average_start"] or 0.0
    if busy > (env["logical_cpus"] or 1) - args.threads + 0.5:
        if args.threads > 1:
            advice = ("With several threads every parallel region waits for\nwhichever thread was "
                      "descheduled, and the figures can be off by a large factor; on a shared\n"
                      "machine prefer --threads 1 --clock cpu.")
        elif args.clock == "wall":
            advice = "Wall-clock figures will be noisy;\n--clock cpu is steadier."
        else:
            advice = ("The CPU clock leaves out waiting for a core,\nnot the caches and memory "
                      "bandwidth the other processes share.")
        print(f"warning: other processes are using the CPUs. {advice}")

    results = []
    for size in sizes:
        model, hf_model = build_models(size)
        env.setdefault("hf_attention", attention_implementation(hf_model))
        params = model.num_params()
        print(f"\n{size.name}: {size.label()}, block_size {size.block_size}, "
              f"{params / 1e6:.1f}M parameters", flush=True)
        rows = [bench_training(size, model, hf_model, repeats, clock)]
        print(fmt_row(size, rows[-1]), flush=True)
        gen_repeats = max(3, repeats - 2) if size.n_embd >= 768 else repeats
        for batch in size.gen_batches:
            rows.append(bench_generation(size, model, hf_model, batch, gen_repeats, clock))
            print(fmt_row(size, rows[-1]), flush=True)
        for row in rows:
            results.append({"size": size.name, **asdict(size), "params": params, **row})
        del model, hf_model

    probes = []
    if not args.quick:
        print("\nMatrix-vector products of one decoding step, weights in each library's layout:")
        for n_embd, n_layer in ((384, 6), (768, 12)):
            for batch in (1, 4):
                probe = gemv_layout_probe(n_embd, n_layer, batch, 2 * repeats + 1, clock)
                probes.append(probe)
                print(f"  {n_layer} layers x width {n_embd} ({probe['weights_mb']:.0f} MB), "
                      f"batch {batch}: (out, in) nn.Linear {probe['linear_ms']:.2f} ms, "
                      f"(in, out) Conv1D {probe['conv1d_ms']:.2f} ms", flush=True)

    env["load_average_end"] = load_average()
    env["seconds"] = round(time.perf_counter() - began, 1)
    print(f"\nHugging Face attention implementation: {env.get('hf_attention')}")
    print(f"load average at end: {env['load_average_end']}; took {env['seconds']} s\n")
    print(TABLE_HEADER)
    for row in results:
        size = next(s for s in sizes if s.name == row["size"])
        print(fmt_row(size, row))
    failed = [f"{r['size']} {r['task']} B={r['batch']}" for r in results
              if not (r.get("same_tokens", True) and r.get("same_loss", True)
                      and r.get("same_grad", True))]
    print("\nfairness checks (same loss and gradients, same greedy tokens): "
          + (f"FAILED for {', '.join(failed)}" if failed else "all passed"))
    if (env["load_average_end"] or 0) > args.threads:
        print(f"\nnote: other processes kept the machine busy (load average "
              f"{env['load_average_end']} on {env['logical_cpus']} CPUs); the ratios, measured "
              "back to back, are steadier than the absolute tokens/s")
    if args.json:
        args.json.write_text(json.dumps(
            {"environment": env, "results": results, "gemv_layout_probe": probes}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
