"""Tests for minigpt.generate: KV-cache decoding, greedy and sampled decoding, top-k, top-p."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minigpt import GPT, GPTConfig
from minigpt.generate import _next_logits, apply_top_k, apply_top_p, generate, sample_next_token

# Tiny models run as fast on one thread, and far faster when the machine is shared.
pytestmark = pytest.mark.usefixtures("one_thread")

V = 48
BLOCK = 8


def make_model(seed=0, **kw):
    torch.manual_seed(seed)
    base = dict(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=2, n_embd=16)
    model = GPT(GPTConfig(**{**base, **kw}))
    with torch.no_grad():  # larger weights than the init: peaked, varied next-token choices
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10)
    return model.eval()


CONFIGS = [
    dict(pos_encoding=pe, norm_position=norm)
    for pe in ("learned", "sinusoidal", "rope", "none")
    for norm in ("pre", "post")
]


def config_id(c):
    return f"{c['pos_encoding']}-{c['norm_position']}"


# ------------------------------------------------------------------ KV cache == no cache


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
@pytest.mark.parametrize("prompt_len", [3, BLOCK, BLOCK + 5])  # shorter, equal, longer
def test_cache_and_no_cache_give_the_same_tokens(config, prompt_len):
    model = make_model(**config)
    idx = torch.randint(0, V, (2, prompt_len), generator=torch.Generator().manual_seed(1))
    steps = 2 * BLOCK + 3  # runs well past block_size
    with_cache = generate(model, idx, steps, temperature=0, use_cache=True)
    without = generate(model, idx, steps, temperature=0, use_cache=False)
    assert with_cache.shape == (2, prompt_len + steps)
    assert torch.equal(with_cache[:, :prompt_len], idx)
    assert torch.equal(with_cache, without)
    # Greedy decoding of a random model soon repeats one token; seeded sampling walks through
    # varied contexts, and the two paths draw the same tokens when their logits agree.
    sampled = [
        generate(model, idx, steps, temperature=1.5, use_cache=cache,
                 generator=torch.Generator().manual_seed(7))
        for cache in (True, False)
    ]
    assert torch.equal(sampled[0], sampled[1])
    assert all(sampled[0][r, prompt_len:].unique().numel() > 5 for r in range(2))


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_cached_step_logits_equal_a_full_forward(config):
    """Replay generation through `_next_logits` with caches and compare every step's logits
    with a plain forward pass over the same window of at most block_size tokens."""
    model = make_model(**config)
    prompt_len = 5
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, V, (2, prompt_len + 2 * BLOCK), generator=g)
    caches = model.new_kv_caches(2)
    incremental_steps = 0
    with torch.no_grad():
        for end in range(prompt_len, tokens.size(1) + 1):
            idx = tokens[:, :end]
            before = caches[0].length
            cached = _next_logits(model, idx, caches, BLOCK)
            if caches[0].length == before + 1:
                incremental_steps += 1
            full = model(idx[:, -BLOCK:])[0][:, -1]
            torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)
    # positions 6..8 are fed one at a time; after that the window is recomputed
    assert incremental_steps == BLOCK - prompt_len


def test_cache_is_used_incrementally_until_the_context_is_full():
    model = make_model()
    fed = []
    original = model.hidden_states

    def spy(idx, kv_caches=None):
        fed.append(idx.size(1))
        return original(idx, kv_caches)

    model.hidden_states = spy
    generate(model, torch.zeros(1, 3, dtype=torch.long), 8, temperature=0)
    # the prompt (3), then one token at a time up to 8 in context, then full windows of 8
    assert fed == [3, 1, 1, 1, 1, 1, 8, 8]


# ------------------------------------------------------------------ decoding rules


def test_temperature_zero_is_argmax_of_the_model():
    model = make_model()
    idx = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(4))
    out = generate(model, idx, 12, temperature=0)
    with torch.no_grad():
        for t in range(3, out.size(1)):
            logits = model(out[:, max(0, t - BLOCK) : t])[0][:, -1]
            assert torch.equal(out[:, t], logits.argmax(-1))
    logits = torch.randn(4, V)
    assert torch.equal(sample_next_token(logits, temperature=0), logits.argmax(-1, keepdim=True))


def test_seeded_sampling_is_reproducible():
    model = make_model()
    idx = torch.zeros(2, 1, dtype=torch.long)

    def run(seed):
        return model.generate(idx, 30, top_k=20, top_p=0.95,
                              generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(11), run(11))
    assert not torch.equal(run(11), run(12))


def test_sampling_follows_the_tempered_top_k_distribution():
    """Draw many tokens from fixed logits: only the top k appear, with frequencies
    softmax(z/τ) renormalised over them (checked to 4 binomial standard errors)."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, 3.0]]).expand(20000, 6)
    temperature, k = 0.7, 3
    draws = sample_next_token(logits, temperature, top_k=k,
                              generator=torch.Generator().manual_seed(0)).squeeze(1)
    z = [2.0, 1.0, 0.5, 0.0, -1.0, 3.0]
    top = sorted(range(6), key=lambda i: -z[i])[:k]  # tokens 5, 0, 1
    weights = {i: math.exp(z[i] / temperature) for i in top}
    total = sum(weights.values())
    counts = torch.bincount(draws, minlength=6)
    for i in range(6):
        p = weights.get(i, 0.0) / total
        freq = counts[i].item() / len(draws)
        assert abs(freq - p) <= 4 * math.sqrt(p * (1 - p) / len(draws)) + 1e-12, (i, freq, p)


