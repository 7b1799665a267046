"""The checks of exercises/12_inside_the_black_box.ipynb pass right answers and name wrong ones."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from check_helpers import FRESH_CASE_WORDS, fails, rejects_remembered_answers

from checks import interpret as check
from checks.core import diagnose_all

NEG_INF = float("-inf")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny models: one thread is as fast, and steadier on a shared machine."""


def test_random_gpt_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    check.random_gpt(seed=0)
    assert torch.equal(torch.rand(1), before)


def test_diagnose_all_ignores_a_coincidence_in_one_case():
    answers = [1.0, 5.0]
    mistakes = [{"A": 1.0, "B": 1.0}, {"A": 2.0, "B": 5.0}]  # A fits case 0 only
    assert diagnose_all(answers, mistakes) == "B"
    assert diagnose_all([None, 2.0], mistakes) == "A"  # no answer: no contradiction
    assert diagnose_all([3.0, 3.0], mistakes) is None


# --- exercise 1: head_attention ----------------------------------------------------------------


def head_attention(block, h, head, *, norm=True, scale="sqrt_d", mask="causal", dim=-1,
                   rotate=("q", "k"), layout="blocks", swap=False):
    B, T, C = h.shape
    attn = block.attn
    d = C // attn.n_head
    x = block.ln_1(h) if norm else h
    q, k, _ = attn.qkv_proj(x).split(C, dim=-1)
    if layout == "blocks":
        q, k = attn.split_heads(q), attn.split_heads(k)
    else:
        q, k = (t.view(B, T, d, attn.n_head).permute(0, 3, 1, 2) for t in (q, k))
    if attn.rotary is not None:
        q = attn.rotary(q) if "q" in rotate else q
        k = attn.rotary(k) if "k" in rotate else k
    q, k = q[:, head], k[:, head]
    if swap:
        q, k = k, q
    scores = q @ k.transpose(-2, -1) / {"sqrt_d": math.sqrt(d), "none": 1.0,
                                         "sqrt_C": math.sqrt(C), "d": d}[scale]
    if mask == "causal":
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), NEG_INF)
    elif mask == "reversed":
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).tril(-1), NEG_INF)
    return scores.softmax(dim=dim)


def test_head_attention_passes_on_right_answers(capsys):
    from minigpt.attention import scaled_dot_product_attention

    def with_the_package(block, h, head):
        q, k, v = block.attn.qkv_proj(block.ln_1(h)).split(h.size(-1), dim=-1)
        q, k, v = (block.attn.split_heads(t) for t in (q, k, v))
        if block.attn.rotary is not None:
            q, k = block.attn.rotary(q), block.attn.rotary(k)
        _, weights = scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
        return weights[:, head]

    check.check_head_attention(head_attention)
    check.check_head_attention(with_the_package)
    assert "✓ head_attention" in capsys.readouterr().out


def _mean_of_heads(block, h, head):
    return torch.stack([head_attention(block, h, i) for i in range(block.attn.n_head)]).mean(0)


@pytest.mark.parametrize("wrong, words", [
    (lambda b, h, i: head_attention(b, h, i, norm=False), ["layer norm is missing"]),
    (lambda b, h, i: head_attention(b, h, i, scale="none"), ["not divided by √d"]),
    (lambda b, h, i: head_attention(b, h, i, scale="sqrt_C"), ["√C"]),
    (lambda b, h, i: head_attention(b, h, i, scale="d"), ["by d instead of √d"]),
    (lambda b, h, i: head_attention(b, h, i, mask="none"), ["causal mask is missing"]),
    (lambda b, h, i: head_attention(b, h, i, mask="reversed"), ["wrong side"]),
    (lambda b, h, i: head_attention(b, h, i, dim=-2), ["over the queries"]),
    (lambda b, h, i: head_attention(b, h, i, swap=True), ["swapped"]),
    (lambda b, h, i: head_attention(b, h, i, layout="interleaved"), ["interleaved"]),
    (lambda b, h, i: head_attention(b, h, i, rotate=()), ["rotary positions are missing"]),
    (lambda b, h, i: head_attention(b, h, i, rotate=("q",)), ["only the queries"]),
    (_mean_of_heads, ["average of all heads"]),
    (lambda b, h, i: head_attention(b, h, i)[:, :-1], ["shape"]),
], ids=["no-layer-norm", "no-scale", "scale-sqrt-C", "scale-d", "no-mask", "mask-reversed",
        "softmax-over-queries", "q-k-swapped", "interleaved-heads", "no-rotary", "rotary-q-only",
        "mean-of-heads", "shape"])
def test_head_attention_names_the_mistake(wrong, words):
    fails(check.check_head_attention, wrong, *words)


