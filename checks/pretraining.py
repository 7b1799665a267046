"""Checks for exercises/08_pretraining.ipynb (the course notebook: notebooks/08_pretraining.ipynb).

The warm-up + cosine schedule (eq. 8.3), one AdamW step (eq. 8.2), the weight-decay groups,
gradient clipping by the global norm (eq. 8.4) and gradient accumulation (eq. 8.7). Each is
compared with `minigpt.train` (`learning_rate_at`, `configure_optimizer`) or the `minigpt` model,
and with PyTorch (`lr_scheduler`, `torch.optim.AdamW`, `clip_grad_norm_`, a full-batch backward).
A wrong answer is matched against the usual mistakes — an off-by-one warm-up, a cosine that never
reaches min_lr, a forgotten bias correction, L2 instead of decoupled decay, decayed biases,
per-tensor clipping, a missing 1/k — and the message names the one it looks like.
"""

from __future__ import annotations

import math
import warnings

import torch

from checks.core import (
    CheckFailed,
    as_number,
    as_tensor,
    call,
    close,
    combine_mistakes,
    find_mistake,
    fresh_case,
    fresh_seed,
    matches,
    passed,
    require,
    same_shape,
    show,
)
from minigpt.model import GPT, GPTConfig
from minigpt.train import TrainConfig, configure_optimizer, learning_rate_at

# ------------------------------------------------------------------ eq. (8.3): the schedule

# (max_lr, min_lr, warmup_steps, decay_steps): typical, GPT-like, no warm-up, warm-up = decay
SCHEDULES = [(1.0, 0.1, 10, 100), (6e-4, 6e-5, 7, 60), (3e-3, 3e-4, 0, 40), (0.5, 0.05, 8, 8)]

SCHEDULE_KNOBS = {
    "warmup": {"s+1": None,
               "s": "warmed up with s/W: that is off by one — step 0 gets a learning rate of 0 "
                    "(a wasted step) and the peak comes only at step W; eq. (8.3) uses "
                    "(s + 1)/W, so step W − 1 is at the peak",
               "none": "left out the warm-up: during steps s < W the rate ramps up linearly, "
                       "max_lr·(s + 1)/W"},
    "floor": {"min": None,
              "zero": "decayed to 0 instead of to min_lr: the cosine runs between max_lr and "
                      "min_lr, min_lr + ½(1 + cos πp)(max_lr − min_lr)",
              "zero_all": "decayed to 0 instead of to min_lr, and stayed there: the cosine "
                          "runs between max_lr and min_lr, and min_lr is the floor after S",
              "added": "added min_lr on top of the full cosine: multiply the cosine factor by "
                       "(max_lr − min_lr), not by max_lr"},
    "span": {"after_warmup": None,
             "from_zero": "measured the decay from step 0: the cosine starts at the end of the "
                          "warm-up, p = (s − W)/(S − W)",
             "too_long": "spread the decay over S steps after the warm-up (it would end at "
                         "S + W): p = (s − W)/(S − W) reaches 1 at step S"},
    "clamp": {True: None,
              False: "did not hold min_lr after step S: from s ≥ S the rate stays at min_lr, "
                     "instead of climbing back up the cosine"},
    "shape": {"cosine": None,
              "linear": "decayed linearly; eq. (8.3) uses the cosine factor ½(1 + cos πp)",
              "raw_cos": "used cos(πp) for the factor, which runs from 1 to −1; ½(1 + cos πp) "
                         "runs from 1 to 0"},
}


