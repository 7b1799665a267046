"""minigpt.interpret: attention maps, logit lens, probes and log-likelihoods."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from minigpt import GPT, GPTConfig
from minigpt.attention import causal_mask
from minigpt.interpret import (
    attention_maps,
    bias_probe,
    completion_logprob,
    logit_lens,
    residual_stream,
    train_linear_probe,
)
from minigpt.tokenizer import ByteTokenizer


@pytest.fixture
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=256, block_size=32, n_layer=3, n_head=2, n_embd=32)).eval()


def test_attention_maps_are_causal_distributions_and_flags_are_restored(model):
    idx = torch.randint(0, 256, (2, 12))
    maps = attention_maps(model, idx)
    assert maps.shape == (3, 2, 2, 12, 12)
    torch.testing.assert_close(maps.sum(-1), torch.ones(3, 2, 2, 12))
    assert (maps[..., ~causal_mask(12, 12)] == 0).all()
    assert not any(b.attn.record_weights for b in model.blocks)


def test_residual_stream_starts_at_the_embeddings(model):
    idx = torch.randint(0, 256, (1, 8))
    states = residual_stream(model, idx)
    assert states.shape == (4, 1, 8, 32)
    expected = model.token_emb(idx) + model.pos_enc(0, 8)
    torch.testing.assert_close(states[0], expected)


def test_logit_lens_last_layer_equals_model_logits(model):
    idx = torch.randint(0, 256, (2, 10))
    lens = logit_lens(model, idx)
    logits, _ = model(idx)
    assert lens.shape == (4, 2, 10, 256)
    torch.testing.assert_close(lens[-1], logits.detach())


def test_linear_probe_reads_a_linear_property_and_not_noise():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(400, 16, generator=generator)
    readable = (features[:, 3] - features[:, 7] > 0).long()
    noise = torch.randint(0, 2, (400,), generator=generator)
    good = train_linear_probe(features, readable)
    bad = train_linear_probe(features, noise)
    assert good["test_accuracy"] > 0.9
    assert bad["test_accuracy"] < 0.7
    with pytest.raises(ValueError, match="features must be"):
        train_linear_probe(features, readable[:10])


def test_completion_logprob_is_the_sum_of_token_log_probabilities(model):
    tokenizer = ByteTokenizer()
    prompt, completion = "def f", "(x):"
    ids = tokenizer.encode(prompt + completion)
    logits, _ = model(torch.tensor([ids[:-1]]))
    logprobs = F.log_softmax(logits[0], dim=-1)
    n = len(completion)
    expected = sum(logprobs[len(ids) - 1 - n + i, ids[len(ids) - n + i]].item() for i in range(n))
    assert math.isclose(completion_logprob(model, tokenizer, prompt, completion), expected,
                        rel_tol=1e-5)


def test_bias_probe_fills_the_template_for_every_label(model):
    tokenizer = ByteTokenizer()
    table = bias_probe(model, tokenizer, "{} is", {"a": "Ann", "b": "Bob"}, [" x", " yz"])
    assert set(table) == {"a", "b"} and set(table["a"]) == {" x", " yz"}
    assert table["b"][" yz"] == pytest.approx(completion_logprob(model, tokenizer, "Bob is", " yz"))
    with pytest.raises(ValueError, match="template"):
        bias_probe(model, tokenizer, "no slot", {"a": "A"}, [" x"])


def test_tools_restore_training_mode_and_refuse_overlong_completions(model):
    tokenizer = ByteTokenizer()
    model.train()
    attention_maps(model, torch.randint(0, 256, (1, 8)))
    logit_lens(model, torch.randint(0, 256, (1, 8)))
    completion_logprob(model, tokenizer, "a", "b")
    assert model.training
    with pytest.raises(ValueError, match="completion has 40 tokens"):
        completion_logprob(model, tokenizer, "a", "x" * 40)
