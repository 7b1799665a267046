"""Checks for exercises/13_scaling_up.ipynb (the course notebook: notebooks/13_scaling_up.ipynb).

Float formats from their bits (eq. 13.2, against `torch.finfo`), the longest context explicit
attention can afford (eq. 13.4), gradient-accumulation steps for R GPUs (eq. 13.6, against
`minigpt.train.Trainer`), MFU from tokens per second (eq. 8.5, against `minigpt.metrics.mfu` and
`GPT.flops_per_token`), training time from C ≈ 6ND (eqs. 13.9-13.10), and flash attention's
online softmax (eq. 13.5, against `F.scaled_dot_product_attention`). A wrong answer is matched
against the usual mistakes — 2N instead of 6N, a forgotten world size, TFLOP/s taken for FLOP/s,
old sums not rescaled — and the message names the one it looks like.
"""

from __future__ import annotations

import math
import numbers
import types

import torch
import torch.nn.functional as F

from checks.core import (
    CheckFailed,
    answered,
    as_number,
    as_tensor,
    call,
    close,
    combine_mistakes,
    find_mistake,
    fresh_case,
    fresh_seed,
    matches,
    passed,
    require,
    same_shape,
    show,
)
from minigpt.attention import scaled_dot_product_attention
from minigpt.distributed import DistInfo
from minigpt.metrics import mfu
from minigpt.model import GPT, GPT2_SIZES, GPTConfig
from minigpt.platform import PEAK_FLOPS
from minigpt.train import TrainConfig, Trainer


def _fresh_int(generator, low: int, high: int) -> int:
    """An integer in [low, high), drawn with `generator`."""
    return int(torch.randint(low, high, (), generator=generator))


# ------------------------------------------------------------------ eq. (13.2): float formats

FORMATS = {"float32": (torch.float32, 8, 23), "bfloat16": (torch.bfloat16, 8, 7),
           "float16": (torch.float16, 5, 10), "float8_e5m2": (torch.float8_e5m2, 5, 2)}


def _largest_variants(E, p):
    return {
        "forgot the mantissa factor (2 − 2^−p): the largest number has every mantissa bit set, "
        "1.11…1₂ = 2 − 2^−p": 2.0 ** (2 ** (E - 1) - 1),
        "took 2^(E−1) as the largest exponent: the all-ones exponent field is kept for inf and "
        "NaN, so e_max = 2^(E−1) − 1": (2 - 2.0**-p) * 2.0 ** (2 ** (E - 1)),
        "took 2^(E−1) − 2 as the largest exponent; e_max = 2^(E−1) − 1":
            (2 - 2.0**-p) * 2.0 ** (2 ** (E - 1) - 2),
    }


def _smallest_variants(E, p):
    return {
        "took 1 − 2^(E−1) (minus the bias) as the smallest exponent: the all-zeros exponent "
        "field is kept for zero and subnormals, so e_min = 2 − 2^(E−1)": 2.0 ** (1 - 2 ** (E - 1)),
        "gave the smallest *subnormal* number, 2^(e_min − p); the smallest normal number has "
        "mantissa 1.0, so it is 2^e_min = 2^(2 − 2^(E−1))": 2.0 ** (2 - 2 ** (E - 1) - p),
    }


def _eps_variants(E, p):
    return {
        "gave the unit roundoff 2^−(p+1), half the gap; eps is the gap between 1 and the next "
        "number, 2^−p": 2.0 ** -(p + 1),
        "gave 2^(1−p); the gap after 1 is one unit in the last of the p mantissa bits, 2^−p":
            2.0 ** (1 - p),
    }


