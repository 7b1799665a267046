"""The checks of exercises/05_positional_encoding.ipynb pass right answers and name wrong ones."""

from __future__ import annotations

import math

import pytest
import torch
from check_helpers import fails, rejects_remembered_answers

from checks import positional as check

# --- exercise 1: permutation_gap ---------------------------------------------------------------


def permutation_gap(layer, x, perm):
    return (layer(x[perm]) - layer(x)[perm]).abs().max().item()


def test_permutation_gap_passes_on_a_right_answer(capsys):
    check.check_permutation_gap(permutation_gap)
    assert "✓ permutation_gap" in capsys.readouterr().out


def test_permutation_gap_accepts_a_zero_dimensional_tensor():
    check.check_permutation_gap(
        lambda layer, x, perm: (layer(x[perm]) - layer(x)[perm]).abs().max())


@pytest.mark.parametrize("wrong, words", [
    (lambda layer, x, p: (layer(x[p]) - layer(x)[torch.argsort(p)]).abs().max(), ["inverse"]),
    (lambda layer, x, p: (layer(x[p]) - layer(x)).abs().max(), ["layer(x)[perm]"]),
    (lambda layer, x, p: (layer(x[p]) - layer(x)[p]).max(), ["absolute value"]),
    (lambda layer, x, p: (layer(x[p]) - layer(x)[p]).abs().mean(), ["averaged"]),
    (lambda layer, x, p: (layer(x[p]) - layer(x)[p]).norm(), ["norm"]),
    (lambda layer, x, p: layer(x[p]) - layer(x)[p], ["one number"]),
    (lambda layer, x, p: 1.0, ["should be 0"]),
], ids=["inverse-permutation", "output-not-permuted", "signed", "mean", "norm", "tensor",
        "constant"])
def test_permutation_gap_names_the_mistake(wrong, words):
    fails(check.check_permutation_gap, wrong, *words)


# --- exercise 2: sinusoidal_encoding -----------------------------------------------------------


