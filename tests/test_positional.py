"""Tests for minigpt.positional: sinusoidal, learned and rotary position encodings."""

import math

import pytest
import torch

from minigpt.model import GPT, GPTConfig
from minigpt.positional import (
    LearnedPositionalEncoding,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    rotate_half,
    sinusoidal_encoding,
    sinusoidal_shift_matrix,
)

# Tiny models run as fast on one thread, and far faster when the machine is shared.
pytestmark = pytest.mark.usefixtures("one_thread")


def paper_encoding(n_positions, dim, base=10000.0):
    """Vaswani et al. (2017), section 3.5, one entry at a time in float64:
    PE(pos, 2i) = sin(pos / base^(2i/d)),  PE(pos, 2i+1) = cos(pos / base^(2i/d))."""
    pe = torch.empty(n_positions, dim, dtype=torch.float64)
    for pos in range(n_positions):
        for i in range(dim // 2):
            pe[pos, 2 * i] = math.sin(pos / base ** (2 * i / dim))
            pe[pos, 2 * i + 1] = math.cos(pos / base ** (2 * i / dim))
    return pe


# ------------------------------------------------------------------ sinusoidal


def test_sinusoidal_shape_values_and_determinism():
    pe = sinusoidal_encoding(50, 16)
    assert pe.shape == (50, 16) and pe.dtype == torch.float32
    torch.testing.assert_close(pe.double(), paper_encoding(50, 16), atol=1e-5, rtol=0)
    assert torch.equal(pe, sinusoidal_encoding(50, 16))
    # a different base is a different table, still the paper's formula
    torch.testing.assert_close(
        sinusoidal_encoding(10, 8, base=100.0).double(), paper_encoding(10, 8, 100.0), atol=1e-5,
        rtol=0,
    )
    assert torch.equal(pe[0, 0::2], torch.zeros(8)) and torch.equal(pe[0, 1::2], torch.ones(8))


@pytest.mark.parametrize("k", [0, 1, 2, 5, 17, 40])
def test_shift_matrix_moves_every_position_by_k(k):
    dim, n = 12, 30
    table = paper_encoding(n + k, dim)  # independent of the code under test
    m = sinusoidal_shift_matrix(k, dim)
    assert m.shape == (dim, dim)
    # one matrix for all p: PE(p + k) = M_k PE(p) for p = 0 .. n-1, all at once
    torch.testing.assert_close(table[:n] @ m.T, table[k : k + n], atol=1e-10, rtol=0)
    # and the package's own table obeys it too
    pe = sinusoidal_encoding(n + k, dim).double()
    torch.testing.assert_close(pe[:n] @ m.T, pe[k : k + n], atol=1e-5, rtol=0)


def test_shift_matrix_depends_on_k_only():
    """M_k is a rotation (orthogonal), a group in k (M_j M_k = M_{j+k}, M_0 = I), and the map
    that takes PE(p) to PE(p + k) recovered by least squares from any window of positions is
    the same matrix whatever the window."""
    dim = 8
    assert torch.allclose(sinusoidal_shift_matrix(0, dim), torch.eye(dim, dtype=torch.float64))
    for j, k in [(1, 2), (3, 7), (10, 5)]:
        mj, mk = sinusoidal_shift_matrix(j, dim), sinusoidal_shift_matrix(k, dim)
        torch.testing.assert_close(mj @ mk, sinusoidal_shift_matrix(j + k, dim))
        torch.testing.assert_close(mk @ mk.T, torch.eye(dim, dtype=torch.float64))
    table = paper_encoding(400, dim)
    for k in (1, 3, 10):
        for first in (0, 100, 350):  # windows of positions far apart
            p = table[first : first + 40]
            p_shifted = table[first + k : first + k + 40]
            solved = torch.linalg.lstsq(p, p_shifted).solution.T  # M with p_shifted = p Mᵀ
            expected = sinusoidal_shift_matrix(k, dim)
            torch.testing.assert_close(solved, expected, atol=1e-6, rtol=0)


def test_sinusoidal_module_slices_the_table():
    enc = SinusoidalPositionalEncoding(20, 6)
    assert list(enc.parameters()) == []
    assert "table" not in enc.state_dict()  # rebuilt, never saved
    torch.testing.assert_close(enc(4, 7).double(), paper_encoding(20, 6)[4:11], atol=1e-5, rtol=0)


def test_odd_dimensions_raise_clear_errors():
    with pytest.raises(ValueError, match="even dimension.*dim=7"):
        sinusoidal_encoding(10, 7)
    with pytest.raises(ValueError, match="even dimension.*dim=5"):
        sinusoidal_shift_matrix(1, 5)
    with pytest.raises(ValueError, match="even head dimension.*head_dim=5"):
        RotaryEmbedding(5, 10)
    with pytest.raises(ValueError, match="n_embd"):
        GPTConfig(n_embd=15, n_head=3, pos_encoding="sinusoidal")
    with pytest.raises(ValueError, match="head dimension"):
        GPTConfig(n_embd=12, n_head=4, pos_encoding="rope")  # head_dim 3


# ------------------------------------------------------------------ rotary


def rope_by_complex_numbers(x, positions, base=10000.0):
    """Independent RoPE: feature i and i + d/2 form the complex number x_i + j·x_(i+d/2),
    which position p multiplies by exp(j·p·θ_i), θ_i = base^(-2i/d)."""
    d = x.size(-1)
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2 :].double())
    z = z * torch.polar(torch.ones_like(theta), positions.double()[:, None] * theta)
    return torch.cat((z.real, z.imag), dim=-1)


