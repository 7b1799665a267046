"""The checks of exercises/13_scaling_up.ipynb: they pass a right answer, and fail a wrong one
with the diagnosis of its mistake (every wrong answer here is one a learner could write)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from check_helpers import fails, rejects_remembered_answers, unwritten

from checks import scaling_up as check
from minigpt.model import GPT, GPT2_SIZES, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")



# --------------------------------------------------------------------------- eq. (13.2)

def float_format(E, p, mistake=None):
    e_max, e_min = 2 ** (E - 1) - 1, 2 - 2 ** (E - 1)
    largest, smallest, eps = (2 - 2.0**-p) * 2.0**e_max, 2.0**e_min, 2.0**-p
    if mistake == "no_mantissa":
        largest = 2.0**e_max
    elif mistake == "e_max":
        largest = (2 - 2.0**-p) * 2.0 ** (e_max + 1)
    elif mistake == "minus_bias":
        smallest = 2.0 ** (e_min - 1)
    elif mistake == "subnormal":
        smallest = 2.0 ** (e_min - p)
    elif mistake == "roundoff":
        eps = 2.0 ** -(p + 1)
    elif mistake == "order":
        return eps, smallest, largest
    return largest, smallest, eps


def test_float_format_passes_torch_finfo(capsys):
    check.check_float_format(float_format)
    assert "✓ float formats" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, words", [
    ("no_mantissa", ["largest value", "mantissa factor (2 − 2^−p)"]),
    ("e_max", ["largest value", "inf and NaN"]),
    ("minus_bias", ["smallest normal value", "zero and subnormals"]),
    ("subnormal", ["smallest *subnormal*"]),
    ("roundoff", ["eps", "unit roundoff"]),
    ("order", ["wrong order"]),
])
def test_float_format_names_the_mistake(mistake, words):
    fails(check.check_float_format, functools.partial(float_format, mistake=mistake), *words)


def test_float_format_swapped_bits_and_bad_returns():
    fails(check.check_float_format, lambda E, p: float_format(p, E), "swap E")
    fails(check.check_float_format, lambda E, p: float_format(E, p)[:2], "three numbers")
    fails(check.check_float_format, lambda E, p: (2.0, 1.0, 0.5), "build it from eq. (13.2)")
    fails(check.check_float_format, unwritten, "not written yet")


# --------------------------------------------------------------------------- eq. (13.4)

def max_context(memory, B, h, L, s, tensors=2, layers=True, rounding="floor", as_int=True):
    per_t2 = tensors * (L if layers else 1) * B * h * s
    root = math.sqrt(memory / per_t2)
    if not as_int:
        return root
    return {"floor": math.isqrt(memory // per_t2), "round": round(root),
            "ceil": math.ceil(root)}[rounding]


def test_max_context_passes_the_brute_force_reference(capsys):
    check.check_max_context(max_context)
    assert "✓ longest context" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, words", [
    (dict(tensors=1), ["only the scores S", "softmax"]),
    (dict(layers=False), ["left out the layers"]),
    (dict(rounding="round"), ["rounded T to the nearest", "*down*"]),
    (dict(rounding="ceil"), ["rounded T up"]),
    (dict(as_int=False), ["not an int"]),
])
def test_max_context_names_the_mistake(mistake, words):
    fails(check.check_max_context, functools.partial(max_context, **mistake), *words)


def test_max_context_other_slips():
    fails(check.check_max_context, lambda M, B, h, L, s: max_context(M, 1, h, L, s),
          "left out the batch")
    fails(check.check_max_context, lambda M, B, h, L, s: max_context(M, B, h, L, 1),
          "numbers, not bytes")
    fails(check.check_max_context, lambda M, B, h, L, s: max_context(M, B, h, L, s) - 7,
          "solve L·2·B·h·T²·s")


# --------------------------------------------------------------------------- eq. (13.6)

def accum_steps(total, b, T, R, world="divide", tokens=True, raise_error=True, as_int=True):
    per_step = b * (T if tokens else 1) * {"divide": R, "ignore": 1, "multiply": 1 / R}[world]
    if raise_error and total % per_step:
        raise ValueError("not a multiple")
    return int(total // per_step) if as_int else total / per_step


def test_accum_steps_pass_the_trainer(capsys):
    check.check_accum_steps(accum_steps)
    assert "✓ gradient-accumulation steps" in capsys.readouterr().out
    assert check._package_accum_steps(524_288, 32, 1024, 8) == 2


@pytest.mark.parametrize("mistake, words", [
    (dict(world="ignore"), ["R=8", "forgot the world size"]),
    (dict(world="multiply"), ["multiplied by the world size"]),
    (dict(tokens=False), ["left out block_size"]),
    (dict(raise_error=False), ["raise ValueError", "24,576"]),
    (dict(as_int=False), ["not an int"]),
])
def test_accum_steps_name_the_mistake(mistake, words):
    fails(check.check_accum_steps, functools.partial(accum_steps, **mistake), *words)


def test_accum_steps_must_not_refuse_a_valid_batch():
    def always_refuses(total, b, T, R):
        raise ValueError("no")

    fails(check.check_accum_steps, always_refuses, "raised ValueError", "split evenly")


# --------------------------------------------------------------------------- eq. (8.5)

def mfu(tokens_per_s, L, C, V, T, peak_tflops, weight_passes=3, attention=4, attention_passes=3,
        all_params=False, units=1e12):
    n = 12 * L * C * C + V * C
    if all_params:
        n = V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C
    flops = weight_passes * 2 * n + attention_passes * attention * L * T * C
    return flops * tokens_per_s / (peak_tflops * units)


def test_mfu_passes_the_package_and_the_bench_figure(capsys):
    check.check_mfu(mfu)
    assert "✓ MFU" in capsys.readouterr().out
    assert abs(mfu(*check.MFU_CASES[0]) - 0.444) < 0.001  # bench/RESULTS.md: 44.4%


@pytest.mark.parametrize("mistake, words", [
    (dict(weight_passes=1), ["used 2N"]),
    (dict(weight_passes=1, attention_passes=1), ["used 2N", "attention term 4·L·T·C by 3"]),
    (dict(attention=0), ["forgot the attention term"]),
    (dict(all_params=True), ["every parameter", "N_mm"]),
    (dict(units=1.0), ["TFLOP/s", "10¹²"]),
    (dict(units=1e9), ["tera for giga"]),
    (dict(units=1e10), ["percentage"]),
])
def test_mfu_names_the_mistake(mistake, words):
    fails(check.check_mfu, functools.partial(mfu, **mistake), *words)


def test_mfu_unknown_mistake():
    fails(check.check_mfu, lambda *case: 1.1 * mfu(*case), "1.1 times", "eq. (8.5)")


# --------------------------------------------------------------------------- eqs. (13.9-10)

def hours(N, D, R, u, P, flops=6, gpus=True, utilisation="divide", units=3600):
    rate = P * (R if gpus else 1)
    rate = rate * u if utilisation == "divide" else rate / u
    return flops * N * D / rate / units


def test_training_hours_pass_eq_13_10(capsys):
    check.check_training_hours(hours)
    assert "✓ training time" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, words", [
    (dict(flops=2), ["C = 2ND"]),
    (dict(gpus=False), ["forgot the R GPUs"]),
    (dict(utilisation="multiply"), ["multiplied by the MFU"]),
    (dict(units=1), ["returned seconds"]),
    (dict(units=86400), ["returned days"]),
    (dict(flops=2, gpus=False), ["C = 2ND", "R GPUs"]),
])
def test_training_hours_name_the_mistake(mistake, words):
    fails(check.check_training_hours, functools.partial(hours, **mistake), *words)


def medium_params():
    with torch.device("meta"):
        return GPT(GPTConfig(**GPT2_SIZES["gpt2-medium"])).num_params()


def test_gpt2_medium_hours(capsys):
    n = medium_params()
    check.check_gpt2_medium_hours(hours(n, 20 * n, 8, 0.4, 989e12))
    check.check_gpt2_medium_hours(hours(355e6, 20 * 355e6, 8, 0.4, 989e12))  # N rounded: fine
    assert capsys.readouterr().out.count("✓ GPT-2 medium") == 2


@pytest.mark.parametrize("answer, words", [
    (None, ["not answered yet"]),
    ("1.3", ["should be a number"]),
    (lambda n: hours(n, 20 * n, 1, 0.4, 989e12), ["forgot the 8 GPUs"]),
    (lambda n: hours(n, 20 * n, 8, 0.4, 494e12), ["32-bit (TF32) peak"]),
    (lambda n: hours(n, n, 8, 0.4, 989e12), ["D = 20N"]),
    (lambda n: hours(n, 20 * n, 8, 0.4, 989e12, units=60), ["minutes"]),
    (lambda n: hours(345e6, 20 * 345e6, 8, 0.4, 989e12), ["345M"]),
    (lambda n: hours(302_311_424, 20 * 302_311_424, 8, 0.4, 989e12), ["without the embeddings"]),
    (lambda n: 1.5 * hours(n, 20 * n, 8, 0.4, 989e12), ["1.5 times the right answer"]),
])
def test_gpt2_medium_hours_names_the_mistake(answer, words):
    value = answer(medium_params()) if callable(answer) else answer
    fails(check.check_gpt2_medium_hours, value, *words)


# --------------------------------------------------------------------------- eq. (13.5)

def online(q, k, v, block, lse="right", **slip):
    out, log_sum_exp = check._online_variant(q, k, v, block, **slip)
    if lse == "log_ell":
        d, T = q.size(-1), q.size(-2)
        scores = (q @ k.transpose(-2, -1) / math.sqrt(d)).masked_fill(
            torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
        log_sum_exp = log_sum_exp - scores.amax(-1)
    elif lse == "keepdim":
        log_sum_exp = log_sum_exp[..., None]
    return out, log_sum_exp


def test_online_attention_passes_pytorch(capsys):
    check.check_online_attention(online)
    check.check_online_attention(functools.partial(online, lse="keepdim"))  # (B, h, T, 1) is ok
    assert capsys.readouterr().out.count("✓ online softmax") == 2


def test_online_variant_is_attention():
    q, k, v, _ = check._online_cases()[0]
    out, _ = check._online_variant(q, k, v, 5)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


@pytest.mark.parametrize("mistake, words", [
    (dict(rescale="none"), ["did not rescale the old sums", "e^(m − m′)"]),
    (dict(rescale="ell"), ["rescaled ℓ but not o"]),
    (dict(rescale="o"), ["rescaled o but not ℓ"]),
    (dict(causal=False), ["causal mask"]),
    (dict(scale="none"), ["1/√d"]),
    (dict(scale="d"), ["by d instead of √d"]),
    (dict(normalise=False), ["without dividing by ℓ"]),
    (dict(lse="log_ell"), ["log ℓ alone", "m + log ℓ"]),
])
def test_online_attention_names_the_mistake(mistake, words):
    fails(check.check_online_attention, functools.partial(online, **mistake), *words)


def test_online_attention_shapes_and_returns():
    fails(check.check_online_attention, lambda q, k, v, block: online(q, k, v, block)[0],
          "(output, lse)")
    fails(check.check_online_attention,
          lambda q, k, v, block: (online(q, k, v, block)[0].transpose(-2, -1),
                                  online(q, k, v, block)[1]), "shape")
    fails(check.check_online_attention, unwritten, "not written yet")


# ------------------------------------------------------------ answers for the fixed examples only

@pytest.mark.parametrize("check_function, right", [
    (check.check_float_format, float_format),
    (check.check_max_context, max_context),
    (check.check_accum_steps, accum_steps),
    (check.check_mfu, mfu),
    (check.check_training_hours, hours),
    (check.check_online_attention, online),
], ids=["float_format", "max_context", "accum_steps", "mfu", "training_hours", "online"])
def test_checks_reject_answers_remembered_for_their_fixed_examples(check_function, right):
    rejects_remembered_answers(check_function, right)


def test_accum_steps_must_refuse_an_uneven_batch_it_has_not_seen():
    def refuses_the_fixed_ones_only(total, b, T, R):
        if (total, b, T, R) in check.ACCUM_INVALID:
            raise ValueError("remembered")
        return total // (R * b * T)

    fails(check.check_accum_steps, refuses_the_fixed_ones_only, "drawn at random",
          "raise ValueError")
