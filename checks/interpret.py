"""Checks for exercises/12_inside_the_black_box.ipynb (course notebook 12, eqs. 12.1-12.4).

Each check runs the learner's function on small seeded `minigpt.GPT` models whose weights are of
order 1 (so that every part of a formula visibly matters), compares it with `minigpt.interpret`
and with an independent reference (PyTorch's `nn.MultiheadAttention` and `F.layer_norm`, the
cross-entropy, a probe fitted by L-BFGS, a head silenced by a forward hook), and names the
typical mistake when the answer reproduces one.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from checks.core import (
    CheckFailed,
    as_number,
    as_tensor,
    call,
    close,
    diagnose_all,
    fresh_case,
    fresh_seed,
    passed,
    require,
    same_shape,
)

NEG_INF = float("-inf")
VOCAB, BLOCK_SIZE, N_EMBD = 256, 24, 16  # bytes as tokens, as in the course notebook


def _seeded_randn(*shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _seeded_ids(*shape, seed: int) -> torch.Tensor:
    return torch.randint(VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def _fresh_int(generator, low: int, high: int) -> int:
    """An integer in [low, high), drawn with `generator`."""
    return int(torch.randint(low, high, (), generator=generator))


def random_gpt(seed: int = 0, **config):
    """A small minigpt GPT with weights of order 1 (a freshly initialised one is nearly flat).

    config overrides GPTConfig fields (n_layer, n_head, pos_encoding, tie_weights, ...).
    """
    from minigpt import GPT, GPTConfig

    settings = dict(vocab_size=VOCAB, block_size=BLOCK_SIZE, n_layer=2, n_head=2, n_embd=N_EMBD)
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # leave the learner's RNG alone
        torch.manual_seed(seed)
        model = GPT(GPTConfig(**{**settings, **config})).eval()
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith("ln_f"):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.5 * torch.randn_like(p))
            elif name.startswith("token_emb"):
                p.copy_(torch.randn_like(p))
            elif p.dim() == 2:  # weights: std 1/√fan_in keeps every layer's output of order 1
                p.copy_(torch.randn_like(p) / math.sqrt(p.size(1)))
            else:  # biases and position tables
                p.copy_(0.5 * torch.randn_like(p))
    return model


def _judge(cases: list[tuple], rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Every (what, answer, expected, mistakes) tensor case is right, or say what is wrong.

    A mistake is named only if it explains the answer in every case where it can be computed.
    """
    for what, answer, expected, _ in cases:
        same_shape(answer, expected, what)
    wrong = [case for case in cases if not torch.allclose(
        case[1].detach().to(case[2].dtype), case[2], rtol=rtol, atol=atol)]
    if not wrong:
        return
    diagnosis = diagnose_all([answer for _, answer, _, _ in cases],
                             [mistakes for *_, mistakes in cases], rtol, atol)
    what, answer, expected, _ = wrong[0]
    if diagnosis is not None:
        raise CheckFailed(f"{what} is not right: {diagnosis}")
    close(answer, expected, what, rtol=rtol, atol=atol)


def _run_matmul(function, *args):
    """`core.call`, plus a specific message for a (V, C) matrix used untransposed."""
    try:
        return call(function, *args)
    except RuntimeError as error:
        if "cannot be multiplied" in str(error):
            raise CheckFailed(f"`{function.__name__}` failed on a matrix product ({error}). "
                              "nn.Linear and nn.Embedding store their matrices as (out, in), "
                              "e.g. E is (V, C): multiply by the transpose, or call the "
                              "module") from None
        raise


# ---------------------------------------------------------------------------------------------
# Exercise 1: one head's attention map by hand (eq. 12.1)

# (what the model is, its config overrides, layer, head, batch, length)
HEAD_CASES = [
    ("learned positions", {}, 0, 1, 2, 7),
    ("learned positions", {}, 1, 0, 2, 7),
    ("learned positions, a single token", {}, 1, 1, 1, 1),
    ("rotary positions (RoPE), 4 heads", {"pos_encoding": "rope", "n_head": 4}, 1, 2, 1, 9),
]


def check_head_attention(head_attention) -> None:
    """head_attention(block, h, head) == softmax(QKᵀ/√d + M) of one head, from LN₁(h)."""
    cases = [_head_case(head_attention, number, *case) for number, case in enumerate(HEAD_CASES)]
    _judge(cases)
    seed = fresh_seed()
    with fresh_case(seed) as generator:  # a model, a head and tokens no one knew in advance
        config = {"n_head": (1, 2, 4)[_fresh_int(generator, 0, 3)],
                  "pos_encoding": ("learned", "rope")[_fresh_int(generator, 0, 2)]}
        about = f"{config['n_head']} head(s) and {config['pos_encoding']} positions"
        layer, head = _fresh_int(generator, 0, 2), _fresh_int(generator, 0, config["n_head"])
        B, T = _fresh_int(generator, 1, 4), _fresh_int(generator, 1, BLOCK_SIZE + 1)
        _judge([_head_case(head_attention, seed, about, config, layer, head, B, T)])
    passed("head_attention")