def rotate_at(rope, vector, position):
    """Rotate a single (hd,) vector as if it sat at `position`."""
    return rope(vector[None], start=position)[0]


def test_rope_matches_complex_rotation():
    rope = RotaryEmbedding(16, 64)
    x = torch.randn(2, 3, 10, 16)
    expected = rope_by_complex_numbers(x, torch.arange(5, 15))
    torch.testing.assert_close(rope(x, start=5).double(), expected, atol=1e-5, rtol=1e-5)


def test_rope_score_depends_only_on_offset():
    torch.manual_seed(0)
    rope = RotaryEmbedding(8, 200)
    for _ in range(5):
        q, k = torch.randn(8), torch.randn(8)
        p, s = torch.randint(0, 100, (2,)).tolist()
        reference = rotate_at(rope, q, p) @ rotate_at(rope, k, s)
        for c in (1, 7, 50, 99):
            shifted = rotate_at(rope, q, p + c) @ rotate_at(rope, k, s + c)
            torch.testing.assert_close(shifted, reference, atol=1e-4, rtol=1e-4)
    # ...and it does depend on the offset (the test would pass for no rotation at all otherwise)
    q, k = torch.randn(8), torch.randn(8)
    scores = torch.stack([rotate_at(rope, q, 0) @ rotate_at(rope, k, s) for s in range(5)])
    assert scores.unique().numel() == 5


def test_rope_preserves_norms_and_position_zero_is_identity():
    rope = RotaryEmbedding(32, 100)
    x = torch.randn(4, 2, 50, 32)
    rotated = rope(x, start=30)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    assert torch.equal(rope(x, start=0)[..., 0, :], x[..., 0, :])
    assert not torch.allclose(rotated, x)


def test_rotate_half_is_a_quarter_turn():
    x = torch.arange(6.0)
    assert torch.equal(rotate_half(x), torch.tensor([-3.0, -4.0, -5.0, 0.0, 1.0, 2.0]))
    assert torch.equal(rotate_half(rotate_half(x)), -x)


# ------------------------------------------------------------------ learned


def test_learned_positions_are_trainable_parameters():
    enc = LearnedPositionalEncoding(12, 6)
    params = dict(enc.named_parameters())
    assert list(params) == ["embedding.weight"]
    assert params["embedding.weight"].shape == (12, 6) and params["embedding.weight"].requires_grad
    out = enc(3, 4)
    assert torch.equal(out, params["embedding.weight"][3:7])
    out.sum().backward()
    grad = params["embedding.weight"].grad
    assert torch.equal(grad[3:7], torch.ones(4, 6))
    assert torch.equal(grad[:3], torch.zeros(3, 6)) and torch.equal(grad[7:], torch.zeros(5, 6))


# ------------------------------------------------------------------ in the model


@pytest.mark.parametrize("pos_encoding", ["learned", "sinusoidal", "rope", "none"])
def test_every_encoding_builds_and_runs(pos_encoding):
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16, pos_encoding=pos_encoding
    )
    model = GPT(config)
    idx = torch.randint(0, 32, (2, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 16, 32) and torch.isfinite(loss)
    position_params = [
        name for name, _ in model.named_parameters() if "pos" in name or "rotary" in name
    ]
    C, L, V, P = 16, 2, 32, 16
    without_positions = V * C + L * (12 * C * C + 13 * C) + 2 * C
    if pos_encoding == "learned":
        assert position_params == ["pos_enc.embedding.weight"]
        assert model.num_params() == without_positions + P * C
    else:  # sinusoidal and rope are fixed functions; "none" has no position signal
        assert position_params == []
        assert model.num_params() == without_positions
    assert not any(("table" in k or k.endswith((".cos", ".sin"))) for k in model.state_dict())


def test_position_signal_reaches_the_output():
    """An added encoding (learned, sinusoidal) makes one token at two positions give two
    outputs. RoPE and "none" cannot on a run of one repeated token: every value vector is the
    same, so any attention pattern averages to the same output."""
    torch.manual_seed(0)
    for pos_encoding in ("learned", "sinusoidal", "rope", "none"):
        config = GPTConfig(
            vocab_size=8, block_size=8, n_layer=1, n_head=2, n_embd=16, pos_encoding=pos_encoding
        )
        model = GPT(config).eval()
        idx = torch.full((1, 4), 3)
        with torch.no_grad():
            logits, _ = model(idx)
        # a run of one repeated token: every query sees identical keys and values
        same = torch.allclose(logits[0, 0], logits[0, 3], atol=1e-6)
        if pos_encoding in ("none", "rope"):
            # rope only rotates q and k, and every value is the same vector: no position signal
            assert same, pos_encoding
        else:
            assert not same, pos_encoding
