"""Checks for exercises/03_attention.ipynb, which practises notebooks/03_attention.ipynb.

Each check calls the learner's function on seeded inputs, compares it with
`minigpt.attention` and with PyTorch's `F.scaled_dot_product_attention` / `torch.softmax`, and
recomputes the typical wrong answers — no √d_k, d_k instead of √d_k, the softmax over the wrong
axis, a mask that is inverted, transposed or leaks the future — to say which one it is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from checks.core import (
    CheckFailed,
    as_number,
    as_tensor,
    call,
    close,
    close_or_diagnose,
    diagnose,
    fresh_case,
    fresh_seed,
    passed,
    require,
    require_measured,
    same_shape,
)

# ---------------------------------------------------------------------------------------------
# Exercise 1: measure the variance of the scores, eq. (3.3)


def check_score_variances(score_variances) -> None:
    """`score_variances(d_k, n_pairs)` -> (Var(q·k), Var(q·k/√d_k)) over random unit pairs."""
    n_pairs = 4000
    for d_k in (4, 64, 512):
        torch.manual_seed(d_k)
        raw, scaled = _variances_of(score_variances, d_k, n_pairs)
        _check_raw_variance(raw, d_k)
        _check_scaled_variance(scaled, d_k)
    _check_measured(score_variances)
    seed = fresh_seed()
    with fresh_case(seed):  # a d_k that no one could know in advance
        d_k = 5 + seed % 300
        raw, scaled = _variances_of(score_variances, d_k, n_pairs)
        _check_raw_variance(raw, d_k)
        _check_scaled_variance(scaled, d_k)
    passed("score_variances")


def _variances_of(score_variances, d_k: int, n_pairs: int) -> tuple[float, float]:
    result = call(score_variances, d_k, n_pairs)
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise CheckFailed("score_variances should return two numbers: (raw, scaled)")
    raw, scaled = (as_number(value, name) for value, name in zip(
        result, ("the raw variance", "the scaled variance"), strict=True))
    return raw, scaled


# The spread of a variance measured on few pairs: q·k has variance d_k and fourth moment
# 3d_k² + 6d_k, so the sample variance of n of them has standard deviation about
# √((2d_k² + 6d_k) / n), i.e. d_k·√((2 + 6/d_k) / n) (and the same relative spread after /√d_k).
SPREAD_D_K, SPREAD_PAIRS, SPREAD_SEEDS = 16, 64, 16


def _check_measured(score_variances) -> None:
    """Under different seeds a measurement on 64 pairs must move, by about its sampling noise:
    a function that returns (d_k, 1.0), or seeds itself, does not."""
    d_k, n = SPREAD_D_K, SPREAD_PAIRS
    first = fresh_seed()
    raws, scaleds = [], []
    with torch.random.fork_rng(devices=[]):  # the learner's global RNG comes back unchanged
        for seed in range(first, first + SPREAD_SEEDS):
            torch.manual_seed(seed)
            raw, scaled = _variances_of(score_variances, d_k, n)
            raws.append(raw)
            scaleds.append(scaled)
    relative = math.sqrt((2 + 6 / d_k) / n)
    call_text = f"score_variances({d_k}, n_pairs={n})"
    require_measured(raws, f"the raw variance of {call_text}", n, d_k * relative)
    require_measured(scaleds, f"the scaled variance of {call_text}", n, relative)


def _near(value: float, target: float, rel: float = 0.15) -> bool:
    return abs(value / target - 1) < rel


def _check_raw_variance(raw: float, d_k: int) -> None:
    if _near(raw, d_k):
        return
    if _near(raw, math.sqrt(d_k)):
        raise CheckFailed(f"for d_k = {d_k} the raw score spread is {raw:.3g} ≈ √d_k: that is "
                          "the standard deviation (.std()); the exercise asks for the variance "
                          "(.var())")
    if _near(raw, 1.0):
        raise CheckFailed(f"for d_k = {d_k} the raw variance is {raw:.3g} ≈ 1, but a dot "
                          f"product adds d_k = {d_k} terms of variance 1: sum over the last "
                          "axis, q·k = (q * k).sum(dim=-1), then take the variance over the "
                          "pairs")
    raise CheckFailed(f"for d_k = {d_k}, Var(q·k) should be close to d_k = {d_k} for entries "
                      f"of mean 0 and variance 1 (torch.randn), got {raw:.4g}")


def _check_scaled_variance(scaled: float, d_k: int) -> None:
    if _near(scaled, 1.0):
        return
    diagnosis = {
        1 / d_k: f"≈ 1/d_k: you divided by d_k, not √d_k; Var(q·k/d_k) = d_k/d_k² = 1/{d_k}",
        float(d_k): "≈ d_k: the scores were not divided by √d_k",
        d_k**2: "≈ d_k²: the scores were multiplied by √d_k instead of divided",
        1 / math.sqrt(d_k): "≈ 1/√d_k: that is a standard deviation of q·k/d_k; divide by "
                            "√d_k and take the variance",
        math.sqrt(d_k): "≈ √d_k: the scale was applied to the variance instead of the scores "
                        "(Var(q·k)/√d_k); scale the scores, then take the variance",
    }
    for target, message in diagnosis.items():
        if _near(scaled, target):
            raise CheckFailed(f"for d_k = {d_k} the scaled variance is {scaled:.3g} {message}")
    raise CheckFailed(f"for d_k = {d_k}, Var(q·k/√d_k) should be close to 1, got {scaled:.4g}")


# ---------------------------------------------------------------------------------------------
# The reference of eq. (3.4), and the typical ways it goes wrong


def _attend(q, k, v, allowed=None, scale="sqrt", dim=-1, fill=-math.inf, after_softmax=False):
    """softmax(QKᵀ·scale + M) V with switchable mistakes; returns (out, weights)."""
    d_k = q.size(-1)
    factor = {"sqrt": 1 / math.sqrt(d_k), "none": 1.0, "d_k": 1 / d_k,
              "times": math.sqrt(d_k)}[scale]
    scores = q @ k.transpose(-2, -1) * factor  # (B, L, S)
    if allowed is not None and not after_softmax:
        scores = scores.masked_fill(~allowed, fill)
    weights = torch.softmax(scores, dim=dim)
    if allowed is not None and after_softmax:
        weights = weights * allowed
    return weights @ v, weights


def _scale_mistakes(q, k, v, allowed) -> dict:
    return {
        "the scores are not divided by √d_k (eq. 3.3)": _attend(q, k, v, allowed, "none"),
        "the scores are divided by d_k instead of √d_k (eq. 3.3)": _attend(q, k, v, allowed,
                                                                          "d_k"),
        "the scores are multiplied by √d_k instead of divided": _attend(q, k, v, allowed,
                                                                       "times"),
        "the softmax runs over the wrong axis (the queries, dim=-2); each query's weights over "
        "the keys must sum to 1, so use dim=-1": _attend(q, k, v, allowed, dim=-2),
    }


def _attention_result(result, what: str):
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise CheckFailed(f"{what} should return two tensors, (output, weights)")
    out, weights = result
    return as_tensor(out, "the output"), as_tensor(weights, "the weights")


def _compare(result, expected, mistakes: dict, where: str) -> None:
    """Weights first (they show a mistake most plainly), then the output."""
    out, weights = result
    same_shape(weights, expected[1], f"the weights {where} (B, L, S)")
    same_shape(out, expected[0], f"the output {where} (B, L, d_v)")
    close_or_diagnose(weights, expected[1], f"the weights {where}",
                      {m: pair[1] for m, pair in mistakes.items() if pair is not None})
    close_or_diagnose(out, expected[0], f"the output {where}",
                      {m: pair[0] for m, pair in mistakes.items() if pair is not None})


# ---------------------------------------------------------------------------------------------
# Exercise 2: attention with a padding mask, eq. (3.4)


def check_padded_attention(attention) -> None:
    """`attention(q, k, v, key_mask)` -> (out, weights); key_mask (B, S) True = a real token."""
    generator = torch.Generator().manual_seed(0)
    cases = [(2, 3, 5, 16, 3, [4, 2]), (3, 4, 4, 9, 2, [1, 3, 2]), (1, 2, 6, 1, 4, [5])]
    for B, L, S, d_k, d_v, lengths in cases:
        _check_padded_case(attention, generator, B, L, S, d_k, d_v, lengths)
    with fresh_case(fresh_seed()) as generator:  # sizes and lengths no one knew in advance
        B, L, S, d_k, d_v = (int(torch.randint(low, high, (), generator=generator))
                             for low, high in ((1, 4), (1, 6), (2, 8), (2, 20), (1, 6)))
        lengths = torch.randint(1, S + 1, (B,), generator=generator).tolist()
        _check_padded_case(attention, generator, B, L, S, d_k, d_v, lengths)
    passed("padded attention")


def _check_padded_case(attention, generator, B, L, S, d_k, d_v, lengths) -> None:
    from minigpt.attention import scaled_dot_product_attention

    q = 2 * torch.randn(B, L, d_k, generator=generator)
    k = 2 * torch.randn(B, S, d_k, generator=generator)
    v = torch.randn(B, S, d_v, generator=generator)
    key_mask = torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]  # (B, S)
    allowed = key_mask[:, None, :]  # (B, 1, S): the same keys for every query
    expected = _attend(q, k, v, allowed)
    package = scaled_dot_product_attention(q, k, v, mask=allowed, return_weights=True)
    torch_out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    torch.testing.assert_close(package[0], expected[0])  # the references agree
    torch.testing.assert_close(torch_out, expected[0], rtol=1e-4, atol=1e-5)

    result = _attention_result(call(attention, q.clone(), k.clone(), v.clone(),
                                    key_mask.clone()), "attention")
    where = f"for B = {B}, L = {L}, S = {S}, d_k = {d_k}, key lengths {lengths}"
    mistakes = _scale_mistakes(q, k, v, allowed)
    mistakes.update({
        "the mask is inverted: True in key_mask marks a real token that may be attended; "
        "you masked the real tokens and kept the padding": _attend(q, k, v, ~allowed),
        "the padded keys still get weight: the mask was not applied to the scores":
            _attend(q, k, v, None),
        "the padded keys were zeroed after the softmax, so the weights no longer sum to 1: "
        "mask the scores with -inf *before* the softmax": _attend(q, k, v, allowed,
                                                                   after_softmax=True),
        "masked scores were set to 0, but exp(0) = 1 still gives a padded key weight: fill "
        "them with -inf (float('-inf'))": _attend(q, k, v, allowed, fill=0.0),
    })
    _compare(result, expected, mistakes, where)
    _no_weight_on_padding(result[1], key_mask, where)


def _no_weight_on_padding(weights, key_mask, where) -> None:
    on_padding = weights.detach().masked_select(~key_mask[:, None, :].expand_as(weights))
    largest = on_padding.abs().max().item() if on_padding.numel() else 0.0
    require(largest == 0, f"padded keys get weight {largest:.3g} {where}; it must be exactly 0 "
                          "(fill their scores with -inf, not a large negative number)")


# ---------------------------------------------------------------------------------------------
# Exercise 3: causal attention that does not leak the future, eq. (3.5)


def check_causal_attention(causal_attention) -> None:
    """`causal_attention(q, k, v)` -> (out, weights), query i attending to keys j <= i only."""
    generator = torch.Generator().manual_seed(0)
    for B, T, d_k in [(2, 6, 16), (1, 1, 4), (3, 4, 9)]:
        _check_causal_case(causal_attention, generator, B, T, d_k)
    with fresh_case(fresh_seed()) as generator:  # sizes no one knew in advance
        B, T, d_k = (int(torch.randint(low, high, (), generator=generator))
                     for low, high in ((1, 4), (3, 10), (2, 20)))
        _check_causal_case(causal_attention, generator, B, T, d_k)
    passed("causal attention")


def _check_causal_case(causal_attention, generator, B, T, d_k) -> None:
    from minigpt.attention import causal_mask, scaled_dot_product_attention

    q, k, v = (2 * torch.randn(B, T, d_k, generator=generator) for _ in range(3))
    allowed = causal_mask(T, T)  # (T, T), True where j <= i
    expected = _attend(q, k, v, allowed)
    package = scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
    torch.testing.assert_close(package[1], expected[1])  # the references agree
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, is_causal=True),
                               expected[0], rtol=1e-4, atol=1e-5)

    result = _attention_result(call(causal_attention, q.clone(), k.clone(), v.clone()),
                               "causal_attention")
    where = f"for B = {B}, T = {T}, d_k = {d_k}"
    _check_causal_weights(result[1], expected[1], q, k, v, allowed, where)
    _check_no_leak(causal_attention, q, k, v)
    _compare(result, expected, _scale_mistakes(q, k, v, allowed), where)


def _check_causal_weights(weights, expected, q, k, v, allowed, where) -> None:
    T = allowed.size(0)
    same_shape(weights, expected, f"the weights {where} (B, T, T)")
    weights = weights.detach()
    if torch.allclose(weights, expected, rtol=1e-4, atol=1e-5):
        return
    diagnosis = diagnose(weights, {
        "no mask was applied: every query sees every key, the future included":
            _attend(q, k, v, None)[1],
        "the mask is transposed: query i sees the keys j >= i (the future) instead of "
        "j <= i; build it with torch.tril, not torch.triu": _attend(q, k, v, allowed.T)[1],
        "query i also sees key i + 1, one step of the future: the mask must allow exactly "
        "j <= i (torch.tril with diagonal=0)":
            _attend(q, k, v, torch.ones(T, T, dtype=torch.bool).tril(1))[1],
        "the masked scores were set to 0, but exp(0) = 1 still gives the future weight: fill "
        "them with -inf before the softmax": _attend(q, k, v, allowed, fill=0.0)[1],
        "the future was zeroed after the softmax, so the rows no longer sum to 1: mask the "
        "scores with -inf before the softmax": _attend(q, k, v, allowed, after_softmax=True)[1],
    })
    if diagnosis:
        raise CheckFailed(f"the weights {where}: {diagnosis}")
    self_weight = weights.diagonal(0, 1, 2)[:, 1:]  # (B, T - 1): query i on key i, i >= 1
    if torch.isnan(weights[:, 0]).any() or (T > 1 and (self_weight == 0).all()):
        raise CheckFailed(
            f"the weights {where}: the diagonal is masked out — position i may attend to "
            "itself (j <= i, not j < i); otherwise query 0 has no key at all and its row is "
            "NaN")
    future = weights.masked_select(~allowed.expand_as(weights))
    if future.numel() and future.abs().max() > 0:
        i, j = (~allowed & (weights.abs().amax(0) > 0)).nonzero()[0].tolist()
        raise CheckFailed(f"the mask leaks the future {where}: query {i} gives key {j} > {i} "
                          f"the weight {weights[:, i, j].abs().max().item():.3g}; every j > i "
                          "must get exactly 0")


def _check_no_leak(causal_attention, q, k, v) -> None:
    """Rewrite the keys and values from position p on: outputs before p must not move."""
    T = q.size(1)
    if T < 3:
        return
    p = T // 2
    k_new, v_new = k.clone(), v.clone()
    k_new[:, p:] = torch.randn(k_new[:, p:].shape, generator=torch.Generator().manual_seed(5))
    v_new[:, p:] = 10 * torch.randn(v_new[:, p:].shape,
                                    generator=torch.Generator().manual_seed(6))
    before = as_tensor(call(causal_attention, q, k, v)[0], "the output")
    after = as_tensor(call(causal_attention, q, k_new, v_new)[0], "the output")
    moved = (after[:, :p] - before[:, :p]).abs().amax(dim=(0, 2))
    if (moved > 0).any():
        first = int((moved > 0).nonzero()[0])
        raise CheckFailed(f"the mask leaks the future: changing the keys and values of "
                          f"positions {p}..{T - 1} changed the output at position {first}")


# ---------------------------------------------------------------------------------------------
# Exercise 4: a softmax that cannot overflow, eq. (3.6)


def check_stable_softmax(softmax) -> None:
    """`softmax(scores)` over the last axis: finite for huge scores, zeros for an all -inf row."""
    generator = torch.Generator().manual_seed(0)
    inf = math.inf
    cases = {
        "a square (4, 4) tensor of ordinary scores": torch.randn(4, 4, generator=generator),
        "scores near +1000 and near -1000 in two rows of one tensor":
            torch.tensor([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]]),
        "a row spanning -100 to 80": torch.tensor([[-100.0, 0.0, 80.0]]),
        "scores of size 1e30": 1e30 * torch.randn(3, 5, generator=generator),
        "a (2, 3, 5) batch": 3 * torch.randn(2, 3, 5, generator=generator),
        "masked scores (some -inf)": torch.tensor([[0.5, -inf, 2.0, -inf], [-inf, 1.0, 1.0, 3.0]]),
        "a row whose every score is -inf (all keys masked)":
            torch.tensor([[1.0, 2.0, 3.0], [-inf, -inf, -inf]]),
    }
    for name, scores in cases.items():
        _check_softmax_case(softmax, name, scores)
    with fresh_case(fresh_seed()) as generator:  # scores no one knew in advance
        rows, width = (int(torch.randint(low, high, (), generator=generator))
                       for low, high in ((2, 6), (2, 9)))
        scale = 10.0 ** float(torch.randint(0, 4, (), generator=generator))
        scores = scale * torch.randn(rows, width, generator=generator)
        scores[torch.rand(rows, width, generator=generator) < 0.3] = -inf  # some masked keys
        scores[0] = -inf  # and one row with no key at all
        _check_softmax_case(softmax, f"a ({rows}, {width}) tensor of scores of size {scale:g} "
                            "with masked keys and an all -inf first row", scores)
    passed("stable_softmax")


def _check_softmax_case(softmax, name: str, scores: torch.Tensor) -> None:
    from minigpt.attention import stable_softmax

    got = as_tensor(call(softmax, scores.clone()), "the softmax")
    expected = stable_softmax(scores)  # the package, eq. (3.6) with the empty-row rule
    finite_rows = torch.isfinite(scores.amax(dim=-1))
    # PyTorch, an independent implementation, on every row that has an allowed key
    torch.testing.assert_close(torch.softmax(scores, -1)[finite_rows], expected[finite_rows])
    if got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-5, atol=1e-7):
        return
    same_shape(got, expected, f"the softmax of {name}")
    rows_right = torch.allclose(got[finite_rows], expected[finite_rows], rtol=1e-5, atol=1e-7)
    if rows_right and torch.isnan(got[~finite_rows]).any():
        raise CheckFailed(
            f"the softmax of {name}: the all -inf row is NaN (its max is -inf, and "
            "-inf - (-inf) = NaN). Define its weights as zeros, as minigpt does: subtract "
            "0 where the row max is -inf, and divide by 1 where the sum is 0")
    diagnosis = diagnose(got, _softmax_mistakes(scores), rtol=1e-5, atol=1e-7)
    if diagnosis:
        raise CheckFailed(f"the softmax of {name}: {diagnosis}")
    if not torch.isfinite(got[finite_rows]).all():
        raise CheckFailed(f"the softmax of {name} has NaN or inf: exp() overflowed; "
                          "subtract each row's max first (eq. 3.6)")
    close(got, expected, f"the softmax of {name}", rtol=1e-5, atol=1e-7)


def _softmax_mistakes(scores) -> dict:
    def naive(s, dim=-1):
        e = torch.exp(s)
        return e / e.sum(dim=dim, keepdim=True)

    def shifted(s, shift):
        e = torch.exp(s - shift)
        return e / e.sum(dim=-1, keepdim=True)

    mistakes = {
        "exp() overflowed to inf (inf/inf = NaN): subtract each row's max before exp(), "
        "eq. (3.6)": naive(scores),
        "you subtracted the max of the whole tensor; a row far below it underflows to 0/0 = "
        "NaN. Subtract each row's own max: s.amax(dim=-1, keepdim=True)":
            shifted(scores, scores.max()),
        "the softmax runs over the wrong axis: normalise over the last axis (dim=-1)":
            torch.softmax(scores, dim=0) if scores.dim() > 1 else None,
        "you subtracted the row mean; only the row max makes every exponent <= 0, so exp() "
        "can still overflow": shifted(scores, scores.mean(dim=-1, keepdim=True)),
        "you subtracted the row min, which makes every exponent >= 0: exp() overflows sooner. "
        "Subtract the row max": shifted(scores, scores.amin(dim=-1, keepdim=True)),
    }
    if scores.dim() == 2 and scores.size(0) == scores.size(1):
        mistakes["keep the max's dimension: s.amax(dim=-1) has shape (T,), and s - it "
                 "subtracts row j's max from column j; use keepdim=True"] = (
            shifted(scores, scores.amax(dim=-1)))
        e = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
        mistakes["keep the sum's dimension: e.sum(dim=-1) has shape (T,), and e / it divides "
                 "column j by row j's sum; use keepdim=True"] = e / e.sum(dim=-1)
    finite_rows = torch.isfinite(scores.amax(dim=-1))
    if not finite_rows.all():  # the empty row: -1e9-style masking would give uniform weights
        uniform = torch.where(finite_rows[..., None], torch.softmax(scores, -1),
                              torch.full_like(scores, 1 / scores.size(-1)))
        mistakes["the all -inf row got uniform weights over its (masked) keys; minigpt gives "
                 "a row with no allowed key all-zero weights, so it gathers nothing"] = uniform
    return mistakes