def check_float_format(float_format) -> None:
    """float_format(E, p) -> (largest, smallest_normal, eps) of a binary float format."""
    for name, (dtype, E, p) in FORMATS.items():
        try:
            result = call(float_format, E, p)
        except OverflowError:
            raise CheckFailed(
                f"float_format(E={E}, p={p}) overflowed a Python float; with E = {E} exponent "
                f"bits the largest exponent is 2^(E−1) − 1 = {2 ** (E - 1) - 1} — did you swap "
                "E (exponent bits) and p (mantissa bits)?") from None
        if not (isinstance(result, (tuple, list)) and len(result) == 3):
            raise CheckFailed("float_format should return three numbers: "
                              "(largest, smallest_normal, eps)")
        info = torch.finfo(dtype)  # PyTorch's own description of the format
        what = f"float_format(E={E}, p={p}), the format of {name}"
        got = [as_number(x, f"{part} of {what}") for x, part in
               zip(result, ("the largest value", "the smallest normal value", "eps"),
                   strict=True)]
        if matches(got, [info.eps, info.tiny, info.max], rtol=1e-12) and info.eps != info.max:
            raise CheckFailed(f"{what}: you returned the three numbers in the wrong order; "
                              "return (largest, smallest_normal, eps)")
        if E != p and p < 12 and matches(got, _right_format(p, E), rtol=1e-12):
            raise CheckFailed(f"{what}: you swapped E and p — E is the number of exponent "
                              "bits, p the number of mantissa bits")
        for part, value, expected, variants in (
                ("the largest value", got[0], info.max, _largest_variants(E, p)),
                ("the smallest normal value", got[1], info.tiny, _smallest_variants(E, p)),
                ("eps", got[2], info.eps, _eps_variants(E, p))):
            if math.isclose(value, expected, rel_tol=1e-12):
                continue
            message = (f"{part} of {what} is {value:.6g}, but torch.finfo({name}) says "
                       f"{expected:.6g}")
            for why, wrong in variants.items():
                if math.isclose(value, wrong, rel_tol=1e-12):
                    raise CheckFailed(f"{message}: you {why} (eq. 13.2)")
            raise CheckFailed(f"{message} ({value / expected:.4g} times it); build it from "
                              "eq. (13.2)")
    with fresh_case(fresh_seed()) as generator:  # a format no one knew in advance
        fixed = {(E, p) for _, E, p in FORMATS.values()}
        E, p = 8, 23
        while (E, p) in fixed:
            E, p = _fresh_int(generator, 2, 12), _fresh_int(generator, 1, 53)
        what = f"float_format(E={E}, p={p})"
        result = call(float_format, E, p)
        if not (isinstance(result, (tuple, list)) and len(result) == 3):
            raise CheckFailed("float_format should return three numbers: "
                              "(largest, smallest_normal, eps)")
        for part, value, expected in zip(("the largest value", "the smallest normal value",
                                          "eps"), result, _right_format(E, p), strict=True):
            value = as_number(value, f"{part} of {what}")
            require(math.isclose(value, expected, rel_tol=1e-12),
                    f"{part} of {what} is {value:.6g}, expected {expected:.6g} (eq. 13.2)")
    passed("float formats from their bits, eq. (13.2)")


def _right_format(E, p):
    return [(2 - 2.0**-p) * 2.0 ** (2 ** (E - 1) - 1), 2.0 ** (2 - 2 ** (E - 1)), 2.0**-p]


# ------------------------------------------------------------------ eq. (13.4): memory

CONTEXT_CASES = [  # (memory in bytes, B, h, L, bytes per number)
    (80 * 10**9, 32, 12, 12, 2),   # GPT-2 small's micro-batch on an 80 GB GPU, bf16
    (2**30, 1, 4, 1, 4),           # one layer of the notebook's CPU experiment, float32, 1 GiB
    (4_000_000, 1, 1, 1, 2),       # exactly T = 1000 fits
    (24 * 10**9, 8, 16, 24, 2),    # GPT-2 medium's shapes on a 24 GB card
]

CONTEXT_KNOBS = {
    "tensors": {2: None, 1: "counted only the scores S; the weights A = softmax(S) are a second "
                            "T×T tensor per head, kept for the backward pass too"},
    "layers": {"L": None, "1": "left out the layers: every layer keeps its own S and A"},
    "batch": {"B": None, "1": "left out the batch: every sequence has its own T×T matrices"},
    "heads": {"h": None, "1": "left out the heads: every head has its own T×T matrices"},
    "bytes": {"s": None, "1": "counted numbers, not bytes: multiply by bytes_per_number"},
    "rounding": {"floor": None, "round": "rounded T to the nearest integer; the largest T "
                                         "that fits is the square root rounded *down*",
                 "ceil": "rounded T up; the largest T that fits is the square root rounded "
                         "*down*"},
}