def _schedule_variant(step, max_lr, min_lr, warmup, total, warmup_rule, floor, span, clamp,
                      shape):
    if step < warmup:
        return {"s+1": max_lr * (step + 1) / warmup, "s": max_lr * step / warmup,
                "none": max_lr}[warmup_rule]
    if clamp and step >= total:
        return 0.0 if floor == "zero_all" else min_lr
    start = 0 if span == "from_zero" else warmup
    length = total if span != "after_warmup" else total - warmup
    p = (step - start) / max(1, length)
    factor = {"cosine": 0.5 * (1 + math.cos(math.pi * p)), "linear": 1 - p,
              "raw_cos": math.cos(math.pi * p)}[shape]
    if floor in ("zero", "zero_all"):
        return factor * max_lr
    if floor == "added":
        return min_lr + factor * max_lr
    return min_lr + factor * (max_lr - min_lr)


def _torch_schedule(max_lr, min_lr, warmup, total, steps) -> list[float]:
    """The same curve from PyTorch's own schedulers (warm-up ≥ 1 step)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=max_lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup,
                                                 total_iters=warmup - 1)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup,
                                                            eta_min=min_lr)
        chained = torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, cosine],
                                                        milestones=[warmup])
        rates = []
        for _ in range(steps):
            rates.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            chained.step()
    return rates


def check_schedule(lr_at) -> None:
    """lr_at(step, max_lr, min_lr, warmup_steps, decay_steps) -> learning rate, eq. (8.3)."""
    answers = []
    for max_lr, min_lr, warmup, total in SCHEDULES:
        steps = range(total + 10)
        answers.append([as_number(call(lr_at, s, max_lr, min_lr, warmup, total),
                                  f"lr_at({s}, {max_lr}, {min_lr}, {warmup}, {total})")
                        for s in steps])
    for (max_lr, min_lr, warmup, total), rates in zip(SCHEDULES, answers, strict=True):
        config = TrainConfig(learning_rate=max_lr, min_lr=min_lr, warmup_iters=warmup,
                             max_iters=total)
        expected = [learning_rate_at(s, config) for s in range(total + 10)]
        if warmup > 0 and warmup < total and not matches(
                _torch_schedule(max_lr, min_lr, warmup, total, total + 1),
                expected[:total + 1], rtol=1e-9):
            raise RuntimeError("minigpt and torch.optim.lr_scheduler disagree on the schedule")
        if matches(rates, expected, rtol=1e-9, atol=1e-15):
            continue
        step = next(s for s, (a, e) in enumerate(zip(rates, expected, strict=True))
                    if not math.isclose(a, e, rel_tol=1e-9, abs_tol=1e-15))
        where = f"with max_lr={max_lr}, min_lr={min_lr}, W={warmup}, S={total}"
        message = (f"{where}, lr_at({step}) = {show(rates[step])}, expected "
                   f"{show(expected[step])}")
        variants = ((why, [[_schedule_variant(s, *case, **_rename(choice))
                            for s in range(case[3] + 10)] for case in SCHEDULES])
                    for why, choice in combine_mistakes(SCHEDULE_KNOBS))
        mistake = find_mistake(answers, variants, rtol=1e-9, atol=1e-15)
        if mistake:
            raise CheckFailed(f"{message}: you {mistake}")
        raise CheckFailed(f"{message}; compare your three cases of eq. (8.3) with the "
                          "schedule at that step")
    with fresh_case(fresh_seed()) as generator:  # a schedule no one knew in advance
        max_lr = round(float(10 ** (-4 * torch.rand((), generator=generator))), 6)
        min_lr = round(max_lr * float(torch.rand((), generator=generator)) * 0.5, 8)
        total = int(torch.randint(2, 80, (), generator=generator))
        warmup = int(torch.randint(0, total + 1, (), generator=generator))
        config = TrainConfig(learning_rate=max_lr, min_lr=min_lr, warmup_iters=warmup,
                             max_iters=total)
        for s in range(total + 10):
            rate = as_number(call(lr_at, s, max_lr, min_lr, warmup, total),
                             f"lr_at({s}, {max_lr}, {min_lr}, {warmup}, {total})")
            expected = learning_rate_at(s, config)
            require(math.isclose(rate, expected, rel_tol=1e-9, abs_tol=1e-15),
                    f"with max_lr={max_lr}, min_lr={min_lr}, W={warmup}, S={total}, "
                    f"lr_at({s}) = {show(rate)}, expected {show(expected)}")
    passed("warm-up + cosine schedule, eq. (8.3)")


def _rename(choice: dict) -> dict:
    choice = dict(choice)
    choice["warmup_rule"] = choice.pop("warmup")
    return choice


# ------------------------------------------------------------------ eq. (8.2): one AdamW step

ADAMW_SCENARIOS = [
    # settings, gradient scales: the usual GPT settings, then a large ε and other betas
    (dict(lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1), (1e-2, 1.0, 1e2)),
    (dict(lr=0.05, betas=(0.8, 0.99), eps=1e-2, weight_decay=0.5), (1e-2, 3e-2, 1.0, 1e-2)),
]

ADAMW_KNOBS = {
    "correction": {"both": None,
                   "none": "forgot the bias correction: m̂ = m/(1 − β₁ᵗ) and v̂ = v/(1 − β₂ᵗ); "
                           "m and v start at 0 and are too small in the first steps",
                   "m_only": "corrected m but not v: v̂ = v/(1 − β₂ᵗ) too",
                   "v_only": "corrected v but not m: m̂ = m/(1 − β₁ᵗ) too"},
    "decay": {"decoupled": None,
              "l2": "added the decay to the gradient (g + λθ, an L2 penalty): that is Adam with "
                    "L2, not AdamW — the decay then passes through m/√v; AdamW subtracts "
                    "η·λ·θ outside the adaptive step",
              "none": "left out the weight decay: θ ← θ − η(m̂/(√v̂ + ε) + λθ)",
              "no_lr": "did not multiply the decay by the learning rate: the decay term is "
                       "η·λ·θ",
              "after": "decayed the already-updated weights; eq. (8.2) decays θ_{t−1}, the "
                       "weights before this step"},
    "eps_place": {"outside": None,
                  "inside": "put ε inside the square root: √v̂ + ε, not √(v̂ + ε)"},
    "sqrt": {True: None, False: "divided by v̂ instead of √v̂"},
    "state": {"raw": None, "corrected": "kept the bias-corrected m̂, v̂ as the running moments: "
                                        "return the raw m_t and v_t, the correction is "
                                        "recomputed from them at every step"},
}


def _adamw_variant(theta, grads, lr, betas, eps, weight_decay, correction="both",
                   decay="decoupled", eps_place="outside", sqrt=True, state="raw"):
    """(thetas, ms, vs) after each step, by eq. (8.2) or one of the usual slips."""
    eps_inside = eps_place == "inside"
    beta1, beta2 = betas
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    thetas, ms, vs = [], [], []
    for t, g in enumerate(grads, start=1):
        if decay == "l2":
            g = g + weight_decay * theta
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        m_hat = m / (1 - beta1**t) if correction in ("both", "m_only") else m
        v_hat = v / (1 - beta2**t) if correction in ("both", "v_only") else v
        root = (v_hat + eps).sqrt() if eps_inside else (v_hat.sqrt() + eps)
        step = m_hat / (root if sqrt else (v_hat + eps))
        if decay == "decoupled":
            theta = theta - lr * (step + weight_decay * theta)
        elif decay == "no_lr":
            theta = theta - lr * step - weight_decay * theta
        elif decay == "after":
            theta = theta - lr * step
            theta = theta - lr * weight_decay * theta
        else:
            theta = theta - lr * step
        if state == "corrected":
            m, v = m_hat, v_hat
        thetas.append(theta)
        ms.append(m)
        vs.append(v)
    return thetas, ms, vs


def _scenario(index: int):
    settings, scales = ADAMW_SCENARIOS[index]
    generator = torch.Generator().manual_seed(index)
    theta = torch.randn(8, dtype=torch.float64, generator=generator)
    grads = [torch.randn(8, dtype=torch.float64, generator=generator) * s for s in scales]
    return theta, grads, settings


def _settings_text(settings: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def _torch_adamw(theta, grads, settings) -> list[torch.Tensor]:
    param = torch.nn.Parameter(theta.clone())
    optimizer = torch.optim.AdamW([param], **settings)
    thetas = []
    for g in grads:
        param.grad = g.clone()
        optimizer.step()
        thetas.append(param.detach().clone())
    return thetas


def _learner_adamw(adamw_step, theta, grads, settings):
    m, v = torch.zeros_like(theta), torch.zeros_like(theta)
    thetas, ms, vs = [], [], []
    for t, g in enumerate(grads, start=1):
        result = call(adamw_step, theta.clone(), g.clone(), m, v, t, **settings)
        if not (isinstance(result, tuple) and len(result) == 3):
            raise CheckFailed("adamw_step should return three tensors: (theta, m, v)")
        theta, m, v = (as_tensor(x, name) for x, name in zip(result, ("theta", "m", "v"),
                                                             strict=True))
        thetas.append(theta.detach())
        ms.append(m.detach())
        vs.append(v.detach())
    return thetas, ms, vs


def check_adamw_step(adamw_step) -> None:
    """adamw_step(theta, grad, m, v, t, lr, betas, eps, weight_decay) -> (theta, m, v)."""
    runs = [_learner_adamw(adamw_step, *_scenario(i)) for i in range(len(ADAMW_SCENARIOS))]
    for i, (thetas, ms, vs) in enumerate(runs):
        theta0, grads, settings = _scenario(i)
        reference = _torch_adamw(theta0, grads, settings)  # PyTorch's AdamW
        expected, expected_m, expected_v = _adamw_variant(theta0, grads, **settings)
        if not matches(reference, expected, rtol=1e-10, atol=1e-12):
            raise RuntimeError("eq. (8.2) and torch.optim.AdamW disagree")
        for t, theta in enumerate(thetas, start=1):
            what = f"theta after step t={t} (with {_settings_text(settings)})"
            same_shape(theta, expected[t - 1], what)
            if matches(theta, expected[t - 1], rtol=1e-8, atol=1e-10):
                beta1, beta2 = settings["betas"]
                _check_moment("m", ms[t - 1], expected_m[t - 1], 1 - beta1**t, t)
                _check_moment("v", vs[t - 1], expected_v[t - 1], 1 - beta2**t, t)
                continue
            variants = ((why, [_adamw_variant(*_scenario(j)[:2], **_scenario(j)[2], **choice)[0]
                               for j in range(len(ADAMW_SCENARIOS))])
                        for why, choice in combine_mistakes(ADAMW_KNOBS))
            mistake = find_mistake([r[0] for r in runs], variants, rtol=1e-8, atol=1e-10)
            if mistake:
                raise CheckFailed(f"{what} differs from torch.optim.AdamW: you {mistake}")
            close(theta, expected[t - 1], what + " (compared with torch.optim.AdamW)",
                  rtol=1e-8, atol=1e-10)
    with fresh_case(fresh_seed()) as generator:  # settings and gradients no one knew before
        def uniform(low, high):
            return round(low + (high - low) * float(torch.rand((), generator=generator)), 4)

        settings = dict(lr=uniform(0.001, 0.2), betas=(uniform(0.5, 0.95), uniform(0.9, 0.999)),
                        eps=10.0 ** -int(torch.randint(2, 9, (), generator=generator)),
                        weight_decay=uniform(0.0, 0.5))
        theta = torch.randn(6, dtype=torch.float64, generator=generator)
        grads = [torch.randn(6, dtype=torch.float64, generator=generator) for _ in range(4)]
        thetas, ms, vs = _learner_adamw(adamw_step, theta, grads, settings)
        expected, expected_m, expected_v = _adamw_variant(theta, grads, **settings)
        assert matches(_torch_adamw(theta, grads, settings), expected, rtol=1e-10, atol=1e-12)
        for t in range(1, len(grads) + 1):
            what = f"theta after step t={t} (with {_settings_text(settings)})"
            close(thetas[t - 1], expected[t - 1], what + " (compared with torch.optim.AdamW)",
                  rtol=1e-8, atol=1e-10)
            close(ms[t - 1], expected_m[t - 1], f"the returned m after step t={t}", rtol=1e-8,
                  atol=1e-12)
            close(vs[t - 1], expected_v[t - 1], f"the returned v after step t={t}", rtol=1e-8,
                  atol=1e-12)
    passed("one AdamW step, eq. (8.2)")


def _check_moment(name: str, got, raw: torch.Tensor, correction: float, t: int) -> None:
    what = f"the returned {name} after step t={t}"
    same_shape(got, raw, what)
    if matches(got, raw / correction, rtol=1e-8, atol=1e-12) and correction != 1:
        raise CheckFailed(f"{what} is the bias-corrected {name}̂: return the raw {name}_t, the "
                          "running average the next step builds on; the correction is "
                          "recomputed from it at every step")
    close(got, raw, what, rtol=1e-8, atol=1e-12)


# ------------------------------------------------------------------ the weight-decay groups

def _group_models() -> dict[str, GPT]:
    torch.manual_seed(0)
    small = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16)
    return {"a tied GPT": GPT(GPTConfig(**small)),
            "an untied GPT": GPT(GPTConfig(**small, tie_weights=False)),
            "a GPT without biases": GPT(GPTConfig(**small, bias=False))}


def _effective_decay(groups, model, weight_decay) -> dict[str, float]:
    """The decay AdamW applies to each named parameter, given the learner's groups."""
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, dict) for g in groups):
        raise CheckFailed("decay_groups should return a list of dicts, each with 'params' and "
                          "'weight_decay', the form torch.optim.AdamW takes")
    require(all("params" in g for g in groups), "every group needs a 'params' list")
    groups = [dict(g, params=list(g["params"])) for g in groups]
    names = {id(p): n for n, p in model.named_parameters()}
    seen: dict[str, float] = {}
    for group in groups:
        if "weight_decay" not in group:
            raise CheckFailed("a group has no 'weight_decay' key, so AdamW would give it its "
                              "default of 0.01: set it explicitly in every group")
        for p in group["params"]:
            name = names.get(id(p))
            require(name is not None, "a group holds a tensor that is not a parameter of "
                                      "this model")
            if name in seen:
                raise CheckFailed(
                    f"{name} appears in two places of your groups (AdamW refuses that); with "
                    "weight tying lm_head.weight *is* token_emb.weight — go through "
                    "model.named_parameters(), which yields every tensor once")
            seen[name] = group["weight_decay"]
    missing = sorted(set(names.values()) - set(seen))
    require(not missing, f"these parameters are in no group, so AdamW would never train "
                         f"them: {missing}")
    torch.optim.AdamW(groups, lr=1e-3)  # AdamW itself accepts them
    return seen


