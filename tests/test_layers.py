"""Tests for minigpt.layers: layer norm, GELU, the feed-forward network and the block."""

import math

import pytest
import torch
import torch.nn.functional as F

from minigpt.layers import MLP, Block, LayerNorm, gelu, layer_norm
from minigpt.model import GPT, GPTConfig

# Tiny models run as fast on one thread, and far faster when the machine is shared.
pytestmark = pytest.mark.usefixtures("one_thread")


def small_config(**kw):
    base = dict(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    return GPTConfig(**{**base, **kw})


def randomise(module, seed=0):
    """Random values everywhere, so that γ = 1 and β = 0 cannot hide a missing term."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.dim() == 1 else 0.0))


# ------------------------------------------------------------------ layer norm


@pytest.mark.parametrize("affine", ["none", "weight", "both"])
def test_layer_norm_matches_torch(affine):
    x = torch.randn(3, 5, 24, dtype=torch.float64) * 4 + 2
    weight = torch.randn(24, dtype=torch.float64) if affine != "none" else None
    bias = torch.randn(24, dtype=torch.float64) if affine == "both" else None
    expected = F.layer_norm(x, (24,), weight, bias, eps=1e-5)
    torch.testing.assert_close(layer_norm(x, weight, bias, eps=1e-5), expected)
    expected = F.layer_norm(x, (24,), weight, bias, eps=0.1)
    torch.testing.assert_close(layer_norm(x, weight, bias, eps=0.1), expected)


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_module_matches_function_and_torch(bias):
    ln = LayerNorm(24, bias=bias, eps=1e-5)
    assert (ln.bias is not None) == bias
    assert sum(p.numel() for p in ln.parameters()) == (48 if bias else 24)
    randomise(ln)
    x = torch.randn(4, 7, 24) * 3 - 1
    out = ln(x)
    torch.testing.assert_close(out, layer_norm(x, ln.weight, ln.bias, eps=1e-5))
    torch.testing.assert_close(out, F.layer_norm(x, (24,), ln.weight, ln.bias, eps=1e-5))
    reference = torch.nn.LayerNorm(24, elementwise_affine=True, bias=bias)
    reference.load_state_dict(ln.state_dict())
    torch.testing.assert_close(out, reference(x))


def test_layer_norm_statistics():
    x = torch.randn(8, 10, 64, dtype=torch.float64) * 5 + 3
    y = layer_norm(x)
    torch.testing.assert_close(y.mean(-1), torch.zeros(8, 10, dtype=torch.float64))
    # biased variance: σ²/(σ² + ε) with σ² ≈ 25, so within 1e-5/25 of 1
    var = y.var(-1, unbiased=False)
    torch.testing.assert_close(var, torch.ones_like(var), atol=1e-6, rtol=0)
    # the module at initialisation (γ = 1, β = 0) does the same
    out = LayerNorm(64)(x.float())
    torch.testing.assert_close(out.mean(-1), torch.zeros(8, 10), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(8, 10), atol=1e-4, rtol=0)


# ------------------------------------------------------------------ GELU


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_matches_torch(approximate):
    x = torch.linspace(-8, 8, 1001, dtype=torch.float64)
    torch.testing.assert_close(gelu(x, approximate), F.gelu(x, approximate=approximate))


def test_gelu_exact_is_x_times_normal_cdf():
    xs = [-3.0, -1.0, -0.1, 0.0, 0.5, 2.0]
    expected = torch.tensor([x * 0.5 * (1 + math.erf(x / math.sqrt(2))) for x in xs])
    torch.testing.assert_close(gelu(torch.tensor(xs), "none"), expected)
    # the tanh form is an approximation: close to the exact one, but not equal
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    gap = (gelu(x, "tanh") - gelu(x, "none")).abs().max()
    assert 0 < gap < 1e-3


@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu"])
@pytest.mark.parametrize("n_inner", [None, 20])
def test_mlp_formula(activation, n_inner):
    config = small_config(activation=activation, n_inner=n_inner)
    mlp = MLP(config)
    randomise(mlp)
    hidden = n_inner or 4 * config.n_embd
    assert mlp.fc.weight.shape == (hidden, config.n_embd)
    x = torch.randn(2, 5, config.n_embd)
    approximate = "tanh" if activation == "gelu_tanh" else "none"
    h = gelu(x @ mlp.fc.weight.T + mlp.fc.bias, approximate)
    expected = h @ mlp.proj.weight.T + mlp.proj.bias
    torch.testing.assert_close(mlp(x), expected)


# ------------------------------------------------------------------ the block


def by_hand_layer_norm(x, ln):
    return layer_norm(x, ln.weight, ln.bias, ln.eps)


def by_hand_mlp(x, mlp, approximate="tanh"):
    h = gelu(x @ mlp.fc.weight.T + mlp.fc.bias, approximate)
    return h @ mlp.proj.weight.T + mlp.proj.bias


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_block_implements_its_formula(norm_position):
    config = small_config(norm_position=norm_position)
    block = Block(config).eval()
    randomise(block, seed=1)
    x = torch.randn(2, 9, config.n_embd)
    attn, mlp = block.attn, block.mlp
    with torch.no_grad():
        if norm_position == "pre":  # x + Attn(LN1(x)), then + FFN(LN2(.))
            h = x + attn(by_hand_layer_norm(x, block.ln_1))
            expected = h + by_hand_mlp(by_hand_layer_norm(h, block.ln_2), mlp)
        else:  # LN1(x + Attn(x)), then LN2(. + FFN(.))
            h = by_hand_layer_norm(x + attn(x), block.ln_1)
            expected = by_hand_layer_norm(h + by_hand_mlp(h, mlp), block.ln_2)
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_pre_and_post_ln_differ():
    torch.manual_seed(0)
    pre = Block(small_config(norm_position="pre")).eval()
    post = Block(small_config(norm_position="post")).eval()
    post.load_state_dict(pre.state_dict())
    x = torch.randn(1, 4, 16) * 3
    with torch.no_grad():
        assert not torch.allclose(pre(x), post(x), atol=1e-3)
        # post-LN ends in a layer norm with γ = 1, β = 0 at init: each token is standardised
        out = post(x)
    torch.testing.assert_close(out.mean(-1), torch.zeros(1, 4), atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_gradient_reaches_the_first_layer(norm_position):
    torch.manual_seed(0)
    model = GPT(small_config(n_layer=4, norm_position=norm_position))
    idx = torch.randint(0, 32, (2, 16))
    _, loss = model(idx, torch.roll(idx, -1, dims=1))
    loss.backward()
    first = model.blocks[0]
    for p in (first.attn.qkv_proj.weight, first.mlp.fc.weight, model.token_emb.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None, name
