"""The checks of exercises/08_pretraining.ipynb: they pass a right answer, and fail a wrong one
with the diagnosis of its mistake (every wrong answer here is one a learner could write)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from check_helpers import (
    FRESH_CASE_WORDS,
    Memoriser,
    fails,
    rejects_remembered_answers,
    unwritten,
)

from checks import pretraining as check
from minigpt.train import TrainConfig, configure_optimizer, learning_rate_at

pytestmark = pytest.mark.usefixtures("one_thread")



# --------------------------------------------------------------------------- eq. (8.3)

def lr_at(s, max_lr, min_lr, warmup, total, warm="s+1", floor="min", span="after_warmup",
          clamp=True, shape="cosine"):
    if s < warmup:
        return max_lr * (s + 1) / warmup if warm == "s+1" else max_lr * s / warmup
    if clamp and s >= total:
        return min_lr
    p = {"after_warmup": (s - warmup) / max(1, total - warmup), "from_zero": s / total,
         "too_long": (s - warmup) / total}[span]
    factor = 0.5 * (1 + math.cos(math.pi * p)) if shape == "cosine" else 1 - p
    return min_lr + factor * (max_lr - min_lr) if floor == "min" else factor * max_lr


def test_schedule_passes_eq_8_3_and_the_package(capsys):
    check.check_schedule(lr_at)
    check.check_schedule(lambda s, mx, mn, w, t: learning_rate_at(
        s, TrainConfig(learning_rate=mx, min_lr=mn, warmup_iters=w, max_iters=t)))
    assert capsys.readouterr().out.count("✓ warm-up + cosine schedule") == 2


@pytest.mark.parametrize("mistake, words", [
    (dict(warm="s"), ["lr_at(0) = 0", "off by one", "(s + 1)/W"]),
    (dict(floor="zero"), ["decayed to 0 instead of to min_lr"]),
    (dict(span="from_zero"), ["measured the decay from step 0"]),
    (dict(span="too_long"), ["over S steps after the warm-up"]),
    (dict(clamp=False), ["did not hold min_lr after step S"]),
    (dict(shape="linear"), ["decayed linearly"]),
    (dict(warm="s", floor="zero"), ["off by one", "decayed to 0"]),
])
def test_schedule_names_the_mistake(mistake, words):
    fails(check.check_schedule, functools.partial(lr_at, **mistake), *words)


def test_schedule_other_mistakes():
    fails(check.check_schedule,
          lambda s, mx, mn, w, t: mx if s < w else lr_at(s, mx, mn, w, t), "left out the warm-up")
    fails(check.check_schedule,
          lambda s, mx, mn, w, t: (mn if s >= t else mn + math.cos(math.pi * (s - w) / (t - w))
                                   * (mx - mn)) if s >= w else mx * (s + 1) / w, "cos(πp)")
    fails(check.check_schedule, lambda s, mx, mn, w, t: lr_at(s, mx, mn, w, t) * 1.001,
          "compare your three cases")
    fails(check.check_schedule, lambda *args: None, "is None", "`return`")
    fails(check.check_schedule, unwritten, "not written yet")


def test_schedule_references_agree():
    config = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=100)
    torch_rates = check._torch_schedule(1.0, 0.1, 10, 100, 101)
    assert all(math.isclose(r, learning_rate_at(s, config), rel_tol=1e-9)
               for s, r in enumerate(torch_rates))


# --------------------------------------------------------------------------- eq. (8.2)

def adamw_step(theta, grad, m, v, t, lr, betas, eps, weight_decay, correction="both",
               decay="decoupled", eps_inside=False, sqrt=True, keep_corrected=False):
    beta1, beta2 = betas
    if decay == "l2":
        grad = grad + weight_decay * theta
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat = m / (1 - beta1**t) if correction in ("both", "m") else m
    v_hat = v / (1 - beta2**t) if correction in ("both", "v") else v
    if not sqrt:
        denominator = v_hat + eps
    else:
        denominator = (v_hat + eps).sqrt() if eps_inside else v_hat.sqrt() + eps
    step = m_hat / denominator
    if decay == "decoupled":
        new = theta - lr * (step + weight_decay * theta)
    elif decay == "no_lr":
        new = theta - lr * step - weight_decay * theta
    else:
        new = theta - lr * step
    return (new, m_hat, v_hat) if keep_corrected else (new, m, v)


def test_adamw_passes_eq_8_2(capsys):
    check.check_adamw_step(adamw_step)
    assert "✓ one AdamW step" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, words", [
    (dict(correction="none"), ["forgot the bias correction"]),
    (dict(correction="m"), ["corrected m but not v"]),
    (dict(correction="v"), ["corrected v but not m"]),
    (dict(decay="l2"), ["L2 penalty", "not AdamW"]),
    (dict(decay="none"), ["left out the weight decay"]),
    (dict(decay="no_lr"), ["multiply the decay by the learning rate"]),
    (dict(eps_inside=True), ["ε inside the square root"]),
    (dict(sqrt=False), ["instead of √v̂"]),
    (dict(keep_corrected=True), ["bias-corrected m̂", "raw m_t"]),
    (dict(correction="none", decay="l2"), ["bias correction", "L2 penalty"]),
])
def test_adamw_names_the_mistake(mistake, words):
    fails(check.check_adamw_step, functools.partial(adamw_step, **mistake), *words)


def test_adamw_decay_of_the_updated_weights():
    def after(theta, grad, m, v, t, lr, betas, eps, weight_decay):
        new, m, v = adamw_step(theta, grad, m, v, t, lr, betas, eps, weight_decay, decay="none")
        return new - lr * weight_decay * new, m, v

    fails(check.check_adamw_step, after, "already-updated weights")


def test_adamw_returned_moments_and_shape():
    def corrected_moments_out(theta, grad, m, v, t, lr, betas, eps, weight_decay):
        new, m, v = adamw_step(theta, grad, m, v, t, lr, betas, eps, weight_decay)
        return new, m, v * 2  # theta is right this step; the state handed back is not

    fails(check.check_adamw_step, corrected_moments_out, "returned v")
    fails(check.check_adamw_step, lambda theta, *args, **kwargs: theta,
          "three tensors: (theta, m, v)")
    fails(check.check_adamw_step, unwritten, "not written yet")


# --------------------------------------------------------------------------- decay groups

def groups(model, weight_decay, rule=lambda name, p: p.dim() >= 2, duplicate_head=False,
           key=True):
    named = list(model.named_parameters())
    decay = [p for n, p in named if rule(n, p)]
    if duplicate_head:
        decay.append(model.lm_head.weight)
    plain = [p for n, p in named if not rule(n, p)]
    first = {"params": decay, "weight_decay": weight_decay}
    second = {"params": plain, "weight_decay": 0.0} if key else {"params": plain}
    return [first, second]


def test_decay_groups_pass_the_package_rule(capsys):
    check.check_decay_groups(groups)
    check.check_decay_groups(lambda model, wd: configure_optimizer(
        model, TrainConfig(weight_decay=wd), torch.device("cpu")).param_groups)
    assert capsys.readouterr().out.count("✓ weight-decay groups") == 2


@pytest.mark.parametrize("mistake, words", [
    (dict(rule=lambda n, p: n.endswith("weight")), ["decayed layer-norm gains"]),
    (dict(rule=lambda n, p: True), ["decayed biases"]),
    (dict(rule=lambda n, p: p.dim() >= 2 and "emb" not in n), ["embeddings included"]),
    (dict(duplicate_head=True), ["appears in two places", "weight tying"]),
    (dict(key=False), ["default of 0.01"]),
])
def test_decay_groups_name_the_mistake(mistake, words):
    fails(check.check_decay_groups, functools.partial(groups, **mistake), *words)


def test_decay_groups_missing_parameters_and_constant_decay():
    fails(check.check_decay_groups,
          lambda model, wd: [{"params": [p for p in model.parameters() if p.dim() >= 2],
                              "weight_decay": wd}], "in no group")
    fails(check.check_decay_groups,
          lambda model, wd: [{"params": [p for p in model.parameters() if p.dim() >= 2],
                              "weight_decay": 0.01},
                             {"params": [p for p in model.parameters() if p.dim() < 2],
                              "weight_decay": 0.0}], "not a constant")
    fails(check.check_decay_groups, lambda model, wd: list(model.parameters()), "list of dicts")


# --------------------------------------------------------------------------- eq. (8.4)

def clip(grads, max_norm, mode="global"):
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    if mode == "per_tensor":
        return [g * min(1.0, max_norm / g.norm().item()) for g in grads], norm
    if mode == "always":
        return [g * max_norm / norm for g in grads], norm
    if mode == "sum_of_norms":
        total = sum(g.norm() for g in grads)
        return [g * min(1.0, max_norm / total.item()) for g in grads], norm
    if mode == "inverted":
        return [g * min(1.0, norm.item() / max_norm) for g in grads], norm
    clipped = [g * min(1.0, max_norm / norm.item()) for g in grads]
    if mode == "post_norm":
        return clipped, torch.sqrt(sum((g**2).sum() for g in clipped))
    if mode == "squared_norm":
        return clipped, norm**2
    return clipped, norm


def test_clip_passes_eq_8_4(capsys):
    check.check_clip(clip)
    assert "✓ gradient clipping" in capsys.readouterr().out


@pytest.mark.parametrize("mode, words", [
    ("per_tensor", ["each tensor to max_norm on its own"]),
    ("always", ["also those already shorter"]),
    ("sum_of_norms", ["summed the tensors' norms"]),
    ("inverted", ["inverted the factor"]),
    ("post_norm", ["norm after clipping", "*before*"]),
    ("squared_norm", ["sum of the squares"]),
])
def test_clip_names_the_mistake(mode, words):
    fails(check.check_clip, functools.partial(clip, mode=mode), *words)


def test_clip_in_place_is_fine_and_shapes_matter():
    def in_place(grads, max_norm):
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        for g in grads:
            g.mul_(min(1.0, max_norm / norm.item()))
        return grads, norm

    check.check_clip(in_place)
    fails(check.check_clip, lambda grads, c: [g.reshape(-1) for g in clip(grads, c)[0]],
          "(clipped_grads, total_norm)")
    fails(check.check_clip, lambda grads, c: (clip(grads, c)[0][:-1], clip(grads, c)[1]),
          "one per input")


# --------------------------------------------------------------------------- eq. (8.7)

def accumulate(model, x, y, k, divide=True, clear_first=True, clear_between=False,
               loss_sum=False):
    if clear_first:
        model.zero_grad(set_to_none=True)
    total = 0.0
    for xs, ys in zip(x.chunk(k), y.chunk(k), strict=True):
        if clear_between:
            model.zero_grad(set_to_none=True)
        _, loss = model(xs, ys)
        (loss / k if divide else loss).backward()
        total += loss.item()
    return total if loss_sum else total / k


def test_accumulation_passes_eq_8_7(capsys):
    check.check_accumulation(accumulate)
    assert "✓ gradient accumulation" in capsys.readouterr().out


@pytest.mark.parametrize("mistake, words", [
    (dict(divide=False), ["forgot to divide", "k = 2"]),
    (dict(clear_first=False), ["did not clear the old gradients"]),
    (dict(clear_between=True), ["cleared the gradients between micro-batches"]),
    (dict(loss_sum=True), ["sum of the micro-batch losses"]),
])
def test_accumulation_names_the_mistake(mistake, words):
    fails(check.check_accumulation, functools.partial(accumulate, **mistake), *words)


def test_accumulation_divided_twice_or_one_micro_batch():
    def twice(model, x, y, k):
        model.zero_grad(set_to_none=True)
        for xs, ys in zip(x.chunk(k), y.chunk(k), strict=True):
            (model(xs, ys)[1] / k / k).backward()
        return model(x, y)[1].item()

    def first_only(model, x, y, k):
        model.zero_grad(set_to_none=True)
        (model(x.chunk(k)[0], y.chunk(k)[0])[1] / k).backward()
        return model(x, y)[1].item()

    fails(check.check_accumulation, twice, "divided by k twice")
    fails(check.check_accumulation, first_only, "only the first micro-batch")
    fails(check.check_accumulation, unwritten, "not written yet")


# ------------------------------------------------------------ answers for the fixed examples only

def test_decay_groups_reject_the_weight_decay_of_the_fixed_examples():
    def decay_one_tenth(model, weight_decay):  # right for the fixed examples, which use 0.1
        return groups(model, 0.1)

    fails(check.check_decay_groups, decay_one_tenth, "drawn at random", "weight_decay=",
          "use the weight_decay argument, not a constant")


def test_accumulation_rejects_a_remembered_loss():
    memoriser = Memoriser(accumulate)
    check.check_accumulation(memoriser.record)

    def right_gradient_remembered_loss(model, x, y, k):
        accumulate(model, x, y, k)
        return memoriser.replay(model, x, y, k)

    fails(check.check_accumulation, right_gradient_remembered_loss, *FRESH_CASE_WORDS)


@pytest.mark.parametrize("check_function, right", [
    (check.check_schedule, lr_at),
    (check.check_adamw_step, adamw_step),
    (check.check_clip, clip),
], ids=["schedule", "adamw_step", "clip"])
def test_checks_reject_answers_remembered_for_their_fixed_examples(check_function, right):
    rejects_remembered_answers(check_function, right)
