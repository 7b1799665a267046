"""Checks for exercises/05_positional_encoding.ipynb (course notebook 05, eqs. 5.1-5.6).

Each check runs the learner's function on small seeded inputs, compares it with
`minigpt.positional` (or `minigpt.attention`) and with an independent reference (the formula
evaluated number by number with `math`, or RoPE as complex multiplication), and names the
typical mistake when the answer reproduces one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

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


def _seeded_randn(*shape, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _fresh_int(generator, low: int, high: int) -> int:
    """An integer in [low, high), drawn with `generator`."""
    return int(torch.randint(low, high, (), generator=generator))


# ---------------------------------------------------------------------------------------------
# Exercise 1: attention is permutation-equivariant (eq. 5.1)


def check_permutation_gap(permutation_gap) -> None:
    """permutation_gap(layer, x, perm) == max |layer(x[perm]) - layer(x)[perm]|."""
    T, d = 6, 8
    x = _seeded_randn(T, d, seed=0)
    perm = torch.tensor([2, 0, 5, 1, 3, 4])  # not its own inverse, so the two cannot be confused
    for name, (layer, equivariant) in _gap_layers(d, seed=1).items():
        expected = _gap(layer, x, perm)
        assert expected < 1e-5 if equivariant else expected > 1e-2  # eq. (5.1)
        _check_gap_case(permutation_gap, name, layer, x, perm, equivariant)
    with fresh_case(fresh_seed()) as generator:  # tokens and a shuffle no one knew in advance
        T = _fresh_int(generator, 4, 10)
        x = torch.randn(T, d, generator=generator)
        perm = torch.arange(T)
        while bool((perm == torch.arange(T)).any()):  # every token moves
            perm = torch.randperm(T, generator=generator)
        layers = _gap_layers(d, seed=_fresh_int(generator, 10, 10**6))
        for name, (layer, equivariant) in layers.items():
            _check_gap_case(permutation_gap, f"{name}, on {T} tokens shuffled by "
                            f"{perm.tolist()}", layer, x, perm, equivariant)
    passed("permutation_gap (plain attention is permutation-equivariant, eq. 5.1)")


def _gap_layers(d: int, seed: int) -> dict:
    """{name: (layer, whether eq. 5.1 makes it permutation-equivariant)}."""
    return {"plain self-attention": (_attention_layer(d, seed=seed), True),
            "a per-token feed-forward layer": (_token_wise_layer(d, seed=seed + 1), True),
            "causal self-attention": (_attention_layer(d, seed=seed, is_causal=True), False),
            "self-attention after adding the sinusoidal encoding":
                (_attention_layer(d, seed=seed, add_positions=True), False)}


def _check_gap_case(permutation_gap, name, layer, x, perm, equivariant: bool) -> None:
    answer = call(permutation_gap, layer, x.clone(), perm.clone())
    answer = _as_number(answer, f"permutation_gap for {name}")
    expected = _gap(layer, x, perm)
    if math.isclose(answer, expected, rel_tol=1e-3, abs_tol=1e-5):
        return
    mistake = diagnose(answer, _gap_mistakes(layer, x, perm), rtol=1e-3, atol=1e-5)
    if mistake is None and equivariant:
        mistake = (f"eq. (5.1) says {name.split(',')[0]} is permutation-equivariant, so the gap "
                   "should be 0 up to float rounding")
    raise CheckFailed(f"permutation_gap for {name} is {answer:.4g}, expected {expected:.4g}"
                      + (f": {mistake}" if mistake else ""))


def _as_number(answer, what: str) -> float:
    if isinstance(answer, torch.Tensor):
        require(answer.numel() == 1, f"{what} should be one number, got a tensor of shape "
                                     f"{tuple(answer.shape)} (take the max of the absolute "
                                     "differences)")
        return answer.item()
    require(isinstance(answer, int | float) and not isinstance(answer, bool),
            f"{what} should be a number, got {type(answer).__name__}")
    return float(answer)


def _attention_layer(d: int, seed: int, is_causal: bool = False, add_positions: bool = False):
    """One head of self-attention (T, d) -> (T, d), built on minigpt's attention."""
    from minigpt.attention import scaled_dot_product_attention
    from minigpt.positional import sinusoidal_encoding

    w_q, w_k, w_v = (_seeded_randn(d, d, seed=seed + i) / math.sqrt(d) for i in range(3))

    def layer(x):
        if add_positions:
            x = x + sinusoidal_encoding(x.size(0), d)
        out = scaled_dot_product_attention(x @ w_q, x @ w_k, x @ w_v, is_causal=is_causal)
        reference = F.scaled_dot_product_attention(x @ w_q, x @ w_k, x @ w_v, is_causal=is_causal)
        torch.testing.assert_close(out, reference)  # minigpt == PyTorch's kernel
        return out

    return layer


