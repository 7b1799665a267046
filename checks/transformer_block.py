"""Checks for exercises/06_transformer_block.ipynb (course notebook 06, eqs. 6.1-6.6).

Each check runs the learner's function on small seeded inputs, compares it with
`minigpt.layers` and with an independent reference (`torch.nn.functional`, Hugging Face's
`GPT2Block` where `transformers` is installed), and names the typical mistake when the answer
reproduces one.
"""

from __future__ import annotations

import math
import warnings

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


def _seeded_randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _fresh_int(generator, low: int, high: int) -> int:
    """An integer in [low, high), drawn with `generator`."""
    return int(torch.randint(low, high, (), generator=generator))


# ---------------------------------------------------------------------------------------------
# Exercise 1: layer norm (eq. 6.1)


def _layer_norm_cases():
    """(description, x, gamma, beta, eps): ordinary tokens, nearly constant ones, another ε."""
    C = 8
    gamma, beta = 1 + 0.5 * _seeded_randn(C, seed=1), 0.5 * _seeded_randn(C, seed=2)
    ordinary = 3 * _seeded_randn(2, 3, C, seed=3) + 1.5  # (B, T, C): off-centre, too wide
    quiet = 1e-3 * _seeded_randn(2, 4, C, seed=4)  # variance ≈ 1e-6, below ε = 1e-5
    quiet[1, 2] = 0.5  # one token exactly constant: variance 0
    return [("x of shape (2, 3, 8)", ordinary, gamma, beta, 1e-5),
            ("nearly constant tokens (variance ≈ 1e-6 < ε) and one constant token", quiet,
             gamma, beta, 1e-5),
            ("x of shape (2, 3, 8) and eps=0.5", ordinary, gamma, beta, 0.5)]


def check_layer_norm(layer_norm) -> None:
    """layer_norm(x, gamma, beta, eps) == γ ⊙ (x - μ) / √(σ² + ε) + β over the last axis."""
    for what, x, gamma, beta, eps in _layer_norm_cases():
        _check_layer_norm_case(layer_norm, what, x, gamma, beta, eps)
    with fresh_case(fresh_seed()) as generator:  # tokens, γ, β and ε no one knew in advance
        B, T, C = (_fresh_int(generator, 1, 4), _fresh_int(generator, 1, 6),
                   _fresh_int(generator, 2, 20))
        x = 2 * torch.randn(B, T, C, generator=generator) - 1
        gamma = 1 + 0.5 * torch.randn(C, generator=generator)
        beta = 0.5 * torch.randn(C, generator=generator)
        eps = 10.0 ** -_fresh_int(generator, 1, 7)
        _check_layer_norm_case(layer_norm, f"x of shape {(B, T, C)} and eps={eps:g}", x, gamma,
                               beta, eps)
    passed("layer_norm")


def _check_layer_norm_case(layer_norm, what, x, gamma, beta, eps) -> None:
    from minigpt.layers import layer_norm as package_layer_norm

    out = call(layer_norm, x.clone(), gamma.clone(), beta.clone(), eps)
    expected = package_layer_norm(x, gamma, beta, eps)
    torch.testing.assert_close(expected, F.layer_norm(x, (x.size(-1),), gamma, beta, eps))
    close_or_diagnose(out, expected, f"layer_norm for {what}",
                      _layer_norm_mistakes(x, gamma, beta, eps))


def _normalise(x, gamma, beta, eps, *, dims=(-1,), correction=0, eps_where="inside",
               divide_by="std") -> torch.Tensor:
    """Layer norm with one deliberate mistake switched on (all off = right)."""
    mu = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, keepdim=True, correction=correction)
    spread = {"inside": torch.sqrt(var + eps), "outside": torch.sqrt(var) + eps,
              "none": torch.sqrt(var)}[eps_where]
    if divide_by == "var":
        spread = var + eps
    return gamma * (x - mu) / spread + beta