def _head_case(head_attention, seed, about, config, layer, head, B, T) -> tuple:
    """(what, answer, expected, mistakes) for one head of a random model."""
    from minigpt.interpret import attention_maps, residual_stream

    model = random_gpt(seed=seed, **config)
    idx = _seeded_ids(B, T, seed=10 + seed)
    h = residual_stream(model, idx)[layer]  # (B, T, C): the stream entering block `layer`
    block = model.blocks[layer]
    with torch.no_grad():
        answer = _run_matmul(head_attention, block, h.clone(), head)
        expected = attention_maps(model, idx)[layer][:, head]  # (B, T, T)
        torch.testing.assert_close(_head_map(block, h, head), expected)  # by hand
        if block.attn.rotary is None:
            torch.testing.assert_close(_torch_map(block, h, head), expected)
        what = (f"head_attention(model.blocks[{layer}], h, head={head}) for a model with "
                f"{about}, h of shape {tuple(h.shape)}")
        n_head = block.attn.n_head
        require(not (isinstance(answer, torch.Tensor) and tuple(answer.shape) == (
            B, n_head, T, T) and n_head != T), f"{what} has shape {tuple(answer.shape)}: "
                "that is every head's map; return head `head`'s only, (B, T, T)")
        return what, as_tensor(answer, what), expected, _head_mistakes(block, h, head)


def _torch_map(block, h, head) -> torch.Tensor:
    """PyTorch's nn.MultiheadAttention, asked for the weights of every head."""
    attn, (_, T, C) = block.attn, h.shape
    with torch.random.fork_rng(devices=[]):  # its initialisation must not move the learner's RNG
        reference = torch.nn.MultiheadAttention(C, attn.n_head, batch_first=True).eval()
    reference.in_proj_weight.copy_(attn.qkv_proj.weight)
    reference.in_proj_bias.copy_(attn.qkv_proj.bias)
    x = block.ln_1(h)
    barred = torch.ones(T, T, dtype=torch.bool).triu(1)  # True where attention is not allowed
    _, weights = reference(x, x, x, attn_mask=barred, need_weights=True,
                           average_attn_weights=False)
    return weights[:, head]  # (B, T, T)


def _head_map(block, h, head, *, norm="ln_1", divisor="sqrt_d", mask="causal", softmax_dim=-1,
              swap=False, layout="blocks", rotary="both", key_part=1, average=False):
    """One head's attention weights with one deliberate mistake switched on (all off = right)."""
    attn, (B, T, C) = block.attn, h.shape
    n_head, d = attn.n_head, C // attn.n_head
    x = {"ln_1": block.ln_1, "ln_2": block.ln_2, "none": lambda t: t}[norm](h)
    parts = attn.qkv_proj(x).split(C, dim=-1)  # Q, K, V: 3 x (B, T, C)
    q, k = parts[0], parts[key_part]
    if layout == "blocks":
        q, k = attn.split_heads(q), attn.split_heads(k)  # (B, nh, T, d)
    else:  # head i taking features i, i + n_head, ...
        q, k = (t.view(B, T, d, n_head).permute(0, 3, 1, 2) for t in (q, k))
    if attn.rotary is not None:
        q = attn.rotary(q) if rotary in ("both", "q") else q
        k = attn.rotary(k) if rotary in ("both", "k") else k
    if swap:
        q, k = k, q
    scale = {"sqrt_d": math.sqrt(d), "none": 1.0, "sqrt_C": math.sqrt(C), "d": d}[divisor]
    scores = q @ k.transpose(-2, -1) / scale  # (B, nh, T, T)
    if mask != "none":
        allowed = torch.ones(T, T, dtype=torch.bool).tril()
        scores = scores.masked_fill(~(allowed if mask == "causal" else allowed.T), NEG_INF)
    weights = torch.softmax(scores, dim=softmax_dim)
    return weights.mean(1) if average else weights[:, head]