def check_decay_groups(decay_groups) -> None:
    """decay_groups(model, weight_decay) -> AdamW parameter groups: decay matrices only."""
    for label, model in _group_models().items():
        _check_groups_case(decay_groups, label, model, 0.1)
    with fresh_case(fresh_seed()) as generator:  # a weight decay no one knew in advance
        weight_decay = round(0.01 + 0.98 * float(torch.rand((), generator=generator)), 3)
        kind = int(torch.randint(0, 3, (), generator=generator))
        label, model = list(_group_models().items())[kind]
        _check_groups_case(decay_groups, f"{label} with weight_decay={weight_decay}", model,
                           weight_decay)
    passed("weight-decay groups (matrices only)")


def _check_groups_case(decay_groups, label: str, model, weight_decay: float) -> None:
    groups = call(decay_groups, model, weight_decay)
    decay = _effective_decay(groups, model, weight_decay)
    package = configure_optimizer(model, TrainConfig(weight_decay=weight_decay),
                                  torch.device("cpu"))
    by_id = {id(p): g["weight_decay"] for g in package.param_groups for p in g["params"]}
    expected = {n: by_id[id(p)] for n, p in model.named_parameters()}
    wrong = sorted(n for n in expected if decay[n] != expected[n])
    if not wrong:
        return
    biases = [n for n in wrong if n.endswith("bias") and decay[n] != 0]
    gains = [n for n in wrong if (".ln_" in n or n.startswith("ln_f")) and
             n.endswith("weight") and decay[n] != 0]
    undecayed = [n for n in wrong if expected[n] == weight_decay]
    if biases:
        raise CheckFailed(f"in {label} you decayed biases ({biases[0]}, ...): a bias only "
                          "shifts an activation; pulling it to zero buys nothing — give "
                          "biases weight_decay 0")
    if gains:
        raise CheckFailed(f"in {label} you decayed layer-norm gains ({gains[0]}, ...): "
                          "pulling γ to zero fights the normalisation — give every tensor "
                          "with fewer than 2 dimensions weight_decay 0")
    if undecayed:
        wrong_value = decay[undecayed[0]]
        raise CheckFailed(
            f"in {label}, {undecayed[0]} gets weight_decay {wrong_value}, expected "
            f"{weight_decay}: every matrix (2 or more dimensions) is decayed, the "
            "embeddings included" + (" — use the weight_decay argument, not a constant"
                                     if wrong_value not in (0, 0.0) else ""))
    raise CheckFailed(f"in {label}, {wrong[0]} gets weight_decay {decay[wrong[0]]}, "
                      f"expected {expected[wrong[0]]}")


