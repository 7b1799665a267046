"""Checks for exercises/09_sampling.ipynb (course notebook 09, eqs. 9.1-9.3, 9.7, 9.8).

Each check runs the learner's function on small seeded inputs, compares it with
`minigpt.generate` (its filters, and the draws of its sampler) and with an independent reference
(Hugging Face's logits warpers, a KV cache checked against full recomputation and against
`torch.nn.MultiheadAttention`, n-grams counted by hand), and names the typical mistake when the
answer reproduces one.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter

import torch

from checks.core import (
    CheckFailed,
    as_number,
    as_tensor,
    call,
    close,
    close_or_diagnose,
    diagnose_all,
    fresh_case,
    fresh_seed,
    passed,
    require,
    same_shape,
)

NEG_INF = float("-inf")


def _seeded_randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _logits_with_probs(probs: list[float], order: list[int]) -> torch.Tensor:
    """One row of logits whose softmax is `probs`, placed at the vocabulary ids `order`."""
    logits = torch.empty(len(probs))
    logits[torch.tensor(order)] = torch.tensor(probs).log()
    return logits[None]  # (1, V)


# A hand-made row (V = 7): sorted, 0.42, 0.25, 0.15, 0.08, 0.05, 0.03, 0.02, but scattered over the
# vocabulary, so a filter that forgets to map the sorted order back to token ids shows.
HAND_ROW = _logits_with_probs([0.42, 0.25, 0.15, 0.08, 0.05, 0.03, 0.02], [3, 0, 5, 1, 6, 2, 4])
# Three rows over V = 10 with no ties; every token has a probability well above rounding noise.
BATCH = 1.5 * _seeded_randn(3, 10, seed=0)


def _fresh_int(generator, low: int, high: int) -> int:
    """An integer in [low, high), drawn with `generator`."""
    return int(torch.randint(low, high, (), generator=generator))


def _fresh_logits(generator) -> torch.Tensor:
    """A few rows of logits over a small vocabulary, both drawn with `generator`."""
    B, V = _fresh_int(generator, 1, 5), _fresh_int(generator, 3, 16)
    return 2 * torch.randn(B, V, generator=generator)


def _clear_of_p(logits: torch.Tensor, top_p: float) -> bool:
    """Whether no row's running mass (before a token, in sorted order) sits within 1e-3 of p,
    where float rounding could keep or drop a token either way."""
    probs = torch.softmax(logits, dim=-1).sort(dim=-1, descending=True).values
    before = probs.cumsum(dim=-1) - probs
    return bool(((before - top_p).abs() > 1e-3).all())


# --------------------------------------------------------------------------- shared comparisons


def _run(function, *args):
    """`core.call`, plus a clear message when the answer is not a tensor."""
    return as_tensor(call(function, *args), f"`{function.__name__}`'s result")


def _judge(cases: list[tuple]) -> None:
    """Every (what, out, expected, mistakes) case is right, or say what is wrong.

    A mistake is named only if it explains the learner's answer in *every* case where it can be
    computed, so that a coincidence in one case cannot give a wrong diagnosis. (An empty row may
    come out as NaN, 0/0, or as zeros from a guarded division: both count as the same answer.)
    """
    for what, out, expected, _ in cases:
        same_shape(out, expected, what)
    failing = [case for case in cases if not _right(case[1], case[2])]
    if not failing:
        return
    diagnosis = diagnose_all(
        [out.detach().to(expected.dtype).nan_to_num() for _, out, expected, _ in cases],
        [{message: None if value is None else value.nan_to_num()
          for message, value in mistakes.items()} for *_, mistakes in cases],
        rtol=1e-4, atol=1e-6)
    what, out, expected, _ = failing[0]
    if diagnosis is not None:
        raise CheckFailed(f"{what} is not right: {diagnosis}")
    _describe(out.detach().to(expected.dtype), expected, what)


def _right(out, expected) -> bool:
    """Same numbers, and no probability where a token is dropped, none lost where one is kept."""
    out = out.detach().to(expected.dtype)
    return bool(torch.allclose(out, expected, rtol=1e-4, atol=1e-6)
                and (out[expected == 0] == 0).all() and (out[expected > 1e-6] > 0).all())


def _describe(out, expected, what: str) -> None:
    """The most specific thing that is wrong with a distribution no known mistake explains."""
    require(not torch.isnan(out).any(), f"{what} contains NaN: a row whose every probability is "
                                        "0 divided by its sum 0? At least one token must survive")
    require(not (out < 0).any(), f"{what} has negative entries (or -inf): that looks like logits "
                                 "or log-probabilities; return probabilities (take the softmax)")
    wrong = ((out > 0) & (expected == 0)) | ((out <= 0) & (expected > 1e-6))
    if wrong.any():
        row = int(wrong.any(-1).nonzero()[0])
        kept, wanted = int((out[row] > 0).sum()), int((expected[row] > 0).sum())
        raise CheckFailed(f"{what} is not right: row {row} gives {kept} tokens a nonzero "
                          f"probability, expected {wanted}")
    sums = out.sum(-1)
    require(torch.allclose(sums, torch.ones_like(sums), atol=1e-5),
            f"{what}: the rows sum to {[round(x, 4) for x in sums.tolist()]}, not 1: renormalise "
            "the kept probabilities")
    close(out, expected, what, rtol=1e-4, atol=1e-6)


def _hugging_face(warpers: list, logits: torch.Tensor) -> torch.Tensor | None:
    """softmax of the logits after Hugging Face's warpers; None if transformers is missing."""
    try:
        with warnings.catch_warnings():  # tqdm asks for ipywidgets when imported in a notebook
            warnings.filterwarnings("ignore", message="IProgress not found")
            import transformers
    except ImportError:
        return None
    scores = logits.clone()
    input_ids = torch.zeros(logits.size(0), 1, dtype=torch.long)  # unused by these warpers
    for name, argument in warpers:
        scores = getattr(transformers, name)(argument)(input_ids, scores)
    return torch.softmax(scores, dim=-1)