def _head_mistakes(block, h, head) -> dict:
    def wrong(**mistake):
        return _head_map(block, h, head, **mistake)

    rotary = block.attn.rotary is not None
    return {
        "the layer norm is missing: in a pre-LN block attention reads LN₁(h), the normalised "
        "stream (block.ln_1), not h itself": wrong(norm="none"),
        "attention reads LN₁(h); you normalised with block.ln_2, the feed-forward branch's "
        "layer norm": wrong(norm="ln_2"),
        "the scores are not divided by √d (eq. 12.1)": wrong(divisor="none"),
        "the scores are divided by √C, the model width; divide by √d with d = C / n_head, the "
        "width of one head": wrong(divisor="sqrt_C"),
        "the scores are divided by d instead of √d (eq. 12.1)": wrong(divisor="d"),
        "the causal mask is missing: query t gives weight to keys s > t, the future. Set those "
        "scores to -inf before the softmax (M in eq. 12.1)": wrong(mask="none"),
        "the mask is on the wrong side: query t sees the keys s >= t (torch.triu); it may see "
        "s <= t (torch.tril)": wrong(mask="reversed"),
        "the softmax runs over the queries (dim=-2); each query's row of weights over the keys "
        "sums to 1, so take it over the last axis": wrong(softmax_dim=-2),
        "queries and keys are swapped: you computed K Qᵀ, whose row t scores key t against "
        "every query; the scores are Q Kᵀ (row t: query t against every key)": wrong(swap=True),
        "the heads' features are interleaved: head i owns the consecutive features "
        "i·d .. (i+1)·d - 1 of Q and of K (view as (B, T, n_head, d), as split_heads does)":
            wrong(layout="interleaved") if block.attn.n_head > 1 else None,
        "the keys come from the last third of qkv_proj's output, the values; its features are "
        "Q, then K, then V": wrong(key_part=2),
        "that is the average of all heads' maps; return the map of head `head` only":
            wrong(average=True) if block.attn.n_head > 1 else None,
        "the rotary positions are missing: this model rotates q and k by their positions "
        "(block.attn.rotary is not None) before the scores, the R of eq. (12.1)":
            wrong(rotary="none") if rotary else None,
        "only the queries are rotated; RoPE rotates q and k alike, so that the score depends "
        "on their offset": wrong(rotary="q") if rotary else None,
        "only the keys are rotated; RoPE rotates q and k alike, so that the score depends on "
        "their offset": wrong(rotary="k") if rotary else None,
    }


# ---------------------------------------------------------------------------------------------
# Exercise 2: the logit lens for one layer (eq. 12.2)

# (what the model is, its config overrides, which layers' streams to read)
LENS_CASES = [
    ("tied weights, learned positions", {}, (0, 1, 2)),
    ("an untied output head (tie_weights=False)", {"tie_weights": False}, (1, 2)),
    ("rotary positions", {"pos_encoding": "rope"}, (0,)),
]


def check_lens_logits(lens_logits) -> None:
    """lens_logits(model, h) == the model's readout of the stream h: LN_f(h), then the head."""
    cases = []
    for number, (about, config, layers) in enumerate(LENS_CASES):
        cases += _lens_cases(lens_logits, 20 + number, about, config, layers, (2, 6))
    _judge(cases, rtol=1e-4, atol=1e-4)
    seed = fresh_seed()
    with fresh_case(seed) as generator:  # a model and a stream no one knew in advance
        tied = bool(_fresh_int(generator, 0, 2))
        about = "tied weights" if tied else "an untied output head (tie_weights=False)"
        shape = (_fresh_int(generator, 1, 4), _fresh_int(generator, 1, 12))
        _judge(_lens_cases(lens_logits, seed, about, {"tie_weights": tied},
                           (_fresh_int(generator, 0, 3),), shape), rtol=1e-4, atol=1e-4)
    passed("lens_logits")


def _lens_cases(lens_logits, seed, about, config, layers, shape) -> list[tuple]:
    """(what, answer, expected, mistakes) for the stream of each of `layers`."""
    from minigpt.interpret import logit_lens, residual_stream

    model = random_gpt(seed=seed, **config)
    idx = _seeded_ids(*shape, seed=10 + seed)
    states, lens = residual_stream(model, idx), logit_lens(model, idx)
    cases = []
    with torch.no_grad():
        own_logits = model(idx)[0]
        for layer in layers:
            h = states[layer]  # (B, T, C) after `layer` blocks (0: the embedding)
            expected = lens[layer]  # (B, T, V)
            reference = F.layer_norm(h, (N_EMBD,), model.ln_f.weight, model.ln_f.bias,
                                     model.ln_f.eps) @ model.lm_head.weight.T
            torch.testing.assert_close(reference, expected)
            if layer == model.config.n_layer:
                torch.testing.assert_close(expected, own_logits)  # the model's own output
            answer = _run_matmul(lens_logits, model, h.clone())
            where = ("the embedding's output (before any block)" if layer == 0 else
                     f"after block {layer - 1} (residual_stream(model, idx)[{layer}])")
            what = f"lens_logits(model, h) for a model with {about}, h {where}"
            cases.append((what, as_tensor(answer, what), expected, _lens_mistakes(model, h)))
    return cases


