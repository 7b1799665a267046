"""Checks for exercises/04_multi_head_attention.ipynb (course notebook 04, eqs. 4.1-4.6).

Each check runs the learner's function on small seeded inputs, compares it with
`minigpt.attention.MultiHeadAttention` and with an independent reference (slicing by hand,
`torch.nn.MultiheadAttention`), and names the typical mistake when the answer reproduces one.
"""

from __future__ import annotations

import itertools
import math

import torch

from checks.core import (
    CheckFailed,
    call,
    close_or_diagnose,
    diagnose,
    fresh_case,
    fresh_seed,
    passed,
    require,
)

# (B, T, n_head, head_dim): the first has all sizes distinct, so a transpose in the wrong place
# shows in the shape; then a single token and a single head, where split and merge are trivial.
SPLIT_SHAPES = [(2, 5, 3, 4), (1, 7, 4, 2), (3, 1, 2, 6), (2, 4, 1, 8)]
# (B, T, C, n_head) for the full layer: several heads, one head, and a single token
MHA_SHAPES = [(2, 5, 12, 3), (1, 6, 16, 4), (2, 4, 8, 1), (3, 1, 8, 2)]

VIEW_HINT = (
    "a `.view(...)` failed because its input is not contiguous in memory: `transpose` only "
    "changes the strides, so the numbers of one token's heads are no longer side by side. Call "
    "`.contiguous()` after the transpose and before the view (or use `.reshape`, which copies "
    "when it must)"
)


def _seeded_randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _fresh_sizes(generator, *ranges) -> list[int]:
    """One integer from each [low, high) range, drawn with `generator`."""
    return [int(torch.randint(low, high, (), generator=generator)) for low, high in ranges]


def _run(function, *args):
    """`core.call`, plus a specific message for the classic "forgot .contiguous()" error."""
    try:
        return call(function, *args)
    except RuntimeError as error:
        if "view size is not compatible" in str(error):
            raise CheckFailed(f"`{function.__name__}`: {VIEW_HINT}") from None
        raise


def _package_layer(n_embd: int, n_head: int, bias: bool = True):
    from minigpt import GPTConfig
    from minigpt.attention import MultiHeadAttention

    return MultiHeadAttention(GPTConfig(n_embd=n_embd, n_head=n_head, block_size=16, bias=bias))


# ---------------------------------------------------------------------------------------------
# Exercise 1: split into heads


def check_split_heads(split_heads) -> None:
    """split_heads(x, n_head): (B, T, C) -> (B, n_head, T, C / n_head), head i = features i·d.."""
    for number, (B, T, n_head, head_dim) in enumerate(SPLIT_SHAPES):
        _check_split_case(split_heads, _seeded_randn(B, T, n_head * head_dim, seed=number), n_head)
    with fresh_case(fresh_seed()) as generator:  # sizes no one knew in advance
        B, T, n_head, head_dim = _fresh_sizes(generator, (1, 4), (2, 9), (2, 6), (2, 7))
        _check_split_case(split_heads, torch.randn(B, T, n_head * head_dim,
                                                   generator=generator), n_head)
    passed("split_heads")


def _check_split_case(split_heads, x, n_head) -> None:
    B, T, C = x.shape
    head_dim = C // n_head
    out = _run(split_heads, x.clone(), n_head)
    expected = _package_layer(C, n_head).split_heads(x)
    by_hand = torch.stack([x[..., i * head_dim:(i + 1) * head_dim] for i in range(n_head)], 1)
    torch.testing.assert_close(expected, by_hand)  # the package against plain slicing
    close_or_diagnose(out, expected, f"split_heads(x, n_head={n_head}) for x of shape "
                      f"{tuple(x.shape)}", _split_mistakes(x, B, T, n_head, head_dim))