def _package_samples_agree(probs: torch.Tensor, logits: torch.Tensor, **rule) -> None:
    """minigpt's sampler draws what torch.multinomial draws from `probs` with the same seed.

    The two compute the same numbers the same way, so the draws agree exactly; a last-bit
    difference on another machine could move a draw that sits on a boundary, hence the margin.
    """
    from minigpt.generate import sample_next_token

    draws = sample_next_token(logits.repeat(2000, 1), generator=torch.Generator().manual_seed(0),
                              **rule)[:, 0]
    if rule.get("temperature") == 0:
        assert torch.equal(draws, probs.argmax(-1).repeat(2000))
        return
    reference = torch.multinomial(probs.repeat(2000, 1), 1,
                                  generator=torch.Generator().manual_seed(0))[:, 0]
    assert (draws != reference).float().mean() < 1e-3
    assert (probs.repeat(2000, 1).gather(1, draws[:, None]) > 0).all()  # never a dropped token


def _rank_mask(logits: torch.Tensor, m, descending: bool = True) -> torch.Tensor:
    """True for the m highest (or lowest) logits of each row; m an int or a (B,) tensor."""
    order = logits.argsort(dim=-1, descending=descending)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(logits.size(-1)).expand_as(order))
    m = torch.as_tensor(m).reshape(-1, 1)
    return ranks < m


def _keep(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.masked_fill(~mask, NEG_INF), dim=-1)


# ---------------------------------------------------------------------------------------------
# Exercise 1: temperature (eq. 9.1)

TEMPERATURES = (0.5, 2.0, 0.1, 1.0)


def check_temperature(temperature_probs) -> None:
    """temperature_probs(logits, tau) == softmax(logits / tau) per row; one-hot argmax at tau=0."""
    cases = []
    for logits in (BATCH, HAND_ROW):
        for tau in TEMPERATURES:
            out = _run(temperature_probs, logits.clone(), tau)
            expected = torch.softmax(logits / tau, dim=-1)
            _package_samples_agree(expected, logits, temperature=tau)
            reference = _hugging_face([("TemperatureLogitsWarper", tau)], logits)
            assert reference is None or torch.allclose(reference, expected)
            what = f"temperature_probs(logits, tau={tau}) for logits of shape " \
                   f"{tuple(logits.shape)}"
            cases.append((what, out, expected, _temperature_mistakes(logits, tau)))
    _judge(cases)
    _check_greedy_limit(temperature_probs)
    with fresh_case(fresh_seed()) as generator:  # logits and a τ no one knew in advance
        logits = _fresh_logits(generator)
        tau = round(0.05 + 3 * float(torch.rand((), generator=generator)), 3)
        out = _run(temperature_probs, logits.clone(), tau)
        what = f"temperature_probs(logits, tau={tau}) for logits of shape {tuple(logits.shape)}"
        _judge([(what, out, torch.softmax(logits / tau, dim=-1),
                 _temperature_mistakes(logits, tau))])
    passed("temperature_probs")


def _temperature_mistakes(logits, tau) -> dict:
    p = torch.softmax(logits, dim=-1)
    return {
        "the logits are multiplied by τ; eq. (9.1) divides them, z_i / τ, so that a small τ "
        "sharpens the distribution and a large one flattens it": torch.softmax(logits * tau, -1),
        "τ is applied after the softmax (you divided the probabilities by τ): the rows no longer "
        "sum to 1, and the shape of the distribution does not change. Divide the logits, then "
        "take the softmax": p / tau,
        "τ is applied after the softmax, then the softmax is taken again: divide the *logits* "
        "by τ, once, before a single softmax": torch.softmax(p / tau, -1),
        "τ has no effect: divide the logits by it before the softmax": p,
        "that is z / τ, the tempered logits; return their softmax, the probabilities":
            logits / tau,
        "the softmax runs over the batch (dim=0); each row is one distribution over the "
        "vocabulary, so normalise over the last axis": torch.softmax(logits / tau, dim=0),
    }


