"""Checks for exercises/02_language_modeling.ipynb, which practises
notebooks/02_language_modeling.ipynb.

Each check calls the learner's function on seeded inputs, compares it with `minigpt` (the window
sampler of `minigpt.data`, the loss of `minigpt.GPT`) and with an independent reference (PyTorch's
`F.cross_entropy`, Hugging Face GPT-2's loss, counting by brute force), and recomputes the typical
wrong answers — targets not shifted, the log forgotten, a sum instead of a mean — to name them.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from checks.core import (
    CheckFailed,
    as_number,
    as_tensor,
    call,
    close,
    close_or_diagnose,
    diagnose,
    fresh_case,
    fresh_seed,
    passed,
    require,
    same_shape,
)

# ---------------------------------------------------------------------------------------------
# Exercise 1: (x, y) windows


def check_windows(make_windows) -> None:
    """`make_windows(tokens, starts, block_size)` -> (x, y), y = x shifted by one."""
    from minigpt.data import RandomWindowSampler

    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50, (200,), generator=generator)
    block_size = 8
    sampler = RandomWindowSampler(tokens.numpy(), block_size, batch_size=4, seed=0)
    package_starts = [int(s) for s in sampler.global_starts(0)]
    package_x, package_y = sampler.next_batch()  # minigpt's windows for those starts
    last = len(tokens) - block_size - 1  # the last start whose targets still exist
    for starts in [[5, 17, 1, 60], [0, last], [last], [3], package_starts]:
        expected_x, expected_y = _check_windows_case(make_windows, tokens, starts, block_size)
    # The reference slicing above and minigpt.data agree, so the learner agrees with both.
    assert torch.equal(expected_x, package_x) and torch.equal(expected_y, package_y)
    with fresh_case(fresh_seed()) as generator:  # tokens, starts and T no one knew in advance
        tokens = torch.randint(0, 50, (int(torch.randint(60, 200, (), generator=generator)),),
                               generator=generator)
        block_size = int(torch.randint(2, 12, (), generator=generator))
        starts = torch.randint(0, len(tokens) - block_size, (int(torch.randint(
            1, 6, (), generator=generator)),), generator=generator).tolist()
        _check_windows_case(make_windows, tokens, starts, block_size)
    passed("make_windows")


def _check_windows_case(make_windows, tokens, starts, block_size):
    """The learner's windows for `starts`; returns the expected (x, y)."""
    x, y = _windows_of(make_windows, tokens, starts, block_size)
    expected_x = torch.stack([tokens[s : s + block_size] for s in starts])
    expected_y = torch.stack([tokens[s + 1 : s + block_size + 1] for s in starts])
    _check_window_shapes(x, y, expected_x, block_size)
    where = f"for starts={starts}" + ("" if block_size == 8 else f", block_size={block_size}")
    shifted_back = (torch.stack([tokens[s - 1 : s + block_size - 1] for s in starts])
                    if min(starts) >= 1 else None)
    close_or_diagnose(x, expected_x, f"x {where}", {
        "x and y are swapped: x = tokens[s : s+T] are the inputs, y the next tokens":
            expected_y,
    })
    close_or_diagnose(y, expected_y, f"y {where}", {
        "y equals x; the targets are the *next* tokens, tokens[s+1 : s+T+1] — as written, "
        "every position would be asked for the token it already sees (an off-by-one)":
            expected_x,
        "y is shifted the wrong way: it holds the previous tokens, tokens[s-1 : s+T-1]; "
        "the target of position t is the token at t + 1": shifted_back,
        "y is shifted by two: the target of position t is the token at t + 1, so "
        "y = tokens[s+1 : s+T+1]": _shifted(tokens, starts, block_size, 2),
    })
    return expected_x, expected_y


def _shifted(tokens, starts, block_size, shift):
    if max(starts) + shift + block_size > len(tokens):
        return None
    return torch.stack([tokens[s + shift : s + shift + block_size] for s in starts])