def _split_mistakes(x, B, T, n_head, head_dim) -> dict:
    return {
        "right shape, wrong numbers: you viewed (B, T, C) straight as (B, n_head, T, head_dim) "
        "without the transpose, which cuts the memory in the wrong places (head 0 gets the "
        "first T·head_dim numbers, all features of the first tokens). View as (B, T, n_head, "
        "head_dim) first, then swap axes 1 and 2 (section 3 of the notebook)":
            x.reshape(B, n_head, T, head_dim),
        "right shape, wrong numbers: the heads are interleaved. You split C as (head_dim, n_head), "
        "so head i got features i, i + n_head, ...; head i owns the block of features "
        "i·head_dim .. (i+1)·head_dim - 1, so view as (B, T, n_head, head_dim)":
            x.reshape(B, T, head_dim, n_head).permute(0, 3, 1, 2),
        "the view is right but the transpose is missing: you return (B, T, n_head, head_dim); "
        "swap the time and head axes (1 and 2) so that the last two axes are one head's "
        "(T, head_dim) matrix": x.reshape(B, T, n_head, head_dim),
        "the transpose swapped the wrong axes: you return (B, T, head_dim, n_head); swap axes 1 "
        "and 2 (time and head), not 2 and 3": x.reshape(B, T, n_head, head_dim).transpose(2, 3),
        "the transpose swapped the wrong axes: you return (B, head_dim, n_head, T); swap axes 1 "
        "and 2 (time and head), not 1 and 3": x.reshape(B, T, n_head, head_dim).transpose(1, 3),
    }


# ---------------------------------------------------------------------------------------------
# Exercise 2: merge the heads back


def check_merge_heads(merge_heads) -> None:
    """merge_heads(y): (B, n_head, T, head_dim) -> (B, T, C), the Concat of eq. (4.3)."""
    for number, (B, T, n_head, head_dim) in enumerate(SPLIT_SHAPES):
        y = _seeded_randn(B, n_head, T, head_dim, seed=10 + number)
        _check_merge_once(merge_heads, y, f"merge_heads(y) for y of shape {tuple(y.shape)}")
    # an input that is itself a transposed view, as a split produces it
    B, T, n_head, head_dim = SPLIT_SHAPES[0]
    y = _seeded_randn(B, T, n_head, head_dim, seed=20).transpose(1, 2)
    _check_merge_once(merge_heads, y, "merge_heads(y) for a non-contiguous y (a transposed view)")
    with fresh_case(fresh_seed()) as generator:  # sizes no one knew in advance
        B, T, n_head, head_dim = _fresh_sizes(generator, (1, 4), (2, 9), (2, 6), (2, 7))
        y = torch.randn(B, T, n_head, head_dim, generator=generator).transpose(1, 2)
        _check_merge_once(merge_heads, y, f"merge_heads(y) for y of shape {tuple(y.shape)}")
    passed("merge_heads")


def _check_merge_once(merge_heads, y, what: str) -> None:
    B, n_head, T, head_dim = y.shape
    out = _run(merge_heads, y.clone())  # clone() keeps the strides: still non-contiguous
    expected = _package_layer(n_head * head_dim, n_head).merge_heads(y)
    concat = torch.cat([y[:, i] for i in range(n_head)], dim=-1)  # Concat(head_1, ..., head_h)
    torch.testing.assert_close(expected, concat)
    close_or_diagnose(out, expected, what, {
        "right shape, wrong numbers: you reshaped (B, n_head, T, head_dim) straight to (B, T, C) "
        "without first moving the head axis back behind the time axis, so one token's output "
        "mixes the results of several tokens. Transpose axes 1 and 2, then make it contiguous "
        "and view as (B, T, C)": y.reshape(B, T, n_head * head_dim),
        "right shape, wrong numbers: the heads come out interleaved (feature r·n_head + i instead "
        "of i·head_dim + r). After transposing to (B, T, n_head, head_dim), flatten the last two "
        "axes in that order": y.permute(0, 2, 3, 1).reshape(B, T, n_head * head_dim),
        "the transpose is right but the heads are not merged: you return (B, T, n_head, "
        "head_dim); view it as (B, T, C)": y.transpose(1, 2),
    })


# ---------------------------------------------------------------------------------------------
# Exercise 3: the fused projection of eq. (4.4)


