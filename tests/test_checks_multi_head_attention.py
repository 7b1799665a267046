"""The checks of exercises/04_multi_head_attention.ipynb pass right answers and name wrong ones."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from check_helpers import fails, rejects_remembered_answers

from checks import multi_head_attention as check

# --- exercise 1: split_heads -------------------------------------------------------------------


def split_heads(x, n_head):
    B, T, C = x.shape
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)


def test_split_heads_passes_on_a_right_answer(capsys):
    check.check_split_heads(split_heads)
    assert "✓ split_heads" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, words", [
    (lambda x, n: x.reshape(x.size(0), n, x.size(1), -1), ["without the transpose"]),
    (lambda x, n: x.reshape(*x.shape[:2], -1, n).permute(0, 3, 1, 2), ["interleaved"]),
    (lambda x, n: x.reshape(*x.shape[:2], n, -1), ["transpose is missing"]),
    (lambda x, n: x.reshape(*x.shape[:2], n, -1).transpose(2, 3), ["wrong axes", "not 2 and 3"]),
    (lambda x, n: x.reshape(*x.shape[:2], n, -1).transpose(1, 3), ["wrong axes", "not 1 and 3"]),
    (lambda x, n: x.view(*x.shape[:2], n, -1).transpose(1, 2)[..., :1], ["shape"]),
], ids=["view-without-transpose", "interleaved", "no-transpose", "transpose-2-3",
        "transpose-1-3", "wrong-shape"])
def test_split_heads_names_the_mistake(wrong, words):
    fails(check.check_split_heads, wrong, *words)


def test_an_unwritten_exercise_says_so():
    def split_heads(x, n_head):
        raise NotImplementedError

    fails(check.check_split_heads, split_heads, "not written yet")


# --- exercise 2: merge_heads -------------------------------------------------------------------


def merge_heads(y):
    B, n_head, T, d = y.shape
    return y.transpose(1, 2).contiguous().view(B, T, n_head * d)


def test_merge_heads_passes_on_a_right_answer():
    check.check_merge_heads(merge_heads)


def _merge_without_contiguous(y):
    B, n_head, T, d = y.shape
    return y.transpose(1, 2).view(B, T, n_head * d)


@pytest.mark.parametrize("wrong, words", [
    (_merge_without_contiguous, [".contiguous()"]),
    (lambda y: y.reshape(y.size(0), y.size(2), -1), ["without first moving the head axis"]),
    (lambda y: y.permute(0, 2, 3, 1).reshape(y.size(0), y.size(2), -1), ["interleaved"]),
    (lambda y: y.transpose(1, 2), ["not merged"]),
], ids=["forgot-contiguous", "view-without-transpose", "interleaved", "not-merged"])
def test_merge_heads_names_the_mistake(wrong, words):
    fails(check.check_merge_heads, wrong, *words)


# --- exercise 3: fuse_qkv ----------------------------------------------------------------------


def fuse_qkv(w_q, w_k, w_v):
    return torch.cat([torch.cat(w_q, dim=1), torch.cat(w_k, dim=1), torch.cat(w_v, dim=1)], 1).T


def test_fuse_qkv_passes_on_a_right_answer():
    check.check_fuse_qkv(fuse_qkv)


@pytest.mark.parametrize("wrong, words", [
    (lambda q, k, v: fuse_qkv(q, k, v).T, ["did not transpose", "(out_features, in_features)"]),
    (lambda q, k, v: fuse_qkv(k, q, v), ["wrong order", "K/Q/V"]),
    (lambda q, k, v: torch.cat([torch.stack(w, 2).flatten(1) for w in (q, k, v)], 1).T,
     ["interleaved"]),
    (lambda q, k, v: torch.cat([torch.cat(t, 1) for t in zip(q, k, v, strict=True)], 1).T,
     ["grouped by head"]),
], ids=["not-transposed", "k-q-v", "interleaved-heads", "grouped-by-head"])
def test_fuse_qkv_names_the_mistake(wrong, words):
    fails(check.check_fuse_qkv, wrong, *words)


# --- exercise 4: mha_parameter_count -----------------------------------------------------------


def test_parameter_count_passes_on_a_right_answer():
    check.check_mha_parameter_count(lambda C, n_head, bias=True: 4 * C**2 + (4 * C if bias else 0))


@pytest.mark.parametrize("wrong, words", [
    (lambda C, h, bias: 4 * C**2, ["biases are missing"]),
    (lambda C, h, bias: 3 * C**2 + 3 * C * bias, ["output projection"]),
    (lambda C, h, bias: 4 * C**2 + 4 * C, ["bias=False"]),
    (lambda C, h, bias: h * (4 * C**2 + 4 * C * bias), ["number of heads"]),
    (lambda C, h, bias: 4 * C**2 + 4 * C * bias + h, ["changes with the number of heads"]),
    (lambda C, h, bias: "4C² + 4C", ["should be a number"]),
], ids=["no-biases", "no-output-projection", "biases-when-bias-false", "times-heads",
        "depends-on-heads", "not-a-number"])
def test_parameter_count_names_the_mistake(wrong, words):
    fails(check.check_mha_parameter_count, wrong, *words)


# --- exercise 5: mha_forward -------------------------------------------------------------------


def _attention(x, w_qkv, b_qkv, w_out, b_out, n_head, *, scale=None, causal=True,
               order=(0, 1, 2), softmax_dim=-1, out_proj=True, split=split_heads):
    B, T, C = x.shape
    parts = (x @ w_qkv.T + b_qkv).split(C, dim=-1)
    q, k, v = (split(parts[i], n_head) for i in order)
    d = C // n_head
    scores = q @ k.transpose(-2, -1) * (1 / math.sqrt(d) if scale is None else scale)
    if causal:
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    y = merge_heads(torch.softmax(scores, dim=softmax_dim).nan_to_num() @ v)
    return y @ w_out.T + b_out if out_proj else y


def test_mha_forward_passes_on_a_right_answer():
    check.check_mha_forward(_attention)


def test_mha_forward_passes_with_the_fused_kernel():
    def mha_forward(x, w_qkv, b_qkv, w_out, b_out, n_head):
        q, k, v = (split_heads(t, n_head) for t in F.linear(x, w_qkv, b_qkv).chunk(3, dim=-1))
        return F.linear(merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True)),
                        w_out, b_out)

    check.check_mha_forward(mha_forward)


def _with(**mistake):
    return lambda x, w, b, wo, bo, n: _attention(x, w, b, wo, bo, n, **mistake)


@pytest.mark.parametrize("wrong, words", [
    (_with(causal=False), ["causal mask is missing", "future leaks"]),
    (lambda x, w, b, wo, bo, n: _attention(x, w, b, wo, bo, n, scale=1 / math.sqrt(x.size(-1))),
     ["√C", "one head"]),
    (_with(scale=1.0), ["not divided by √d"]),
    (lambda x, w, b, wo, bo, n: _attention(x, w, b, wo, bo, n, scale=n / x.size(-1)),
     ["divided by d instead of √d"]),
    (_with(softmax_dim=-2), ["softmax runs over the queries"]),
    (_with(out_proj=False), ["output projection"]),
    (_with(order=(1, 0, 2)), ["wrong thirds", "K/Q/V"]),
    (_with(order=(2, 1, 0)), ["wrong thirds", "V/K/Q"]),
    (lambda x, w, b, wo, bo, n: _attention(x, w, b * 0, wo, bo, n), ["fused QKV", "bias"]),
    (lambda x, w, b, wo, bo, n: _attention(x, w, b, wo, bo * 0, n), ["output projection's bias"]),
    (lambda x, w, b, wo, bo, n: _attention(x, w, b, wo.T, bo, n), ["untransposed"]),
    (lambda x, w, b, wo, bo, n: _attention(x, w, b, wo, bo, 1), ["one head of width C"]),
    (lambda x, w, b, wo, bo, n: _attention(
        x, torch.cat([blk.T for blk in w.split(x.size(-1))]), b, wo, bo, n),
     ["blocks of the fused weight are used untransposed"]),
    (_with(split=lambda t, n: t.reshape(t.size(0), n, t.size(1), -1)), ["split into heads"]),
    (lambda x, w, b, wo, bo, n: _attention(x, w, b, wo, bo, n, causal=False, scale=1.0),
     ["future leaks", "changing only the last token"]),
    (lambda x, w, b, wo, bo, n: _attention(x, w, b, wo, bo, n)[:, -1], ["shape"]),
], ids=["no-mask", "scale-sqrt-C", "no-scale", "scale-d", "softmax-queries", "no-out-proj",
        "k-q-v", "v-k-q", "no-qkv-bias", "no-out-bias", "w-out-untransposed", "one-head",
        "qkv-blocks-untransposed",
        "split-without-transpose", "leak-plus-another-mistake", "wrong-shape"])
def test_mha_forward_names_the_mistake(wrong, words):
    fails(check.check_mha_forward, wrong, *words)


def test_a_scale_mistake_on_top_of_another_is_still_measured():
    # sqrt(d) too large and no output bias: no single known mistake; the generic message remains
    wrong = lambda x, w, b, wo, bo, n: _attention(x, w, b, wo, bo * 0, n, scale=1.0)  # noqa: E731
    fails(check.check_mha_forward, wrong, "largest difference")


# --- every check: answers remembered for the fixed examples are not enough ---------------------


@pytest.mark.parametrize("check_function, right", [
    (check.check_split_heads, split_heads),
    (check.check_merge_heads, merge_heads),
    (check.check_fuse_qkv, fuse_qkv),
    (check.check_mha_parameter_count, lambda C, n_head, bias: 4 * C**2 + (4 * C if bias else 0)),
    (check.check_mha_forward, _attention),
], ids=["split_heads", "merge_heads", "fuse_qkv", "mha_parameter_count", "mha_forward"])
def test_checks_reject_answers_remembered_for_their_fixed_examples(check_function, right):
    rejects_remembered_answers(check_function, right)