def _windows_of(make_windows, tokens, starts, block_size):
    result = call(make_windows, tokens.clone(), list(starts), block_size)
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise CheckFailed("make_windows should return two tensors, (x, y)")
    x, y = (as_tensor(t, name) for t, name in zip(result, "xy", strict=True))
    for name, t in (("x", x), ("y", y)):
        require(not t.is_floating_point() and t.dtype != torch.bool,
                f"{name} has dtype {t.dtype}; token ids must be integers (int64)")
        require(t.dtype == torch.int64,
                f"{name} has dtype {t.dtype}; token ids for nn.Embedding and "
                "F.cross_entropy must be int64 (torch.long)")
    return x, y


def _check_window_shapes(x, y, expected_x, block_size) -> None:
    B, T = expected_x.shape
    for name, t in (("x", x), ("y", y)):
        if t.shape == (B, T + 1):
            raise CheckFailed(
                f"{name} has T + 1 = {T + 1} columns: a window of T + 1 tokens is cut into "
                "x = its first T and y = its last T")
        if name == "y" and t.shape == (B,):
            raise CheckFailed(
                "y holds one target per window; each window holds T prediction problems, "
                "so y needs a target for every position: shape (B, T)")
        same_shape(t, expected_x, f"{name} (B = {B} windows of T = {block_size} tokens)")


# ---------------------------------------------------------------------------------------------
# Exercise 2: the bigram model with add-alpha smoothing, eq. (2.2)


def check_bigram_probs(bigram_probs) -> None:
    """`bigram_probs(ids, vocab_size, alpha)` -> (V, V) table, row a = p(. | a), eq. (2.2)."""
    generator = torch.Generator().manual_seed(0)
    text = "the reader reads the tokens; the tokens are the only thing it reads."
    cases = [
        (torch.randint(0, 6, (60,), generator=generator), 6, 0.5),
        (torch.tensor(list(text.encode("utf-8"))), 256, 0.1),
        (torch.tensor([0, 1, 2, 0, 1, 0]), 4, 1.0),  # token 3 never occurs: a uniform row
        (torch.randint(0, 8, (400,), generator=generator), 8, 0.0),  # every pair is seen
    ]
    for ids, V, alpha in cases:
        _check_bigram_case(bigram_probs, ids, V, alpha)
    with fresh_case(fresh_seed()) as generator:  # ids, V and alpha no one knew in advance
        V = int(torch.randint(3, 12, (), generator=generator))
        ids = torch.randint(0, V, (int(torch.randint(20, 300, (), generator=generator)),),
                            generator=generator)
        alpha = round(float(torch.rand((), generator=generator)) * 2 + 0.05, 3)
        _check_bigram_case(bigram_probs, ids, V, alpha)
    passed("bigram_probs")


def _check_bigram_case(bigram_probs, ids, V, alpha) -> None:
    got = call(bigram_probs, ids.clone(), V, alpha)
    if isinstance(got, np.ndarray):
        got = torch.from_numpy(got)
    got = as_tensor(got, "the table").double()
    counts = _bigram_counts(ids.tolist(), V)
    expected = _smoothed(counts, alpha)
    if _close(got, expected):
        return
    what = f"p(b | a) for V = {V}, alpha = {alpha}"
    diagnosis = diagnose(got, {
        "the table is transposed: row a (the current token) must hold the distribution "
        "of the next token b, so count counts[a, b] with a = ids[i], b = ids[i+1]":
            _smoothed(counts.T, alpha),
        "the table is transposed: p(b | a) belongs in row a, column b": expected.T,
        "each column sums to 1 instead of each row: normalise over the next token b "
        "(sum over dim=1, keepdim=True)": _normalise(counts + alpha, dim=0),
        "alpha is missing: eq. (2.2) adds alpha to every count and alpha * V to every "
        "row total": _smoothed(counts, 0.0) if alpha > 0 else None,
        "the denominator needs alpha * V, not alpha: V imaginary counts of alpha each "
        "were added to the row": (counts + alpha) / (counts.sum(1, keepdim=True) + alpha),
        "every row is the same: that is the unigram distribution p(b), which ignores the "
        "current token; count pairs (a, b), not single tokens":
            _smoothed(counts.sum(0, keepdim=True).expand(V, V).clone(), alpha),
        "you also counted the pair (last token, first token) that wraps around":
            _smoothed(_bigram_counts(ids.tolist() + ids[:1].tolist(), V), alpha),
    }, rtol=1e-6, atol=1e-9)
    if diagnosis:
        raise CheckFailed(f"{what}: {diagnosis}")
    if got.shape == (V, V) and not torch.allclose(got.sum(dim=1), torch.ones(V).double()):
        raise CheckFailed(f"{what}: {_row_sum_hint(got)}")
    close(got, expected, what, rtol=1e-6, atol=1e-9)


