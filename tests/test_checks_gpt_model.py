"""The checks of exercises/07_gpt_model.ipynb: they pass a right answer, and fail a wrong one
with the diagnosis of its mistake (every wrong answer here is one a learner could write)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from check_helpers import fails, rejects_remembered_answers, unwritten

from checks import gpt_model as check
from minigpt.layers import LayerNorm

pytestmark = pytest.mark.usefixtures("one_thread")



# --------------------------------------------------------------------------- eq. (7.5)

def params(V, P, C, L, head=0, positions=1, biases=1, norms=1, final=1):
    block = 12 * C * C + biases * 9 * C + norms * 4 * C
    return V * C * (1 + head) + positions * P * C + L * block + final * 2 * C


def test_param_count_passes_the_closed_form(capsys):
    check.check_param_count(params)
    assert "✓ parameter count" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, words", [
    (dict(head=1), ["output head", "counts once"]),
    (dict(positions=0), ["position table"]),
    (dict(biases=0), ["biases", "9C per block"]),
    (dict(norms=0, final=0), ["two layer norms inside each block", "final layer norm"]),
    (dict(final=0), ["final layer norm LN_f"]),
    (dict(biases=0, norms=0, final=0), ["biases", "layer norms", "LN_f"]),
    (dict(head=1, positions=0), ["output head", "position table"]),
])
def test_param_count_names_the_mistake(mistake, words):
    message = fails(check.check_param_count, functools.partial(params, **mistake), *words)
    assert "124,439,808" in message  # GPT-2 small, the first case


def test_param_count_of_one_block_and_a_narrow_feed_forward():
    fails(check.check_param_count, lambda V, P, C, L: params(V, P, C, 1),
          "one block instead of L")
    fails(check.check_param_count,
          lambda V, P, C, L: V * C + P * C + L * (6 * C * C + 10 * C) + 2 * C, "width C")


def test_param_count_unknown_mistake_still_explains_the_difference():
    fails(check.check_param_count, lambda V, P, C, L: params(V, P, C, L) + 3 * C,
          "+3·C", "term by term")


def test_param_count_needs_a_whole_number():
    fails(check.check_param_count, lambda V, P, C, L: params(V, P, C, L) + 0.5,
          "not a whole number")
    fails(check.check_param_count, unwritten, "not written yet")


# --------------------------------------------------------------------------- eqs. (7.1)-(7.3)

def forward(model, idx, positions=True, final_norm=True, blocks="chain", offset=0, out="logits"):
    E, P = model.token_emb.weight, model.pos_enc.embedding.weight
    T = idx.size(1)
    h0 = E[idx] + (P[offset:T + offset] if positions else 0)
    h = h0
    for block in model.blocks if blocks != "none" else []:
        h = block(h if blocks == "chain" else h0)
    if final_norm:
        h = model.ln_f(h)
    if out == "hidden":
        return h
    logits = h @ E.T
    return {"logits": logits, "probs": logits.softmax(-1), "log_probs": logits.log_softmax(-1),
            "last": logits[:, -1]}[out]


def test_forward_passes_the_three_equations(capsys):
    check.check_forward(forward)
    assert "✓ forward pass" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, words", [
    (dict(positions=False), ["position rows"]),
    (dict(offset=1), ["P[1..T]", "counting from 0"]),
    (dict(final_norm=False), ["final layer norm LN_f"]),
    (dict(blocks="none"), ["skipped the transformer blocks"]),
    (dict(blocks="h0"), ["previous block's output"]),
    (dict(out="probs"), ["probabilities"]),
    (dict(out="log_probs"), ["log-probabilities"]),
    (dict(out="hidden"), ["residual stream", "Eᵀ"]),
    (dict(out="last"), ["every position"]),
])
def test_forward_names_the_mistake(mistake, words):
    fails(check.check_forward, functools.partial(forward, **mistake), *words)


def test_forward_refuses_the_shortcut_and_restores_the_model():
    fails(check.check_forward, lambda model, idx: model(idx)[0], "called model(idx)")
    fails(check.check_forward, lambda model, idx: model.lm_head(model.hidden_states(idx)),
          "called model(idx)")
    model = check._perturbed_gpt(0, vocab_size=10, block_size=4, n_layer=1, n_head=1, n_embd=4)
    with check._NoShortcut(model):
        pass
    assert model(torch.zeros(1, 2, dtype=torch.long))[0].shape == (1, 2, 10)


# --------------------------------------------------------------------------- eq. (7.6)

def flops(V, C, L, T, training=True, passes=3, per_weight=2, attention=4, head=1,
          attention_tripled=True):
    n_mm = 12 * L * C * C + head * V * C
    attn = attention * L * T * C
    if not training:
        return per_weight * n_mm + attn
    return passes * per_weight * n_mm + (passes if attention_tripled else 1) * attn


def test_flops_passes_eq_7_6(capsys):
    check.check_flops_per_token(flops)
    assert "✓ FLOPs per token" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, words", [
    (dict(passes=1), ["forgot the ×3 for training"]),
    (dict(passes=2), ["one forward pass"]),
    (dict(attention=0), ["forgot the attention term"]),
    (dict(attention=2), ["only QKᵀ"]),
    (dict(attention_tripled=False), ["attention term by 3"]),
    (dict(head=0), ["output head"]),
    (dict(per_weight=1), ["1 FLOP per weight"]),
    (dict(passes=1, attention=0), ["×3", "attention term"]),
])
def test_flops_names_the_mistake(mistake, words):
    fails(check.check_flops_per_token, functools.partial(flops, **mistake), *words)


def test_flops_attention_counted_for_the_whole_sequence():
    def per_sequence(V, C, L, T, training=True):
        forward = 2 * (12 * L * C * C + V * C) + 4 * L * T * T * C
        return 3 * forward if training else forward

    fails(check.check_flops_per_token, per_sequence, "by T again")


def test_flops_forward_must_not_be_the_training_cost():
    fails(check.check_flops_per_token,
          lambda V, C, L, T, training=True: flops(V, C, L, T, training=True),
          "training=False", "forward pass alone")


def test_flops_reference_is_pytorchs_counter():
    V, C, L, T = check.FLOP_CASES[3]
    assert check._flop_counter_per_token(True) == flops(V, C, L, T)
    assert check._flop_counter_per_token(False) == flops(V, C, L, T, training=False)


# --------------------------------------------------------------------------- eq. (7.4)

def init(model, scale=None, everything_scaled=False, biases=True, gains=True, draw="normal",
         untie=False):
    L = model.config.n_layer
    scale = scale if scale is not None else 1 / math.sqrt(2 * L)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                if biases:
                    p.zero_()
            elif ".ln_" in name or name.startswith("ln_f"):
                if gains:
                    p.fill_(1.0)
            else:
                residual = name.endswith(("attn.out_proj.weight", "mlp.proj.weight"))
                std = 0.02 * scale if residual or everything_scaled else 0.02
                if draw == "normal":
                    p.normal_(0.0, std)
                else:
                    p.uniform_(-std * math.sqrt(3), std * math.sqrt(3))
    if untie:
        model.token_emb.weight = torch.nn.Parameter(0.02 * torch.randn_like(model.lm_head.weight))


def test_init_passes_gpt2s_rule(capsys):
    check.check_init(init)
    assert "✓ GPT-2 initialisation" in capsys.readouterr().out


def test_init_passes_the_package_own_initialiser():
    def package_init(model):
        model.apply(model._init_weights)
        for module in model.modules():  # layer norms: minigpt builds them with γ = 1, β = 0
            if isinstance(module, LayerNorm):
                torch.nn.init.ones_(module.weight)
                torch.nn.init.zeros_(module.bias)

    check.check_init(package_init)


@pytest.mark.parametrize("mistake, words", [
    (dict(scale=1.0), ["out_proj", "left it at 0.02", "0.02/√(2L)"]),
    (dict(scale=1 / math.sqrt(4)), ["divided by √L", "2L residual branches"]),
    (dict(scale=1 / 8), ["divided by 2L instead of √(2L)"]),
    (dict(everything_scaled=True), ["token_emb", "only attn.out_proj and mlp.proj"]),
    (dict(biases=False), ["bias", "not all zeros"]),
    (dict(gains=False), ["ln_1.weight", "not all ones"]),
    (dict(draw="uniform"), ["not Gaussian"]),
    (dict(untie=True), ["no longer token_emb.weight"]),
])
def test_init_names_the_mistake(mistake, words):
    fails(check.check_init, functools.partial(init, **mistake), *words)


def test_init_untouched_tensor_is_reported():
    def skip_positions(model):
        init(model)
        with torch.no_grad():
            model.pos_enc.embedding.weight.uniform_(0.5, 1.5)

    fails(check.check_init, skip_positions, "pos_enc.embedding.weight", "mean")
    fails(check.check_init, unwritten, "not written yet")


# --------------------------------------------------------------------------- fresh cases

def test_init_rejects_a_depth_hard_coded_from_the_first_model():
    def four_blocks(model):  # right for the check's first model, which has L = 4
        init(model, scale=1 / math.sqrt(2 * 4))

    fails(check.check_init, four_blocks, "drawn at random", "took L = 4",
          "model.config.n_layer")


@pytest.mark.parametrize("check_function, right", [
    (check.check_param_count, params),
    (check.check_forward, forward),
    (check.check_flops_per_token, flops),
], ids=["param_count", "forward", "flops_per_token"])
def test_checks_reject_answers_remembered_for_their_fixed_examples(check_function, right):
    rejects_remembered_answers(check_function, right)
