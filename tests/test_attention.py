"""Tests for minigpt.attention: the explicit formula, multi-head attention and the KV cache.

The explicit `scaled_dot_product_attention` is checked against PyTorch's fused kernel (an
independent implementation), and `MultiHeadAttention` against per-head attention written out
in the test.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt.attention import (
    KVCache,
    MultiHeadAttention,
    causal_mask,
    scaled_dot_product_attention,
    stable_softmax,
)
from minigpt.model import GPTConfig
from minigpt.positional import RotaryEmbedding

# Tiny models run as fast on one thread, and far faster when the machine is shared.
pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = st.tuples(
    st.integers(1, 3),  # batch
    st.integers(1, 3),  # heads
    st.integers(1, 7),  # L, queries
    st.integers(1, 7),  # S, keys
    st.integers(1, 9),  # d_k
    st.integers(1, 5),  # d_v
)
FAST = settings(max_examples=40, deadline=None)


def qkv(shape, seed, dtype=torch.float64):
    B, H, L, S, d_k, d_v = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, d_k, generator=g, dtype=dtype)
    k = torch.randn(B, H, S, d_k, generator=g, dtype=dtype)
    v = torch.randn(B, H, S, d_v, generator=g, dtype=dtype)
    return q, k, v, g


def reference_attention(q, k, v, allowed):
    """softmax over the allowed keys only, written with torch.softmax; rows with no allowed
    key are defined as zero."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~allowed, -math.inf)
    weights = torch.softmax(scores, dim=-1)
    weights = torch.nan_to_num(weights, nan=0.0)  # rows with every key masked
    return weights @ v, weights


# ------------------------------------------------------------------ the explicit formula


@FAST
@given(shape=SHAPES, seed=st.integers(0, 2**31 - 1))
def test_no_mask_matches_torch(shape, seed):
    q, k, v, _ = qkv(shape, seed)
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), expected)


@FAST
@given(shape=SHAPES, seed=st.integers(0, 2**31 - 1))
def test_causal_matches_torch(shape, seed):
    q, k, v, _ = qkv(shape, seed)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, is_causal=True), expected)


@FAST
@given(shape=SHAPES, seed=st.integers(0, 2**31 - 1), broadcast=st.booleans())
def test_boolean_mask_matches_torch(shape, seed, broadcast):
    q, k, v, g = qkv(shape, seed)
    B, H, L, S = shape[:4]
    mask_shape = (L, S) if broadcast else (B, H, L, S)
    mask = torch.rand(mask_shape, generator=g) < 0.6  # rows may be fully masked
    ours = scaled_dot_product_attention(q, k, v, mask=mask)
    torch.testing.assert_close(ours, reference_attention(q, k, v, mask)[0])
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


@FAST
@given(shape=SHAPES, seed=st.integers(0, 2**31 - 1))
def test_additive_float_mask_matches_torch(shape, seed):
    q, k, v, g = qkv(shape, seed)
    B, H, L, S = shape[:4]
    bias = torch.randn(B, H, L, S, generator=g, dtype=q.dtype) * 3
    # some entries -inf, but keep key 0 finite so that no row is fully masked
    blocked = torch.rand(B, H, L, S, generator=g) < 0.3
    blocked[..., 0] = False
    bias = bias.masked_fill(blocked, -math.inf)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask=bias), expected)


@FAST
@given(shape=SHAPES, seed=st.integers(0, 2**31 - 1))
def test_mask_combined_with_causal(shape, seed):
    q, k, v, g = qkv(shape, seed)
    L, S = shape[2:4]
    mask = torch.rand(L, S, generator=g) < 0.7
    allowed = mask & torch.ones(L, S, dtype=torch.bool).tril()
    ours = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=True)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))


def test_explicit_scale_matches_torch():
    q, k, v, _ = qkv((2, 2, 4, 6, 8, 3), seed=1)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    ours = scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)
    torch.testing.assert_close(ours, expected)


def test_causal_mask_is_top_left_aligned():
    # written out by hand for 3 queries and 5 keys: query i sees keys 0..i
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(causal_mask(3, 5), expected)
    assert torch.equal(causal_mask(4, 2), torch.tensor([[1, 0], [1, 1], [1, 1], [1, 1]]).bool())