def _lens_mistakes(model, h) -> dict:
    head, E, ln_f = model.lm_head, model.token_emb.weight, model.ln_f
    logits = head(ln_f(h))
    return {
        "the final layer norm LN_f is missing: the head reads LN_f(h) (eq. 12.2), and without "
        "it the readout sees the stream at whatever scale that layer left it":
            head(h),
        "you read out through the token embedding E, but this model's output head is untied "
        "(tie_weights=False): the lens uses the model's own readout, model.lm_head (eq. 7.3)":
            ln_f(h) @ E.T if head.weight is not E else None,
        "the normalisation has no gain and bias: use the final layer norm's own γ and β "
        "(call model.ln_f)": head(F.layer_norm(h, (h.size(-1),))),
        "you normalised with the last block's ln_2; the readout's layer norm is model.ln_f":
            head(model.blocks[-1].ln_2(h)),
        "LN_f is applied twice: read out model.lm_head(model.ln_f(h)) once": head(ln_f(ln_f(h))),
        "that is the softmax of the lens, probabilities; return the logits":
            torch.softmax(logits, dim=-1),
        "that is the log-softmax of the lens, log-probabilities; return the logits":
            torch.log_softmax(logits, dim=-1),
    }


# ---------------------------------------------------------------------------------------------
# Exercise 3: log p(completion | prompt) (eq. 12.4)

COMPLETION_CASES = [("The copy is", " new."), ("a", "b"), ("x = 1\n", "y = 2"),
                    ("Return the sorted ", "list")]  # the last fills the context exactly


def check_completion_logprob(completion_logprob) -> None:
    """completion_logprob(model, prompt_ids, completion_ids) == Σ_t log p(y_t | prompt, y_<t)."""
    from minigpt.interpret import completion_logprob as package_logprob
    from minigpt.tokenizer import ByteTokenizer

    model, tokenizer = random_gpt(seed=40), ByteTokenizer()
    answers, tables = [], []
    for prompt, completion in COMPLETION_CASES:
        prompt_ids, completion_ids = tokenizer.encode(prompt), tokenizer.encode(completion)
        assert len(prompt_ids) + len(completion_ids) <= BLOCK_SIZE
        expected = package_logprob(model, tokenizer, prompt, completion)
        assert math.isclose(expected, _by_cross_entropy(model, prompt_ids, completion_ids),
                            rel_tol=1e-5, abs_tol=1e-5)
        what = f"completion_logprob for prompt {prompt!r} and completion {completion!r}"
        with torch.no_grad():
            answer = call(completion_logprob, model, list(prompt_ids), list(completion_ids))
        answers.append(as_number(answer, what))
        tables.append(_logprob_mistakes(model, prompt_ids, completion_ids))
    for (prompt, completion), answer in zip(COMPLETION_CASES, answers, strict=True):
        expected = package_logprob(model, tokenizer, prompt, completion)
        if math.isclose(answer, expected, rel_tol=1e-4, abs_tol=1e-4):
            continue
        what = f"completion_logprob for prompt {prompt!r} and completion {completion!r}"
        diagnosis = diagnose_all(answers, tables, rtol=1e-4, atol=1e-4)
        raise CheckFailed(f"{what} is {answer:.4f}, expected {expected:.4f}" + (
            f": {diagnosis}" if diagnosis else ": feed prompt + completion (without its last "
            "token), take the log-softmax, and add up log p of each completion token at the "
            "position just before it (eq. 12.4)"))
    seed = fresh_seed()
    with fresh_case(seed) as generator:  # a model, a prompt and a completion no one knew before
        model = random_gpt(seed=seed)
        n_prompt = _fresh_int(generator, 1, BLOCK_SIZE - 1)
        prompt = "".join(chr(_fresh_int(generator, 32, 127)) for _ in range(n_prompt))
        completion = "".join(chr(_fresh_int(generator, 32, 127))
                             for _ in range(_fresh_int(generator, 1, BLOCK_SIZE - n_prompt + 1)))
        expected = package_logprob(model, tokenizer, prompt, completion)
        what = f"completion_logprob for prompt {prompt!r} and completion {completion!r}"
        with torch.no_grad():
            answer = as_number(call(completion_logprob, model, tokenizer.encode(prompt),
                                    tokenizer.encode(completion)), what)
        require(math.isclose(answer, expected, rel_tol=1e-4, abs_tol=1e-4),
                f"{what} is {answer:.4f}, expected {expected:.4f}")
    passed("completion_logprob")