def _bigram_counts(ids: list[int], V: int) -> torch.Tensor:
    counts = torch.zeros(V, V, dtype=torch.float64)
    for (a, b), n in Counter(zip(ids, ids[1:], strict=False)).items():  # brute force
        counts[a, b] = n
    return counts


def _smoothed(counts: torch.Tensor, alpha: float) -> torch.Tensor:
    V = counts.size(1)
    return (counts + alpha) / (counts.sum(dim=1, keepdim=True) + alpha * V)  # eq. (2.2)


def _normalise(table: torch.Tensor, dim: int) -> torch.Tensor:
    return table / table.sum(dim=dim, keepdim=True)


def _close(a, b) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-6, atol=1e-9, equal_nan=True)


def _row_sum_hint(got) -> str:
    sums = got.sum(dim=1)
    if torch.isnan(sums).any():
        row = int(torch.isnan(sums).nonzero()[0])
        return (f"row {row} is NaN: token {row} never occurs as a context, so its counts are "
                "all 0 and 0/0 = NaN; with alpha > 0 eq. (2.2) gives it the uniform row 1/V")
    row = int((sums - 1).abs().argmax())
    return (f"row {row} sums to {sums[row].item():.4g}, not 1: p(. | a) is a distribution over "
            "the next token, so each row must sum to 1 — check the denominator of eq. (2.2)")


# ---------------------------------------------------------------------------------------------
# Exercise 3: cross-entropy by hand, eq. (2.4)


def check_cross_entropy(cross_entropy) -> None:
    """`cross_entropy(logits, targets)`: (N, V), (N,) -> the mean NLL, a scalar tensor."""
    generator = torch.Generator().manual_seed(0)
    for N, V, scale in [(12, 7, 2.0), (1, 5, 1.0), (40, 3, 4.0)]:
        _check_cross_entropy_case(cross_entropy, generator, N, V, scale)
    with fresh_case(fresh_seed()) as generator:  # logits and targets no one knew in advance
        N, V = (int(torch.randint(low, high, (), generator=generator))
                for low, high in ((2, 50), (2, 30)))
        _check_cross_entropy_case(cross_entropy, generator, N, V, 3.0)
    _check_against_gpt(cross_entropy)
    _check_large_logits(cross_entropy)
    _check_gradient(cross_entropy)
    passed("cross_entropy")


def _check_cross_entropy_case(cross_entropy, generator, N, V, scale) -> None:
    logits = scale * torch.randn(N, V, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, V, (N,), generator=generator)
    got = call(cross_entropy, logits.clone(), targets.clone())
    got = as_tensor(got, "the loss")
    expected = F.cross_entropy(logits, targets)  # PyTorch, an independent implementation
    close_or_diagnose(got, expected, f"the loss of {N} predictions over V = {V}",
                      _cross_entropy_mistakes(logits, targets), rtol=1e-5, atol=1e-7,
                      factors={f"N = {N} (the number of predictions)": N})