def _call_at_zero(function, logits, tau, *rest):
    try:
        return call(function, logits, tau, *rest)
    except ZeroDivisionError:
        if tau != 0:
            raise
        raise CheckFailed(f"`{function.__name__}` divided by zero at temperature 0. Treat τ = 0 "
                          "as its limit τ → 0 (notebook section 3): all the probability on the "
                          "argmax, one-hot rows — greedy decoding") from None


def _check_greedy_limit(temperature_probs) -> None:
    """At tau = 0 the answer is the tau -> 0 limit: all the mass on the argmax (greedy)."""
    out = _call_at_zero(temperature_probs, BATCH.clone(), 0)
    expected = torch.nn.functional.one_hot(BATCH.argmax(-1), BATCH.size(-1)).float()
    _package_samples_agree(expected, BATCH, temperature=0)
    what = "temperature_probs(logits, tau=0)"
    if isinstance(out, torch.Tensor) and tuple(out.shape) in ((3,), (3, 1)):
        require(not torch.equal(out.flatten().long(), BATCH.argmax(-1)),
                f"{what} returned the argmax ids; return a distribution over the vocabulary "
                "instead, one-hot at the argmax, shape (B, V)")
    out = as_tensor(out, f"{what}'s result")
    require(torch.isfinite(out).all(), f"{what} contains NaN or inf: z / 0 divides by zero. "
            "Treat τ = 0 as its limit τ → 0 (notebook section 3): all the probability on the "
            "argmax, one-hot rows — greedy decoding")
    close_or_diagnose(out, expected, what, {
        "at τ = 0 the result is uniform; the τ → 0 limit is the opposite, all the mass on the "
        "argmax (greedy)": torch.full_like(expected, 1 / BATCH.size(-1)),
        "at τ = 0 you returned the model's own distribution (τ = 1); the τ → 0 limit puts all "
        "the mass on the argmax (greedy)": torch.softmax(BATCH, -1),
        "at τ = 0 the mass went to the *smallest* logit; greedy takes the argmax":
            torch.nn.functional.one_hot(BATCH.argmin(-1), BATCH.size(-1)).float(),
    })


# ---------------------------------------------------------------------------------------------
# Exercise 2: top-k (eq. 9.2)

TOP_K_CASES = [(BATCH, 3), (HAND_ROW, 2), (BATCH, 1), (BATCH, 10), (HAND_ROW, 25)]


def check_top_k(top_k_probs) -> None:
    """top_k_probs(logits, k): keep the k most probable tokens of each row, renormalise."""
    from minigpt.generate import apply_top_k

    cases = []
    for logits, k in TOP_K_CASES:
        V = logits.size(-1)
        what = f"top_k_probs(logits, k={k}) for logits of shape {tuple(logits.shape)}"
        try:
            out = _run(top_k_probs, logits.clone(), k)
        except RuntimeError as error:
            if k > V and "out of range" in str(error):
                raise CheckFailed(f"{what} failed: torch.topk cannot select k = {k} of {V} "
                                  "tokens. A k larger than the vocabulary keeps every token: "
                                  "use min(k, V)") from None
            raise
        expected = torch.softmax(apply_top_k(logits, k), dim=-1)
        _package_samples_agree(expected, logits, top_k=k)
        reference = _hugging_face([("TopKLogitsWarper", k)], logits)
        assert reference is None or torch.equal(reference > 0, expected > 0)
        assert (expected > 0).sum(-1).eq(min(k, V)).all()  # eq. (9.2): exactly k survive
        cases.append((what, out, expected, _top_k_mistakes(logits, k)))
    _judge(cases)
    with fresh_case(fresh_seed()) as generator:  # logits and a k no one knew in advance
        logits = _fresh_logits(generator)
        k = _fresh_int(generator, 1, logits.size(-1) + 3)
        out = _run(top_k_probs, logits.clone(), k)
        what = f"top_k_probs(logits, k={k}) for logits of shape {tuple(logits.shape)}"
        _judge([(what, out, torch.softmax(apply_top_k(logits, k), dim=-1),
                 _top_k_mistakes(logits, k))])
    passed("top_k_probs")


