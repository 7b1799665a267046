"""The checks of exercises/09_sampling.ipynb pass right answers and name wrong ones."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from check_helpers import fails, rejects_remembered_answers

from checks import sampling as check
from minigpt.generate import apply_top_k, apply_top_p

NEG_INF = float("-inf")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors: one thread is as fast, and steadier on a shared machine."""


def _one_hot_argmax(logits):
    return F.one_hot(logits.argmax(dim=-1), logits.size(-1)).float()


def _keep_ranks(logits, keep_rank):
    """softmax over the tokens whose rank (0 = most probable) satisfies keep_rank(rank)."""
    order = logits.argsort(dim=-1, descending=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(logits.size(-1))
                                             .expand_as(order))
    return torch.softmax(logits.masked_fill(~keep_rank(ranks), NEG_INF), dim=-1)


# --- exercise 1: temperature -------------------------------------------------------------------


def temperature_probs(logits, tau, *, greedy=True):
    if tau == 0 and greedy:
        return _one_hot_argmax(logits)
    return torch.softmax(logits / tau, dim=-1)


def test_temperature_passes_on_a_right_answer(capsys):
    check.check_temperature(temperature_probs)
    assert "✓ temperature_probs" in capsys.readouterr().out


def test_temperature_passes_with_a_float64_answer():
    check.check_temperature(lambda z, tau: temperature_probs(z.double(), tau))


@pytest.mark.parametrize("wrong, words", [
    (lambda z, t: _one_hot_argmax(z) if t == 0 else torch.softmax(z * t, -1), ["multiplied"]),
    (lambda z, t: _one_hot_argmax(z) if t == 0 else torch.softmax(z, -1) / t,
     ["after the softmax"]),
    (lambda z, t: _one_hot_argmax(z) if t == 0 else torch.softmax(torch.softmax(z, -1) / t, -1),
     ["after the softmax", "again"]),
    (lambda z, t: _one_hot_argmax(z) if t == 0 else torch.softmax(z, -1), ["no effect"]),
    (lambda z, t: _one_hot_argmax(z) if t == 0 else z / t, ["tempered logits"]),
    (lambda z, t: _one_hot_argmax(z) if t == 0 else torch.softmax(z / t, 0), ["dim=0"]),
    (lambda z, t: temperature_probs(z, t, greedy=False), ["divides by zero", "argmax"]),
    (lambda z, t: torch.softmax(z / (1.0 / (1 / t)), -1), ["divided by zero"]),
    (lambda z, t: z.argmax(-1) if t == 0 else temperature_probs(z, t), ["argmax ids"]),
    (lambda z, t: torch.full_like(z, 1 / z.size(-1)) if t == 0 else temperature_probs(z, t),
     ["uniform"]),
    (lambda z, t: torch.softmax(z, -1) if t == 0 else temperature_probs(z, t), ["τ = 1"]),
    (lambda z, t: temperature_probs(z, t).tolist(), ["torch.Tensor"]),
], ids=["multiplied", "after-softmax", "softmax-twice", "ignored", "no-softmax", "wrong-axis",
        "nan-at-zero", "zero-division", "argmax-ids", "uniform-at-zero", "tau-one-at-zero",
        "a-list"])
def test_temperature_names_the_mistake(wrong, words):
    fails(check.check_temperature, wrong, *words)


def test_an_unwritten_exercise_says_so():
    def temperature_probs(logits, tau):
        raise NotImplementedError

    fails(check.check_temperature, temperature_probs, "not written yet")


# --- exercise 2: top-k -------------------------------------------------------------------------


def top_k_probs(logits, k):
    k = min(k, logits.size(-1))
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return torch.softmax(logits.masked_fill(logits < kth, NEG_INF), dim=-1)


def test_top_k_passes_on_right_answers():
    check.check_top_k(top_k_probs)
    check.check_top_k(lambda z, k: torch.softmax(apply_top_k(z, k), dim=-1))
    check.check_top_k(lambda z, k: _keep_ranks(z, lambda r: r < k))


def _top_k_with_zero_fill(logits, k):
    kth = logits.topk(min(k, logits.size(-1)), dim=-1).values[..., -1:]
    return torch.softmax(logits.masked_fill(logits < kth, 0.0), dim=-1)