def _cross_entropy_mistakes(logits, targets) -> dict:
    N = len(targets)
    rows = torch.arange(N)
    log_q = F.log_softmax(logits, dim=-1)
    q = log_q.exp()
    right = -log_q[rows, targets]  # (N,) one surprise per prediction
    mistakes = {
        "you returned one loss per prediction, shape (N,); eq. (2.4) averages them (.mean())":
            right,
        "you summed the surprises instead of averaging them: divide by N": right.sum(),
        "the log is missing: eq. (2.4) has log Σ_j exp(z_j), you computed Σ_j exp(z_j)":
            (logits.exp().sum(-1) - logits[rows, targets]).mean(),
        "you used probabilities, not log-probabilities: the loss is -log q[y], not -q[y] "
        "(F.nll_loss expects log_softmax output, not softmax output)":
            -q[rows, targets].mean(),
        "the logits are not log-probabilities: -z[y] leaves out log Σ_j exp(z_j), the log of "
        "the softmax's denominator": -logits[rows, targets].mean(),
        "the sign is flipped: the loss is the *negative* log-likelihood": -right.mean(),
        "that is in bits (log base 2); the course measures nats (natural log)":
            right.mean() / math.log(2),
        "you computed the entropy of the predictions, -Σ q log q, which ignores the targets":
            -(q * log_q).sum(-1).mean(),
    }
    if N > 1:
        wrong_axis = -F.log_softmax(logits, dim=0)[rows, targets]
        mistakes["the softmax ran over the wrong axis (the N predictions, dim=0); it must "
                 "normalise over the V tokens of each row (dim=-1)"] = wrong_axis.mean()
    return mistakes


def _check_against_gpt(cross_entropy) -> None:
    from minigpt import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32)).eval()
    idx = torch.randint(0, 64, (3, 17), generator=torch.Generator().manual_seed(1))
    x, y = idx[:, :-1], idx[:, 1:]
    with torch.no_grad():
        logits, loss = model(x, y)  # minigpt.GPT's own loss, eq. (2.4)
    got = as_tensor(call(cross_entropy, logits.reshape(-1, 64), y.reshape(-1)), "the loss")
    close_or_diagnose(got, loss, "the loss of minigpt.GPT's logits",
                      _cross_entropy_mistakes(logits.reshape(-1, 64), y.reshape(-1)),
                      rtol=1e-5, atol=1e-6)


def _check_large_logits(cross_entropy) -> None:
    logits = torch.tensor([[1000.0, 1001.0, 1002.0], [-1000.0, -1001.0, -1002.0]])
    targets = torch.tensor([2, 0])
    got = as_tensor(call(cross_entropy, logits, targets), "the loss")
    if not torch.isfinite(got).all():
        raise CheckFailed(
            "the loss is not finite for logits near ±1000: exp(1000) overflows (and "
            "exp(-1000) underflows to 0, whose log is -inf). Compute log Σ exp(z) stably: "
            "subtract the row max first (eq. 3.6 of notebook 03) or use torch.logsumexp")
    close_or_diagnose(got, F.cross_entropy(logits, targets), "the loss for logits near ±1000")


def _check_gradient(cross_entropy) -> None:
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(2), requires_grad=True)
    targets = torch.tensor([0, 3, 4, 1])
    loss = call(cross_entropy, logits, targets)
    require(isinstance(loss, torch.Tensor) and loss.requires_grad,
            "the loss is not connected to the logits: keep it a torch tensor (no .item(), no "
            "numpy) so that loss.backward() can train the model")
    loss.backward()
    expected = (torch.softmax(logits.detach(), -1) - F.one_hot(targets, 5)) / 4  # (q - y) / N
    close_or_diagnose(logits.grad, expected, "the gradient of your loss")