def _top_k_mistakes(logits, k) -> dict:
    V = logits.size(-1)
    right = _rank_mask(logits, k)
    p = torch.softmax(logits, dim=-1)
    from minigpt.generate import apply_top_k

    return {
        "you kept k + 1 tokens; keep exactly the k most probable (is the k-th "
        "largest value itself dropped by a strict comparison somewhere, or a slice one too "
        "long?)": _keep(logits, _rank_mask(logits, k + 1)) if k < V else None,
        "you kept k - 1 tokens; keep exactly the k most probable (the k-th largest "
        "logit itself must survive: compare with >=, or slice [:k])":
            _keep(logits, _rank_mask(logits, k - 1)) if 1 < k <= V else None,
        "you kept the k *least* probable tokens: sort in descending order (or use "
        "torch.topk, which returns the largest)":
            _keep(logits, _rank_mask(logits, k, descending=False)) if k < V else None,
        "the kept probabilities are not renormalised: divide them by their sum (eq. 9.2), so "
        "that each row sums to 1": p * right,
        "the dropped tokens still get a probability: you set their logits to 0, and e⁰ = 1. "
        "Set them to -inf before the softmax (e^-inf = 0)":
            torch.softmax(logits.masked_fill(~right, 0.0), dim=-1),
        "that is the filtered logits (with -inf); return the probabilities, their softmax":
            apply_top_k(logits, k),
        "no token was dropped: keep only the k most probable": p if k < V else None,
    }


# ---------------------------------------------------------------------------------------------
# Exercise 3: top-p, the nucleus (eq. 9.3)

TOP_P_CASES = [(HAND_ROW, 0.75), (HAND_ROW, 0.3), (BATCH, 0.5), (BATCH, 0.9), (BATCH, 0.05),
               (BATCH, 1.0)]


def check_top_p(top_p_probs) -> None:
    """top_p_probs(logits, p): keep the smallest set of most probable tokens with mass >= p."""
    from minigpt.generate import apply_top_p

    cases = []
    for logits, top_p in TOP_P_CASES:
        out = _run(top_p_probs, logits.clone(), top_p)
        expected = torch.softmax(apply_top_p(logits, top_p), dim=-1)
        _package_samples_agree(expected, logits, top_p=top_p)
        reference = _hugging_face([("TopPLogitsWarper", top_p)], logits)
        assert reference is None or torch.equal(reference > 0, expected > 0)
        assert torch.equal(expected > 0, _rank_mask(logits, _nucleus_size(logits, top_p)))
        what = f"top_p_probs(logits, p={top_p}) for logits of shape {tuple(logits.shape)}"
        cases.append((what, out, expected, _top_p_mistakes(logits, top_p)))
    _judge(cases)
    with fresh_case(fresh_seed()) as generator:  # logits and a p no one knew in advance
        logits, top_p = _fresh_logits(generator), 0.0
        while not _clear_of_p(logits, top_p):
            top_p = round(0.05 + 0.9 * float(torch.rand((), generator=generator)), 3)
        out = _run(top_p_probs, logits.clone(), top_p)
        what = f"top_p_probs(logits, p={top_p}) for logits of shape {tuple(logits.shape)}"
        _judge([(what, out, torch.softmax(apply_top_p(logits, top_p), dim=-1),
                 _top_p_mistakes(logits, top_p))])
    passed("top_p_probs")


def _nucleus_size(logits, top_p, *, descending=True, mass="before") -> torch.Tensor:
    """m* of eq. (9.3) per row: the number of tokens whose mass *before* them is below p."""
    probs = torch.softmax(logits, dim=-1).sort(dim=-1, descending=descending).values
    total = probs.cumsum(dim=-1)
    if mass == "before":
        return (total - probs < top_p).sum(-1)
    return (total < top_p).sum(-1)  # the mass including the token: the crossing one is dropped


def _top_p_mistakes(logits, top_p) -> dict:
    from minigpt.generate import apply_top_p

    V = logits.size(-1)
    m = _nucleus_size(logits, top_p)
    right = _rank_mask(logits, m)
    p = torch.softmax(logits, dim=-1)
    first_ids = torch.arange(V).expand_as(logits) < m[:, None]
    return {
        "you left out the token that crosses p: the nucleus is the *smallest* set whose mass "
        "reaches p (eq. 9.3), so it includes the token that carries the running total past p. "
        "Keep token (i) while the mass *before* it is still below p (then at least one token "
        "always survives)": _keep(logits, _rank_mask(logits, _nucleus_size(logits, top_p,
                                                                            mass="including"))),
        "you kept one token too many: stop at the token that carries the running total past p "
        "(keep token (i) while the mass before it is below p)":
            _keep(logits, _rank_mask(logits, (m + 1).clamp(max=V))),
        "you sorted in ascending order, so the nucleus was built from the *least* probable "
        "tokens; sort descending (most probable first)":
            _keep(logits, _rank_mask(logits, _nucleus_size(logits, top_p, descending=False),
                                     descending=False)),
        "the kept probabilities are not renormalised: divide them by their sum, so that each "
        "row sums to 1 (eq. 9.3)": p * right,
        "the mask was computed in sorted order but applied in vocabulary order, so it kept "
        "the tokens with the smallest *ids*: map it back to the token ids (scatter with the "
        "sort order, or index the sorted ids)": _keep(logits, first_ids),
        "that is the filtered logits (with -inf); return the probabilities, their softmax":
            apply_top_p(logits, top_p),
        "no token was dropped: keep only the nucleus": p if bool((m < V).any()) else None,
    }