def _context_variant(case, tensors, layers, batch, heads, bytes, rounding):
    memory, B, h, L, s = case
    per_t2 = (tensors * (L if layers == "L" else 1) * (B if batch == "B" else 1)
              * (h if heads == "h" else 1) * (s if bytes == "s" else 1))
    if rounding == "floor":
        return math.isqrt(memory // per_t2)  # exact: T² ≤ memory / per_t2
    root = math.sqrt(memory / per_t2)
    return round(root) if rounding == "round" else math.ceil(root)


def _explicit_bytes(T, B, h, L, s):
    return L * 2 * B * h * T * T * s  # S and A in every layer, eq. (13.4)


def check_max_context(max_explicit_context) -> None:
    """max_explicit_context(memory_bytes, B, h, L, bytes_per_number) -> the largest T whose
    explicit attention matrices (eq. 13.4) fit in memory."""
    answers = []
    for memory, B, h, L, s in CONTEXT_CASES:
        what = f"max_explicit_context({show(memory)}, B={B}, h={h}, L={L}, s={s})"
        answer = call(max_explicit_context, memory, B, h, L, s)
        if isinstance(answer, bool) or not isinstance(answer, numbers.Integral):
            number = as_number(answer, what)
            raise CheckFailed(f"{what} is {number!r}, not an int: a context length is a whole "
                              "number of tokens (math.isqrt, or int(...) of the square root)")
        answers.append(int(answer))
    for case, answer in zip(CONTEXT_CASES, answers, strict=True):
        memory, B, h, L, s = case
        expected = _context_variant(case, 2, "L", "B", "h", "s", "floor")
        # the brute-force reference: the largest T that fits, and T + 1 that does not
        if not (_explicit_bytes(expected, B, h, L, s) <= memory
                < _explicit_bytes(expected + 1, B, h, L, s)):
            raise RuntimeError("the reference context length is wrong")
        if answer == expected:
            continue
        what = f"max_explicit_context({show(memory)}, B={B}, h={h}, L={L}, s={s})"
        fits = _explicit_bytes(answer, B, h, L, s) <= memory
        message = (f"{what} = {answer:,}, but T = {expected:,} is the largest that fits: "
                   f"T = {answer:,} needs {show(_explicit_bytes(answer, B, h, L, s))} bytes"
                   + ("" if fits else f", more than the {show(memory)} available"))
        variants = ((why, [_context_variant(c, **choice) for c in CONTEXT_CASES])
                    for why, choice in combine_mistakes(CONTEXT_KNOBS))
        mistake = find_mistake(answers, variants, rtol=0)
        if mistake:
            raise CheckFailed(f"{message}: you {mistake} (eq. 13.4)")
        raise CheckFailed(message + "; solve L·2·B·h·T²·s ≤ memory for T, eq. (13.4)")
    with fresh_case(fresh_seed()) as generator:  # a GPU and a model no one knew in advance
        case = (_fresh_int(generator, 10**6, 10**11), _fresh_int(generator, 1, 65),
                _fresh_int(generator, 1, 33), _fresh_int(generator, 1, 49),
                (1, 2, 4)[_fresh_int(generator, 0, 3)])
        memory, B, h, L, s = case
        what = f"max_explicit_context({show(memory)}, B={B}, h={h}, L={L}, s={s})"
        answer = call(max_explicit_context, *case)
        expected = _context_variant(case, 2, "L", "B", "h", "s", "floor")
        assert _explicit_bytes(expected, *case[1:]) <= memory < _explicit_bytes(expected + 1,
                                                                               *case[1:])
        require(answer == expected, f"{what} = {answer!r}, but T = {expected:,} is the "
                                    "largest that fits (eq. 13.4)")
    passed("longest context for explicit attention, eq. (13.4)")


# ------------------------------------------------------------------ eq. (13.6): accumulation

ACCUM_CASES = [  # (total_batch_tokens, batch_size, block_size, world_size)
    (524_288, 32, 1024, 1),   # the gpt2-124m preset on one GPU
    (524_288, 32, 1024, 8),   # ... and on eight
    (524_288, 16, 1024, 4),
    (65_536, 8, 256, 2),
    (4_096, 4, 64, 16),
]
ACCUM_INVALID = [(524_288, 24, 1024, 1), (524_288, 32, 1024, 32)]

ACCUM_KNOBS = {
    "world": {"divide": None,
              "ignore": "forgot the world size: each of the R ranks adds b·T tokens per "
                        "micro-batch, so k = B_tokens / (R·b·T)",
              "multiply": "multiplied by the world size instead of dividing: more GPUs need "
                          "*fewer* micro-batches each"},
    "tokens": {"T": None, "ignore": "left out block_size: the global batch counts tokens, and "
                                    "each sequence has T of them"},
    "batch": {"b": None, "ignore": "left out batch_size: each micro-batch holds b sequences"},
}


def _accum_variant(case, world, tokens, batch):
    total, b, T, R = case
    per_step = (b if batch == "b" else 1) * (T if tokens == "T" else 1)
    per_step *= {"divide": R, "ignore": 1, "multiply": 1 / R}[world]
    return total / per_step


def _package_accum_steps(total, b, T, R) -> int:
    """What minigpt's Trainer computes for these settings (its method, on a stand-in trainer)."""
    stand_in = types.SimpleNamespace(
        config=TrainConfig(total_batch_tokens=total, batch_size=b, block_size=T),
        dist=DistInfo(world_size=R), _seq_len=lambda: T)
    return Trainer._grad_accum_steps(stand_in)


def check_accum_steps(grad_accum_steps) -> None:
    """grad_accum_steps(total_batch_tokens, batch_size, block_size, world_size) -> k."""
    answers = []
    for case in ACCUM_CASES:
        what = "grad_accum_steps({:,}, b={}, T={}, R={})".format(*case)
        try:
            answer = call(grad_accum_steps, *case)
        except ValueError as error:
            raise CheckFailed(f"{what} raised ValueError ({error}), but {case[0]:,} tokens "
                              "split evenly here") from None
        if isinstance(answer, bool) or not isinstance(answer, numbers.Integral):
            number = as_number(answer, what)
            raise CheckFailed(f"{what} is {number!r}, not an int: k counts micro-batches "
                              "(use // once you know the division is exact)")
        answers.append(int(answer))
    for case, answer in zip(ACCUM_CASES, answers, strict=True):
        expected = _package_accum_steps(*case)
        if answer == expected:
            continue
        total, b, T, R = case
        message = (f"grad_accum_steps({total:,}, b={b}, T={T}, R={R}) = {answer}, expected "
                   f"{expected}: B_tokens = R·k·b·T (eq. 13.6) gives k = {total:,} / "
                   f"({R}·{b}·{T})")
        variants = ((why, [_accum_variant(c, **choice) for c in ACCUM_CASES])
                    for why, choice in combine_mistakes(ACCUM_KNOBS))
        mistake = find_mistake(answers, variants, rtol=1e-12)
        raise CheckFailed(f"{message}; you {mistake}" if mistake else message)
    with fresh_case(fresh_seed()) as generator:  # a run no one knew in advance
        R, b, T, k = _fresh_accum_case(generator)
        while k in answers:  # an answer unlike every fixed one: no remembered k can pass
            R, b, T, k = _fresh_accum_case(generator)
        what = f"grad_accum_steps({R * k * b * T:,}, b={b}, T={T}, R={R})"
        try:
            answer = call(grad_accum_steps, R * k * b * T, b, T, R)
        except ValueError as error:
            raise CheckFailed(f"{what} raised ValueError ({error}), but the tokens split "
                              "evenly here") from None
        expected = _package_accum_steps(R * k * b * T, b, T, R)
        require(answer == expected, f"{what} = {answer!r}, expected {expected}")
    for case in ACCUM_INVALID:
        total, b, T, R = case
        try:
            answer = call(grad_accum_steps, *case)
        except ValueError:
            continue
        raise CheckFailed(
            f"grad_accum_steps({total:,}, b={b}, T={T}, R={R}) returned {answer!r}, but "
            f"{total:,} tokens are not a whole number of micro-batches of R·b·T = "
            f"{R * b * T:,} tokens: raise ValueError, as minigpt's Trainer does, instead of "
            "silently training with another global batch")
    with fresh_case(fresh_seed()) as generator:  # a batch that does not split, unforeseen
        R, b, T, k = _fresh_accum_case(generator)
        total = R * k * b * T + T  # one sequence too many
        try:
            answer = call(grad_accum_steps, total, b, T, R)
        except ValueError:
            answer = None
        require(answer is None, f"grad_accum_steps({total:,}, b={b}, T={T}, R={R}) returned "
                                f"{answer!r}; raise ValueError: {total:,} tokens are not a "
                                f"whole number of micro-batches of R·b·T = {R * b * T:,}")
    passed("gradient-accumulation steps for R GPUs, eq. (13.6)")


def _fresh_accum_case(generator) -> tuple[int, int, int, int]:
    """(R, b, T, k) of a run no one knew in advance, with R·b ≥ 2 so one more sequence does not
    split evenly."""
    R, b = 1, 1
    while R * b < 2:
        R, b = 2 ** _fresh_int(generator, 0, 6), _fresh_int(generator, 1, 33)
    return R, b, 2 ** _fresh_int(generator, 4, 12), _fresh_int(generator, 1, 65)


# ------------------------------------------------------------------ eq. (8.5): MFU

MFU_CASES = [  # (tokens/s, n_layer, n_embd, vocab_size, seq_len, peak TFLOP/s)
    (514_100, 12, 768, 50304, 1024, 989),    # GPT-2 small compiled on one H200 (bench/)
    (374_900, 12, 768, 50304, 1024, 989),    # ... uncompiled
    (3_223, 4, 256, 256, 128, 0.1068),       # a small model on one CPU core
    (60_000, 24, 1024, 50257, 1024, 312),    # GPT-2 medium's shapes on an A100
]

MFU_KNOBS = {
    "passes": {6: None, 2: "used 2N for the weights, the cost of the forward pass alone; "
                           "training adds a backward pass twice as costly, 6N in all"},
    "attention": {"12LTC": None,
                  "none": "forgot the attention term 12·L·T·C per token (eq. 7.6)",
                  "4LTC": "did not multiply the attention term 4·L·T·C by 3 for training"},
    "weights": {"mm": None,
                "all": "counted every parameter (positions, biases, layer norms) in N; the "
                       "FLOPs come from the weights in matrix multiplies, "
                       "N_mm = 12·L·C² + V·C (eq. 7.6)",
                "no_head": "left the output head's V·C weights out of N_mm"},
    "units": {1e12: None,
              1.0: "forgot the units: the peak is given in TFLOP/s, 1 TFLOP/s = 10¹² FLOP/s",
              1e9: "took tera for giga: 1 TFLOP/s = 10¹² FLOP/s, not 10⁹",
              1e10: "returned a percentage: MFU is a fraction, between 0 and 1"},
}


def _mfu_variant(case, passes, attention, weights, units):
    tokens_per_s, L, C, V, T, peak = case
    n = 12 * L * C * C + (0 if weights == "no_head" else V * C)
    if weights == "all":
        n = V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C
    attn = {"12LTC": 12 * L * T * C, "none": 0, "4LTC": 4 * L * T * C}[attention]
    return (passes * n + attn) * tokens_per_s / (peak * units)


def check_mfu(model_flops_utilisation) -> None:
    """model_flops_utilisation(tokens_per_s, n_layer, n_embd, vocab_size, seq_len,
    peak_tflops) -> MFU as a fraction, eq. (8.5) with the FLOPs of eq. (7.6)."""
    answers = []
    for case in MFU_CASES:
        what = "model_flops_utilisation({:,}, L={}, C={}, V={}, T={}, peak={} TFLOP/s)".format(
            *case)
        answers.append(as_number(call(model_flops_utilisation, *case), what))
    for case, answer in zip(MFU_CASES, answers, strict=True):
        tokens_per_s, L, C, V, T, peak = case
        with torch.device("meta"):  # the model's own FLOP count, no memory allocated
            model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=4, n_embd=C))
        expected = mfu(model.flops_per_token(T), tokens_per_s, peak * 1e12)
        if math.isclose(answer, expected, rel_tol=1e-9):
            continue
        what = "model_flops_utilisation({:,}, L={}, C={}, V={}, T={}, peak={} TFLOP/s)".format(
            *case)
        message = f"{what} = {answer:.6g}, expected {expected:.6g}"
        variants = ((why, [_mfu_variant(c, **choice) for c in MFU_CASES])
                    for why, choice in combine_mistakes(MFU_KNOBS))
        mistake = find_mistake(answers, variants, rtol=1e-9)
        if mistake:
            raise CheckFailed(f"{message}: you {mistake}")
        raise CheckFailed(f"{message} ({answer / expected:.4g} times it): MFU = FLOPs per "
                          "token (eq. 7.6) × tokens/s ÷ peak FLOP/s, eq. (8.5)")
    with fresh_case(fresh_seed()) as generator:  # a run no one knew in advance
        L, C = _fresh_int(generator, 1, 49), 64 * _fresh_int(generator, 1, 33)
        case = (_fresh_int(generator, 1000, 10**6), L, C, _fresh_int(generator, 256, 60000),
                2 ** _fresh_int(generator, 6, 13), _fresh_int(generator, 10, 2000))
        tokens_per_s, L, C, V, T, peak = case
        what = "model_flops_utilisation({:,}, L={}, C={}, V={}, T={}, peak={} TFLOP/s)".format(
            *case)
        answer = as_number(call(model_flops_utilisation, *case), what)
        with torch.device("meta"):
            model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=4, n_embd=C))
        expected = mfu(model.flops_per_token(T), tokens_per_s, peak * 1e12)
        require(math.isclose(answer, expected, rel_tol=1e-9),
                f"{what} = {answer:.6g}, expected {expected:.6g}")
    passed("MFU from tokens per second, eq. (8.5)")