# ---------------------------------------------------------------------------------------------
# Exercise 4: the language-model loss, shift included


def check_lm_loss(lm_loss) -> None:
    """`lm_loss(logits, tokens)`: logits (B, T, V) of a model run on tokens (B, T); the loss
    of predicting tokens[:, t + 1] from position t, averaged over the B * (T - 1) predictions."""
    generator = torch.Generator().manual_seed(0)
    for B, T, V in [(2, 6, 9), (3, 2, 5), (1, 12, 4)]:
        _check_lm_loss_case(lm_loss, generator, B, T, V)
    with fresh_case(fresh_seed()) as generator:  # logits and tokens no one knew in advance
        B, T, V = (int(torch.randint(low, high, (), generator=generator))
                   for low, high in ((1, 5), (2, 15), (2, 20)))
        _check_lm_loss_case(lm_loss, generator, B, T, V)
    _check_lm_loss_against_models(lm_loss)
    passed("lm_loss")


def _check_lm_loss_case(lm_loss, generator, B, T, V) -> None:
    logits = 2 * torch.randn(B, T, V, generator=generator, dtype=torch.float64)
    tokens = torch.randint(0, V, (B, T), generator=generator)
    got = as_tensor(call(lm_loss, logits.clone(), tokens.clone()), "the loss")
    expected = _lm_loss(logits, tokens)
    close_or_diagnose(got, expected, f"the loss for B = {B}, T = {T}",
                      _lm_loss_mistakes(logits, tokens), rtol=1e-5, atol=1e-7,
                      factors={f"B·(T-1) = {B * (T - 1)} (the number of predictions)":
                               B * (T - 1)})


def _lm_loss(logits, tokens, logits_part=slice(None, -1), targets_part=slice(1, None)):
    V = logits.size(-1)
    z = logits[:, logits_part].reshape(-1, V)
    return F.cross_entropy(z, tokens[:, targets_part].reshape(-1))


def _lm_loss_mistakes(logits, tokens) -> dict:
    B, T, V = logits.shape
    mistakes = {
        "off-by-one: each position was scored on its own token, which it already sees; "
        "logits[:, t] predicts tokens[:, t + 1], so use logits[:, :-1] with tokens[:, 1:]":
            F.cross_entropy(logits.reshape(-1, V), tokens.reshape(-1)),
        "shifted the wrong way: logits[:, 1:] against tokens[:, :-1] scores each position on "
        "the token *before* it; use logits[:, :-1] with tokens[:, 1:]":
            _lm_loss(logits, tokens, slice(1, None), slice(None, -1)),
        "you summed over the predictions instead of averaging":
            _lm_loss(logits, tokens) * B * (T - 1),
    }
    if B > 1:
        mistakes["shifted along the batch axis (dim 0) instead of time (dim 1): the next "
                 "token of a sequence is in the same row, one column on"] = F.cross_entropy(
            logits[:-1].reshape(-1, V), tokens[1:].reshape(-1))
    z, y = logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1)
    rows = torch.arange(len(y))
    mistakes["you used probabilities, not log-probabilities: the loss is -log q[y]"] = (
        -torch.softmax(z, -1)[rows, y].mean())
    mistakes["the log is missing from log Σ_j exp(z_j)"] = (
        (z.exp().sum(-1) - z[rows, y]).mean())
    return mistakes