def check_fuse_qkv(fuse_qkv) -> None:
    """fuse_qkv(w_q, w_k, w_v): per-head (C, d) matrices -> nn.Linear's (3C, C) weight."""
    for number, (C, n_head) in enumerate([(12, 3), (8, 4), (6, 1)]):
        d = C // n_head
        w_q, w_k, w_v = ([_seeded_randn(C, d, seed=100 * number + 10 * part + i)
                          for i in range(n_head)] for part in range(3))
        _check_fuse_case(fuse_qkv, w_q, w_k, w_v)
    with fresh_case(fresh_seed()) as generator:  # sizes and weights no one knew in advance
        n_head, d = _fresh_sizes(generator, (2, 6), (2, 6))
        w_q, w_k, w_v = ([torch.randn(n_head * d, d, generator=generator) for _ in range(n_head)]
                         for _ in range(3))
        _check_fuse_case(fuse_qkv, w_q, w_k, w_v)
    passed("fuse_qkv")


def _check_fuse_case(fuse_qkv, w_q, w_k, w_v) -> None:
    n_head, C = len(w_q), w_q[0].size(0)
    out = call(fuse_qkv, [w.clone() for w in w_q], [w.clone() for w in w_k],
               [w.clone() for w in w_v])
    expected = torch.cat([torch.cat(w_q, 1), torch.cat(w_k, 1), torch.cat(w_v, 1)], 1).T
    _fused_layer_agrees(expected, w_q, w_k, w_v, C, n_head)
    close_or_diagnose(out, expected, f"fuse_qkv for C={C}, n_head={n_head}",
                      _fuse_mistakes(w_q, w_k, w_v, expected))


def _fused_layer_agrees(weight, w_q, w_k, w_v, C, n_head) -> None:
    """The expected weight, loaded into minigpt's layer, computes the 3h per-head products."""
    layer = _package_layer(C, n_head, bias=False)
    with torch.no_grad():
        layer.qkv_proj.weight.copy_(weight)
        x = _seeded_randn(2, 3, C, seed=7)
        fused = layer.qkv_proj(x)  # (B, T, 3C)
    separate = torch.cat([x @ w for w in [*w_q, *w_k, *w_v]], dim=-1)  # eq. (4.4)
    torch.testing.assert_close(fused, separate)


def _fuse_mistakes(w_q, w_k, w_v, expected) -> dict:
    mistakes = {
        "you built the (C, 3C) matrix of eq. (4.4) but did not transpose it: nn.Linear stores "
        "its weight as (out_features, in_features) and computes x Wᵀ, so return the (3C, C) "
        "transpose": expected.T,
        "the heads are interleaved: within each of Q, K and V, head i must own the consecutive "
        "block of rows i·d .. (i+1)·d - 1 of the stored weight (you stacked the heads' columns "
        "feature by feature)": torch.cat([torch.stack(w, 2).flatten(1) for w in (w_q, w_k, w_v)],
                                         1).T,
        "you grouped by head instead of by Q/K/V: the stored weight holds all of Q first (rows "
        "0 .. C-1), then all of K, then all of V, and only within each part do the heads follow "
        "one another": torch.cat([torch.cat([q, k, v], 1) for q, k, v in zip(w_q, w_k, w_v,
                                                                              strict=True)], 1).T,
    }
    order = {"Q": w_q, "K": w_k, "V": w_v}
    for names in itertools.permutations("QKV"):
        if names != ("Q", "K", "V"):
            wrong = torch.cat([torch.cat(order[n], 1) for n in names], 1).T
            mistakes[f"Q, K and V are in the wrong order: you stacked {'/'.join(names)}; the "
                     "first C rows are the queries, then the keys, then the values"] = wrong
    return mistakes


# ---------------------------------------------------------------------------------------------
# Exercise 4: the parameter count of eq. (4.6)

COUNT_CONFIGS = [(32, 4, True), (768, 12, True), (64, 8, False), (48, 1, True), (6, 3, False)]


def check_mha_parameter_count(count) -> None:
    """count(n_embd, n_head, bias) == the number of parameters of MultiHeadAttention."""
    for C, n_head, bias in COUNT_CONFIGS:
        _check_count_case(count, C, n_head, bias)
    with fresh_case(fresh_seed()) as generator:  # a layer no one knew in advance
        case = COUNT_CONFIGS[0]
        while case in COUNT_CONFIGS:
            n_head, d, bias = _fresh_sizes(generator, (1, 13), (1, 65), (0, 2))
            case = (n_head * d, n_head, bool(bias))
        _check_count_case(count, *case)
    passed("mha_parameter_count")