def _layer_norm_mistakes(x, gamma, beta, eps) -> dict:
    ones, zeros = torch.ones_like(gamma), torch.zeros_like(beta)
    return {  # the first that matches is named: ε ignored and ε missing agree when ε is small
        "you ignored the `eps` argument and used 1e-5": _normalise(x, gamma, beta, 1e-5),
        "the variance divides by C - 1 (the unbiased estimate, torch.var's default); layer norm "
        "uses the biased variance, dividing by C: pass unbiased=False (or correction=0)":
            _normalise(x, gamma, beta, eps, correction=1),
        "ε is added outside the square root, (x - μ) / (√σ² + ε); it belongs inside, "
        "(x - μ) / √(σ² + ε), which matters when a token's variance is comparable to ε":
            _normalise(x, gamma, beta, eps, eps_where="outside"),
        "ε is missing: (x - μ) / √σ² blows up for a (nearly) constant token; use √(σ² + ε)":
            _normalise(x, gamma, beta, eps, eps_where="none"),
        "you divided by the variance σ² + ε instead of the standard deviation √(σ² + ε)":
            _normalise(x, gamma, beta, eps, divide_by="var"),
        "the statistics are taken over the batch (dim 0), as batch norm does; layer norm takes "
        "the mean and variance of each token's own C features (the last axis)":
            _normalise(x, gamma, beta, eps, dims=(0,)),
        "the statistics are taken over the batch and the time steps, as batch norm does; layer "
        "norm takes them over each token's own C features (the last axis)":
            _normalise(x, gamma, beta, eps, dims=(0, 1)),
        "the statistics are taken over the time steps (dim -2), which mixes in later tokens; "
        "take them over each token's own C features (the last axis)":
            _normalise(x, gamma, beta, eps, dims=(-2,)),
        "the statistics are taken over the whole sequence (T and C together); take them over "
        "each token's own C features only (the last axis)":
            _normalise(x, gamma, beta, eps, dims=(-2, -1)),
        "γ and β are not applied: after standardising, multiply by gamma and add beta":
            _normalise(x, ones, zeros, eps),
        "γ and β are swapped: the output is gamma * x̂ + beta": _normalise(x, beta, gamma, eps),
        "only γ is applied; add β too": _normalise(x, gamma, zeros, eps),
        "only β is applied; multiply by γ too": _normalise(x, ones, beta, eps),
    }


# ---------------------------------------------------------------------------------------------
# Exercise 2: GPT-2's GELU (eq. 6.4)


def check_gelu_tanh(gelu_tanh) -> None:
    """gelu_tanh(x) == ½x(1 + tanh(√(2/π)(x + 0.044715x³)))."""
    grid = torch.linspace(-6, 6, 241)  # includes 0, both tails and the dip near -0.75
    for what, x in (("x on a grid from -6 to 6", grid),
                    ("x of shape (2, 3, 4)", 2 * _seeded_randn(2, 3, 4, seed=5))):
        _check_gelu_case(gelu_tanh, what, x)
    with fresh_case(fresh_seed()) as generator:  # inputs no one knew in advance
        shape = (_fresh_int(generator, 1, 5), _fresh_int(generator, 1, 9))
        _check_gelu_case(gelu_tanh, f"x of shape {shape}",
                         3 * torch.randn(*shape, generator=generator))
    passed("gelu_tanh")


def _check_gelu_case(gelu_tanh, what, x) -> None:
    from minigpt.layers import gelu

    out = call(gelu_tanh, x.clone())
    expected = gelu(x, approximate="tanh")
    torch.testing.assert_close(expected, F.gelu(x, approximate="tanh"))
    close_or_diagnose(out, expected, f"gelu_tanh for {what}", _gelu_mistakes(x),
                      factors={"2 (the ½ in front)": 2.0})


SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