# ------------------------------------------------------------------ eq. (8.4): clipping

def _clip_cases():
    generator = torch.Generator().manual_seed(0)
    shapes = [(16, 8), (8,), (4, 4, 2), (3,)]
    scales = [1.0, 0.1, 3.0, 0.01]
    grads = [torch.randn(*s, generator=generator) * c for s, c in zip(shapes, scales,
                                                                      strict=True)]
    # max_norm well below, just below and above the global norm; and one huge tensor
    norm = torch.sqrt(sum((g**2).sum() for g in grads)).item()
    cases = [(grads, 0.1 * norm), (grads, 0.9 * norm), (grads, 10 * norm)]
    spiky = [g.clone() for g in grads]
    spiky[1] = spiky[1] * 1000
    cases.append((spiky, 1.0))
    return cases


def _global_norm(grads) -> torch.Tensor:
    return torch.sqrt(sum((g.double() ** 2).sum() for g in grads))


CLIP_VARIANTS = {
    "clipped each tensor to max_norm on its own: eq. (8.4) scales *all* gradients by one "
    "factor min(1, c/‖g‖), with ‖g‖ the norm of all of them together, so the direction in "
    "parameter space is kept":
        lambda grads, c: [g * min(1.0, c / _global_norm([g]).item()) for g in grads],
    "scaled every gradient to length c, also those already shorter: a gradient with "
    "‖g‖ ≤ c is left alone (the min(1, ·) of eq. 8.4)":
        lambda grads, c: [g * (c / _global_norm(grads).item()) for g in grads],
    "summed the tensors' norms: the global norm is the square root of the sum of *squares* "
    "over every entry of every tensor":
        lambda grads, c: [g * min(1.0, c / sum(_global_norm([h]).item() for h in grads))
                          for g in grads],
    "used the squared norm: take the square root of the sum of squares":
        lambda grads, c: [g * min(1.0, c / (_global_norm(grads).item() ** 2)) for g in grads],
    "inverted the factor: it is c/‖g‖, which is below 1 when the gradient is too long":
        lambda grads, c: [g * min(1.0, _global_norm(grads).item() / c) for g in grads],
}