# ------------------------------------------------------------------ eqs. (13.9)-(13.10): time

TIME_CASES = [  # (N, D, R GPUs, MFU, peak FLOP/s)
    (175e9, 300e9, 1024, 0.4, 989e12),   # GPT-3 as trained, on 1024 H200s
    (124e6, 10e9, 1, 0.444, 989e12),     # GPT-2 small, the gpt2-124m preset, one H200
    (1.5e9, 31e9, 8, 0.5, 312e12),       # GPT-2 XL, compute-optimal, 8 A100s
]

TIME_KNOBS = {
    "flops": {6: None, 2: "used C = 2ND: that is the forward pass; training costs 6 FLOPs per "
                          "parameter per token (eq. 13.9)",
              1: "used C = ND: training costs 6 FLOPs per parameter per token (eq. 13.9)"},
    "gpus": {"divide": None, "ignore": "forgot the R GPUs: together they deliver R·MFU·P FLOP/s",
             "multiply": "multiplied by the number of GPUs instead of dividing"},
    "mfu": {"divide": None, "ignore": "left out the MFU: no run reaches the datasheet peak; the "
                                      "achieved rate is MFU·P",
            "multiply": "multiplied by the MFU instead of dividing: a lower MFU means a *longer* "
                        "run"},
    "units": {3600: None, 1: "returned seconds: divide by 3600 for hours",
              60: "returned minutes: divide by 60 once more for hours",
              86400: "returned days: multiply by 24 for hours"},
}