def _check_count_case(count, C, n_head, bias) -> None:
    answer = call(count, C, n_head, bias)
    what = f"the count for n_embd={C}, n_head={n_head}, bias={bias}"
    require(isinstance(answer, int | float) and not isinstance(answer, bool)
            or isinstance(answer, torch.Tensor) and answer.numel() == 1,
            f"{what} should be a number, got {type(answer).__name__}")
    answer = answer.item() if isinstance(answer, torch.Tensor) else answer
    expected = _count_parameters(_package_layer(C, n_head, bias))
    reference = _count_parameters(torch.nn.MultiheadAttention(C, n_head, bias=bias))
    assert expected == reference == 4 * C**2 + (4 * C if bias else 0)
    if answer == expected:
        return
    diagnosis = diagnose(answer, _count_mistakes(C, n_head, bias))
    if diagnosis is None and bias and n_head > 1:
        other = call(count, C, 1, bias)
        if other != answer:
            diagnosis = (f"your count changes with the number of heads ({other} for one head); "
                         "it should not: h heads of width C/h need h·C·(C/h) = C² weights "
                         "per projection, like one wide head")
    raise CheckFailed(f"{what} is {answer}, expected {expected}"
                      + (f": {diagnosis}" if diagnosis else
                         " = 4C² + 4C with biases, 4C² without (eq. 4.6)"))


def _count_parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _count_mistakes(C: int, n_head: int, bias: bool) -> dict:
    d = C // n_head
    if bias:
        return {
            "the biases are missing; each of the 3C + C output features of the two linear maps "
            "has a bias (4C in all)": 4 * C**2,
            "the output projection W^O (C² weights and C biases) is missing": 3 * C**2 + 3 * C,
            "the output projection's weights (C²) are missing": 3 * C**2 + 4 * C,
            "only one of the two projections has biases counted; the fused QKV projection has 3C "
            "and the output projection C": 4 * C**2 + C,
            "only one of the two projections has biases counted, the fused QKV projection has 3C "
            "and the output projection C": 4 * C**2 + 3 * C,
            "you multiplied by the number of heads, but the heads share the budget: each head's "
            "projections are (C, C/h), h of them make (C, C)": n_head * (4 * C**2 + 4 * C),
            "you counted one head's projections, (C, d) each, instead of all h heads":
                3 * (C * d + d) + C**2 + C,
        }
    return {
        "bias=False: the layer has no bias vectors, only the 4C² weights":
            4 * C**2 + 4 * C,
        "the output projection W^O (C² weights) is missing": 3 * C**2,
        "you multiplied by the number of heads, but the heads share the budget: each head's "
        "projections are (C, C/h), h of them make (C, C)": n_head * 4 * C**2,
    }


# ---------------------------------------------------------------------------------------------
# Exercise 5: the whole layer from its fused weights


def check_mha_forward(mha_forward) -> None:
    """mha_forward(x, w_qkv, b_qkv, w_out, b_out, n_head) == causal MultiHeadAttention(x)."""
    for number, (B, T, C, n_head) in enumerate(MHA_SHAPES):
        x = _seeded_randn(B, T, C, seed=200 + number)
        _check_forward_case(mha_forward, x, _layer_weights(C, seed=300 + number), n_head)
    seed = fresh_seed()
    with fresh_case(seed) as generator:  # sizes, input and weights no one knew in advance
        B, T, n_head, d = _fresh_sizes(generator, (1, 4), (2, 9), (1, 5), (2, 6))
        x = torch.randn(B, T, n_head * d, generator=generator)
        _check_forward_case(mha_forward, x, _layer_weights(n_head * d, seed=seed), n_head)
    passed("mha_forward")