def _by_cross_entropy(model, prompt_ids, completion_ids) -> float:
    """An independent route: minus PyTorch's summed cross-entropy over the completion."""
    ids = prompt_ids + completion_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]))[0][0]  # (T - 1, V): position t predicts t + 1
    m = len(completion_ids)
    return -F.cross_entropy(logits[-m:], torch.tensor(ids[-m:]), reduction="sum").item()


def _logprob_mistakes(model, prompt_ids, completion_ids) -> dict:
    ids, m, n_prompt = prompt_ids + completion_ids, len(completion_ids), len(prompt_ids)
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]))[0][0]  # (T - 1, V): row t predicts ids[t + 1]
        all_logits = model(torch.tensor([ids]))[0][0]  # (T, V): fed the last token too
        alone = model(torch.tensor([completion_ids]))[0][0] if m > 1 else None
    targets = torch.tensor(ids[1:])
    logp = logits.log_softmax(-1).gather(1, targets[:, None])[:, 0]  # (T - 1,)
    right = logp[-m:].sum().item()
    self_scored = all_logits.log_softmax(-1)[n_prompt:].gather(
        1, torch.tensor(completion_ids)[:, None]).sum().item()
    early = (logits.log_softmax(-1)[n_prompt - 2:n_prompt - 2 + m].gather(
        1, torch.tensor(completion_ids)[:, None]).sum().item() if n_prompt >= 2 else None)
    from_prompt = logits.log_softmax(-1)[n_prompt - 1, completion_ids].sum().item()
    return {
        "the logits are scored against the wrong tokens: the logits at position t predict "
        "token t + 1, but you scored them against token t itself. Feed ids[:-1] and compare "
        "row t with ids[t + 1]": self_scored,
        "the logits are one position too early: completion token y_j is predicted by the "
        "row just before it (position of y_j minus 1), not two before": early,
        "the prompt's tokens are scored too; eq. (12.4) sums over the completion's tokens "
        "only, with the prompt as the condition": logp.sum().item(),
        "the log-softmax is missing: you added up raw logits, which are not log-probabilities "
        "(take log_softmax over the vocabulary first)":
            logits[-m:].gather(1, targets[-m:, None]).sum().item(),
        "you added up probabilities; eq. (12.4) adds log-probabilities (the log of the "
        "product of the chain rule)": logp[-m:].exp().sum().item(),
        "you averaged over the completion's tokens; eq. (12.4) is their sum": right / m
        if m > 1 else None,
        "the sign is flipped: that is the negative log-likelihood; log p is ≤ 0": -right,
        "that is in bits (log base 2); the course measures in nats (natural log)":
            right / math.log(2),
        "every completion token was scored by the distribution after the prompt alone; feed "
        "the completion too, so that y_j is conditioned on y_<j as well (teacher forcing)":
            from_prompt if m > 1 else None,
        "the completion was scored without the prompt in front of it: log p(completion | "
        "prompt) conditions every token on the prompt": alone.log_softmax(-1)[:-1].gather(
            1, torch.tensor(completion_ids[1:])[:, None]).sum().item() if m > 1 else None,
    }


# ---------------------------------------------------------------------------------------------
# Exercise 4: a linear probe against the majority baseline (eq. 12.3)


def _probe_data(seed: int, n_classes: int, dim: int, train_counts, test_counts, spread: float):
    """Gaussian clouds around one random centre per class (spread 0: labels unrelated to x)."""
    generator = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(n_classes, dim, generator=generator)

    def draw(counts):
        y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
        y = y[torch.randperm(len(y), generator=generator)]
        x = spread * centres[y] + torch.randn(len(y), dim, generator=generator) + 2.0
        return x, y

    return (*draw(train_counts), *draw(test_counts))


# (what, seed, classes, features, train counts per class, test counts per class, spread)
PROBE_CASES = [
    ("a property that is linearly readable (3 classes)", 0, 3, 8, (70, 50, 30), (15, 25, 20),
     0.4),
    ("labels unrelated to the features (2 classes, 32 features, 48 training examples)", 1, 2,
     32, (26, 22), (23, 25), 0.0),
]