def _gelu_mistakes(x) -> dict:
    def tanh_form(a=SQRT_2_OVER_PI, b=0.044715, half=0.5, times_x=True, cube_inside=True):
        inner = a * (x + b * x**3) if cube_inside else a * x + b * x**3
        gate = half * (1 + torch.tanh(inner))
        return x * gate if times_x else gate

    return {
        "that is the exact GELU x·Φ(x) with erf (eq. 6.3); this exercise asks for GPT-2's tanh "
        "approximation (eq. 6.4). They differ by up to 5e-4, enough to change a trained model's "
        "outputs": 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
        "the factor ½ in front is missing": tanh_form(half=1.0),
        "you returned the gate ½(1 + tanh(...)) ≈ Φ(x) without multiplying by x":
            tanh_form(times_x=False),
        "the constant in front of the bracket is 2/π; it is √(2/π) ≈ 0.7979":
            tanh_form(a=2 / math.pi),
        "the constant in front of the bracket is √(π/2); it is √(2/π) ≈ 0.7979":
            tanh_form(a=math.sqrt(math.pi / 2)),
        "the constant √(2/π) is missing": tanh_form(a=1.0),
        "the cubic term 0.044715·x³ is missing": tanh_form(b=0.0),
        "the cubic term sits outside the bracket: it is √(2/π)·(x + 0.044715·x³), both terms "
        "multiplied by √(2/π)": tanh_form(cube_inside=False),
        "that is ReLU, max(0, x); GELU is smooth and dips slightly below 0 for negative x":
            torch.relu(x),
        "that is the sigmoid approximation x·σ(1.702x); this exercise asks for the tanh form "
        "(eq. 6.4)": x * torch.sigmoid(1.702 * x),
    }


# ---------------------------------------------------------------------------------------------
# Exercise 3: the parameters of one block

COUNT_CONFIGS = [(64, True), (768, True), (32, False), (1, True), (8, False)]


def check_block_parameter_count(count) -> None:
    """count(n_embd, bias) == parameters of minigpt.layers.Block (hidden width 4C)."""
    for C, bias in COUNT_CONFIGS:
        _check_block_count_case(count, C, bias)
    with fresh_case(fresh_seed()) as generator:  # a width no one knew in advance
        case = COUNT_CONFIGS[0]
        while case in COUNT_CONFIGS:
            case = (_fresh_int(generator, 2, 400), bool(_fresh_int(generator, 0, 2)))
        _check_block_count_case(count, *case)
    passed("block_parameter_count")


def _check_block_count_case(count, C, bias) -> None:
    answer = call(count, C, bias)
    what = f"the count for n_embd={C}, bias={bias}"
    if isinstance(answer, torch.Tensor) and answer.numel() == 1:
        answer = answer.item()
    require(isinstance(answer, int | float) and not isinstance(answer, bool),
            f"{what} should be a number, got {type(answer).__name__}")
    expected = _block_parameters(C, bias)
    assert expected == 12 * C**2 + (13 * C if bias else 2 * C)
    if answer == expected:
        return
    diagnosis = diagnose(answer, _count_mistakes(C, bias))
    raise CheckFailed(f"{what} is {answer:g}, expected {expected}: " + (
        diagnosis or "attention 4C² + 4C (eq. 4.6), feed-forward 8C² + 5C (eq. 6.5), two "
                     "layer norms with γ and β (4C); without biases only the weights and "
                     "the two γ remain"))


def _block_parameters(C: int, bias: bool) -> int:
    from minigpt import GPTConfig
    from minigpt.layers import Block

    block = Block(GPTConfig(n_embd=C, n_head=1, block_size=8, bias=bias))
    return sum(p.numel() for p in block.parameters())