# ---------------------------------------------------------------------------------------------
# Exercise 4: the whole rule — temperature, then top-k, then top-p (notebook section 7)

# (tau, k, p): each rule on its own, together, and greedy; chosen so that the order matters
RULE_CASES = [(0.7, 5, 0.6), (1.5, None, 0.9), (0.5, 3, None), (2.0, 6, 0.5), (1.5, 2, 0.95),
              (1.0, None, None), (0, 4, 0.9)]


def check_sampling_probs(sampling_probs) -> None:
    """sampling_probs(logits, temperature, top_k, top_p): what the sampler draws from."""
    cases = []
    for tau, k, top_p in RULE_CASES:
        out = _call_at_zero(sampling_probs, BATCH.clone(), tau, k, top_p)
        expected = _rule(BATCH, tau, k, top_p)
        _package_samples_agree(expected, BATCH, temperature=tau, top_k=k, top_p=top_p)
        if tau > 0:
            warpers = [("TemperatureLogitsWarper", tau)]
            warpers += [("TopKLogitsWarper", k)] if k else []
            warpers += [("TopPLogitsWarper", top_p)] if top_p else []
            reference = _hugging_face(warpers, BATCH)
            assert reference is None or torch.equal(reference > 0, expected > 0)
        what = f"sampling_probs(logits, temperature={tau}, top_k={k}, top_p={top_p})"
        if tau == 0:
            out = as_tensor(out, what)
            require(torch.isfinite(out).all(), f"{what} contains NaN or inf: temperature 0 "
                    "means greedy decoding, one-hot rows at the argmax (don't divide by 0)")
        cases.append((what, out, expected, _rule_mistakes(BATCH, tau, k, top_p)))
    _judge(cases)
    with fresh_case(fresh_seed()) as generator:  # a rule and logits no one knew in advance
        logits, top_p = _fresh_logits(generator), 0.0
        tau = round(0.2 + 2 * float(torch.rand((), generator=generator)), 3)
        k = _fresh_int(generator, 1, logits.size(-1) + 1)
        from minigpt.generate import apply_top_k

        while not _clear_of_p(apply_top_k(logits / tau, k), top_p):
            top_p = round(0.05 + 0.9 * float(torch.rand((), generator=generator)), 3)
        out = _call_at_zero(sampling_probs, logits.clone(), tau, k, top_p)
        what = (f"sampling_probs(logits, temperature={tau}, top_k={k}, top_p={top_p}) for "
                f"logits of shape {tuple(logits.shape)}")
        _judge([(what, as_tensor(out, what), _rule(logits, tau, k, top_p),
                 _rule_mistakes(logits, tau, k, top_p))])
    passed("sampling_probs")


def _rule(logits, tau, k, top_p, *, order="k then p", temper="before") -> torch.Tensor:
    """softmax after temperature, top-k and top-p, with one mistake switched on (off = right)."""
    from minigpt.generate import apply_top_k, apply_top_p

    if tau == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.size(-1)).float()
    scaled = {"before": logits / tau, "after": logits, "times": logits * tau,
              "ignored": logits}[temper]
    steps = [lambda z: apply_top_k(z, k) if k else z, lambda z: apply_top_p(z, top_p)
             if top_p else z]
    for step in (steps if order == "k then p" else steps[::-1]):
        scaled = step(scaled)
    if temper == "after":  # truncated on the model's own distribution, tempered afterwards
        scaled = torch.where(torch.isfinite(scaled), logits / tau, NEG_INF)
    return torch.softmax(scaled, dim=-1)


def _rule_mistakes(logits, tau, k, top_p) -> dict:
    if tau == 0:
        return {}
    return {
        "top-k and top-p ran on the model's own distribution, and the temperature only "
        "afterwards: temper first, so that the nucleus is that of the tempered distribution "
        "(a low τ also shrinks it)": _rule(logits, tau, k, top_p, temper="after"),
        "top-p ran before top-k: the order is temperature, top-k, then top-p on what top-k "
        "left (renormalised), as in minigpt's sample_next_token and Hugging Face's generate":
            _rule(logits, tau, k, top_p, order="p then k") if k and top_p else None,
        "the logits are multiplied by the temperature; divide them (eq. 9.1)":
            _rule(logits, tau, k, top_p, temper="times") if tau != 1 else None,
        "the temperature has no effect: divide the logits by it first (eq. 9.1)":
            _rule(logits, tau, k, top_p, temper="ignored") if tau != 1 else None,
        "top_k has no effect: after the temperature, keep only the k most probable tokens":
            _rule(logits, tau, None, top_p) if k else None,
        "top_p has no effect: after top-k, keep only the nucleus of what is left":
            _rule(logits, tau, k, None) if top_p else None,
    }


# ---------------------------------------------------------------------------------------------
# Exercise 5: distinct-n (eq. 9.7)