def check_probe(probe_accuracy) -> None:
    """probe_accuracy(train_x, train_y, test_x, test_y) -> (test accuracy, majority baseline)."""
    for about, seed, n_classes, dim, train_counts, test_counts, spread in PROBE_CASES:
        _check_probe_case(probe_accuracy, about, seed, n_classes, dim, train_counts,
                          test_counts, spread, asserted=True)
    seed = fresh_seed()
    with fresh_case(seed) as generator:  # data no one knew in advance, readable and not
        def counts(n_classes, low, high):
            return tuple(torch.randint(low, high, (n_classes,), generator=generator).tolist())

        fixed_dims = {case[3] for case in PROBE_CASES}  # other shapes than the fixed cases'
        n_classes, dim = _fresh_int(generator, 2, 5), _fresh_int(generator, 9, 14)
        _check_probe_case(probe_accuracy, f"a property that is linearly readable ({n_classes} "
                          f"classes, {dim} features, drawn at random)", seed, n_classes, dim,
                          counts(n_classes, 20, 60), counts(n_classes, 10, 30), 1.0)
        dim = 32
        while dim in fixed_dims:
            dim = _fresh_int(generator, 24, 40)
        _check_probe_case(probe_accuracy, f"labels unrelated to the features (2 classes, {dim} "
                          "features, drawn at random)", seed + 1, 2, dim, counts(2, 20, 30),
                          counts(2, 60, 80), 0.0)
    passed("probe (test accuracy against the majority baseline)")


def _check_probe_case(probe_accuracy, about, seed, n_classes, dim, train_counts, test_counts,
                      spread, asserted=False) -> None:
    from minigpt.interpret import train_linear_probe

    train_x, train_y, test_x, test_y = _probe_data(seed, n_classes, dim, train_counts,
                                                   test_counts, spread)
    baseline = (test_y == train_y.bincount().argmax()).float().mean().item()
    reference = _lbfgs_probe(train_x, train_y, test_x, test_y)
    readable = spread > 0
    if asserted:  # the fixed cases: the package and an independent probe agree on them
        with torch.random.fork_rng(devices=[]):  # the probe's initialisation draws numbers
            package = train_linear_probe(torch.cat([train_x, test_x]),
                                         torch.cat([train_y, test_y]))["test_accuracy"]
        assert min(reference, package) > 0.9 if readable else max(reference, package) < 0.75
    what = f"probe_accuracy on {about}"
    result = call(probe_accuracy, train_x.clone(), train_y.clone(), test_x.clone(),
                  test_y.clone())
    require(isinstance(result, tuple | list) and len(result) == 2,
            f"{what} should return two numbers, (test_accuracy, majority_baseline), got "
            f"{type(result).__name__}")
    accuracy = as_number(result[0], f"the test accuracy of {what}")
    majority = as_number(result[1], f"the majority baseline of {what}")
    _check_baseline(majority, baseline, train_y, test_y, n_classes, what)
    _check_accuracy(accuracy, reference, baseline, readable, what)