def check_clip(clip_by_global_norm) -> None:
    """clip_by_global_norm(grads, max_norm) -> (clipped grads, global norm before clipping)."""
    for number, (grads, max_norm) in enumerate(_clip_cases(), start=1):
        _check_clip_case(clip_by_global_norm, f"case {number}", grads, max_norm)
    with fresh_case(fresh_seed()) as generator:  # gradients and a limit no one knew in advance
        shapes = [tuple(torch.randint(1, 6, (int(torch.randint(1, 3, (), generator=generator)),),
                                      generator=generator).tolist()) for _ in range(3)]
        grads = [torch.randn(*shape, generator=generator) for shape in shapes]
        factor = float(torch.rand((), generator=generator))  # c well below or above ‖g‖
        factor = 0.2 + 0.6 * factor if factor < 0.5 else 1.2 + 0.6 * factor
        max_norm = float(_global_norm(grads)) * factor
        _check_clip_case(clip_by_global_norm, f"gradients of shapes {shapes}", grads, max_norm)
    passed("gradient clipping by the global norm, eq. (8.4)")


def _check_clip_case(clip_by_global_norm, label: str, grads, max_norm: float) -> None:
    result = call(clip_by_global_norm, [g.clone() for g in grads], max_norm)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise CheckFailed("clip_by_global_norm should return (clipped_grads, total_norm)")
    clipped, total = result
    require(isinstance(clipped, (list, tuple)) and len(clipped) == len(grads),
            f"the clipped gradients should be a list of {len(grads)} tensors, one per input")
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    torch_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)  # PyTorch's reference
    norm = _global_norm(grads).item()
    what = f"{label} (‖g‖ = {norm:.4g}, max_norm c = {max_norm:.4g})"
    total = as_number(total, f"the norm returned in {what}")
    if math.isclose(total, min(norm, max_norm), rel_tol=1e-4) and max_norm < norm:
        raise CheckFailed(f"{what}: you returned the norm after clipping, {total:.4g}; "
                          "return the global norm *before* clipping, as clip_grad_norm_ "
                          "does (it tells how hard the clip bit)")
    if not math.isclose(total, torch_norm.item(), rel_tol=1e-4):
        mistake = _norm_mistake(total, grads)
        raise CheckFailed(f"{what}: the returned norm is {total:.6g}, expected "
                          f"{torch_norm.item():.6g}" + mistake)
    flat = torch.cat([as_tensor(c, "a clipped gradient").detach().reshape(-1).double()
                      for c in clipped])
    expected = torch.cat([p.grad.reshape(-1).double() for p in params])
    if flat.shape != expected.shape:
        raise CheckFailed(f"{what}: the clipped gradients hold {flat.numel()} numbers in "
                          f"all, the inputs {expected.numel()}; keep every tensor's shape")
    if torch.allclose(flat, expected, rtol=1e-5, atol=1e-9):
        return
    for why, variant in CLIP_VARIANTS.items():
        wrong = torch.cat([g.reshape(-1).double() for g in variant(grads, max_norm)])
        if torch.allclose(flat, wrong, rtol=1e-5, atol=1e-9):
            raise CheckFailed(f"{what}: you {why}")
    close(flat, expected, f"the clipped gradients in {what} (against clip_grad_norm_)",
          rtol=1e-5, atol=1e-9)