# (samples, n, what the case is about)
DISTINCT_CASES = [
    ([[1, 2, 3, 4], [1, 2, 3, 5]], 2, "two samples sharing a prefix"),
    ([[1, 2, 1, 2, 1], [1, 2, 1, 2, 1]], 2, "two identical, repetitive samples"),
    ([[5, 5, 6], [7, 8, 9, 5]], 1, "n = 1"),
    ([[1, 2], [2, 1], [3, 1, 2]], 2, "the same tokens in another order"),
    ([[1, 2, 3], [4], [4, 1, 2]], 3, "a sample shorter than n"),
]


def check_distinct_n(distinct_n) -> None:
    """distinct_n(samples, n): distinct n-grams / all n-grams, pooled over the set of samples."""
    answers = []  # one number per case, or None where the learner's code divided by zero
    for samples, n, about in DISTINCT_CASES:
        what = f"distinct_n for {about} ({samples}, n = {n})"
        try:
            answers.append(as_number(call(distinct_n, [list(s) for s in samples], n), what))
        except ZeroDivisionError:
            answers.append(None)
        assert math.isclose(_distinct(samples, n), _distinct_by_counter(samples, n))
    for (samples, n, about), answer in zip(DISTINCT_CASES, answers, strict=True):
        what = f"distinct_n for {about} ({samples}, n = {n})"
        expected = _distinct(samples, n)
        if answer is None:
            raise CheckFailed(
                f"{what} divided by zero: a sample shorter than n has no n-grams of its own. "
                "Pool the n-grams of all samples first, then divide once (eq. 9.7)")
        if not math.isclose(answer, expected, rel_tol=1e-6, abs_tol=1e-9):
            diagnosis = diagnose_all(answers, [_distinct_mistakes(samples, n) for samples, n, _
                                               in DISTINCT_CASES], rtol=1e-6, atol=1e-9)
            raise CheckFailed(f"{what} is {answer:.4g}, expected {expected:.4g}" + (
                f": {diagnosis}" if diagnosis else " = |distinct n-grams| / #n-grams, pooled "
                "over all the samples together (eq. 9.7)"))
    with fresh_case(fresh_seed()) as generator:  # samples no one knew in advance
        n = _fresh_int(generator, 1, 4)
        samples = [torch.randint(0, 4, (_fresh_int(generator, n, 12),),
                                 generator=generator).tolist()
                   for _ in range(_fresh_int(generator, 1, 5))]
        what = f"distinct_n({samples}, n = {n})"
        answer = as_number(call(distinct_n, [list(s) for s in samples], n), what)
        expected = _distinct(samples, n)
        require(math.isclose(answer, expected, rel_tol=1e-6, abs_tol=1e-9),
                f"{what} is {answer:.4g}, expected {expected:.4g}")
    passed("distinct_n")


def _grams(ids, n, *, last=1, unordered=False):
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + last)]
    return [frozenset(g) for g in grams] if unordered else grams


def _distinct(samples, n, **how) -> float | None:
    grams = [g for ids in samples for g in _grams(ids, n, **how)]
    return len(set(grams)) / len(grams) if grams else None


def _distinct_by_counter(samples, n) -> float:
    counts = Counter(tuple(ids[i:i + n]) for ids in samples for i in range(len(ids) - n + 1))
    return len(counts) / sum(counts.values())


def _distinct_mistakes(samples, n) -> dict:
    grams = [g for ids in samples for g in _grams(ids, n)]
    per_sample = [_distinct([ids], n) for ids in samples]
    joined = [t for ids in samples for t in ids]
    return {
        "you concatenated the samples into one sequence, which makes n-grams that straddle two "
        "samples; take the n-grams of each sample separately, then pool them":
            _distinct([joined], n),
        "you averaged distinct-n over the samples; eq. (9.7) pools the n-grams of the whole "
        "set first, so that an n-gram repeated *across* samples counts as a repeat":
            sum(per_sample) / len(per_sample) if None not in per_sample else None,
        "you added up the distinct n-grams of each sample, so an n-gram that occurs in two "
        "samples is counted twice; collect one set over all samples":
            sum(len(set(_grams(ids, n))) for ids in samples) / len(grams),
        "the n-gram window is one short: a sample of length T has T - n + 1 n-grams "
        "(range(len(ids) - n + 1))": _distinct(samples, n, last=0),
        "n-grams were compared as sets of tokens, ignoring their order; use tuples "
        "(ids[i:i + n] in order)": _distinct(samples, n, unordered=True),
        "that is the number of distinct n-grams; divide by the number of all n-grams":
            float(len(set(grams))),
        "you divided by the number of tokens; divide by the number of n-grams":
            len(set(grams)) / len(joined),
        "that is 1 - distinct-n, the share of n-grams that repeat an earlier one; return the "
        "share of distinct ones": 1 - len(set(grams)) / len(grams),
    }