def _lbfgs_probe(train_x, train_y, test_x, test_y) -> float:
    """An independent probe: logistic regression fitted by full-batch L-BFGS."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        probe = torch.nn.Linear(train_x.size(1), int(train_y.max()) + 1)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=100)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(probe((train_x - mean) / std), train_y)
        loss = loss + 1e-3 * probe.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return (probe((test_x - mean) / std).argmax(-1) == test_y).float().mean().item()


def _check_baseline(majority, baseline, train_y, test_y, n_classes, what: str) -> None:
    if math.isclose(majority, baseline, abs_tol=1e-6):
        return
    test_majority = test_y.bincount(minlength=n_classes).max().item() / len(test_y)
    everything = torch.cat([train_y, test_y])
    mistakes = {
        "the majority class was chosen on the test labels, which peeks at the answers; choose "
        "it on the training labels, then measure how often it is right on the test set":
            test_majority,
        "that is the majority class's share of the *training* labels; the baseline is its "
        "share of the test labels (the accuracy of always guessing it there)":
            train_y.bincount().max().item() / len(train_y),
        "that is 1 / (number of classes), a uniform guess; the baseline is the accuracy of "
        "always guessing the training set's most frequent class": 1 / n_classes,
        "that is the majority class itself (its id); return the accuracy of guessing it":
            float(train_y.bincount().argmax().item()),
        "the majority was counted over training and test labels together; count it on the "
        "training labels only, and measure it on the test labels":
            everything.bincount().max().item() / len(everything),
        "that is a percentage; return a fraction between 0 and 1": 100 * baseline,
    }
    diagnosis = next((message for message, value in mistakes.items()
                      if value != baseline and math.isclose(majority, value, abs_tol=1e-6)),
                     None)
    raise CheckFailed(f"the majority baseline of {what} is {majority:.4f}, expected "
                      f"{baseline:.4f}: " + (diagnosis or "always guess the most frequent "
                                                          "class of the training labels, and "
                                                          "report how often that is right on "
                                                          "the test labels"))


def _check_accuracy(accuracy, reference, baseline, readable, what: str) -> None:
    require(0 <= accuracy <= 1, f"the test accuracy of {what} is {accuracy:.4g}: return a "
                                "fraction between 0 and 1" + (" (not a percentage)"
                                                              if accuracy > 1 else ""))
    if readable:
        require(not math.isclose(accuracy, baseline, abs_tol=1e-6),
                f"the test accuracy of {what} equals the majority baseline, {baseline:.3f}: "
                "the probe predicts one class for everything. Is it trained? (Standardise the "
                "features, run enough steps, check the learning rate.)")
        require(accuracy >= reference - 0.1,
                f"the test accuracy of {what} is {accuracy:.3f}, but a logistic regression "
                f"reaches {reference:.3f} on these examples: train the probe longer, or "
                "standardise the features with the training mean and std")
        return
    require(accuracy < 0.85,
            f"the test accuracy of {what} is {accuracy:.3f} — near perfect on labels that are "
            "unrelated to the features. That is the accuracy on the training examples (a probe "
            "with this many features can memorise them), or the test examples leaked into "
            "training; score the probe on test_x and test_y, which it has never seen")
    require(accuracy <= baseline + 0.25,
            f"the test accuracy of {what} is {accuracy:.3f}, far above the majority baseline "
            f"{baseline:.3f} on labels unrelated to the features: is the probe scored on "
            "examples it was trained on?")


# ---------------------------------------------------------------------------------------------
# Exercise 5: knock out one head and measure the damage (notebook section 4)

KNOCKOUT_CASES = [(0, 1), (1, 3), (1, 0)]  # (layer, head)


def check_knockout(knockout_increase) -> None:
    """knockout_increase(model, idx, targets, layer, head) == loss(head silenced) - loss."""
    model = random_gpt(seed=50, n_head=4)
    idx, targets = _seeded_ids(2, 12, seed=51), _seeded_ids(2, 12, seed=52)
    answers, tables, expected_values = [], [], []
    for layer, head in KNOCKOUT_CASES:
        answer, expected = _knockout_case(knockout_increase, model, idx, targets, layer, head)
        answers.append(answer)
        tables.append(_knockout_mistakes(model, idx, targets, layer, head))
        expected_values.append(expected)
    for (layer, head), answer, expected in zip(KNOCKOUT_CASES, answers, expected_values,
                                               strict=True):
        if math.isclose(answer, expected, rel_tol=1e-4, abs_tol=1e-5):
            continue
        diagnosis = diagnose_all(answers, tables, rtol=1e-4, atol=1e-5)
        raise CheckFailed(
            f"knockout_increase(..., layer={layer}, head={head}) is {answer:.5f}, expected "
            f"{expected:.5f}" + (f": {diagnosis}" if diagnosis else ": zero the head's slice "
                                 "of the attention output (the columns h·d .. (h+1)·d - 1 of "
                                 "out_proj.weight), measure the loss, subtract the loss of the "
                                 "intact model"))
    seed = fresh_seed()
    with fresh_case(seed) as generator:  # a model, tokens and a head no one knew in advance
        n_head = (2, 4, 8)[_fresh_int(generator, 0, 3)]
        model = random_gpt(seed=seed, n_head=n_head)
        shape = (_fresh_int(generator, 1, 4), _fresh_int(generator, 2, BLOCK_SIZE + 1))
        idx, targets = _seeded_ids(*shape, seed=seed + 1), _seeded_ids(*shape, seed=seed + 2)
        layer, head = _fresh_int(generator, 0, 2), _fresh_int(generator, 0, n_head)
        answer, expected = _knockout_case(knockout_increase, model, idx, targets, layer, head)
        require(math.isclose(answer, expected, rel_tol=1e-4, abs_tol=1e-5),
                f"knockout_increase(..., layer={layer}, head={head}) in a model with {n_head} "
                f"heads is {answer:.5f}, expected {expected:.5f}")
    passed("knockout_increase")


def _knockout_case(knockout_increase, model, idx, targets, layer, head):
    """(the learner's answer, the expected increase) for silencing one head."""
    before = {name: t.clone() for name, t in model.state_dict().items()}
    expected = _silenced_loss(model, idx, targets, layer, head) - _loss(model, idx, targets)
    torch.testing.assert_close(expected, _zeroed_columns_loss(model, idx, targets, layer, head)
                               - _loss(model, idx, targets))
    what = f"knockout_increase(model, idx, targets, layer={layer}, head={head})"
    answer = _call_knockout(knockout_increase, model, idx, targets, layer, head, what)
    _require_restored(model, before, what)
    return as_number(answer, what), expected


def _call_knockout(knockout_increase, model, idx, targets, layer, head, what):
    try:
        return call(knockout_increase, model, idx.clone(), targets.clone(), layer, head)
    except RuntimeError as error:
        if "leaf Variable that requires grad" in str(error):
            raise CheckFailed(f"{what} failed: PyTorch refuses to edit a parameter in place "
                              "while it tracks gradients; make the edit (and its undo) inside "
                              "`with torch.no_grad():`") from None
        raise


def _require_restored(model, before: dict, what: str) -> None:
    changed = [name for name, t in model.state_dict().items() if not torch.equal(t, before[name])]
    if changed:
        with torch.no_grad():  # put the model back, so the next attempt starts clean
            for name, t in model.state_dict().items():
                t.copy_(before[name])
    require(not changed, f"{what} left the model changed ({', '.join(changed)}): after measuring, "
                         "put the weights back (clone the slice before zeroing it, copy it back "
                         "in a `finally:`), or every later measurement sees a damaged model")


def _loss(model, idx, targets) -> float:
    with torch.no_grad():
        return model(idx, targets)[1].item()


def _silenced_loss(model, idx, targets, layer, head) -> float:
    """The head's output zeroed by a hook on the input of the output projection."""
    d = N_EMBD // model.config.n_head

    def silence(module, args):
        (x,) = args
        x = x.clone()
        x[..., head * d:(head + 1) * d] = 0  # Concat(head_1..head_h): this head's slice
        return (x,)

    hook = model.blocks[layer].attn.out_proj.register_forward_pre_hook(silence)
    try:
        return _loss(model, idx, targets)
    finally:
        hook.remove()


def _edited_loss(model, idx, targets, edit) -> float:
    """The loss of a copy of the model after `edit(copy)` (under no_grad)."""
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edit(edited)
    return _loss(edited, idx, targets)


def _zeroed_columns_loss(model, idx, targets, layer, head) -> float:
    d = N_EMBD // model.config.n_head

    def edit(m):
        m.blocks[layer].attn.out_proj.weight[:, head * d:(head + 1) * d] = 0

    return _edited_loss(model, idx, targets, edit)


def _knockout_mistakes(model, idx, targets, layer, head) -> dict:
    n_head, C = model.config.n_head, N_EMBD
    d, base = C // n_head, _loss(model, idx, targets)
    right = _silenced_loss(model, idx, targets, layer, head) - base
    block_slice = slice(head * d, (head + 1) * d)

    def increase(edit, at=layer):
        return _edited_loss(model, idx, targets, lambda m: edit(m.blocks[at].attn)) - base

    def rows(attn):
        attn.out_proj.weight[block_slice, :] = 0

    def interleaved(attn):
        attn.out_proj.weight[:, head::n_head] = 0

    def value_weights(attn):
        attn.qkv_proj.weight[2 * C + head * d:2 * C + (head + 1) * d, :] = 0

    def queries(attn):
        attn.qkv_proj.weight[head * d:(head + 1) * d, :] = 0
        attn.qkv_proj.bias[head * d:(head + 1) * d] = 0

    def whole_layer(attn):
        attn.out_proj.weight[:] = 0

    def with_bias(attn):
        attn.out_proj.weight[:, block_slice] = 0
        attn.out_proj.bias[:] = 0

    def columns(attn):
        attn.out_proj.weight[:, block_slice] = 0

    n_layer = model.config.n_layer
    return {
        "you zeroed rows of out_proj.weight, which silences some *output features* of the "
        "whole layer; the head is a slice of the projection's *input*: zero the columns "
        "h·d .. (h+1)·d - 1 (nn.Linear's weight is (out, in))": increase(rows),
        "you zeroed every n_head-th column (head::n_head); head h owns the consecutive "
        "columns h·d .. (h+1)·d - 1": increase(interleaved),
        "you zeroed the head's value weights, but its value bias still flows through (the "
        "weights sum to 1, so the head outputs its bias): zero its slice of out_proj's input "
        "instead": increase(value_weights),
        "you zeroed the head's queries: then it attends evenly over the past instead of "
        "falling silent. Zero its output, the head's slice of out_proj's input":
            increase(queries),
        "you knocked out the whole layer's attention (every head); silence only head `head`":
            increase(whole_layer),
        "you also zeroed out_proj's bias, which belongs to no single head; zero only the "
        "head's columns": increase(with_bias),
        "that is the loss with the head knocked out; return the *increase*, minus the loss of "
        "the intact model": right + base,
        "the sign is flipped: return loss(knocked out) - loss(intact), the damage": -right,
        "that is the ratio of the two losses; return their difference":
            (right + base) / base,
        "you knocked out that head in the layer after `layer`; model.blocks[layer] counts "
        "from 0": increase(columns, layer + 1) if layer + 1 < n_layer else None,
        "you knocked out that head in the layer before `layer`; model.blocks[layer] counts "
        "from 0": increase(columns, layer - 1) if layer >= 1 else None,
    }
