"""Tests for minigpt.model: GPTConfig validation, the forward pass and loss, weight tying,
parameter and FLOP counts, initialisation, input checks, and save/load."""

import json
import math

import pytest
import torch

from minigpt import GPT, GPTConfig

# Tiny models run as fast on one thread, and far faster when the machine is shared.
pytestmark = pytest.mark.usefixtures("one_thread")


def small_config(**kw):
    base = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
    return GPTConfig(**{**base, **kw})


def param_count(V, P, C, L, hidden=None, bias=True, learned=True, tied=True):
    """Closed form of eq. (7.5), written independently of the model code."""
    H = hidden or 4 * C
    b = 1 if bias else 0
    attn = 3 * C * C + 3 * C * b + C * C + C * b
    mlp = C * H + H * b + H * C + C * b
    norms = 2 * (C + C * b)
    return V * C + (P * C if learned else 0) + L * (attn + mlp + norms) + C + C * b + (
        0 if tied else V * C
    )


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    "fields, names",
    [
        (dict(vocab_size=0), ["vocab_size"]),
        (dict(vocab_size=-5), ["vocab_size"]),
        (dict(vocab_size=10.0), ["vocab_size"]),
        (dict(block_size=-1), ["block_size"]),
        (dict(n_layer=0), ["n_layer"]),
        (dict(n_layer=True), ["n_layer"]),
        (dict(n_head=-2), ["n_head"]),
        (dict(n_embd=-8), ["n_embd"]),
        (dict(n_inner=0), ["n_inner"]),
        (dict(n_inner=-3), ["n_inner"]),
        (dict(n_inner=True), ["n_inner"]),
        (dict(n_embd=30, n_head=4), ["n_embd", "n_head"]),
        (dict(pos_encoding="alibi"), ["pos_encoding", "alibi"]),
        (dict(n_embd=24, n_head=8, pos_encoding="rope"), ["rope", "n_embd / n_head"]),
        (dict(n_embd=15, n_head=3, pos_encoding="sinusoidal"), ["sinusoidal", "n_embd"]),
        (dict(rope_base=0.0, pos_encoding="rope"), ["rope_base"]),
        (dict(dropout=-0.1), ["dropout"]),
        (dict(dropout=1.0), ["dropout"]),
        (dict(dropout=float("nan")), ["dropout"]),
        (dict(norm_position="middle"), ["norm_position"]),
        (dict(activation="relu"), ["activation"]),
        (dict(layer_norm_eps=0.0), ["layer_norm_eps"]),
    ],
)
def test_config_rejects_bad_fields(fields, names):
    with pytest.raises(ValueError) as info:
        small_config(**fields)
    for name in names:
        assert name in str(info.value)


def test_config_divisibility_message_suggests_a_head_count():
    # the divisors of 30 are 1, 2, 3, 5, 6, 10, 15, 30: 6 is the nearest to 7
    with pytest.raises(ValueError, match=r"pick e\.g\. n_head=6$"):
        GPTConfig(n_embd=30, n_head=7)


def test_config_from_dict_rejects_unknown_fields_and_round_trips():
    with pytest.raises(ValueError, match="n_embed"):
        GPTConfig.from_dict({"n_embed": 32})
    config = small_config(n_inner=50, pos_encoding="rope", norm_position="post")
    assert GPTConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="dropout"):  # from_dict validates like the constructor
        GPTConfig.from_dict({**config.to_dict(), "dropout": 2.0})


def test_config_defaults_are_gpt2_small():
    c = GPTConfig()
    assert (c.vocab_size, c.block_size, c.n_layer, c.n_head, c.n_embd) == (50257, 1024, 12, 12, 768)
    assert c.head_dim == 64 and c.pos_encoding == "learned" and c.norm_position == "pre"


# ------------------------------------------------------------------ forward and loss


def test_forward_shapes():
    torch.manual_seed(0)
    model = GPT(small_config())
    idx = torch.randint(0, 64, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, 64) and loss is None
    logits, loss = model(idx, idx)
    assert loss.shape == () and torch.isfinite(loss)
    assert model.hidden_states(idx).shape == (3, 10, 32)
    assert model(idx.int())[0].shape == (3, 10, 64)  # int32 ids are accepted too