# ---------------------------------------------------------------------------------------------
# Exercise 6: a KV cache for one attention layer (eq. 9.8)

# (B, prompt length, total length): a prompt of several tokens, and a one-token prompt
CACHE_CASES = [(2, 4, 9), (1, 1, 5)]
N_EMBD, N_HEAD = 12, 3


def check_kv_cache(attend_with_cache) -> None:
    """attend_with_cache(layer, x, cache) -> (y, (K, V)): prefill, then one token at a time."""
    layer = _attention_layer(seed=0)
    for number, (B, prompt, total) in enumerate(CACHE_CASES):
        x = _seeded_randn(B, total, N_EMBD, seed=10 + number)
        _check_cache_case(attend_with_cache, layer, x, prompt)
    seed = fresh_seed()
    with fresh_case(seed) as generator:  # a layer, a prompt and a length no one knew before
        B, prompt = _fresh_int(generator, 1, 4), _fresh_int(generator, 1, 6)
        x = torch.randn(B, prompt + _fresh_int(generator, 1, 5), N_EMBD, generator=generator)
        _check_cache_case(attend_with_cache, _attention_layer(seed=seed), x, prompt)
    passed("kv_cache (every cached step equals full recomputation)")


def _check_cache_case(attend_with_cache, layer, x, prompt: int) -> None:
    B, total, _ = x.shape
    full, keys, values = _references(layer, x)
    cache = None
    for start, stop in [(0, prompt)] + [(t, t + 1) for t in range(prompt, total)]:
        what = (f"step {start} (tokens {start}..{stop - 1} with {start} cached)" if start
                else f"the prefill ({stop} tokens, empty cache)") + f", batch of {B}"
        with torch.no_grad():
            result = _call_step(attend_with_cache, layer, x[:, start:stop].clone(), cache)
        y, cache = _unpack(result, what)
        _check_cache(cache, keys[:, :, :stop], values[:, :, :stop], what)
        mistakes = _step_mistakes(layer, x, keys, values, start, stop)
        close_or_diagnose(y, full[:, start:stop], f"the output at {what}", mistakes,
                          factors={"√head_dim": math.sqrt(N_EMBD // N_HEAD)})
        cache = tuple(t.detach() for t in cache)


def _attention_layer(seed: int):
    """minigpt's MultiHeadAttention with weights of order 1, so that every mistake shows."""
    from minigpt import GPTConfig
    from minigpt.attention import MultiHeadAttention

    with torch.random.fork_rng(devices=[]):  # its initialisation must not move the learner's RNG
        layer = MultiHeadAttention(GPTConfig(n_embd=N_EMBD, n_head=N_HEAD, block_size=16)).eval()
    with torch.no_grad():
        for number, (_, p) in enumerate(layer.named_parameters()):
            if p.dim() == 2:
                p.copy_(_seeded_randn(*p.shape, seed=seed + number) / math.sqrt(p.size(1)))
            else:
                p.copy_(0.5 * _seeded_randn(*p.shape, seed=seed + number))
    return layer


def _references(layer, x):
    """Full recomputation; minigpt's own KVCache step by step; torch's MultiheadAttention."""
    from minigpt.attention import KVCache

    B, T, C = x.shape
    with torch.no_grad():
        full = layer(x)  # (B, T, C), causal
        cache = KVCache(B, N_HEAD, T, C // N_HEAD)
        stepped = torch.cat([layer(x[:, t:t + 1], cache) for t in range(T)], dim=1)
        torch.testing.assert_close(stepped, full)  # eq. (9.8): the cache changes nothing
        with torch.random.fork_rng(devices=[]):  # initialised, then overwritten below
            reference = torch.nn.MultiheadAttention(C, N_HEAD, batch_first=True).eval()
        reference.in_proj_weight.copy_(layer.qkv_proj.weight)
        reference.in_proj_bias.copy_(layer.qkv_proj.bias)
        reference.out_proj.weight.copy_(layer.out_proj.weight)
        reference.out_proj.bias.copy_(layer.out_proj.bias)
        barred = torch.ones(T, T, dtype=torch.bool).triu(1)
        torch.testing.assert_close(reference(x, x, x, attn_mask=barred)[0], full)
    return full, cache.k[:, :, :T].clone(), cache.v[:, :, :T].clone()  # K, V: (B, nh, T, hd)


def _call_step(attend_with_cache, layer, x, cache):
    try:
        return call(attend_with_cache, layer, x, cache)
    except RuntimeError as error:
        if "Sizes of tensors must match" in str(error) or "Expected size" in str(error):
            raise CheckFailed(
                "torch.cat failed while growing the cache: the cached keys are (B, n_head, t, "
                "head_dim) and the new ones (B, n_head, 1, head_dim), so they must be joined "
                f"along the time axis, dim=2 ({error})") from None
        raise


def _unpack(result, what: str):
    require(isinstance(result, tuple | list) and len(result) == 2,
            f"attend_with_cache should return (y, cache) at {what}, got "
            f"{type(result).__name__}")
    y, cache = result
    require(isinstance(cache, tuple | list) and len(cache) == 2,
            f"the cache returned at {what} should be a pair (K, V) of tensors, got "
            f"{type(cache).__name__}")
    return as_tensor(y, f"the output at {what}"), tuple(
        as_tensor(t, f"the cache's {name} at {what}") for t, name in zip(cache, "KV", strict=True))


def _check_cache(cache, keys, values, what: str) -> None:
    K, V = cache
    B, n_head, t, head_dim = keys.shape
    layout = f"(B, n_head, t, head_dim) = {tuple(keys.shape)}"
    if tuple(K.shape) != tuple(keys.shape):
        grown = [d for d in range(K.dim()) if d < keys.dim() and K.size(d) != keys.size(d)]
        hint = ""
        if K.dim() == 4 and grown and grown != [2]:
            hint = (f": it grows along dim {grown[0]}, but the time axis of (B, n_head, T, "
                    "head_dim) is dim 2 — concatenate with torch.cat(..., dim=2)")
        elif K.dim() == 4 and K.size(2) == t - 1:
            hint = ": it did not grow; return the cache with the new keys and values appended"
        elif K.dim() == 3:
            hint = ": keep the keys split into heads, as they are used in the scores"
        raise CheckFailed(f"the cached keys after {what} have shape {tuple(K.shape)}; expected "
                          f"{layout}{hint}")
    same_shape(V, values, f"the cached values after {what}")
    close_or_diagnose(K, keys, f"the cached keys after {what}", {
        "the cache holds the values where the keys belong: return (K, V) in that order": values,
        "the new keys were put in front of the old ones; append them at the end, so that row "
        "j of the cache is position j": _new_first(keys, what),
    })
    close_or_diagnose(V, values, f"the cached values after {what}", {
        "the cache holds the keys where the values belong: return (K, V) in that order": keys,
        "the new values were put in front of the old ones; append them at the end":
            _new_first(values, what),
    })


def _new_first(cached, what) -> torch.Tensor | None:
    if cached.size(2) < 2 or what.startswith("the prefill"):
        return None
    return torch.cat([cached[:, :, -1:], cached[:, :, :-1]], dim=2)


def _step_mistakes(layer, x, keys, values, start: int, stop: int) -> dict:
    """The typical wrong outputs for the new tokens x[:, start:stop]."""
    right_scale = 1 / math.sqrt(N_EMBD // N_HEAD)

    def attend(key_slice=slice(0, stop), mask="causal", scale=right_scale, extra=None):
        positions = list(range(stop))[key_slice] + (list(range(stop))[extra] if extra else [])
        key_pos = torch.tensor(positions)  # the position of each key that is attended over
        with torch.no_grad():
            q = layer.split_heads(layer.qkv_proj(x[:, start:stop])[..., :N_EMBD])
            k, v = keys[:, :, key_pos], values[:, :, key_pos]
            scores = q @ k.transpose(-2, -1) * scale  # (B, nh, T_new, S)
            if mask == "causal":  # query i sits at position start + i
                allowed = key_pos[None, :] <= torch.arange(start, stop)[:, None]
            elif mask == "top-left":  # is_causal=True with fewer queries than keys
                allowed = torch.ones(*scores.shape[-2:], dtype=torch.bool).tril()
            else:
                allowed = torch.ones(*scores.shape[-2:], dtype=torch.bool)
            weights = torch.softmax(scores.masked_fill(~allowed, NEG_INF), dim=-1)
            return layer.out_proj(layer.merge_heads(weights @ v))

    mistakes = {
        "the scores are not divided by √head_dim (eq. 9.8)": attend(scale=1.0),
        "the scores are divided by √C, the model width; divide by √head_dim, the width of one "
        "head": attend(scale=1 / math.sqrt(N_EMBD)),
    }
    if start == 0:
        mistakes["the causal mask is missing in the prefill: the prompt's tokens are processed "
                 "together, so each must see only itself and earlier tokens (eq. 3.5). Only a "
                 "single new token with everything else in the cache needs no mask"] = attend(
            mask="none") if stop > 1 else None
        return mistakes
    mistakes.update({
        "the new token does not attend to itself: you attended over the old cache and "
        "appended the new key and value only afterwards. Append first, then attend over "
        "all t + 1 keys": attend(key_slice=slice(0, start)),
        "the new token attends only to itself: the cached keys and values were not used":
            attend(key_slice=slice(start, stop)),
        "the new key and value appear twice among the keys: append them once": attend(
            extra=slice(start, stop)),
        "the causal mask is aligned to the top-left corner (is_causal=True with one query and "
        "many keys does that), so the new token saw only key 0. With a cache the queries are "
        "the *last* positions: a single new token may see every cached key, so it needs no "
        "mask": attend(mask="top-left"),
    })
    return mistakes