def _check_lm_loss_against_models(lm_loss) -> None:
    """minigpt.GPT (x = tokens[:, :-1], y = tokens[:, 1:]) and Hugging Face GPT-2
    (labels = the input ids, shifted inside the model) must both agree with lm_loss."""
    from minigpt import GPT, GPTConfig

    tokens = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32)).eval()
    with torch.no_grad():
        logits, _ = model(tokens)
        _, minigpt_loss = model(tokens[:, :-1], tokens[:, 1:])
    got = as_tensor(call(lm_loss, logits, tokens), "the loss")
    close_or_diagnose(got, minigpt_loss, "the loss of minigpt.GPT's logits",
                      _lm_loss_mistakes(logits, tokens), rtol=1e-5, atol=1e-6)
    try:
        with warnings.catch_warnings():  # tqdm's note that Jupyter widgets are missing
            warnings.filterwarnings("ignore", message="IProgress not found")
            from transformers import GPT2Config, GPT2LMHeadModel
            from transformers.utils import logging as hf_logging
    except ImportError:  # an optional reference: the course runs without transformers
        return
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2,
                        bos_token_id=0, eos_token_id=0)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its notes on config defaults would clutter the notebook
    try:
        hf = GPT2LMHeadModel(config).eval()
        with torch.no_grad():
            out = hf(tokens, labels=tokens)  # Hugging Face shifts the labels inside the model
    finally:
        hf_logging.set_verbosity(verbosity)
    got = as_tensor(call(lm_loss, out.logits, tokens), "the loss")
    close_or_diagnose(got, out.loss, "the loss of Hugging Face GPT-2's logits",
                      _lm_loss_mistakes(out.logits, tokens), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Exercise 5: perplexity over a validation set, eq. (2.5)


def check_perplexity(perplexity) -> None:
    """`perplexity(batches)`: batches = [(logits (N_i, V), targets (N_i,)), ...] -> e^L, with
    L the mean loss over *all* predictions of all batches."""
    generator = torch.Generator().manual_seed(0)
    V = 12
    die = torch.full((30, V), -math.inf)
    die[:, :4] = 0.0  # uniform over 4 tokens, one of which is always the target
    die_batches = [(die, torch.randint(0, 4, (30,), generator=generator))]
    uneven = [(2 * torch.randn(n, V, generator=generator, dtype=torch.float64),
               torch.randint(0, V, (n,), generator=generator)) for n in (40, 3, 17)]
    single = [(torch.randn(5, V, generator=generator, dtype=torch.float64),
               torch.randint(0, V, (5,), generator=generator))]
    for name, batches in [("three batches of 40, 3 and 17 predictions", uneven),
                          ("a fair 4-sided die (expected perplexity 4)", die_batches),
                          ("one batch", single)]:
        _check_perplexity_case(perplexity, name, batches)
    with fresh_case(fresh_seed()) as generator:  # batches no one knew in advance
        V = int(torch.randint(2, 30, (), generator=generator))
        sizes = torch.randint(1, 40, (int(torch.randint(2, 5, (), generator=generator)),),
                              generator=generator).tolist()
        batches = [(2 * torch.randn(n, V, generator=generator, dtype=torch.float64),
                    torch.randint(0, V, (n,), generator=generator)) for n in sizes]
        _check_perplexity_case(perplexity, f"batches of {sizes} predictions over V = {V}",
                               batches)
    passed("perplexity")


def _check_perplexity_case(perplexity, name: str, batches) -> None:
    got = call(perplexity, [(z.clone(), y.clone()) for z, y in batches])
    got = as_number(got, "the perplexity")
    losses = [F.cross_entropy(z, y, reduction="none") for z, y in batches]
    all_losses = torch.cat(losses)
    expected = math.exp(all_losses.mean().item())  # eq. (2.5)
    if math.isclose(got, expected, rel_tol=1e-5):
        return
    diagnosis = diagnose(got, {
        "that is the loss L itself; the perplexity is e^L": all_losses.mean().item(),
        "the batches have different sizes, so average the loss over all predictions "
        "(weight each batch's mean loss by its number of predictions), not over batches":
            math.exp(sum(loss.mean().item() for loss in losses) / len(losses)),
        "you averaged the batches' perplexities; e^L of the pooled mean loss is not the "
        "mean of the batches' e^L": sum(math.exp(loss.mean().item()) for loss in losses)
            / len(losses),
        "you took e^ of the summed loss; the exponent is the *mean* loss":
            _safe_exp(all_losses.sum().item()),
        "you averaged e^(loss) over predictions (an arithmetic mean of 1/q); the "
        "perplexity is the exponential of the mean loss (a geometric mean)":
            all_losses.exp().mean().item(),
        "2^L is the perplexity of a loss in bits; with the natural log it is e^L":
            2 ** all_losses.mean().item(),
    }, rtol=1e-5, atol=0.0)
    if diagnosis:
        raise CheckFailed(f"the perplexity for {name}: {diagnosis}")
    raise CheckFailed(f"the perplexity for {name} is {got:.6g}, expected {expected:.6g}")


def _safe_exp(x: float) -> float | None:
    return math.exp(x) if x < 700 else None


# ---------------------------------------------------------------------------------------------
# Exercise 6: the loss before training, eqs. (2.6) and (2.7)


def check_initial_loss(initial_loss) -> None:
    """`initial_loss(vocab_size, sigma)` = ln V + sigma^2 / 2, the loss of random logits."""
    for V, sigma in [(256, 0.0), (50257, 0.0), (256, 1.0), (65, 0.5), (50257, 0.02)]:
        _check_initial_loss_case(initial_loss, V, sigma)
    _check_prediction_against_a_fresh_gpt(initial_loss)
    with fresh_case(fresh_seed()) as generator:  # V and sigma no one knew in advance
        V = int(torch.randint(2, 100_000, (), generator=generator))
        sigma = round(float(torch.rand((), generator=generator)) * 2, 4)
        _check_initial_loss_case(initial_loss, V, sigma)
    passed("initial_loss")


def _check_initial_loss_case(initial_loss, V, sigma) -> None:
    got = as_number(call(initial_loss, V, sigma), f"initial_loss({V}, {sigma})")
    expected = math.log(V) + sigma**2 / 2
    if math.isclose(got, expected, rel_tol=1e-6):
        return
    diagnosis = diagnose(got, {
        "that is log base 2 (bits); the loss uses the natural log, ln V":
            math.log2(V) + sigma**2 / 2,
        "that is log base 10; the loss uses the natural log, ln V":
            math.log10(V) + sigma**2 / 2,
        "that is the perplexity of a uniform guess, V; the loss is ln V": float(V),
        "the sign is flipped: the loss of a uniform guess is -log(1/V) = +ln V":
            -math.log(V) + sigma**2 / 2,
        "the term for the size of the logits is missing: eq. (2.7) adds sigma^2 / 2":
            math.log(V) if sigma > 0 else None,
        "eq. (2.7) adds sigma^2 / 2, not sigma / 2": math.log(V) + sigma / 2,
        "eq. (2.7) adds sigma^2 / 2, not sigma^2 (the mean of a log-normal is "
        "e^(sigma^2 / 2))": math.log(V) + sigma**2,
    }, rtol=1e-6, atol=0.0)
    if diagnosis:
        raise CheckFailed(f"initial_loss({V}, {sigma}): {diagnosis}")
    raise CheckFailed(f"initial_loss({V}, {sigma}) is {got:.6g}, expected {expected:.6g} "
                      f"(ln {V} = {math.log(V):.4f})")


def _check_prediction_against_a_fresh_gpt(initial_loss) -> None:
    """A freshly initialised minigpt.GPT scored on random tokens lands on eq. (2.7)."""
    from minigpt import GPT, GPTConfig

    torch.manual_seed(0)
    V = 256
    model = GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=2, n_head=2, n_embd=64)).eval()
    idx = torch.randint(0, V, (16, 33), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, loss = model(idx[:, :-1], idx[:, 1:])
    predicted = as_number(call(initial_loss, V, logits.std().item()), "the prediction")
    require(abs(predicted - loss.item()) < 0.05,
            f"a fresh minigpt.GPT scores {loss.item():.3f} on random tokens, but your formula "
            f"predicts {predicted:.3f}")