def _count_mistakes(C: int, bias: bool) -> dict:
    if not bias:
        return {
            "bias=False removes every bias vector (attention, feed-forward and the layer norms' "
            "β), but the layer norms keep their gains γ: 2C": 12 * C**2,
            "bias=False: you still counted biases; only the weights and the two layer norms' "
            "gains γ remain": 12 * C**2 + 13 * C,
            "the layer norms' β is a bias too: with bias=False each layer norm has only γ":
                12 * C**2 + 4 * C,
        }
    return {
        "you are 4C short: the two layer norms (γ and β, C each) or the four biases of "
        "attention (3C + C) are missing": 12 * C**2 + 9 * C,
        "you are 5C short: the feed-forward biases (4C in the hidden layer, C at the output) are "
        "missing": 12 * C**2 + 8 * C,
        "you are 2C short: each of the two layer norms has a gain γ and a bias β, C numbers "
        "each": 12 * C**2 + 11 * C,
        "the biases are missing: attention has 4C, the feed-forward network 5C, the layer "
        "norms' β 2C": 12 * C**2 + 2 * C,
        "the feed-forward hidden layer is 4C wide, not C: W₁ is C × 4C and W₂ is 4C × C "
        "(eq. 6.5)": 6 * C**2 + 10 * C,
        "the feed-forward network is missing (8C² + 5C, eq. 6.5)": 4 * C**2 + 8 * C,
        "the attention layer is missing (4C² + 4C, eq. 4.6)": 8 * C**2 + 9 * C,
        "the attention's output projection W^O (C² + C) is missing": 11 * C**2 + 12 * C,
        "you counted only the weights (12C²); add the biases and the layer norms": 12 * C**2,
    }


# ---------------------------------------------------------------------------------------------
# Exercise 4: a pre-LN block from its parts (eq. 6.6)


def check_pre_ln_block(pre_ln_block) -> None:
    """pre_ln_block(x, ln_1, attn, ln_2, mlp) == x + Attn(LN₁(x)), then + FFN(LN₂(·))."""
    block = _random_block(n_embd=16, n_head=2, seed=0)
    for what, x in (("x of shape (2, 5, 16)", 2 * _seeded_randn(2, 5, 16, seed=6) + 1),
                    ("a single token, x of shape (1, 1, 16)", _seeded_randn(1, 1, 16, seed=7))):
        _check_block_case(pre_ln_block, block, what, x)
    seed = fresh_seed()
    with fresh_case(seed) as generator:  # a block and tokens no one knew in advance
        n_head, head_dim = _fresh_int(generator, 1, 4), _fresh_int(generator, 2, 7)
        block = _random_block(n_embd=n_head * head_dim, n_head=n_head, seed=seed)
        B, T = _fresh_int(generator, 1, 4), _fresh_int(generator, 1, 8)
        x = 2 * torch.randn(B, T, n_head * head_dim, generator=generator)
        _check_block_case(pre_ln_block, block, f"x of shape {tuple(x.shape)} in a block with "
                          f"{n_head} head(s)", x)
    passed("pre_ln_block")


def _check_block_case(pre_ln_block, block, what, x) -> None:
    parts = (block.ln_1, block.attn, block.ln_2, block.mlp)
    with torch.no_grad():
        out = call(pre_ln_block, x.clone(), *parts)
        expected = block(x)
        _compare_with_hugging_face(block, x, expected)
        mistakes = _block_mistakes(x, *parts)
    close_or_diagnose(out, expected, f"pre_ln_block for {what}", mistakes)


def _random_block(n_embd: int, n_head: int, seed: int):
    """A minigpt Block whose weights are all of order 1, so that every part visibly matters."""
    from minigpt import GPTConfig
    from minigpt.layers import Block

    with torch.random.fork_rng(devices=[]), torch.no_grad():  # leave the learner's RNG alone
        torch.manual_seed(seed)
        block = Block(GPTConfig(n_embd=n_embd, n_head=n_head, block_size=8)).eval()
        for name, p in block.named_parameters():
            if name.startswith("ln_") and name.endswith("weight"):
                p.copy_(1 + 0.5 * torch.randn_like(p))  # γ around 1
            elif p.dim() == 2:
                p.copy_(torch.randn_like(p) / math.sqrt(p.size(1)))  # weights: std 1/√fan_in
            else:
                p.copy_(0.5 * torch.randn_like(p))  # biases and β
    return block


