"""The checks of exercises/06_transformer_block.ipynb pass right answers and name wrong ones."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from check_helpers import fails, rejects_remembered_answers

from checks import transformer_block as check

# --- exercise 1: layer_norm --------------------------------------------------------------------


def layer_norm(x, gamma, beta, eps=1e-5, *, dims=(-1,), correction=0, eps_where="inside"):
    mu = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, correction=correction)
    spread = torch.sqrt(var + eps) if eps_where == "inside" else torch.sqrt(var) + eps
    return gamma * (x - mu) / spread + beta


def test_layer_norm_passes_on_right_answers(capsys):
    from minigpt.layers import layer_norm as package_layer_norm

    check.check_layer_norm(layer_norm)
    check.check_layer_norm(package_layer_norm)
    check.check_layer_norm(lambda x, g, b, eps=1e-5: F.layer_norm(x, x.shape[-1:], g, b, eps))
    assert "✓ layer_norm" in capsys.readouterr().out


def _no_eps(x, gamma, beta, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    return gamma * (x - mu) / x.std(-1, keepdim=True, unbiased=False) + beta


@pytest.mark.parametrize("wrong, words", [
    (lambda x, g, b, eps: layer_norm(x, g, b, eps, correction=1), ["C - 1", "unbiased=False"]),
    (lambda x, g, b, eps: layer_norm(x, g, b, eps, dims=(0,)), ["over the batch"]),
    (lambda x, g, b, eps: layer_norm(x, g, b, eps, dims=(0, 1)), ["batch and the time steps"]),
    (lambda x, g, b, eps: layer_norm(x, g, b, eps, dims=(-2,)), ["time steps (dim -2)"]),
    (lambda x, g, b, eps: layer_norm(x, g, b, eps, dims=(-2, -1)), ["whole sequence"]),
    (lambda x, g, b, eps: layer_norm(x, g, b, eps, eps_where="outside"), ["outside"]),
    (_no_eps, ["ε is missing"]),
    (lambda x, g, b, eps: g * (x - x.mean(-1, keepdim=True))
     / (x.var(-1, keepdim=True, unbiased=False) + eps) + b, ["variance σ² + ε"]),
    (lambda x, g, b, eps: layer_norm(x, torch.ones_like(g), torch.zeros_like(b), eps),
     ["γ and β are not applied"]),
    (lambda x, g, b, eps: layer_norm(x, b, g, eps), ["swapped"]),
    (lambda x, g, b, eps: layer_norm(x, g, b), ["`eps`"]),
    (lambda x, g, b, eps: layer_norm(x, g, b, eps).mean(-1), ["shape"]),
], ids=["unbiased", "over-batch", "batch-norm", "over-time", "whole-sequence", "eps-outside",
        "no-eps", "divided-by-variance", "no-affine", "gamma-beta-swapped", "eps-ignored",
        "wrong-shape"])
def test_layer_norm_names_the_mistake(wrong, words):
    fails(check.check_layer_norm, wrong, *words)


# --- exercise 2: gelu_tanh ---------------------------------------------------------------------


SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def gelu_tanh(x, a=SQRT_2_OVER_PI, b=0.044715, half=0.5):
    return half * x * (1 + torch.tanh(a * (x + b * x**3)))


def test_gelu_tanh_passes_on_right_answers():
    check.check_gelu_tanh(gelu_tanh)
    check.check_gelu_tanh(lambda x: F.gelu(x, approximate="tanh"))


@pytest.mark.parametrize("wrong, words", [
    (F.gelu, ["exact GELU", "erf"]),
    (lambda x: gelu_tanh(x, half=1.0), ["½"]),
    (lambda x: 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
     ["without multiplying by x"]),
    (lambda x: gelu_tanh(x, a=2 / math.pi), ["2/π"]),
    (lambda x: gelu_tanh(x, a=math.sqrt(math.pi / 2)), ["√(π/2)"]),
    (lambda x: gelu_tanh(x, a=1.0), ["√(2/π) is missing"]),
    (lambda x: gelu_tanh(x, b=0.0), ["cubic term", "missing"]),
    (lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * x + 0.044715 * x**3)),
     ["outside the bracket"]),
    (torch.relu, ["ReLU"]),
    (lambda x: x * torch.sigmoid(1.702 * x), ["sigmoid"]),
    (lambda x: gelu_tanh(x, b=0.04), ["largest difference"]),
], ids=["exact-erf", "no-half", "gate-only", "two-over-pi", "sqrt-pi-over-2", "no-sqrt",
        "no-cubic", "cubic-outside", "relu", "sigmoid", "other"])
def test_gelu_tanh_names_the_mistake(wrong, words):
    fails(check.check_gelu_tanh, wrong, *words)


# --- exercise 3: block_parameter_count ---------------------------------------------------------


def block_parameter_count(n_embd, bias=True):
    C = n_embd
    if not bias:
        return 4 * C**2 + 8 * C**2 + 2 * C
    return (4 * C**2 + 4 * C) + (8 * C**2 + 5 * C) + 4 * C


def test_block_parameter_count_passes_on_a_right_answer():
    check.check_block_parameter_count(block_parameter_count)


@pytest.mark.parametrize("wrong, words", [
    (lambda C, bias: block_parameter_count(C, bias) - (4 * C if bias else 0), ["4C short"]),
    (lambda C, bias: block_parameter_count(C, bias) - (2 * C if bias else 0), ["2C short"]),
    (lambda C, bias: block_parameter_count(C, bias) - (5 * C if bias else 0), ["5C short"]),
    (lambda C, bias: 12 * C**2 + 13 * C, ["still counted biases"]),
    (lambda C, bias: 12 * C**2 + (13 * C if bias else 0), ["gains γ: 2C"]),
    (lambda C, bias: 6 * C**2 + 10 * C if bias else 6 * C**2 + 2 * C, ["4C wide"]),
    (lambda C, bias: 12 * C**2, ["only the weights"]),
    (lambda C, bias: float(block_parameter_count(C, bias)) + 0.5, ["expected"]),
    (lambda C, bias: [block_parameter_count(C, bias)], ["should be a number"]),
], ids=["no-layer-norms", "layer-norm-gamma-only", "no-ffn-biases", "biases-when-false",
        "no-gammas-when-false", "ffn-width-C", "weights-only", "off-by-half", "not-a-number"])
def test_block_parameter_count_names_the_mistake(wrong, words):
    fails(check.check_block_parameter_count, wrong, *words)


# --- exercise 4: pre_ln_block ------------------------------------------------------------------


def pre_ln_block(x, ln_1, attn, ln_2, mlp):
    h = x + attn(ln_1(x))
    return h + mlp(ln_2(h))


def test_pre_ln_block_passes_on_a_right_answer():
    check.check_pre_ln_block(pre_ln_block)


def _normalised_stream(x, ln_1, attn, ln_2, mlp):
    x = ln_1(x)
    x = x + attn(x)
    x = ln_2(x)
    return x + mlp(x)


@pytest.mark.parametrize("wrong, words", [
    (lambda x, l1, a, l2, m: (lambda h: l2(h + m(h)))(l1(x + a(x))), ["post-LN"]),
    (lambda x, l1, a, l2, m: (lambda h: h + m(l2(h)))(a(l1(x))), ["around attention"]),
    (lambda x, l1, a, l2, m: m(l2(x + a(l1(x)))), ["around the feed-forward"]),
    (lambda x, l1, a, l2, m: m(l2(a(l1(x)))), ["both residual connections"]),
    (_normalised_stream, ["normalised x"]),
    (lambda x, l1, a, l2, m: (lambda h: h + m(l1(h)))(x + a(l1(x))), ["used twice"]),
    (lambda x, l1, a, l2, m: (lambda h: h + m(h))(x + a(l1(x))), ["un-normalised h"]),
    (lambda x, l1, a, l2, m: (lambda h: h + m(h))(x + a(x)), ["layer norms are missing"]),
    (lambda x, l1, a, l2, m: (lambda h: h + a(l1(h)))(x + m(l2(x))), ["wrong order"]),
    (lambda x, l1, a, l2, m: x + a(l1(x)), ["largest difference"]),
], ids=["post-ln", "no-attention-residual", "no-mlp-residual", "no-residuals",
        "normalised-stream", "ln1-twice", "mlp-unnormalised", "no-layer-norms", "mlp-first",
        "no-mlp"])
def test_pre_ln_block_names_the_mistake(wrong, words):
    fails(check.check_pre_ln_block, wrong, *words)


# --- every check: answers remembered for the fixed examples are not enough ---------------------


@pytest.mark.parametrize("check_function, right", [
    (check.check_layer_norm, layer_norm),
    (check.check_gelu_tanh, gelu_tanh),
    (check.check_block_parameter_count, block_parameter_count),
    (check.check_pre_ln_block, pre_ln_block),
], ids=["layer_norm", "gelu_tanh", "block_parameter_count", "pre_ln_block"])
def test_checks_reject_answers_remembered_for_their_fixed_examples(check_function, right):
    rejects_remembered_answers(check_function, right)