def _check_forward_case(mha_forward, x, weights, n_head) -> None:
    C = x.size(-1)
    out = _run(mha_forward, x.clone(), *(w.clone() for w in weights), n_head)
    expected = _package_forward(x, weights, n_head)
    torch.testing.assert_close(expected, _torch_reference(x, weights, n_head))
    what = f"mha_forward for x of shape {tuple(x.shape)}, n_head={n_head}"
    if isinstance(out, torch.Tensor) and tuple(out.shape) == tuple(expected.shape):
        if not torch.allclose(out.detach().to(expected.dtype), expected, 1e-4, 1e-5):
            mistake = diagnose(out, _forward_mistakes(x, weights, n_head), 1e-4, 1e-5)
            if mistake:
                raise CheckFailed(f"{what} is not right: {mistake}")
            _require_causal(mha_forward, x, weights, n_head, what)
    close_or_diagnose(out, expected, what, factors={"√d": math.sqrt(C // n_head)})


def _layer_weights(C: int, seed: int) -> tuple[torch.Tensor, ...]:
    # std 1/√C keeps each score of order 1, so a missing scale or mask clearly shows
    w_qkv = _seeded_randn(3 * C, C, seed=seed) / math.sqrt(C)
    b_qkv = 0.5 * _seeded_randn(3 * C, seed=seed + 1)
    w_out = _seeded_randn(C, C, seed=seed + 2) / math.sqrt(C)
    b_out = 0.5 * _seeded_randn(C, seed=seed + 3)
    return w_qkv, b_qkv, w_out, b_out


def _package_forward(x, weights, n_head) -> torch.Tensor:
    w_qkv, b_qkv, w_out, b_out = weights
    layer = _package_layer(x.size(-1), n_head).eval()
    with torch.no_grad():
        layer.qkv_proj.weight.copy_(w_qkv)
        layer.qkv_proj.bias.copy_(b_qkv)
        layer.out_proj.weight.copy_(w_out)
        layer.out_proj.bias.copy_(b_out)
        return layer(x)


def _torch_reference(x, weights, n_head) -> torch.Tensor:
    """PyTorch's own nn.MultiheadAttention (its boolean mask is True where attention is barred)."""
    w_qkv, b_qkv, w_out, b_out = weights
    T, C = x.shape[1:]
    ref = torch.nn.MultiheadAttention(C, n_head, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(w_qkv)
        ref.in_proj_bias.copy_(b_qkv)
        ref.out_proj.weight.copy_(w_out)
        ref.out_proj.bias.copy_(b_out)
        barred = torch.ones(T, T, dtype=torch.bool).triu(1)
        return ref(x, x, x, attn_mask=barred, need_weights=False)[0]


def _variant(x, w_qkv, b_qkv, w_out, b_out, n_head, *, divisor=None, causal=True,
             order=(0, 1, 2), split="right", merge="right", softmax_dim=-1,
             out_proj=True, qkv_transposed=True, out_transposed=True) -> torch.Tensor:
    """Multi-head attention with one deliberate mistake switched on (all off = right)."""
    B, T, C = x.shape
    d = C // n_head
    w = w_qkv if qkv_transposed else torch.cat([block.T for block in w_qkv.split(C)])
    parts = (x @ w.T + b_qkv).split(C, dim=-1)  # eq. (4.4): Q, K, V, each (B, T, C)
    q, k, v = (parts[i] for i in order)

    def to_heads(t):
        if split == "no transpose":
            return t.reshape(B, n_head, T, d)
        return t.reshape(B, T, n_head, d).transpose(1, 2)  # (B, nh, T, d)

    q, k, v = to_heads(q), to_heads(k), to_heads(v)
    divisor = math.sqrt(d) if divisor is None else divisor
    scores = q @ k.transpose(-2, -1) / divisor  # (B, nh, T, T)
    if causal:
        allowed = torch.ones(T, T, dtype=torch.bool).tril()
        scores = scores.masked_fill(~allowed, -math.inf)
    y = torch.softmax(scores, dim=softmax_dim).nan_to_num() @ v  # (B, nh, T, d)
    if merge == "no transpose":
        y = y.reshape(B, T, C)
    else:
        y = y.transpose(1, 2).reshape(B, T, C)
    if not out_proj:
        return y
    return y @ (w_out.T if out_transposed else w_out) + b_out


def _forward_mistakes(x, weights, n_head) -> dict:
    w_qkv, b_qkv, w_out, b_out = weights
    C = x.size(-1)

    def wrong(*, n=n_head, w=weights, **mistake):
        return _variant(x, *w, n, **mistake)

    no_qkv_bias, no_out_bias = torch.zeros_like(b_qkv), torch.zeros_like(b_out)
    mistakes = {
        "the causal mask is missing: every query also attends to later tokens, so the future "
        "leaks (mask the scores with -inf where key j > query i, eq. 3.5)": wrong(causal=False),
        "the scores are divided by √C (the model width) instead of √d = √(C / n_head), the "
        "width of one head (eq. 4.2)": wrong(divisor=math.sqrt(C)),
        "the scores are not divided by √d at all (eq. 4.2)": wrong(divisor=1.0),
        "the scores are divided by d instead of √d (eq. 4.2)": wrong(divisor=C // n_head),
        "the softmax runs over the queries (dim=-2); each query's weights over the keys must sum "
        "to 1, so take it over the last axis": wrong(softmax_dim=-2),
        "you attended with one head of width C: split Q, K and V into n_head heads of width "
        "C / n_head (eqs. 4.1-4.2)": wrong(n=1, divisor=math.sqrt(C)),
        "the output projection W^O of eq. (4.3) is missing": wrong(out_proj=False),
        "the output projection's weight is used untransposed: nn.Linear stores it as (out, in) "
        "and computes x Wᵀ + b, so multiply by w_out.T": wrong(out_transposed=False),
        "the (C, C) blocks of the fused weight are used untransposed: nn.Linear stores them as "
        "(out, in) and computes x Wᵀ + b, so multiply by their transposes":
            wrong(qkv_transposed=False),
        "the weights are used untransposed: nn.Linear stores them as (out, in) and computes "
        "x Wᵀ + b": wrong(qkv_transposed=False, out_transposed=False),
        "the biases of the fused QKV projection are missing": wrong(w=(w_qkv, no_qkv_bias, w_out,
                                                                        b_out)),
        "the output projection's bias is missing": wrong(w=(w_qkv, b_qkv, w_out, no_out_bias)),
        "both biases are missing": wrong(w=(w_qkv, no_qkv_bias, w_out, no_out_bias)),
    }
    if n_head > 1:
        mistakes["you attended with one head of width C (with the scores divided by √d): split "
                 "Q, K and V into n_head heads of width C / n_head (eqs. 4.1-4.2)"] = wrong(
            n=1, divisor=math.sqrt(C // n_head))
        split_messages = {
            ("no transpose", "right"): "the split into heads views (B, T, C) straight as "
            "(B, n_head, T, d), mixing tokens; view as (B, T, n_head, d), then transpose "
            "(exercise 1)",
            ("right", "no transpose"): "the merge reshapes (B, n_head, T, d) straight to "
            "(B, T, C), mixing tokens; transpose back to (B, T, n_head, d) first (exercise 2)",
            ("no transpose", "no transpose"): "the split and the merge both skip the transpose, "
            "so each 'head' sees a jumble of tokens (exercises 1 and 2)",
        }
        for (split, merge), message in split_messages.items():
            mistakes[message] = wrong(split=split, merge=merge)
    parts = {"Q": 0, "K": 1, "V": 2}
    for names in itertools.permutations("QKV"):
        if names != ("Q", "K", "V"):
            mistakes[f"Q, K and V come from the wrong thirds of the fused projection (you used "
                     f"the order {'/'.join(names)}): its first C output features are Q, the next "
                     "C are K, the last C are V (eq. 4.4)"] = wrong(
                order=tuple(parts[n] for n in names))
    return mistakes


def _require_causal(mha_forward, x, weights, n_head, what: str) -> None:
    """Changing only the last token must not change the outputs at earlier positions."""
    T = x.size(1)
    if T < 2:
        return
    changed = x.clone()
    changed[:, -1] = _seeded_randn(x.size(0), x.size(2), seed=999)
    before = call(mha_forward, x.clone(), *(w.clone() for w in weights), n_head)
    after = call(mha_forward, changed, *(w.clone() for w in weights), n_head)
    leak = (before[:, :-1] - after[:, :-1]).abs().max().item()
    require(leak < 1e-6, f"{what} is not right, and the future leaks: changing only the last "
                         f"token changed the outputs at earlier positions by up to {leak:.3g}. "
                         "Apply the causal mask (eq. 3.5) to the scores before the softmax")