@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 4),
    vocab=st.integers(1, 30),
    k=st.integers(1, 35),
    seed=st.integers(0, 2**31 - 1),
)
def test_top_k_keeps_exactly_k(rows, vocab, k, seed):
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed))
    filtered = apply_top_k(logits, k)
    kept = torch.isfinite(filtered)
    assert (kept.sum(-1) == min(k, vocab)).all()
    for r in range(rows):
        values = logits[r].tolist()
        largest = sorted(range(vocab), key=lambda i: -values[i])[: min(k, vocab)]
        assert set(kept[r].nonzero().flatten().tolist()) == set(largest)
    assert torch.equal(filtered[kept], logits[kept])  # kept logits are unchanged
    assert (filtered[~kept] == -math.inf).all()


def brute_force_top_p(logits_row, p):
    """The smallest set of most probable tokens whose probability sums to at least p."""
    probs = torch.softmax(logits_row.double(), -1).tolist()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, total = set(), 0.0
    for i in order:
        kept.add(i)
        total += probs[i]
        if total >= p:
            break
    return kept, probs


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 3),
    vocab=st.integers(1, 20),
    p=st.floats(0.01, 0.999),
    spread=st.floats(0.1, 5.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_top_p_keeps_the_smallest_set_reaching_p(rows, vocab, p, spread, seed):
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.float64) * spread
    filtered = apply_top_p(logits, p)
    for r in range(rows):
        expected, probs = brute_force_top_p(logits[r], p)
        # stay away from ties and from partial sums within rounding of p
        ordered = sorted(probs, reverse=True)
        assume(all(abs(a - b) > 1e-9 for a, b in zip(ordered, ordered[1:], strict=False)))
        assume(all(abs(sum(ordered[: j + 1]) - p) > 1e-9 for j in range(vocab)))
        kept = set(torch.isfinite(filtered[r]).nonzero().flatten().tolist())
        assert kept == expected
        kept_mass = sum(probs[i] for i in kept)
        assert kept_mass >= p
        smallest = min(probs[i] for i in kept)
        assert kept_mass - smallest < p  # dropping any kept token falls short of p
    kept = torch.isfinite(filtered)
    assert torch.equal(filtered[kept], logits[kept])