def test_loss_at_init_is_log_vocab():
    """At initialisation the logits are LN(h)·Eᵀ with E ~ N(0, 0.02²): each logit has variance
    0.02²·C (= 0.0128 for C = 32), so the expected loss is ln V + 0.0064 (E[logsumexp] of
    i.i.d. Gaussians), and the mean over 512 tokens has a standard error of about 0.005. A
    tolerance of 0.05 is many standard errors yet tiny beside what a wrong initialisation
    gives (std 0.2 would add ~0.6)."""
    torch.manual_seed(0)
    V = 512
    model = GPT(small_config(vocab_size=V, n_embd=32, block_size=64))
    idx = torch.randint(0, V, (8, 64))
    targets = torch.randint(0, V, (8, 64))
    with torch.no_grad():
        _, loss = model(idx, targets)
    assert abs(loss.item() - math.log(V)) < 0.05


def test_loss_is_cross_entropy_and_ignores_minus_100():
    torch.manual_seed(0)
    model = GPT(small_config())
    idx = torch.randint(0, 64, (2, 8))
    targets = torch.randint(0, 64, (2, 8))
    targets[0, :3] = -100
    targets[1, 5] = -100
    logits, loss = model(idx, targets)
    log_probs = torch.log_softmax(logits.double(), dim=-1)
    kept = [(b, t) for b in range(2) for t in range(8) if targets[b, t] != -100]
    assert len(kept) == 12
    by_hand = -sum(log_probs[b, t, targets[b, t]] for b, t in kept) / len(kept)
    torch.testing.assert_close(loss.double(), by_hand, atol=1e-5, rtol=1e-5)
    # the ignored positions really are ignored: changing their targets changes nothing
    other = targets.clone()
    other[other == -100] = 0
    _, loss_all = model(idx, other)
    assert not torch.isclose(loss, loss_all)


# ------------------------------------------------------------------ weights and counts


def test_weight_tying():
    model = GPT(small_config())
    assert model.lm_head.weight is model.token_emb.weight
    assert model.lm_head.weight.data_ptr() == model.token_emb.weight.data_ptr()
    untied = GPT(small_config(tie_weights=False))
    assert untied.lm_head.weight.data_ptr() != untied.token_emb.weight.data_ptr()
    V, C = 64, 32
    assert model.num_params() == param_count(V, 16, C, 2)
    assert untied.num_params() == param_count(V, 16, C, 2, tied=False)
    assert untied.num_params() - model.num_params() == V * C
    # a gradient step through the head moves the embedding too (one matrix, two uses)
    idx = torch.randint(0, V, (1, 4))
    model(idx, idx)[1].backward()
    assert model.token_emb.weight.grad is model.lm_head.weight.grad


def test_num_params_gpt2_small_closed_form():
    V, P, C, L = 50257, 1024, 768, 12
    expected = V * C + P * C + L * (12 * C * C + 13 * C) + 2 * C
    assert expected == 124_439_808  # the published figure for GPT-2 small with a tied head
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = GPT(GPTConfig())
    assert model.num_params() == expected
    assert model.num_params(non_embedding=True) == expected - V * C - P * C


@pytest.mark.parametrize("tied", [True, False])
def test_num_params_matches_transformers(tied):
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.GPT2Config(
        vocab_size=101, n_positions=37, n_embd=48, n_layer=3, n_head=3, n_inner=100,
        tie_word_embeddings=tied, bos_token_id=None, eos_token_id=None,
    )
    hf_model = transformers.GPT2LMHeadModel(hf_config)
    model = GPT(GPTConfig(
        vocab_size=101, block_size=37, n_embd=48, n_layer=3, n_head=3, n_inner=100,
        tie_weights=tied,
    ))
    hf_count = sum(p.numel() for p in {id(p): p for p in hf_model.parameters()}.values())
    assert model.num_params() == hf_model.num_parameters() == hf_count
    assert model.num_params() == param_count(101, 37, 48, 3, hidden=100, tied=tied)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("pos_encoding", ["learned", "rope"])
def test_num_params_closed_form_variants(bias, pos_encoding):
    model = GPT(small_config(bias=bias, pos_encoding=pos_encoding, n_inner=40))
    expected = param_count(64, 16, 32, 2, hidden=40, bias=bias, learned=pos_encoding == "learned")
    assert model.num_params() == expected