@pytest.mark.parametrize("wrong, words", [
    (lambda z, k: _keep_ranks(z, lambda r: r <= k), ["k + 1"]),
    (lambda z, k: _keep_ranks(z, lambda r: r < k - 1) if k > 1 else top_k_probs(z, k),
     ["k - 1"]),
    (lambda z, k: _keep_ranks(z, lambda r: r >= z.size(-1) - k), ["least"]),
    (lambda z, k: torch.softmax(z, -1) * (top_k_probs(z, k) > 0), ["not renormalised"]),
    (_top_k_with_zero_fill, ["logits to 0", "-inf"]),
    (lambda z, k: torch.softmax(z, -1), ["no token was dropped"]),
    (lambda z, k: top_k_probs(z, k).log(), ["log-probabilities"]),
    (lambda z, k: apply_top_k(z, k), ["filtered logits"]),
    (lambda z, k: torch.softmax(z.masked_fill(z < z.topk(k, -1).values[..., -1:], NEG_INF), -1),
     ["min(k, V)"]),
    (lambda z, k: top_k_probs(z, k)[..., :-1], ["shape"]),
], ids=["k-plus-one", "k-minus-one", "smallest", "not-renormalised", "zero-fill", "ignored",
        "log-probabilities", "logits", "k-above-vocabulary", "shape"])
def test_top_k_names_the_mistake(wrong, words):
    fails(check.check_top_k, wrong, *words)


# --- exercise 3: top-p -------------------------------------------------------------------------


def top_p_probs(logits, p, *, descending=True, count="before", extra=0, renormalise=True,
                scatter=True):
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=descending)
    total = sorted_probs.cumsum(dim=-1)
    mass = total - sorted_probs if count == "before" else total
    m = (mass < p).sum(-1, keepdim=True) + extra
    keep_sorted = torch.arange(logits.size(-1)).expand_as(logits) < m
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted) if scatter else \
        keep_sorted
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True) if renormalise else kept


def _top_p_by_hugging_face_rule(logits, p):
    """Drop the least probable tokens while their total stays within 1 - p (another route)."""
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = probs.sort(dim=-1)  # ascending
    drop_sorted = sorted_probs.cumsum(-1) <= 1 - p
    drop_sorted[..., -1] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return torch.softmax(logits.masked_fill(drop, NEG_INF), dim=-1)


def test_top_p_passes_on_right_answers():
    check.check_top_p(top_p_probs)
    check.check_top_p(lambda z, p: torch.softmax(apply_top_p(z, p), dim=-1))
    check.check_top_p(_top_p_by_hugging_face_rule)


@pytest.mark.parametrize("wrong, words", [
    (lambda z, p: top_p_probs(z, p, count="including"), ["left out the token that crosses p"]),
    (lambda z, p: top_p_probs(z, p, extra=1).nan_to_num(), ["one token too many"]),
    (lambda z, p: top_p_probs(z, p, descending=False), ["ascending"]),
    (lambda z, p: top_p_probs(z, p, renormalise=False), ["not renormalised"]),
    (lambda z, p: top_p_probs(z, p, scatter=False), ["sorted order", "ids"]),
    (lambda z, p: torch.softmax(z, -1), ["no token was dropped"]),
    (lambda z, p: top_p_probs(z, p).log(), ["log-probabilities"]),
    (lambda z, p: apply_top_p(z, p), ["filtered logits"]),
    (lambda z, p: top_p_probs(z, min(p, 0.95)), ["row 0 gives", "nonzero probability"]),
], ids=["crossing-token-excluded", "one-too-many", "ascending", "not-renormalised",
        "not-scattered", "ignored", "log-probabilities", "logits", "other"])
def test_top_p_names_the_mistake(wrong, words):
    fails(check.check_top_p, wrong, *words)


def test_an_empty_nucleus_is_explained():
    def top_p_guarded(logits, p):  # excludes the crossing token, and hides the NaN as zeros
        return top_p_probs(logits, p, count="including").nan_to_num()

    fails(check.check_top_p, top_p_guarded, "crosses p")


# --- exercise 4: the whole rule ----------------------------------------------------------------


def sampling_probs(logits, temperature=1.0, top_k=None, top_p=None):
    if temperature == 0:
        return _one_hot_argmax(logits)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_k is not None:
        probs = top_k_probs(probs.log(), top_k)
    if top_p is not None:
        probs = top_p_probs(probs.log(), top_p)
    return probs


def _rule(order="k then p", temper="before"):
    def wrong(logits, temperature=1.0, top_k=None, top_p=None):
        if temperature == 0:
            return _one_hot_argmax(logits)
        z = {"before": logits / temperature, "after": logits, "times": logits * temperature,
             "ignored": logits}[temper]
        steps = [lambda z: top_k_probs(z, top_k).log() if top_k else z,
                 lambda z: top_p_probs(z, top_p).log() if top_p else z]
        for step in steps if order == "k then p" else steps[::-1]:
            z = step(z)
        if temper == "after":
            z = torch.where(torch.isfinite(z), logits / temperature, NEG_INF)
        return torch.softmax(z, dim=-1)
    return wrong