def test_top_p_one_token_and_degenerate_cases():
    logits = torch.tensor([[5.0, 1.0, 0.0, -2.0]])
    assert torch.isfinite(apply_top_p(logits, 0.5)).sum() == 1  # the top token alone has > 0.5
    assert torch.isfinite(apply_top_p(logits, 1.0)).all()
    # four equal probabilities of exactly 1/4: two tokens reach p = 1/2 exactly, and suffice
    assert torch.isfinite(apply_top_p(torch.zeros(1, 4), 0.5)).sum() == 2
    assert torch.isfinite(apply_top_p(torch.zeros(1, 4), 0.5 + 1e-6)).sum() == 3
    tokens = sample_next_token(logits.expand(50, 4), top_p=0.5,
                               generator=torch.Generator().manual_seed(0))
    assert (tokens == 0).all()
    tokens = sample_next_token(logits.expand(50, 4), top_k=1,
                               generator=torch.Generator().manual_seed(0))
    assert (tokens == 0).all()


# ------------------------------------------------------------------ end of text


def first_index(row, token):
    hits = (row == token).nonzero()
    return int(hits[0]) if len(hits) else None


@pytest.mark.parametrize("use_cache", [True, False])
def test_eos_stops_early_and_pads(use_cache):
    model = make_model()
    prompt_len, steps = 2, 15
    idx = torch.randint(0, V, (3, prompt_len), generator=torch.Generator().manual_seed(5))
    free = generate(model, idx, steps, temperature=0, use_cache=use_cache)
    eos = int(free[0, prompt_len + 2])  # the third token row 0 produces
    out = generate(model, idx, steps, temperature=0, eos_token=eos, use_cache=use_cache)
    stops = [first_index(free[r, prompt_len:], eos) for r in range(3)]
    if all(s is not None for s in stops):
        assert out.size(1) == prompt_len + max(stops) + 1  # stopped once every row had eos
    else:
        assert out.size(1) == prompt_len + steps
    for r, stop in enumerate(stops):
        generated = out[r, prompt_len:]
        if stop is None:
            assert torch.equal(generated, free[r, prompt_len : out.size(1)])
        else:
            assert torch.equal(generated[: stop + 1], free[r, prompt_len : prompt_len + stop + 1])
            assert (generated[stop:] == eos).all()  # padded with eos after it

    single = generate(model, idx[:1], steps, temperature=0, eos_token=eos, use_cache=use_cache)
    stop = first_index(free[0, prompt_len:], eos)
    assert stop is not None and stop <= 2
    assert single.size(1) == prompt_len + stop + 1  # one row: stops at its first eos


# ------------------------------------------------------------------ arguments and modes


@pytest.mark.parametrize(
    "idx, kwargs, message",
    [
        (torch.zeros(1, 2).long(), dict(temperature=-0.5), "temperature"),
        (torch.zeros(1, 2).long(), dict(top_p=0.0), "top_p"),
        (torch.zeros(1, 2).long(), dict(top_p=1.5), "top_p"),
        (torch.zeros(1, 2).long(), dict(top_k=0), "top_k"),
        (torch.zeros(1, 2).long(), dict(top_k=-3), "top_k"),
        (torch.zeros(1, 2).long(), dict(max_new_tokens=-1), "max_new_tokens"),
        (torch.zeros(1, 2).long(), dict(eos_token=V), "eos_token"),
        (torch.zeros(1, 0).long(), dict(), "empty"),
        (torch.zeros(3).long(), dict(), r"idx\[None\]"),
    ],
)
def test_bad_arguments_are_refused(idx, kwargs, message):
    model = make_model()
    kwargs = {"max_new_tokens": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(model, idx, **kwargs)


@pytest.mark.parametrize("training", [True, False])
def test_generate_restores_the_mode_and_runs_in_eval(training):
    model = make_model(dropout=0.5)
    model.train(training)
    idx = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(6))
    a = model.generate(idx, 10, temperature=0)
    b = model.generate(idx, 10, temperature=0, use_cache=False)
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    assert torch.equal(a, b)  # dropout off inside generate, or these would differ