def _norm_mistake(total: float, grads) -> str:
    squares = sum((g.double() ** 2).sum().item() for g in grads)
    candidates = {
        ": that is the sum of the squares; take its square root": squares,
        ": that is the sum of the tensors' norms; the global norm is √(Σ of all squares)":
            sum(_global_norm([g]).item() for g in grads),
        ": that is the largest tensor's norm; the global norm covers every tensor":
            max(_global_norm([g]).item() for g in grads),
    }
    for why, value in candidates.items():
        if math.isclose(total, value, rel_tol=1e-4):
            return why
    return ""


# ------------------------------------------------------------------ eq. (8.7): accumulation

def _accumulation_setup(seed: int, vocab_size: int = 64):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=32))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab_size, (8, 16), generator=generator)
    y = torch.randint(0, vocab_size, (8, 16), generator=generator)
    return model, x, y


def _gradients(model) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                      for p in model.parameters()])


def _accumulation_variants(model, x, y, k, stale):
    """The gradient (flattened) of each usual slip, and the right one."""
    def run(chunks, divide, zero_between, keep_stale):
        for p, s in zip(model.parameters(), stale, strict=True):
            p.grad = s.clone() if keep_stale else None
        for xs, ys in chunks:
            if zero_between:
                model.zero_grad(set_to_none=True)
            (model(xs, ys)[1] / divide).backward()
        return _gradients(model)

    pieces = list(zip(x.chunk(k), y.chunk(k), strict=True))
    right = run([(x, y)], 1, False, False)  # one backward over the whole batch
    wrong = {
        f"forgot to divide each micro-batch's loss by k = {k}: the gradients add up, so "
        "without 1/k they are k times the mean":
            run(pieces, 1, False, False),
        "cleared the gradients between micro-batches: only the last one is left; zero them "
        "once, before the first":
            run(pieces, k, True, False),
        "did not clear the old gradients first: .grad still held the previous step's, and "
        "backward() adds to it":
            run(pieces, k, False, True),
        "divided by k twice (the loss of each micro-batch once is enough)":
            run(pieces, k * k, False, False),
        "used only the first micro-batch":
            run(pieces[:1], k, False, False),
    }
    return right, wrong