def test_sampling_probs_passes_on_right_answers():
    def with_the_package(logits, temperature=1.0, top_k=None, top_p=None):
        if temperature == 0:
            return _one_hot_argmax(logits)
        z = logits / temperature
        z = apply_top_k(z, top_k) if top_k else z
        return torch.softmax(apply_top_p(z, top_p) if top_p else z, dim=-1)

    check.check_sampling_probs(sampling_probs)
    check.check_sampling_probs(with_the_package)
    check.check_sampling_probs(_rule())


@pytest.mark.parametrize("wrong, words", [
    (_rule(temper="after"), ["temper first"]),
    (_rule(order="p then k"), ["top-p ran before top-k"]),
    (_rule(temper="times"), ["multiplied"]),
    (_rule(temper="ignored"), ["temperature has no effect"]),
    (lambda z, t=1.0, k=None, p=None: sampling_probs(z, t, None, p), ["top_k has no effect"]),
    (lambda z, t=1.0, k=None, p=None: sampling_probs(z, t, k, None), ["top_p has no effect"]),
    (lambda z, t=1.0, k=None, p=None: torch.softmax(z / t, -1) if t == 0 else
     sampling_probs(z, t, k, p), ["temperature 0", "greedy"]),
], ids=["truncated-before-temperature", "p-before-k", "multiplied", "no-temperature",
        "no-top-k", "no-top-p", "zero-temperature"])
def test_sampling_probs_names_the_mistake(wrong, words):
    fails(check.check_sampling_probs, wrong, *words)


# --- exercise 5: distinct-n --------------------------------------------------------------------


def distinct_n(samples, n):
    grams = [tuple(ids[i:i + n]) for ids in samples for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams)


def test_distinct_n_passes_on_right_answers():
    check.check_distinct_n(distinct_n)
    check.check_distinct_n(lambda samples, n: torch.tensor(distinct_n(samples, n)))


def _per_sample_average(samples, n):
    return sum(distinct_n([ids], n) for ids in samples if len(ids) >= n) / len(samples)


def _joined(samples, n):
    return distinct_n([[t for ids in samples for t in ids]], n)


def _summed_sets(samples, n):
    grams = [[tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)] for ids in samples]
    return sum(len(set(g)) for g in grams) / sum(len(g) for g in grams)