def test_generate_does_not_track_gradients():
    model = make_model()
    out = model.generate(torch.zeros(1, 1, dtype=torch.long), 3)
    assert not out.requires_grad and out.dtype == torch.long
    assert generate(model, torch.zeros(1, 1, dtype=torch.long), 0).shape == (1, 1)


# ------------------------------------------------------------------ text in, text out


def test_generate_text_continues_the_prompt_reproducibly():
    from minigpt.generate import generate_text
    from minigpt.tokenizer import ByteTokenizer

    tokenizer = ByteTokenizer()
    model = make_model(vocab_size=260, block_size=16)  # 4 ids the tokenizer cannot decode
    with torch.no_grad():  # make those ids likely, so that the filter is exercised
        model.ln_f.bias.fill_(1.0)
        model.lm_head.weight[256:] += 0.2  # logits of ids ≥ 256 rise by 0.2·C = 3.2
    text = generate_text(model, tokenizer, "ab", 24, seed=3, temperature=1.0, top_k=None)
    assert text.startswith("ab")
    assert text == generate_text(model, tokenizer, "ab", 24, seed=3, temperature=1.0, top_k=None)
    # the same draws by hand: the prompt's bytes, a seeded generator, ids ≥ 256 left out
    ids = model.generate(torch.tensor([[97, 98]]), 24, temperature=1.0,
                         generator=torch.Generator().manual_seed(3))[0, 2:].tolist()
    assert any(i >= 256 for i in ids)
    assert text == "ab" + bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")
    # an empty prompt starts from a newline when the vocabulary has no end-of-text id
    empty = generate_text(model, tokenizer, "", 5, seed=0, temperature=1.0, top_k=None)
    ids = model.generate(torch.tensor([[10]]), 5, temperature=1.0,
                         generator=torch.Generator().manual_seed(0))[0, 1:].tolist()
    assert empty == bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def test_generate_text_can_stop_where_the_model_ends_its_document():
    from minigpt.generate import generate_text
    from minigpt.tokenizer import ByteTokenizer

    model = make_model(vocab_size=256, block_size=16)
    free = model.generate(torch.tensor([[97, 98]]), 12, temperature=1.0,
                          generator=torch.Generator().manual_seed(3))[0, 2:].tolist()
    tokenizer = ByteTokenizer()
    tokenizer.eot_token = free[4]  # pretend the fifth draw is end-of-text
    cut = free[:free.index(free[4])]
    text = generate_text(model, tokenizer, "ab", 12, seed=3, temperature=1.0, top_k=None,
                         stop_at_eot=True)
    assert text == "ab" + bytes(cut).decode("utf-8", errors="replace")
    kept = generate_text(model, tokenizer, "ab", 12, seed=3, temperature=1.0, top_k=None)
    assert kept == "ab" + bytes(free).decode("utf-8", errors="replace")


@pytest.mark.parametrize("setting, words", [
    ({"top_k": 2.5}, "top_k=2.5: must be a positive integer"),
    ({"top_k": True}, "top_k=True: must be a positive integer"),
    ({"temperature": float("nan")}, "temperature=nan: must be a finite number"),
    ({"temperature": float("inf")}, "temperature=inf: must be a finite number"),
])
def test_bad_sampling_arguments_are_named(setting, words):
    model = GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match=words):
        model.generate(torch.zeros(1, 1, dtype=torch.long), 2, **setting)


def test_a_tiny_temperature_is_greedy_not_nan():
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 30
    for temperature in (1e-45, 1e-30, 1e-8):
        drawn = sample_next_token(logits, temperature=temperature)
        assert torch.equal(drawn[:, 0], logits.argmax(dim=-1))