def test_an_unwritten_exercise_says_so():
    def head_attention(block, h, head):
        raise NotImplementedError

    fails(check.check_head_attention, head_attention, "not written yet")


# --- exercise 2: lens_logits -------------------------------------------------------------------


def test_lens_logits_passes_on_right_answers():
    check.check_lens_logits(lambda model, h: model.lm_head(model.ln_f(h)))
    check.check_lens_logits(lambda model, h: F.layer_norm(
        h, (h.size(-1),), model.ln_f.weight, model.ln_f.bias, model.ln_f.eps)
        @ model.lm_head.weight.T)


@pytest.mark.parametrize("wrong, words", [
    (lambda m, h: m.lm_head(h), ["LN_f is missing"]),
    (lambda m, h: m.ln_f(h) @ m.token_emb.weight.T, ["untied"]),
    (lambda m, h: m.lm_head(F.layer_norm(h, (h.size(-1),))), ["no gain and bias"]),
    (lambda m, h: m.lm_head(m.blocks[-1].ln_2(h)), ["ln_2"]),
    (lambda m, h: m.lm_head(m.ln_f(m.ln_f(h))), ["twice"]),
    (lambda m, h: m.lm_head(m.ln_f(h)).softmax(-1), ["probabilities"]),
    (lambda m, h: m.lm_head(m.ln_f(h)).log_softmax(-1), ["log-probabilities"]),
    (lambda m, h: m.ln_f(h) @ m.lm_head.weight, ["transpose"]),
    (lambda m, h: m.lm_head(m.ln_f(h))[..., :-1], ["shape"]),
], ids=["no-ln-f", "embedding-for-untied-head", "no-gain-bias", "block-ln", "ln-twice",
        "softmax", "log-softmax", "untransposed", "shape"])
def test_lens_logits_names_the_mistake(wrong, words):
    fails(check.check_lens_logits, wrong, *words)


# --- exercise 3: completion_logprob ------------------------------------------------------------


def completion_logprob(model, prompt_ids, completion_ids, *, reduce="sum", how="right"):
    ids = prompt_ids + completion_ids
    m = len(completion_ids)
    if how == "self":
        logits = model(torch.tensor([ids]))[0][0]
        rows, targets = logits[-m:], ids[-m:]
    elif how == "prompt-too":
        logits = model(torch.tensor([ids[:-1]]))[0][0]
        rows, targets = logits, ids[1:]
    else:
        logits = model(torch.tensor([ids[:-1]]))[0][0]  # row t predicts ids[t + 1]
        rows, targets = logits[-m:], ids[-m:]
    scores = rows if how == "raw" else rows.log_softmax(-1)
    picked = scores.gather(1, torch.tensor(targets)[:, None])[:, 0]
    if reduce == "mean":
        return picked.mean().item()
    if reduce == "prob":
        return picked.exp().sum().item()
    return picked.sum().item()


def test_completion_logprob_passes_on_right_answers():
    check.check_completion_logprob(completion_logprob)
    check.check_completion_logprob(lambda model, p, c: -F.cross_entropy(
        model(torch.tensor([p + c[:-1]]))[0][0, -len(c):], torch.tensor(c), reduction="sum"))


def _one_too_early(model, prompt_ids, completion_ids):
    ids = prompt_ids + completion_ids
    logp = model(torch.tensor([ids[:-1]]))[0][0].log_softmax(-1)
    return sum(logp[len(prompt_ids) - 2 + j, c].item() for j, c in enumerate(completion_ids))


def _from_the_prompt_alone(model, prompt_ids, completion_ids):
    logp = model(torch.tensor([prompt_ids]))[0][0, -1].log_softmax(-1)
    return logp[completion_ids].sum().item()


@pytest.mark.parametrize("wrong, words", [
    (lambda m, p, c: completion_logprob(m, p, c, how="self"), ["against token t itself"]),
    (_one_too_early, ["one position too early"]),
    (lambda m, p, c: completion_logprob(m, p, c, how="prompt-too"), ["prompt's tokens"]),
    (lambda m, p, c: completion_logprob(m, p, c, how="raw"), ["log-softmax is missing"]),
    (lambda m, p, c: completion_logprob(m, p, c, reduce="prob"), ["probabilities"]),
    (lambda m, p, c: completion_logprob(m, p, c, reduce="mean"), ["averaged"]),
    (lambda m, p, c: -completion_logprob(m, p, c), ["sign"]),
    (lambda m, p, c: completion_logprob(m, p, c) / math.log(2), ["bits"]),
    (_from_the_prompt_alone, ["teacher forcing"]),
    (lambda m, p, c: completion_logprob(m, c[:1], c[1:]) if len(c) > 1 else
     completion_logprob(m, p, c), ["without the prompt"]),
    (lambda m, p, c: [completion_logprob(m, p, c)], ["number"]),
    (lambda m, p, c: completion_logprob(m, p, c) + 0.5, ["eq. 12.4"]),
], ids=["scored-against-itself", "one-too-early", "prompt-included", "no-log-softmax",
        "probabilities", "mean", "sign", "bits", "prompt-alone", "no-prompt", "list", "other"])