def _window_one_short(samples, n):
    grams = [tuple(ids[i:i + n]) for ids in samples for i in range(len(ids) - n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _unordered(samples, n):
    grams = [frozenset(ids[i:i + n]) for ids in samples for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams)


@pytest.mark.parametrize("wrong, words", [
    (_joined, ["concatenated"]),
    (_per_sample_average, ["averaged"]),
    (lambda s, n: sum(distinct_n([ids], n) for ids in s) / len(s), ["averaged"]),
    (lambda s, n: distinct_n(s, n) if min(map(len, s)) >= n else 1 / 0, ["divided by zero"]),
    (_summed_sets, ["counted twice"]),
    (_window_one_short, ["one short"]),
    (_unordered, ["order"]),
    (lambda s, n: len({tuple(ids[i:i + n]) for ids in s for i in range(len(ids) - n + 1)}),
     ["number of distinct n-grams"]),
    (lambda s, n: distinct_n(s, n) * sum(len(ids) - n + 1 for ids in s if len(ids) >= n)
     / sum(len(ids) for ids in s), ["number of tokens"]),
    (lambda s, n: 1 - distinct_n(s, n), ["1 - distinct-n"]),
    (lambda s, n: 0.5, ["pooled", "eq. 9.7"]),
    (lambda s, n: None, ["None"]),
], ids=["concatenated", "per-sample-average", "averaged-then-zero-division", "zero-division",
        "summed-sets", "window",
        "unordered", "count", "per-token", "one-minus", "constant", "no-return"])
def test_distinct_n_names_the_mistake(wrong, words):
    fails(check.check_distinct_n, wrong, *words)


# --- exercise 6: the KV cache ------------------------------------------------------------------


def attend_with_cache(layer, x, cache, *, append="before", mask="offset", dim=2, scale=None,
                      store=True, front=False):
    B, T, C = x.shape
    q, k, v = layer.qkv_proj(x).split(C, dim=-1)
    q, k, v = layer.split_heads(q), layer.split_heads(k), layer.split_heads(v)  # (B, nh, T, hd)
    new = (k, v)
    if cache is not None:
        joined = [torch.cat([new_t, old], dim) if front else torch.cat([old, new_t], dim)
                  for old, new_t in zip(cache, new, strict=True)]
    else:
        joined = list(new)
    keys, values = joined if append == "before" or cache is None else cache
    S = keys.size(2)
    start = (cache[0].size(2) if cache is not None else 0)
    scores = q @ keys.transpose(-2, -1) * (scale or 1 / math.sqrt(q.size(-1)))
    if mask == "offset":
        allowed = torch.arange(S)[None, :] <= torch.arange(start, start + T)[:, None]
    elif mask == "top-left":
        allowed = torch.ones(T, S, dtype=torch.bool).tril()
    else:
        allowed = torch.ones(T, S, dtype=torch.bool)
    weights = scores.masked_fill(~allowed, NEG_INF).softmax(dim=-1)
    y = layer.out_proj(layer.merge_heads(weights @ values))
    return y, (tuple(joined) if store else cache if cache is not None else new)


def test_kv_cache_passes_on_right_answers():
    from minigpt.attention import scaled_dot_product_attention

    def with_the_package_formula(layer, x, cache):
        q, k, v = layer.qkv_proj(x).split(x.size(-1), dim=-1)
        q, k, v = layer.split_heads(q), layer.split_heads(k), layer.split_heads(v)
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        y = scaled_dot_product_attention(q, k, v, is_causal=cache is None)
        return layer.out_proj(layer.merge_heads(y)), (k, v)

    check.check_kv_cache(attend_with_cache)
    check.check_kv_cache(with_the_package_formula)


def _prefill_without_mask(layer, x, cache):
    return attend_with_cache(layer, x, cache, mask="offset" if cache is not None else "none")


def _is_causal_every_step(layer, x, cache):
    q, k, v = layer.qkv_proj(x).split(x.size(-1), dim=-1)
    q, k, v = layer.split_heads(q), layer.split_heads(k), layer.split_heads(v)
    if cache is not None:
        k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # top-left: sees key 0 only
    return layer.out_proj(layer.merge_heads(y)), (k, v)


def _cache_in_model_layout(layer, x, cache):
    y, (k, v) = attend_with_cache(layer, x, cache)
    return y, (layer.merge_heads(k), layer.merge_heads(v))


@pytest.mark.parametrize("wrong, words", [
    (_prefill_without_mask, ["causal mask is missing in the prefill"]),
    (lambda layer, x, c: attend_with_cache(layer, x, c, append="after"),
     ["does not attend to itself"]),
    (_is_causal_every_step, ["top-left"]),
    (lambda layer, x, c: attend_with_cache(layer, x, c, dim=1), ["torch.cat failed", "dim=2"]),
    (lambda layer, x, c: attend_with_cache(layer, x, c, store=False), ["did not grow"]),
    (lambda layer, x, c: attend_with_cache(layer, x, c, front=True), ["in front"]),
    (lambda layer, x, c: attend_with_cache(layer, x, c, scale=1.0), ["√head_dim"]),
    (lambda layer, x, c: attend_with_cache(layer, x, c, scale=1 / math.sqrt(x.size(-1))), ["√C"]),
    (lambda layer, x, c: (lambda y, kv: (y, kv[::-1]))(*attend_with_cache(layer, x, c)),
     ["values where the keys belong"]),
    (_cache_in_model_layout, ["split into heads"]),
    (lambda layer, x, c: attend_with_cache(layer, x, c)[0], ["(y, cache)"]),
], ids=["prefill-unmasked", "appended-after", "top-left-mask", "wrong-cat-dim", "not-stored",
        "prepended", "no-scale", "scale-sqrt-C", "k-v-swapped", "cache-layout", "no-cache"])
def test_kv_cache_names_the_mistake(wrong, words):
    fails(check.check_kv_cache, wrong, *words)


def test_a_cache_that_grows_along_the_wrong_axis_is_named(monkeypatch):
    def heads_axis(layer, x, cache):  # a one-token prompt makes torch.cat along dim 1 succeed
        y, (k, v) = attend_with_cache(layer, x, cache)
        if cache is not None:
            k, v = torch.cat([cache[0], k[:, :, -1:]], 1), torch.cat([cache[1], v[:, :, -1:]], 1)
        return y, (k, v)

    monkeypatch.setattr(check, "CACHE_CASES", [(1, 1, 4)])
    fails(check.check_kv_cache, heads_axis, "dim 1", "dim 2")


# --------------------------------------------------------------------------- fresh cases


@pytest.mark.parametrize("check_function, right", [
    (check.check_temperature, temperature_probs),
    (check.check_top_k, top_k_probs),
    (check.check_top_p, top_p_probs),
    (check.check_sampling_probs, sampling_probs),
    (check.check_distinct_n, distinct_n),
    (check.check_kv_cache, attend_with_cache),
], ids=["temperature", "top_k", "top_p", "sampling_probs", "distinct_n", "kv_cache"])
def test_checks_reject_answers_remembered_for_their_fixed_examples(check_function, right):
    rejects_remembered_answers(check_function, right)