def _time_variant(case, flops, gpus, mfu, units):
    N, D, R, utilisation, peak = case
    rate = peak * {"divide": R, "ignore": 1, "multiply": 1 / R}[gpus]
    rate *= {"divide": utilisation, "ignore": 1, "multiply": 1 / utilisation}[mfu]
    return flops * N * D / rate / units


def check_training_hours(training_hours) -> None:
    """training_hours(n_params, n_tokens, n_gpus, mfu, peak_flops) -> hours, eqs. (13.9-10)."""
    answers = []
    for N, D, R, u, P in TIME_CASES:
        what = f"training_hours(N={N:.3g}, D={D:.3g}, R={R}, mfu={u}, peak={P:.3g})"
        answers.append(as_number(call(training_hours, N, D, R, u, P), what))
    for case, answer in zip(TIME_CASES, answers, strict=True):
        N, D, R, u, P = case
        expected = 6 * N * D / (R * u * P) / 3600
        if math.isclose(answer, expected, rel_tol=1e-9):
            continue
        what = f"training_hours(N={N:.3g}, D={D:.3g}, R={R}, mfu={u}, peak={P:.3g})"
        message = f"{what} = {answer:.6g}, expected {expected:.6g} hours"
        variants = ((why, [_time_variant(c, **choice) for c in TIME_CASES])
                    for why, choice in combine_mistakes(TIME_KNOBS))
        mistake = find_mistake(answers, variants, rtol=1e-9)
        if mistake:
            raise CheckFailed(f"{message}: you {mistake}")
        raise CheckFailed(f"{message} ({answer / expected:.4g} times it): t = 6ND / "
                          "(R·MFU·P), eq. (13.10)")
    with fresh_case(fresh_seed()) as generator:  # a run no one knew in advance
        N = float(_fresh_int(generator, 10**6, 10**12))
        D, R = 20 * N * float(torch.rand((), generator=generator) + 0.5), _fresh_int(
            generator, 1, 4097)
        u = round(0.1 + 0.5 * float(torch.rand((), generator=generator)), 3)
        P = float(_fresh_int(generator, 10, 2000)) * 1e12
        what = f"training_hours(N={N:.4g}, D={D:.4g}, R={R}, mfu={u}, peak={P:.3g})"
        answer = as_number(call(training_hours, N, D, R, u, P), what)
        expected = 6 * N * D / (R * u * P) / 3600
        require(math.isclose(answer, expected, rel_tol=1e-9),
                f"{what} = {answer:.6g}, expected {expected:.6g} hours")
    passed("training time, eqs. (13.9)-(13.10)")