def test_fully_masked_row_gives_zeros_and_finite_gradients():
    q, k, v, _ = qkv((2, 2, 4, 5, 6, 3), seed=2)
    for t in (q, k, v):
        t.requires_grad_(True)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1] = False  # query 1 may look at nothing
    additive = torch.zeros(4, 5, dtype=q.dtype).masked_fill(~mask, -math.inf)
    for m in (mask, additive):
        out, weights = scaled_dot_product_attention(q, k, v, mask=m, return_weights=True)
        assert not out.isnan().any()
        assert torch.equal(out[:, :, 1], torch.zeros_like(out[:, :, 1]))
        assert torch.equal(weights[:, :, 1], torch.zeros_like(weights[:, :, 1]))
        # the other rows are ordinary attention
        torch.testing.assert_close(out, reference_attention(q, k, v, mask)[0])
        (out.square().sum() + weights.sum()).backward()
        for t in (q, k, v):
            assert torch.isfinite(t.grad).all()
            t.grad = None


def test_stable_softmax_matches_torch_and_handles_all_masked_rows():
    scores = torch.randn(3, 6, dtype=torch.float64) * 20
    torch.testing.assert_close(stable_softmax(scores), torch.softmax(scores, dim=-1))
    scores[1] = -math.inf
    weights = stable_softmax(scores)
    assert torch.equal(weights[1], torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(weights[[0, 2]], torch.softmax(scores[[0, 2]], dim=-1))


@FAST
@given(shape=SHAPES, seed=st.integers(0, 2**31 - 1))
def test_weights_are_distributions_and_future_is_zero(shape, seed):
    q, k, v, g = qkv(shape, seed)
    L, S = shape[2:4]
    out, weights = scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
    assert weights.shape == (*q.shape[:-1], S)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1], dtype=q.dtype))
    future = ~torch.ones(L, S, dtype=torch.bool).tril()
    assert (weights[..., future] == 0).all()  # exactly zero, not merely small
    torch.testing.assert_close(out, weights @ v)

    mask = torch.rand(L, S, generator=g) < 0.5
    _, weights = scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
    row_sums = weights.sum(-1)
    expected = mask.any(-1).to(q.dtype).expand_as(row_sums)  # 1, or 0 for fully masked rows
    torch.testing.assert_close(row_sums, expected)
    assert (weights[..., ~mask] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_logits_stay_finite(dtype):
    g = torch.Generator().manual_seed(3)
    d = 16
    q = torch.randn(2, 2, 5, d, generator=g, dtype=dtype) * 100
    k = torch.randn(2, 2, 5, d, generator=g, dtype=dtype) * 100
    v = torch.randn(2, 2, 5, d, generator=g, dtype=dtype)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)
    assert scores.abs().max() > 1e4  # naive exp() would overflow to inf here
    assert torch.isinf(torch.exp(scores)).any()
    out, weights = scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    expected = reference_attention(q.double(), k.double(), v.double(), causal_mask(5, 5))[0]
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_dropout_in_explicit_path():
    q, k, v, _ = qkv((1, 1, 6, 6, 4, 4), seed=4)
    torch.manual_seed(0)
    _, weights = scaled_dot_product_attention(q, k, v, dropout_p=0.5, return_weights=True)
    _, clean = scaled_dot_product_attention(q, k, v, return_weights=True)
    kept = weights != 0
    assert 0 < kept.sum() < kept.numel()  # some dropped, some kept
    torch.testing.assert_close(weights[kept], clean[kept] / 0.5)  # inverted dropout rescales


# ------------------------------------------------------------------ multi-head attention


def mha_config(**kw):
    base = dict(vocab_size=16, block_size=16, n_layer=1, n_head=4, n_embd=32, dropout=0.0)
    return GPTConfig(**{**base, **kw})


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rope", [False, True])
def test_fast_path_equals_explicit_path(bias, rope):
    torch.manual_seed(0)
    config = mha_config(bias=bias)
    rotary = RotaryEmbedding(config.head_dim, config.block_size) if rope else None
    mha = MultiHeadAttention(config, rotary=rotary).eval()
    x = torch.randn(3, 11, config.n_embd)
    with torch.no_grad():
        fast = mha(x)
        assert mha.attn_weights is None  # the fast path does not materialise the weights
        mha.record_weights = True
        explicit = mha(x)
    torch.testing.assert_close(fast, explicit, atol=1e-6, rtol=1e-5)
    assert mha.attn_weights.shape == (3, config.n_head, 11, 11)
    assert (mha.attn_weights.triu(1) == 0).all()