def test_flops_per_token_hand_count():
    V, P, C, L, H, T = 101, 37, 48, 3, 100, 20
    model = GPT(GPTConfig(vocab_size=V, block_size=P, n_embd=C, n_layer=L, n_head=3, n_inner=H))
    # weights of every matrix multiply: Q,K,V (3C²), output (C²), FFN (2CH), and the head (VC)
    matmul_weights = L * (3 * C * C + C * C + 2 * C * H) + V * C
    # per token per layer: QKᵀ is T dot products of length C, AV a weighted sum of T vectors of C
    attention = L * (2 * T * C + 2 * T * C)
    forward = 2 * matmul_weights + attention
    assert model.flops_per_token(T, training=False) == forward
    assert model.flops_per_token(T) == 3 * forward
    assert model.flops_per_token() == 3 * (2 * matmul_weights + 4 * L * P * C)


def test_gpt2_initialisation_statistics():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=1000, block_size=128, n_layer=8, n_head=4, n_embd=256)
    model = GPT(config)
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)  # 0.005
    checks = [(model.token_emb.weight, 0.02), (model.pos_enc.embedding.weight, 0.02)]
    for block in model.blocks:
        checks += [
            (block.attn.qkv_proj.weight, 0.02),
            (block.mlp.fc.weight, 0.02),
            (block.attn.out_proj.weight, residual_std),
            (block.mlp.proj.weight, residual_std),
        ]
        for linear in (block.attn.qkv_proj, block.attn.out_proj, block.mlp.fc, block.mlp.proj):
            assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
        for ln in (block.ln_1, block.ln_2):
            assert torch.equal(ln.weight, torch.ones_like(ln.weight))
            assert torch.equal(ln.bias, torch.zeros_like(ln.bias))
    for weight, std in checks:
        n = weight.numel()  # ≥ 32768 draws: the sample std is within ~0.4% of σ (1 s.e.)
        assert abs(weight.std().item() / std - 1) < 0.03, (weight.shape, std)
        assert abs(weight.mean().item()) < 5 * std / math.sqrt(n)


# ------------------------------------------------------------------ input checks


def test_too_long_input_is_refused():
    model = GPT(small_config(block_size=8))
    with pytest.raises(ValueError, match=r"block_size=8 but the input reaches position 9"):
        model(torch.zeros(1, 9, dtype=torch.long))
    model(torch.zeros(1, 8, dtype=torch.long))  # exactly block_size is fine


@pytest.mark.parametrize("bad_id", [64, 1000, -1])
def test_out_of_vocabulary_ids_are_refused(bad_id):
    model = GPT(small_config(vocab_size=64))
    idx = torch.tensor([[1, 2, bad_id]])
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 64\)"):
        model(idx)


@pytest.mark.parametrize(
    "idx", [torch.zeros(5, dtype=torch.long), torch.zeros(1, 5), torch.zeros(1, 2, 3).long()]
)
def test_wrong_shape_or_dtype_is_refused(idx):
    with pytest.raises(ValueError, match=r"\(batch, time\) tensor of integer token ids"):
        GPT(small_config())(idx)


# ------------------------------------------------------------------ save and load


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(tie_weights=False, pos_encoding="rope", norm_position="post", bias=False)],
)
def test_save_and_load_round_trip(tmp_path, overrides):
    torch.manual_seed(0)
    model = GPT(small_config(**overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # not the initialisation: every tensor distinct
    model.save_pretrained(tmp_path / "m")
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["config.json", "model.safetensors"]
    loaded = GPT.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for name in original:
        assert torch.equal(original[name], restored[name]), name
    tied = model.config.tie_weights
    assert (loaded.lm_head.weight is loaded.token_emb.weight) == tied
    idx = torch.randint(0, 64, (2, 16))
    assert torch.equal(model.eval()(idx)[0], loaded.eval()(idx)[0])

    from safetensors import safe_open

    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert ("lm_head.weight" in f.keys()) == (not tied)  # a tied matrix is stored once


def test_load_with_overrides(tmp_path):
    model = GPT(small_config())
    model.save_pretrained(tmp_path)
    loaded = GPT.from_pretrained(tmp_path, dropout=0.25)
    assert loaded.config.dropout == 0.25 and loaded.blocks[0].attn.dropout == 0.25
    assert torch.equal(loaded.token_emb.weight, model.token_emb.weight)
    with pytest.raises(ValueError, match="n_embed"):
        GPT.from_pretrained(tmp_path, n_embed=3)