def _gpt2_medium_params() -> int:
    with torch.device("meta"):
        return GPT(GPTConfig(**GPT2_SIZES["gpt2-medium"])).num_params()


def check_gpt2_medium_hours(answer) -> None:
    """Hours for GPT-2 medium on D = 20N tokens, 8 H200s at MFU 0.4 (bf16 datasheet peak)."""
    hours = as_number(answered(answer, "gpt2_medium_hours"), "gpt2_medium_hours")
    with torch.device("meta"):
        medium = GPT(GPTConfig(**GPT2_SIZES["gpt2-medium"]))
    n_all, n_non_embedding = medium.num_params(), medium.num_params(non_embedding=True)
    peak_16, peak_32 = next(row[1:] for row in PEAK_FLOPS if row[0] == "H200")

    def hours_for(n, tokens_per_param=20, gpus=8, utilisation=0.4, peak=peak_16, flops=6,
                  units=3600):
        return flops * n * tokens_per_param * n / (gpus * utilisation * peak) / units

    expected = hours_for(n_all)
    if math.isclose(hours, expected, rel_tol=0.01):  # a rounded N (355M) is fine
        passed("GPT-2 medium on 8 H200s")
        return
    wrong = {
        "counted N without the embeddings (num_params(non_embedding=True)); C ≈ 6ND uses "
        "every parameter": hours_for(n_non_embedding),
        "used the GPT-2 paper's 345M; count the released model with minigpt: "
        f"{n_all:,} parameters": hours_for(345e6),
        "forgot the 8 GPUs": hours_for(n_all, gpus=1),
        "used the H200's 32-bit (TF32) peak; the run trains in bf16": hours_for(n_all,
                                                                                peak=peak_32),
        "used D = N tokens; compute-optimal is D = 20N": hours_for(n_all, tokens_per_param=1),
        "used C = 2ND; training costs 6ND": hours_for(n_all, flops=2),
        "left out the MFU of 40%": hours_for(n_all, utilisation=1),
        "answered in seconds, not hours": hours_for(n_all, units=1),
        "answered in minutes, not hours": hours_for(n_all, units=60),
        "answered in days, not hours": hours_for(n_all, units=86400),
    }
    for why, value in wrong.items():
        if math.isclose(hours, value, rel_tol=0.01):
            raise CheckFailed(f"gpt2_medium_hours = {hours:.4g} is not right: you {why}")
    raise CheckFailed(f"gpt2_medium_hours = {hours:.4g} is {hours / expected:.3g} times the "
                      "right answer: N from minigpt (GPT-2 medium), D = 20N, R = 8, MFU = 0.4, "
                      "P = the H200's bf16 peak, then eq. (13.10)")