def test_fused_qkv_equals_separate_head_projections():
    """Eq. (4.4): one (C, 3C) projection holds h separate (C, C/h) projections for Q, K, V."""
    torch.manual_seed(1)
    config = mha_config(n_head=4, n_embd=24)
    mha = MultiHeadAttention(config).eval()
    with torch.no_grad():
        mha.qkv_proj.bias.normal_()  # make the biases non-zero so they are checked too
        mha.out_proj.bias.normal_()
    C, hd, T = config.n_embd, config.head_dim, 7
    x = torch.randn(2, T, C)
    W, b = mha.qkv_proj.weight, mha.qkv_proj.bias  # (3C, C), (3C,)
    heads = []
    for i in range(config.n_head):
        rows = {
            name: slice(offset * C + i * hd, offset * C + (i + 1) * hd)
            for offset, name in enumerate("qkv")
        }
        q = nn_linear(x, W[rows["q"]], b[rows["q"]])  # (B, T, hd)
        k = nn_linear(x, W[rows["k"]], b[rows["k"]])
        v = nn_linear(x, W[rows["v"]], b[rows["v"]])
        scores = q @ k.transpose(1, 2) / math.sqrt(hd)
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)
        heads.append(torch.softmax(scores, dim=-1) @ v)
    expected = nn_linear(torch.cat(heads, dim=-1), mha.out_proj.weight, mha.out_proj.bias)
    with torch.no_grad():
        torch.testing.assert_close(mha(x), expected, atol=1e-6, rtol=1e-5)
    # parameter count of eq. (4.4): 3(C² + C) for QKV plus C² + C for the output
    assert sum(p.numel() for p in mha.parameters()) == 4 * C * C + 4 * C


def nn_linear(x, weight, bias):
    return x @ weight.T + bias


def test_split_merge_round_trip():
    mha = MultiHeadAttention(mha_config(n_head=4, n_embd=32))
    x = torch.randn(2, 5, 32)
    heads = mha.split_heads(x)
    assert heads.shape == (2, 4, 5, 8)
    for h in range(4):  # head h owns features h*8 .. h*8+7
        assert torch.equal(heads[:, h], x[:, :, h * 8 : (h + 1) * 8])
    assert torch.equal(mha.merge_heads(heads), x)


@pytest.mark.parametrize("record_weights", [False, True])
@pytest.mark.parametrize("rope", [False, True])
def test_kv_cache_chunks_equal_full_pass(record_weights, rope):
    """Feeding a sequence as a prefix, a chunk and single tokens through a KV cache gives the
    outputs of one causal pass: this exercises the offset mask (start > 0, T > 1) too."""
    torch.manual_seed(2)
    config = mha_config()
    rotary = RotaryEmbedding(config.head_dim, config.block_size) if rope else None
    mha = MultiHeadAttention(config, rotary=rotary).eval()
    mha.record_weights = record_weights
    x = torch.randn(2, 12, config.n_embd)
    cache = KVCache(2, config.n_head, config.block_size, config.head_dim)
    with torch.no_grad():
        full = mha(x)
        pieces = [mha(x[:, :5], cache), mha(x[:, 5:9], cache), mha(x[:, 9:10], cache)]
        pieces += [mha(x[:, 10:11], cache), mha(x[:, 11:], cache)]
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-6, rtol=1e-5)


def test_kv_cache_append_and_overflow():
    cache = KVCache(batch_size=1, n_head=2, max_len=4, head_dim=3)
    k1, v1 = torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3)
    k, v = cache.append(k1, v1)
    assert torch.equal(k, k1) and torch.equal(v, v1) and cache.length == 3
    k2, v2 = torch.randn(1, 2, 1, 3), torch.randn(1, 2, 1, 3)
    k, v = cache.append(k2, v2)
    assert torch.equal(k, torch.cat((k1, k2), 2)) and torch.equal(v, torch.cat((v1, v2), 2))
    with pytest.raises(ValueError, match=r"KV cache holds 4 positions but 5"):
        cache.append(k2, v2)
    assert cache.length == 4  # a refused append leaves the cache as it was
    cache.reset()
    assert cache.length == 0
    k, _ = cache.append(k2, v2)
    assert torch.equal(k, k2)