def _compare_with_hugging_face(block, x, expected) -> None:
    """Hugging Face's GPT2Block with the same weights gives the same output (if installed)."""
    try:
        with warnings.catch_warnings():  # tqdm asks for ipywidgets when imported in a notebook
            warnings.filterwarnings("ignore", message="IProgress not found")
            from transformers import GPT2Config
            from transformers.models.gpt2.modeling_gpt2 import GPT2Block
    except ImportError:
        return
    C = x.size(-1)
    config = GPT2Config(n_embd=C, n_head=block.attn.n_head, n_layer=1, n_positions=8,
                        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, attn_implementation="sdpa")
    reference = GPT2Block(config, layer_idx=0).eval()
    weights = {
        "ln_1.weight": block.ln_1.weight, "ln_1.bias": block.ln_1.bias,
        "ln_2.weight": block.ln_2.weight, "ln_2.bias": block.ln_2.bias,
        "attn.c_attn.weight": block.attn.qkv_proj.weight.T,  # Conv1D keeps (in, out)
        "attn.c_attn.bias": block.attn.qkv_proj.bias,
        "attn.c_proj.weight": block.attn.out_proj.weight.T,
        "attn.c_proj.bias": block.attn.out_proj.bias,
        "mlp.c_fc.weight": block.mlp.fc.weight.T, "mlp.c_fc.bias": block.mlp.fc.bias,
        "mlp.c_proj.weight": block.mlp.proj.weight.T, "mlp.c_proj.bias": block.mlp.proj.bias,
    }
    reference.load_state_dict({k: v.detach() for k, v in weights.items()}, strict=False)
    out = reference(x)
    torch.testing.assert_close(out[0] if isinstance(out, tuple) else out, expected)


def _block_mistakes(x, ln_1, attn, ln_2, mlp) -> dict:
    h = x + attn(ln_1(x))
    post_h = ln_1(x + attn(x))
    normed = ln_1(x)
    from_normed = normed + attn(normed)
    return {
        "that is the post-LN block of the original Transformer, LN(x + Attn(x)); pre-LN (GPT-2) "
        "normalises each branch's input and leaves the residual stream un-normalised: "
        "h = x + Attn(LN₁(x)), y = h + FFN(LN₂(h))": ln_2(post_h + mlp(post_h)),
        "the residual connection around attention is missing: h = x + Attn(LN₁(x)), keep the x":
            (lambda a: a + mlp(ln_2(a)))(attn(ln_1(x))),
        "the residual connection around the feed-forward network is missing: "
        "y = h + FFN(LN₂(h)), keep the h": mlp(ln_2(h)),
        "both residual connections are missing: each sublayer's output is added to its input "
        "(eq. 6.6)": mlp(ln_2(attn(ln_1(x)))),
        "the residual stream carries the normalised x: you replaced x by LN₁(x) before adding. "
        "Only the branch reads LN₁(x); the sum starts from the raw x, h = x + Attn(LN₁(x))":
            ln_2(from_normed) + mlp(ln_2(from_normed)),
        "the residual stream carries the normalised x: h = x + Attn(LN₁(x)) starts from the raw "
        "x, not from LN₁(x)": from_normed + mlp(ln_2(from_normed)),
        "the residual stream carries the normalised h before the feed-forward network: "
        "y = h + FFN(LN₂(h)) starts from h, not from LN₂(h)": ln_2(h) + mlp(ln_2(h)),
        "the same layer norm is used twice; the feed-forward branch has its own, ln_2":
            h + mlp(ln_1(h)),
        "the feed-forward network reads the un-normalised h: y = h + FFN(LN₂(h))":
            h + mlp(h),
        "attention reads the un-normalised x: h = x + Attn(LN₁(x))":
            (lambda a: a + mlp(ln_2(a)))(x + attn(x)),
        "the layer norms are missing: each branch reads LN(·) of the stream":
            (lambda a: a + mlp(a))(x + attn(x)),
        "the sublayers are in the wrong order: attention first, then the feed-forward network":
            (lambda a: a + attn(ln_1(a)))(x + mlp(ln_2(x))),
    }