# ------------------------------------------------------------------ eq. (13.5): online softmax

def _online_variant(q, k, v, block, rescale="both", causal=True, scale="sqrt", normalise=True):
    """Eq. (13.5) over key blocks, or one of the usual slips. Returns (output, lse)."""
    T, d = q.shape[-2], q.shape[-1]
    factor = {"sqrt": 1 / math.sqrt(d), "none": 1.0, "d": 1 / d}[scale]
    m = torch.full(q.shape[:-1] + (1,), -math.inf, dtype=q.dtype)
    ell = torch.zeros(q.shape[:-1] + (1,), dtype=q.dtype)
    o = torch.zeros_like(q)
    query_pos = torch.arange(T)[:, None]
    for start in range(0, T, block):
        kb, vb = k[..., start:start + block, :], v[..., start:start + block, :]
        s = q @ kb.transpose(-2, -1) * factor
        if causal:
            key_pos = torch.arange(start, start + kb.size(-2))[None, :]
            s = s.masked_fill(key_pos > query_pos, -math.inf)
        m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))
        alpha = torch.exp(m - m_new)
        p = torch.exp(s - m_new)
        ell = (alpha if rescale in ("both", "ell") else 1) * ell + p.sum(-1, keepdim=True)
        o = (alpha if rescale in ("both", "o") else 1) * o + p @ vb
        m = m_new
    return (o / ell if normalise else o), (m + torch.log(ell)).squeeze(-1)