def _token_wise_layer(d: int, seed: int):
    w = _seeded_randn(d, d, seed=seed) / math.sqrt(d)
    return lambda x: torch.tanh(x @ w)


def _gap(layer, x, perm) -> float:
    return (layer(x[perm]) - layer(x)[perm]).abs().max().item()


def _gap_mistakes(layer, x, perm) -> dict:
    shuffled, out = layer(x[perm]), layer(x)
    inverse = torch.argsort(perm)
    return {
        "you reordered the output with the inverse permutation: x[perm] puts row perm[t] of x "
        "at row t, so compare with layer(x)[perm], the same indexing on both sides":
            (shuffled - out[inverse]).abs().max().item(),
        "you compared layer(x[perm]) with layer(x) itself: permute the output of the unshuffled "
        "input too, layer(x)[perm], since eq. (5.1) says the rows move with the tokens":
            (shuffled - out).abs().max().item(),
        "you took the largest signed difference; take the absolute value first so that negative "
        "differences count too": (shuffled - out[perm]).max().item(),
        "you averaged the absolute differences; the gap is their maximum":
            (shuffled - out[perm]).abs().mean().item(),
        "you took the norm of the difference; the gap is the largest absolute difference":
            (shuffled - out[perm]).norm().item(),
    }


# ---------------------------------------------------------------------------------------------
# Exercise 2: the sinusoidal table (eq. 5.2)

# (n_positions, dim, base): a typical table, the smallest dim, one position, another base
SINUSOID_CASES = [(50, 16, 10000.0), (7, 2, 10000.0), (1, 8, 10000.0), (20, 12, 1000.0)]


def check_sinusoidal_encoding(sinusoidal_encoding) -> None:
    """sinusoidal_encoding(n_positions, dim, base) == the table of eq. (5.2)."""
    for n_positions, dim, base in SINUSOID_CASES:
        _check_sinusoid_case(sinusoidal_encoding, n_positions, dim, base)
    with fresh_case(fresh_seed()) as generator:  # a table no one knew in advance
        n_positions, half = _fresh_int(generator, 2, 60), _fresh_int(generator, 1, 16)
        base = float(_fresh_int(generator, 100, 20000))
        _check_sinusoid_case(sinusoidal_encoding, n_positions, 2 * half, base)
    passed("sinusoidal_encoding")


def _check_sinusoid_case(sinusoidal_encoding, n_positions, dim, base) -> None:
    from minigpt.positional import sinusoidal_encoding as package_encoding

    out = call(sinusoidal_encoding, n_positions, dim, base)
    expected = _table_by_hand(n_positions, dim, base)  # float64
    torch.testing.assert_close(package_encoding(n_positions, dim, base).double(), expected,
                               rtol=0, atol=1e-5)
    what = f"sinusoidal_encoding({n_positions}, {dim}, base={base:g})"
    _require_decaying_frequencies(out, expected, what, base)
    close_or_diagnose(out, expected, what, _table_mistakes(n_positions, dim, base),
                      rtol=1e-4, atol=1e-5)


def _require_decaying_frequencies(out, expected, what: str, base: float) -> None:
    """ω_i = base^(+2i/d) makes angles in the thousands, which float32 rounds: compare loosely."""
    n_positions, dim = expected.shape
    growing = _table(n_positions, dim, base, exponent=-2.0)
    if (growing - expected).abs().max() < 0.5:  # one pair or one position: the sign is moot
        return
    mistake = diagnose(out, {
        "the exponent has the wrong sign: ω_i = base^(-2i/d) gets slower with i, yours faster "
        "(pair i turns base^(2i/d) radians per position)": growing}, rtol=0, atol=0.05)
    require(mistake is None, f"{what} is not right: {mistake}")