def sinusoidal(n_positions, dim, base=10000.0, *, exponent=2.0, first=0, swap=False,
               concat=False):
    p = torch.arange(first, first + n_positions, dtype=torch.float32)[:, None]
    omega = base ** (-exponent * torch.arange(dim // 2, dtype=torch.float32) / dim)
    sin, cos = torch.sin(p * omega), torch.cos(p * omega)
    if swap:
        sin, cos = cos, sin
    if concat:
        return torch.cat([sin, cos], dim=1)
    pe = torch.empty(n_positions, dim)
    pe[:, 0::2], pe[:, 1::2] = sin, cos
    return pe


def test_sinusoidal_encoding_passes_on_right_answers():
    from minigpt.positional import sinusoidal_encoding

    check.check_sinusoidal_encoding(sinusoidal)
    check.check_sinusoidal_encoding(sinusoidal_encoding)


def _exponent_from_even_features(n_positions, dim, base=10000.0):
    two_i = torch.arange(0, dim, 2, dtype=torch.float32)  # 0, 2, 4, ...: already 2i
    omega = base ** (-2 * two_i / dim)  # and doubled once more
    angles = torch.arange(n_positions)[:, None] * omega
    return torch.stack([angles.sin(), angles.cos()], dim=2).flatten(1)


@pytest.mark.parametrize("wrong, words", [
    (lambda n, d, base: sinusoidal(n, d, base, swap=True), ["swapped"]),
    (lambda n, d, base: sinusoidal(n, d, base, concat=True), ["concatenated", "interleaves"]),
    (lambda n, d, base: sinusoidal(n, d, base, exponent=1.0), ["i/d", "2i/d"]),
    (_exponent_from_even_features, ["doubled"]),
    (lambda n, d, base: sinusoidal(n, d, base, exponent=-2.0), ["wrong sign"]),
    (lambda n, d, base: sinusoidal(n, d, base, first=1), ["start at 1"]),
    (lambda n, d, base: sinusoidal(n, d), ["`base`"]),
    (lambda n, d, base: sinusoidal(n, d, base)[:, : d // 2], ["shape"]),
], ids=["sin-cos-swapped", "concatenated", "exponent-i-over-d", "exponent-doubled",
        "exponent-sign", "positions-from-1", "base-ignored", "wrong-shape"])
def test_sinusoidal_encoding_names_the_mistake(wrong, words):
    fails(check.check_sinusoidal_encoding, wrong, *words)


# --- exercise 3: shift_matrix ------------------------------------------------------------------


def test_shift_matrix_passes_on_right_answers():
    from minigpt.positional import sinusoidal_shift_matrix

    def shift_matrix(k, dim, base=10000.0):
        omega = base ** (-2 * torch.arange(dim // 2, dtype=torch.float64) / dim)
        return torch.block_diag(*[torch.tensor([[math.cos(k * w), math.sin(k * w)],
                                                [-math.sin(k * w), math.cos(k * w)]])
                                  for w in omega.tolist()])

    check.check_shift_matrix(shift_matrix)
    check.check_shift_matrix(sinusoidal_shift_matrix)


def _block_matrix(k, dim, base=10000.0, *, sign=1.0, exponent=2.0, use_k=True):
    omega = base ** (-exponent * torch.arange(dim // 2, dtype=torch.float64) / dim)
    angle = (k if use_k else 1) * omega
    blocks = [torch.stack([torch.stack([a.cos(), sign * a.sin()]),
                           torch.stack([-sign * a.sin(), a.cos()])]) for a in angle]
    return torch.block_diag(*blocks)


@pytest.mark.parametrize("wrong, words", [
    (lambda k, d, base: _block_matrix(k, d, base, sign=-1.0), ["wrong way", "M_(-k)"]),
    (lambda k, d, base: _block_matrix(k, d, base, exponent=1.0), ["base^(-i/d)"]),
    (lambda k, d, base: _block_matrix(k, d, base, use_k=False), ["M_1"]),
    (lambda k, d, base: _block_matrix(k, d, base) * 2, ["misses PE(p + k)"]),
    (lambda k, d, base: torch.eye(d), ["misses PE(p + k)"]),
], ids=["wrong-direction", "exponent-i-over-d", "forgot-k", "scaled", "identity"])
def test_shift_matrix_names_the_mistake(wrong, words):
    fails(check.check_shift_matrix, wrong, *words)


# --- exercise 4: rope --------------------------------------------------------------------------


def rope(x, start=0, base=10000.0, *, direction=1.0, exponent=2.0, offset=0, layout="halves"):
    T, d = x.shape[-2:]
    theta = base ** (-exponent * torch.arange(d // 2, dtype=torch.float32) / d)
    positions = torch.arange(start + offset, start + offset + T, dtype=torch.float32)
    angles = direction * positions[:, None] * theta  # (T, d/2)
    if layout == "neighbours":
        z = torch.view_as_complex(x.reshape(*x.shape[:-1], d // 2, 2).contiguous())
        return torch.view_as_real(z * torch.polar(torch.ones_like(angles), angles)).flatten(-2)
    if layout == "repeat_interleave":
        angles = angles.repeat_interleave(2, dim=-1)
    else:
        angles = torch.cat([angles, angles], dim=-1)
    x1, x2 = x.chunk(2, dim=-1)
    return x * angles.cos() + torch.cat([-x2, x1], dim=-1) * angles.sin()


def test_rope_passes_on_right_answers():
    from minigpt.positional import RotaryEmbedding

    check.check_rope(rope)
    check.check_rope(lambda x, start=0, base=10000.0:
                     RotaryEmbedding(x.size(-1), start + x.size(-2), base)(x, start))


@pytest.mark.parametrize("wrong, words", [
    (lambda x, start, base: rope(x, start, base, direction=-1.0), ["wrong way"]),
    (lambda x, start, base: rope(x, start, base, layout="neighbours"), ["neighbouring", "i + d/2"]),
    (lambda x, start, base: rope(x, start, base, layout="repeat_interleave"),
     ["element by element"]),
    (lambda x, start, base: rope(x, start, base, exponent=1.0), ["base^(-i/d)"]),
    (lambda x, start, base: rope(x, 0, base), ["`start`"]),
    (lambda x, start, base: rope(x, start, base, offset=1), ["off by one"]),
    (lambda x, start, base: rope(x, start), ["`base`"]),
    (lambda x, start, base: x, ["largest difference"]),
], ids=["wrong-direction", "interleaved-pairs", "repeat-interleave", "exponent-i-over-d",
        "start-ignored", "off-by-one", "base-ignored", "no-rotation"])
def test_rope_names_the_mistake(wrong, words):
    fails(check.check_rope, wrong, *words)


# --- exercise 5: rope_scores -------------------------------------------------------------------


def test_rope_scores_passes_on_a_right_answer():
    check.check_rope_scores(
        lambda q, k, q_start=0, k_start=0: rope(q, q_start) @ rope(k, k_start).T)


@pytest.mark.parametrize("wrong, words", [
    (lambda q, k, a, b: rope(q, a) @ k.T, ["only the queries", "rotate the keys too"]),
    (lambda q, k, a, b: q @ rope(k, b).T, ["only the keys"]),
    (lambda q, k, a, b: rope(q, a) @ rope(k, b, direction=-1.0).T, ["p + s"]),
    (lambda q, k, a, b: rope(q, a, direction=-1.0) @ rope(k, b, direction=-1.0).T,
     ["wrong direction", "exercise 4"]),
    (lambda q, k, a, b: rope(q, a, layout="neighbours") @ rope(k, b, layout="neighbours").T,
     ["neighbouring pairs"]),
    (lambda q, k, a, b: rope(q, a) @ rope(k, b).T / math.sqrt(q.size(-1)), ["divided by √d"]),
    (lambda q, k, a, b: rope(q, a) @ rope(k, a).T, ["from the same start"]),
    (lambda q, k, a, b: rope(q, b) @ rope(k, b).T, ["from the same start"]),
    (lambda q, k, a, b: q @ k.T, ["largest difference"]),
    (lambda q, k, a, b: (rope(q, a) @ rope(k, b).T)[:, :1], ["shape"]),
], ids=["k-not-rotated", "q-not-rotated", "opposite-directions", "both-wrong-direction",
        "interleaved-pairs", "scaled", "keys-at-q-start", "queries-at-k-start", "no-rotation",
        "wrong-shape"])
def test_rope_scores_names_the_mistake(wrong, words):
    fails(check.check_rope_scores, wrong, *words)


# --- every check: answers remembered for the fixed examples are not enough ---------------------


def gap_on_the_fixed_example(layer, x, perm):
    """Measures the gap on the check's own fixed tokens and shuffle, whatever it is given."""
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    perm = torch.tensor([2, 0, 5, 1, 3, 4])
    return (layer(x[perm]) - layer(x)[perm]).abs().max().item()


def test_permutation_gap_rejects_a_measurement_of_the_fixed_example_only():
    fails(check.check_permutation_gap, gap_on_the_fixed_example, "drawn at random",
          "fixed examples", "compute it from the arguments")


@pytest.mark.parametrize("check_function, right", [
    (check.check_sinusoidal_encoding, sinusoidal),
    (check.check_shift_matrix, _block_matrix),
    (check.check_rope, rope),
    (check.check_rope_scores, lambda q, k, a, b: rope(q, a) @ rope(k, b).T),
], ids=["sinusoidal_encoding", "shift_matrix", "rope", "rope_scores"])
def test_checks_reject_answers_remembered_for_their_fixed_examples(check_function, right):
    rejects_remembered_answers(check_function, right)