ONLINE_KNOBS = {
    "rescale": {"both": None,
                "none": "did not rescale the old sums when the running maximum grew: ℓ and o "
                        "were summed relative to the old m, so both need the factor e^(m − m′)",
                "ell": "rescaled ℓ but not o: both running sums need e^(m − m′)",
                "o": "rescaled o but not ℓ: both running sums need e^(m − m′)"},
    "causal": {True: None, False: "left out the causal mask: key j must not be seen by a query "
                                  "i < j"},
    "scale": {"sqrt": None, "none": "forgot the 1/√d of the scores",
              "d": "divided the scores by d instead of √d"},
    "normalise": {True: None, False: "returned o without dividing by ℓ"},
}


def _online_cases():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 40, 16, generator=generator, dtype=torch.float64)
               for _ in range(3))
    return [(q, k, v, block) for block in (8, 7, 40, 1)]


def check_online_attention(online_attention) -> None:
    """online_attention(q, k, v, block) -> (output, lse): causal attention over key blocks by
    the online softmax, eq. (13.5), and the log-sum-exp m + log ℓ of every query."""
    for q, k, v, block in _online_cases():
        _check_online_case(online_attention, q, k, v, block)
    with fresh_case(fresh_seed()) as generator:  # queries, keys and a block no one knew before
        B, h, T, d = (_fresh_int(generator, 1, 3), _fresh_int(generator, 1, 3),
                      _fresh_int(generator, 2, 30), 2 * _fresh_int(generator, 1, 9))
        q, k, v = (torch.randn(B, h, T, d, generator=generator, dtype=torch.float64)
                   for _ in range(3))
        _check_online_case(online_attention, q, k, v, _fresh_int(generator, 1, T + 1))
    passed("online softmax attention, eq. (13.5)")


def _check_online_case(online_attention, q, k, v, block) -> None:
    result = call(online_attention, q.clone(), k.clone(), v.clone(), block)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise CheckFailed("online_attention should return two tensors: (output, lse)")
    out, lse = (as_tensor(x, name) for x, name in zip(result, ("the output", "lse"),
                                                      strict=True))
    what = f"the output for key blocks of {block} (T = {q.size(-2)})"
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # PyTorch's kernel
    if not torch.allclose(expected, scaled_dot_product_attention(q, k, v, is_causal=True)):
        raise RuntimeError("minigpt and PyTorch disagree on causal attention")
    same_shape(out, expected, what)
    if not torch.allclose(out.double(), expected, rtol=1e-5, atol=1e-7):
        for why, choice in combine_mistakes(ONLINE_KNOBS):
            if why and torch.allclose(out.double(), _online_variant(q, k, v, block,
                                                                    **choice)[0],
                                      rtol=1e-5, atol=1e-7):
                raise CheckFailed(f"{what} is not attention: you {why} (eq. 13.5)")
        close(out.double(), expected, what + " (against F.scaled_dot_product_attention)",
              rtol=1e-5, atol=1e-7)
    _check_lse(lse, q, k, block)


def _check_lse(lse, q, k, block) -> None:
    T, d = q.shape[-2], q.shape[-1]
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
    expected = torch.logsumexp(scores, dim=-1)  # (B, h, T): one number per query
    what = f"lse for key blocks of {block}"
    if lse.shape == expected.shape + (1,):
        lse = lse.squeeze(-1)
    same_shape(lse, expected, what)
    if torch.allclose(lse.double(), expected, rtol=1e-6, atol=1e-8):
        return
    m = scores.amax(dim=-1)
    wrong = {
        "returned log ℓ alone: ℓ was summed relative to the running maximum, so the "
        "log-sum-exp is m + log ℓ": expected - m,
        "returned the running maximum m alone; the log-sum-exp is m + log ℓ": m,
        "returned ℓ itself; the backward pass keeps its logarithm plus m, m + log ℓ":
            torch.exp(expected - m),
    }
    for why, value in wrong.items():
        if torch.allclose(lse.double(), value, rtol=1e-6, atol=1e-8):
            raise CheckFailed(f"{what} is not right: you {why}")
    close(lse.double(), expected, what + " (against torch.logsumexp of the scores)",
          rtol=1e-6, atol=1e-8)