def _table_by_hand(n_positions: int, dim: int, base: float) -> torch.Tensor:
    """Eq. (5.2) one number at a time, in float64: PE(p, 2i) = sin(p ω_i), PE(p, 2i+1) = cos."""
    rows = []
    for p in range(n_positions):
        row = []
        for i in range(dim // 2):
            omega = base ** (-2 * i / dim)
            row += [math.sin(p * omega), math.cos(p * omega)]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def _table(n_positions, dim, base, *, exponent=2.0, first=0, swap=False, concat=False,
           per_feature=False) -> torch.Tensor:
    """The sinusoidal table with one deliberate mistake switched on (all off = right)."""
    p = torch.arange(first, first + n_positions, dtype=torch.float64)[:, None]
    i = torch.arange(dim // 2, dtype=torch.float64)
    omega = base ** (-exponent * i / dim)
    sin, cos = torch.sin(p * omega), torch.cos(p * omega)
    if per_feature:  # feature j gets its own frequency base^(-j/d)
        cos = torch.cos(p * base ** (-(2 * i + 1) / dim))
    if swap:
        sin, cos = cos, sin
    if concat:
        return torch.cat([sin, cos], dim=1)
    return torch.stack([sin, cos], dim=2).reshape(n_positions, dim)


def _table_mistakes(n_positions, dim, base) -> dict:
    mistakes = {
        "sin and cos are swapped: feature 2i is the sine, sin(p·ω_i), and feature 2i+1 the "
        "cosine (eq. 5.2)": _table(n_positions, dim, base, swap=True),
        "sines and cosines are concatenated (all sines, then all cosines); eq. (5.2) interleaves "
        "them, sin(p·ω_i) at feature 2i and cos(p·ω_i) right next to it at 2i+1. (The "
        "concatenated table holds the same numbers, permuted: a valid encoding, but not this "
        "one)": _table(n_positions, dim, base, concat=True),
        "the frequency exponent is i/d; it is 2i/d (ω_i = base^(-2i/d), with i = 0 .. d/2-1 "
        "counting pairs), so the slowest pair has wavelength near 2π·base":
            _table(n_positions, dim, base, exponent=1.0),
        "the frequency exponent is doubled (4i/d): if you iterate over the even features "
        "2i = 0, 2, 4, ..., that index already contains the factor 2, so use base^(-(2i)/d)":
            _table(n_positions, dim, base, exponent=4.0),
        "positions start at 1; the first row is position p = 0 (sin 0 = 0, cos 0 = 1)":
            _table(n_positions, dim, base, first=1),
        "the cosine of pair i must turn at the same frequency ω_i as its sine; you gave feature "
        "2i+1 its own frequency base^(-(2i+1)/d)": _table(n_positions, dim, base,
                                                         per_feature=True),
    }
    if base != 10000.0:
        mistakes["you ignored the `base` argument and used 10000"] = _table(n_positions, dim,
                                                                             10000.0)
    return mistakes


# ---------------------------------------------------------------------------------------------
# Exercise 3: moving k positions on is a rotation (eq. 5.3)

SHIFT_CASES = [(5, 16), (1, 8), (0, 4), (3, 2), (-2, 6)]  # (k, dim); k = 0 and k < 0 included


def check_shift_matrix(shift_matrix) -> None:
    """shift_matrix(k, dim, base) == M_k with PE(p + k) = M_k PE(p) for every p (eq. 5.3)."""
    for k, dim in SHIFT_CASES:
        _check_shift_case(shift_matrix, k, dim, 10000.0)
    with fresh_case(fresh_seed()) as generator:  # a shift no one knew in advance
        k, dim = _fresh_int(generator, -15, 16), 2 * _fresh_int(generator, 1, 9)
        _check_shift_case(shift_matrix, k, dim, float(_fresh_int(generator, 100, 20000)))
    passed("shift_matrix (PE(p + k) = M_k PE(p), eq. 5.3)")


def _check_shift_case(shift_matrix, k, dim, base) -> None:
    from minigpt.positional import sinusoidal_shift_matrix

    n_positions = 40
    out = call(shift_matrix, k, dim, base)
    expected = sinusoidal_shift_matrix(k, dim, base)  # (dim, dim), float64
    pe = _table_by_hand(n_positions, dim, base)
    start, stop = max(0, -k), n_positions - max(0, k)
    torch.testing.assert_close(pe[start + k:stop + k], pe[start:stop] @ expected.T)
    what = f"shift_matrix(k={k}, dim={dim})" + ("" if base == 10000.0 else f", base={base:g}")
    mistakes = _shift_mistakes(k, dim, base)
    if isinstance(out, torch.Tensor) and out.shape == expected.shape and not torch.allclose(
            out.double(), expected, rtol=1e-5, atol=1e-7) and diagnose(out, mistakes) is None:
        miss = (pe[start + k:stop + k] - pe[start:stop] @ out.double().T).abs().max().item()
        raise CheckFailed(f"{what} is not right: M_k PE(p) misses PE(p + k) by up to "
                          f"{miss:.3g} (eq. 5.3). M_k is block-diagonal, one 2×2 block "
                          "[[cos kω_i, sin kω_i], [-sin kω_i, cos kω_i]] per pair (2i, 2i+1)")
    close_or_diagnose(out, expected, what, mistakes, rtol=1e-5, atol=1e-7)


def _shift(k, dim, base, *, exponent=2.0, sign=1.0, pairs="neighbours") -> torch.Tensor:
    """M_k with one deliberate mistake switched on (all off = right)."""
    omega = base ** (-exponent * torch.arange(dim // 2, dtype=torch.float64) / dim)
    cos, sin = torch.cos(k * omega), sign * torch.sin(k * omega)
    m = torch.zeros(dim, dim, dtype=torch.float64)
    i = torch.arange(dim // 2)
    j = 2 * i + 1 if pairs == "neighbours" else i + dim // 2
    i = 2 * i if pairs == "neighbours" else i
    m[i, i], m[i, j], m[j, i], m[j, j] = cos, sin, -sin, cos
    return m


def _shift_mistakes(k, dim, base) -> dict:
    mistakes = {
        "it turns the wrong way: your matrix is M_kᵀ = M_(-k), which moves k positions back. "
        "From sin(a+b) = sin a cos b + cos a sin b, the sine row of each block is "
        "(cos kω_i, +sin kω_i) and the cosine row (-sin kω_i, cos kω_i)":
            _shift(k, dim, base, sign=-1.0),
        "the frequencies follow base^(-i/d); eq. (5.2) has ω_i = base^(-2i/d)":
            _shift(k, dim, base, exponent=1.0),
        "the blocks rotate the pairs (i, i + d/2), the layout of a concatenated table; eq. (5.2) "
        "interleaves, so each 2×2 block sits on features (2i, 2i+1)":
            _shift(k, dim, base, pairs="halves"),
    }
    if k not in (0, 1):
        mistakes["the angle of block i is ω_i, not k·ω_i: you built M_1, the shift by one "
                 "position"] = _shift(1, dim, base)
    return mistakes


# ---------------------------------------------------------------------------------------------
# Exercise 4: rotary position embedding (eq. 5.5), in the package's half layout

# (shape of x, start, base): heads and batch in front, a single row, d = 2, another base
ROPE_CASES = [((2, 3, 6, 8), 0, 10000.0), ((5, 4), 7, 10000.0), ((1, 2), 3, 10000.0),
              ((4, 6), 2, 1000.0)]


def check_rope(rope) -> None:
    """rope(x, start, base): rotate pair (i, i + d/2) of row t by the angle (start + t)·θ_i."""
    for number, (shape, start, base) in enumerate(ROPE_CASES):
        _check_rope_case(rope, _seeded_randn(*shape, seed=number), start, base)
    with fresh_case(fresh_seed()) as generator:  # rows, positions and base no one knew before
        shape = (_fresh_int(generator, 1, 4), _fresh_int(generator, 1, 9),
                 2 * _fresh_int(generator, 1, 9))
        start, base = _fresh_int(generator, 0, 50), float(_fresh_int(generator, 100, 20000))
        _check_rope_case(rope, torch.randn(*shape, generator=generator), start, base)
    passed("rope")


def _check_rope_case(rope, x, start, base) -> None:
    from minigpt.positional import RotaryEmbedding

    T, d = x.shape[-2:]
    out = call(rope, x.clone(), start, base)
    expected = RotaryEmbedding(d, start + T, base)(x, start)
    torch.testing.assert_close(expected, _rope_complex(x, start, base).float())
    what = f"rope(x, start={start}, base={base:g}) for x of shape {tuple(x.shape)}"
    close_or_diagnose(out, expected, what, _rope_mistakes(x, start, base), rtol=1e-4,
                      atol=1e-5)


def _rope_complex(x, start, base) -> torch.Tensor:
    """An independent RoPE: read (x_i, x_(i+d/2)) as x_i + i·x_(i+d/2), multiply by e^(i p θ)."""
    T, d = x.shape[-2:]
    theta = base ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d)
    angles = torch.arange(start, start + T, dtype=torch.float64)[:, None] * theta  # (T, d/2)
    first, second = x.double().chunk(2, dim=-1)
    z = torch.complex(first, second) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([z.real, z.imag], dim=-1)


def _rope(x, start, base, *, direction=1.0, pairs="halves", exponent=2.0,
          repeat="cat") -> torch.Tensor:
    """RoPE with one deliberate mistake switched on (all off = right)."""
    T, d = x.shape[-2:]
    theta = base ** (-exponent * torch.arange(d // 2, dtype=torch.float64) / d)
    angles = direction * torch.arange(start, start + T, dtype=torch.float64)[:, None] * theta
    x = x.double()
    if pairs == "neighbours":  # (x_2i, x_2i+1) rotated by angle_i
        even, odd = x[..., 0::2], x[..., 1::2]
        out = torch.empty_like(x)
        out[..., 0::2] = even * angles.cos() - odd * angles.sin()
        out[..., 1::2] = even * angles.sin() + odd * angles.cos()
        return out
    if repeat == "interleave":
        angles = angles.repeat_interleave(2, dim=-1)
    else:
        angles = torch.cat([angles, angles], dim=-1)
    first, second = x.chunk(2, dim=-1)
    return x * angles.cos() + torch.cat([-second, first], dim=-1) * angles.sin()


def _rope_mistakes(x, start, base) -> dict:
    mistakes = {
        "it rotates the wrong way (by -p·θ_i): the rotation of eq. (5.5) sends (x_i, x_(i+d/2)) "
        "to (x_i cos - x_(i+d/2) sin, x_(i+d/2) cos + x_i sin). Check the sign in your "
        "rotate_half: it maps (x1, x2) to (-x2, x1)": _rope(x, start, base, direction=-1.0),
        "you paired neighbouring features (2i, 2i+1), like the notebook's rope_interleaved; this "
        "exercise uses the layout of minigpt and Llama, which pairs feature i with feature "
        "i + d/2 (the same rotation on permuted features, but not the same numbers)":
            _rope(x, start, base, pairs="neighbours"),
        "the angles were repeated element by element (θ_0, θ_0, θ_1, θ_1, ...); in the half "
        "layout features i and i + d/2 form a pair, so repeat the whole list: (θ_0 .. θ_(d/2-1), "
        "θ_0 .. θ_(d/2-1))": _rope(x, start, base, repeat="interleave"),
        "the frequencies follow base^(-i/d); θ_i = base^(-2i/d), with i = 0 .. d/2-1":
            _rope(x, start, base, exponent=1.0),
    }
    if start:
        mistakes[f"you ignored `start`: row t sits at position start + t, not t (here start = "
                 f"{start}; a KV cache feeds chunks that start later)"] = _rope(x, 0, base)
    mistakes["the positions are off by one: row t sits at position start + t"] = _rope(
        x, start + 1, base)
    if base != 10000.0:
        mistakes["you ignored the `base` argument and used 10000"] = _rope(x, start, 10000.0)
    return mistakes


# ---------------------------------------------------------------------------------------------
# Exercise 5: the score depends on the offset only (eq. 5.6)


# (q_start, k_start, queries, keys): one sequence; two new queries after five cached tokens,
# as in generation with a KV cache; a chunk far into the sequence
SCORE_CASES = [(0, 0, 6, 6), (5, 0, 2, 7), (40, 37, 3, 5)]


def check_rope_scores(rope_scores) -> None:
    """rope_scores(q, k, q_start, k_start) == (R q)(R k)ᵀ, a function of the offsets only."""
    d = 8
    for number, (q_start, k_start, n_q, n_k) in enumerate(SCORE_CASES):
        q, k = _seeded_randn(n_q, d, seed=11 + number), _seeded_randn(n_k, d, seed=21 + number)
        _check_scores_case(rope_scores, q, k, q_start, k_start)
    with fresh_case(fresh_seed()) as generator:  # vectors and positions no one knew in advance
        n_q, n_k, d = (_fresh_int(generator, 1, 7), _fresh_int(generator, 1, 9),
                       2 * _fresh_int(generator, 1, 9))
        q, k = torch.randn(n_q, d, generator=generator), torch.randn(n_k, d, generator=generator)
        _check_scores_case(rope_scores, q, k, _fresh_int(generator, 0, 60),
                           _fresh_int(generator, 0, 60))
    passed("rope_scores (the scores depend on the offsets only, eq. 5.6)")


def _check_scores_case(rope_scores, q, k, q_start, k_start) -> None:
    from minigpt.positional import RotaryEmbedding

    (n_q, d), n_k, base = q.shape, k.size(0), 10000.0
    out = call(rope_scores, q.clone(), k.clone(), q_start, k_start)
    rope = RotaryEmbedding(d, max(q_start + n_q, k_start + n_k), base)
    expected = rope(q, q_start) @ rope(k, k_start).T  # (n_q, n_k)
    torch.testing.assert_close(expected, (_rope_complex(q, q_start, base)
                                          @ _rope_complex(k, k_start, base).T).float())
    what = (f"rope_scores(q, k, q_start={q_start}, k_start={k_start}) for {n_q} queries and "
            f"{n_k} keys")
    close_or_diagnose(out, expected, what, _score_mistakes(q, k, q_start, k_start, base),
                      factors={"√d": math.sqrt(d)})
    moved = call(rope_scores, q.clone(), k.clone(), q_start + 17, k_start + 17)
    close_or_diagnose(moved, out, f"{what}, with every position moved 17 further (eq. 5.6)",
                      {})


def _score_mistakes(q, k, q_start, k_start, base) -> dict:
    rq, rk = _rope(q, q_start, base), _rope(k, k_start, base)
    back_q, back_k = _rope(q, q_start, base, direction=-1.0), _rope(k, k_start, base,
                                                                    direction=-1.0)
    pairs_q = _rope(q, q_start, base, pairs="neighbours")
    pairs_k = _rope(k, k_start, base, pairs="neighbours")
    mistakes = {
        "only the queries are rotated: rotate the keys too, by their own positions. Then "
        "⟨R_p q, R_s k⟩ = ⟨q, R_(s-p) k⟩ depends on the offset alone (eq. 5.6); with one side "
        "rotated the score depends on the absolute position": rq @ k.double().T,
        "only the keys are rotated: rotate the queries too, by their own positions (eq. 5.6)":
            q.double() @ rk.T,
        "the keys are rotated backwards (by -s·θ_i) while the queries turn forwards, so the "
        "score depends on p + s instead of s - p: rotate both the same way": rq @ back_k.T,
        "the queries are rotated backwards (by -p·θ_i) while the keys turn forwards, so the "
        "score depends on p + s instead of s - p: rotate both the same way": back_q @ rk.T,
        "the scores are those of a rotation in the wrong direction: fix the sign in `rope` "
        "(exercise 4) first": back_q @ back_k.T,
        "the scores use neighbouring pairs (2i, 2i+1); `rope` of exercise 4 pairs i with "
        "i + d/2": pairs_q @ pairs_k.T,
        "the scores are divided by √d; this exercise asks for the raw dot products ⟨R_p q_p, "
        "R_s k_s⟩ (attention divides by √d later)": rq @ rk.T / math.sqrt(q.size(-1)),
    }
    if q_start != k_start:
        mistakes["the queries and the keys were rotated from the same start: the queries sit "
                 "at q_start, q_start + 1, ... and the keys at k_start, k_start + 1, ..., each "
                 "rotated by its own position"] = rq @ _rope(k, q_start, base).T
    return mistakes