def check_accumulation(accumulate_gradients) -> None:
    """accumulate_gradients(model, x, y, k) -> mean loss; the gradient is left in .grad."""
    for seed, k in enumerate((2, 4, 1)):
        _check_accumulation_case(accumulate_gradients, seed, k)
    seed = fresh_seed()
    with fresh_case(seed) as generator:  # a model, a batch and a k no one knew in advance
        k = (1, 2, 4, 8)[int(torch.randint(0, 4, (), generator=generator))]
        # an untrained model's loss is about ln V whatever its weights: another V, so that a
        # remembered (or typed-in) loss of the fixed examples cannot pass
        vocab_size = (40, 100, 200)[int(torch.randint(0, 3, (), generator=generator))]
        _check_accumulation_case(accumulate_gradients, seed, k, vocab_size)
    passed("gradient accumulation, eq. (8.7)")


def _check_accumulation_case(accumulate_gradients, seed: int, k: int,
                              vocab_size: int = 64) -> None:
    model, x, y = _accumulation_setup(seed, vocab_size)
    stale = [torch.full_like(p, 0.5) for p in model.parameters()]  # an earlier step's grads
    right, wrong = _accumulation_variants(model, x, y, k, stale)
    with torch.no_grad():
        full_loss = model(x, y)[1].item()
    for p, s in zip(model.parameters(), stale, strict=True):
        p.grad = s.clone()
    loss = as_number(call(accumulate_gradients, model, x, y, k),
                     f"the loss returned for k={k}")
    got = _gradients(model)
    what = f"the accumulated gradient with k={k} micro-batches of {x.size(0) // k}"
    if not torch.allclose(got, right, rtol=1e-4, atol=1e-7):
        for why, value in wrong.items():
            if torch.allclose(got, value, rtol=1e-4, atol=1e-7):
                raise CheckFailed(f"{what} is not the full batch's gradient: you {why}")
        close(got, right, f"{what} (against one backward over the whole batch)",
              rtol=1e-4, atol=1e-7, factors={"k": float(k)} if k > 1 else None)
    if not math.isclose(loss, full_loss, rel_tol=1e-4):
        hint = ""
        if k > 1 and math.isclose(loss, k * full_loss, rel_tol=1e-4):
            hint = ": that is the sum of the micro-batch losses; return their mean"
        raise CheckFailed(f"the returned loss for k={k} is {loss:.6g}, but the whole "
                          f"batch's mean loss is {full_loss:.6g}{hint}")