def test_completion_logprob_names_the_mistake(wrong, words):
    fails(check.check_completion_logprob, wrong, *words)


# --- exercise 4: probe_accuracy ----------------------------------------------------------------


def probe_accuracy(train_x, train_y, test_x, test_y, *, score_on="test", baseline="right",
                   steps=200):
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    train_z, test_z = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(0)
    probe = torch.nn.Linear(train_x.size(1), int(train_y.max()) + 1)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=0.1, weight_decay=1e-3)
    for _ in range(steps):
        loss = F.cross_entropy(probe(train_z), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    z, y = (test_z, test_y) if score_on == "test" else (train_z, train_y)
    with torch.no_grad():
        accuracy = (probe(z).argmax(-1) == y).float().mean().item()
    counts = train_y.bincount()
    majority = {
        "right": (test_y == counts.argmax()).float().mean().item(),
        "test-majority": test_y.bincount().max().item() / len(test_y),
        "train-share": counts.max().item() / len(train_y),
        "chance": 1 / len(counts),
        "class-id": counts.argmax().item(),
        "percent": 100 * (test_y == counts.argmax()).float().mean().item(),
    }[baseline]
    return accuracy, majority


def _lbfgs(train_x, train_y, test_x, test_y):
    return check._lbfgs_probe(train_x, train_y, test_x, test_y), \
        (test_y == train_y.bincount().argmax()).float().mean().item()


def test_probe_passes_on_right_answers():
    check.check_probe(probe_accuracy)
    check.check_probe(_lbfgs)


def _predicts_the_majority(train_x, train_y, test_x, test_y):
    baseline = (test_y == train_y.bincount().argmax()).float().mean().item()
    return baseline, baseline


@pytest.mark.parametrize("wrong, words", [
    (lambda *data: probe_accuracy(*data, baseline="test-majority"), ["test labels", "peeks"]),
    (lambda *data: probe_accuracy(*data, baseline="train-share"), ["*training* labels"]),
    (lambda *data: probe_accuracy(*data, baseline="chance"), ["uniform guess"]),
    (lambda *data: probe_accuracy(*data, baseline="class-id"), ["its id"]),
    (lambda *data: probe_accuracy(*data, baseline="percent"), ["percentage"]),
    (lambda *data: probe_accuracy(*data, score_on="train"), ["training examples"]),
    (lambda *data: probe_accuracy(*data, steps=1), ["train the probe longer"]),
    (_predicts_the_majority, ["one class"]),
    (lambda *data: (100 * probe_accuracy(*data)[0], probe_accuracy(*data)[1]), ["percentage"]),
    (lambda *data: probe_accuracy(*data)[0], ["two numbers"]),
], ids=["baseline-from-test", "baseline-train-share", "baseline-chance", "baseline-class-id",
        "baseline-percent", "train-accuracy", "undertrained", "majority-only",
        "accuracy-percent", "one-number"])
def test_probe_names_the_mistake(wrong, words):
    fails(check.check_probe, wrong, *words)


# --- exercise 5: knockout_increase -------------------------------------------------------------


def knockout_increase(model, idx, targets, layer, head, *, where="columns", at=None,
                      result="increase", restore=True, no_grad=True):
    attn = model.blocks[layer if at is None else at].attn
    C, n_head = attn.n_embd, attn.n_head
    d = C // n_head
    cols = slice(head * d, (head + 1) * d)
    targets_of = {
        "columns": (attn.out_proj.weight, (slice(None), cols)),
        "rows": (attn.out_proj.weight, (cols, slice(None))),
        "interleaved": (attn.out_proj.weight, (slice(None), slice(head, None, n_head))),
        "values": (attn.qkv_proj.weight, (slice(2 * C + head * d, 2 * C + (head + 1) * d),)),
        "layer": (attn.out_proj.weight, (slice(None),)),
    }
    weight, index = targets_of[where]
    with torch.no_grad():
        base = model(idx, targets)[1].item()
    saved = weight[index].clone()
    if no_grad:
        with torch.no_grad():
            weight[index] = 0
    else:
        weight[index] = 0
    with torch.no_grad():
        loss = model(idx, targets)[1].item()
    if restore:
        with torch.no_grad():
            weight[index] = saved
    return {"increase": loss - base, "loss": loss, "flipped": base - loss,
            "ratio": loss / base}[result]


def test_knockout_passes_on_right_answers():
    check.check_knockout(knockout_increase)

    def by_value_weights_and_bias(model, idx, targets, layer, head):  # also silences the head
        attn = model.blocks[layer].attn
        d = attn.head_dim
        rows = slice(2 * attn.n_embd + head * d, 2 * attn.n_embd + (head + 1) * d)
        with torch.no_grad():
            base = model(idx, targets)[1]
            saved = attn.qkv_proj.weight[rows].clone(), attn.qkv_proj.bias[rows].clone()
            attn.qkv_proj.weight[rows], attn.qkv_proj.bias[rows] = 0, 0
            loss = model(idx, targets)[1]
            attn.qkv_proj.weight[rows], attn.qkv_proj.bias[rows] = saved
        return loss - base

    check.check_knockout(by_value_weights_and_bias)


def _with_the_bias(model, idx, targets, layer, head):
    proj = model.blocks[layer].attn.out_proj
    cols = slice(head * 4, (head + 1) * 4)  # head_dim = 16 / 4
    with torch.no_grad():
        base = model(idx, targets)[1].item()
        saved = proj.weight[:, cols].clone(), proj.bias.clone()
        proj.weight[:, cols], proj.bias[:] = 0, 0
        loss = model(idx, targets)[1].item()
        proj.weight[:, cols], proj.bias[:] = saved
    return loss - base


@pytest.mark.parametrize("wrong, words", [
    (lambda *a: knockout_increase(*a, where="rows"), ["rows", "columns"]),
    (lambda *a: knockout_increase(*a, where="interleaved"), ["every n_head-th column"]),
    (lambda *a: knockout_increase(*a, where="values"), ["value bias"]),
    (lambda *a: knockout_increase(*a, where="layer"), ["whole layer"]),
    (_with_the_bias, ["bias"]),
    (lambda *a: knockout_increase(*a, result="loss"), ["*increase*"]),
    (lambda *a: knockout_increase(*a, result="flipped"), ["sign"]),
    (lambda *a: knockout_increase(*a, result="ratio"), ["ratio"]),
    (lambda m, i, t, layer, h: knockout_increase(m, i, t, layer, h, at=min(layer + 1, 1)),
     ["layer after"]),
    (lambda *a: knockout_increase(*a, restore=False), ["left the model changed", "finally"]),
    (lambda *a: knockout_increase(*a, no_grad=False), ["torch.no_grad()"]),
    (lambda *a: "0.1", ["number"]),
], ids=["rows", "interleaved", "value-weights", "whole-layer", "output-bias", "loss",
        "flipped", "ratio", "next-layer", "not-restored", "no-grad", "string"])
def test_knockout_names_the_mistake(wrong, words):
    fails(check.check_knockout, wrong, *words)


def test_queries_zeroed_is_named():
    def queries(model, idx, targets, layer, head):
        attn = model.blocks[layer].attn
        rows = slice(head * attn.head_dim, (head + 1) * attn.head_dim)
        with torch.no_grad():
            base = model(idx, targets)[1].item()
            saved = attn.qkv_proj.weight[rows].clone(), attn.qkv_proj.bias[rows].clone()
            attn.qkv_proj.weight[rows], attn.qkv_proj.bias[rows] = 0, 0
            loss = model(idx, targets)[1].item()
            attn.qkv_proj.weight[rows], attn.qkv_proj.bias[rows] = saved
        return loss - base

    fails(check.check_knockout, queries, "queries", "evenly")


# --- every check: answers remembered for the fixed examples are not enough ---------------------


def test_probe_rejects_accuracies_typed_in_for_the_fixed_examples():
    def typed(train_x, train_y, test_x, test_y):  # the right baseline, a remembered accuracy
        baseline = (test_y == train_y.bincount().argmax()).float().mean().item()
        return (0.98 if train_x.size(1) == 8 else baseline + 0.05), baseline

    fails(check.check_probe, typed, *FRESH_CASE_WORDS)


@pytest.mark.parametrize("check_function, right", [
    (check.check_head_attention, head_attention),
    (check.check_lens_logits, lambda model, h: model.lm_head(model.ln_f(h))),
    (check.check_completion_logprob, completion_logprob),
    (check.check_knockout, knockout_increase),
], ids=["head_attention", "lens_logits", "completion_logprob", "knockout"])
def test_checks_reject_answers_remembered_for_their_fixed_examples(check_function, right):
    rejects_remembered_answers(check_function, right)
