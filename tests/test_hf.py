"""Tests for minigpt.hf: Hugging Face GPT-2 weights in and out.

No download happens here: every Hugging Face model is built from a `GPT2Config` with random
weights and saved to a temporary folder.
"""

import json

import pytest
import torch

from minigpt import GPT, GPTConfig
from minigpt.hf import config_from_hf, from_hf, save_hf, to_hf

transformers = pytest.importorskip("transformers")

# Tiny models run as fast on one thread, and far faster when the machine is shared.
pytestmark = pytest.mark.usefixtures("one_thread")

TOLERANCE = 1e-5


def hf_gpt2(seed=0, **fields):
    """A random GPT2LMHeadModel in eval mode; weights moved off their initialisation so that
    layer-norm gains and every bias matter."""
    base = dict(vocab_size=128, n_positions=32, n_embd=64, n_layer=2, n_head=4)
    config = transformers.GPT2Config(**{**base, **fields})
    if config.vocab_size <= 50256:
        config.bos_token_id = config.eos_token_id = None
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def random_minigpt(seed=0, **fields):
    base = dict(vocab_size=128, block_size=32, n_embd=64, n_layer=2, n_head=4)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**base, **fields})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def max_logit_gap(ours, hf_model, ids):
    with torch.no_grad():
        return (ours(ids)[0] - hf_model(ids).logits).abs().max().item()


HF_CONFIGS = {
    "default": dict(),
    "odd": dict(vocab_size=101, n_positions=37, n_embd=48, n_layer=3, n_head=3, n_inner=100),
    "exact-gelu": dict(activation_function="gelu", n_inner=72),
    "pytorch-tanh-eps": dict(activation_function="gelu_pytorch_tanh", layer_norm_epsilon=1e-3),
    "untied": dict(tie_word_embeddings=False),
    "odd-untied-gelu": dict(
        vocab_size=101, n_positions=37, n_embd=48, n_layer=3, n_head=3, n_inner=100,
        activation_function="gelu", tie_word_embeddings=False,
    ),
}


# ------------------------------------------------------------------ Hugging Face -> minigpt


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_logits_match_transformers(tmp_path, name):
    hf_model = hf_gpt2(**HF_CONFIGS[name])
    hf_model.save_pretrained(tmp_path)
    model = GPT.from_pretrained(tmp_path).eval()
    c = hf_model.config
    assert model.config.n_inner == c.n_inner and model.config.layer_norm_eps == c.layer_norm_epsilon
    tied = c.tie_word_embeddings
    assert (model.lm_head.weight is model.token_emb.weight) == tied
    if not tied:
        assert not torch.equal(model.lm_head.weight, model.token_emb.weight)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, c.vocab_size, (2, c.n_positions), generator=g)
    with torch.no_grad():
        logits = hf_model(ids).logits
    assert logits.abs().max() > 1.0  # the comparison is not between near-zero numbers
    assert max_logit_gap(model, hf_model, ids) <= TOLERANCE
    # the loss agrees too (transformers shifts the labels itself)
    with torch.no_grad():
        hf_loss = hf_model(ids, labels=ids).loss
        _, loss = model(ids[:, :-1], ids[:, 1:])
    torch.testing.assert_close(loss, hf_loss, atol=1e-5, rtol=1e-5)


def test_pytorch_bin_checkpoint_loads(tmp_path):
    hf_model = hf_gpt2(**HF_CONFIGS["odd"])
    hf_model.config.save_pretrained(tmp_path)
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    assert not (tmp_path / "model.safetensors").exists()
    model = GPT.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 101, (2, 37), generator=torch.Generator().manual_seed(2))
    assert max_logit_gap(model, hf_model, ids) <= TOLERANCE


def test_checkpoint_without_the_transformer_prefix_loads(tmp_path):
    """The original GPT-2 uploads name tensors `h.0.attn...`, without `transformer.`."""
    hf_model = hf_gpt2()
    hf_model.config.save_pretrained(tmp_path)
    torch.save(hf_model.transformer.state_dict(), tmp_path / "pytorch_model.bin")
    model = GPT.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 128, (1, 32), generator=torch.Generator().manual_seed(3))
    assert max_logit_gap(model, hf_model, ids) <= TOLERANCE


@pytest.mark.parametrize("name", ["default", "untied"])
def test_in_memory_conversion(name):
    hf_model = hf_gpt2(**HF_CONFIGS[name])
    model = from_hf(hf_model).eval()
    ids = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(4))
    assert max_logit_gap(model, hf_model, ids) <= TOLERANCE
    back = to_hf(model)
    for key, value in hf_model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_overrides_apply_when_loading(tmp_path):
    hf_gpt2().save_pretrained(tmp_path)
    model = GPT.from_pretrained(tmp_path, dropout=0.1)
    assert model.config.dropout == 0.1


def test_a_shorter_context_keeps_the_first_positions_and_their_logits(tmp_path):
    hf_model = hf_gpt2()  # 32 positions
    hf_model.save_pretrained(tmp_path)
    short = GPT.from_pretrained(tmp_path, block_size=12)
    assert short.config.block_size == 12
    ids = torch.randint(0, 128, (2, 12))
    assert max_logit_gap(short, hf_model, ids) < TOLERANCE
    with pytest.raises(ValueError, match="block_size=40 exceeds the 32 positions"):
        GPT.from_pretrained(tmp_path, block_size=40)


# ------------------------------------------------------------------ minigpt -> Hugging Face


@pytest.mark.parametrize("fields", [dict(), dict(tie_weights=False, n_inner=50, n_head=2)])
def test_export_round_trip_is_exact(tmp_path, fields):
    model = random_minigpt(**fields)
    save_hf(model, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors"}
    back = GPT.from_pretrained(tmp_path).eval()
    assert back.config == model.config
    original, restored = model.state_dict(), back.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    assert (back.lm_head.weight is back.token_emb.weight) == model.config.tie_weights

    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(5))
    assert max_logit_gap(model, hf_model, ids) <= TOLERANCE
    assert hf_model.num_parameters() == model.num_params()


@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu"])
def test_exported_activation_is_the_same_function(tmp_path, activation):
    model = random_minigpt(activation=activation)
    save_hf(model, tmp_path)
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(6))
    assert max_logit_gap(model, hf_model, ids) <= TOLERANCE


def test_pipeline_runs_on_an_exported_model(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, block_size=64, n_layer=1, n_head=2, n_embd=32)).eval()
    save_hf(model, tmp_path)
    assert {"vocab.json", "merges.txt", "tokenizer_config.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
    generator = transformers.pipeline("text-generation", model=str(tmp_path), device="cpu")
    ids = generator.tokenizer("Hello world", return_tensors="pt").input_ids
    assert ids.tolist() == [[15496, 995]]  # GPT-2's ids for "Hello" and " world"
    result = generator("Hello world", max_new_tokens=6, do_sample=False)
    expected = model.generate(ids, 6, temperature=0, eos_token=50256)
    assert result[0]["generated_text"] == generator.tokenizer.decode(expected[0])


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(pos_encoding="rope"), "pos_encoding='rope'"),
        (dict(pos_encoding="sinusoidal"), "pos_encoding='sinusoidal'"),
        (dict(pos_encoding="none"), "pos_encoding='none'"),
        (dict(norm_position="post"), "norm_position='post'"),
        (dict(bias=False), "bias=False"),
    ],
)
def test_export_refuses_what_gpt2_cannot_express(tmp_path, fields, message):
    model = random_minigpt(**fields)
    folder = tmp_path / "out"
    with pytest.raises(ValueError, match="cannot export to the GPT-2 format") as info:
        save_hf(model, folder)
    assert message in str(info.value)
    assert not folder.exists() or not any(folder.iterdir())  # nothing half-written
    with pytest.raises(ValueError, match=message):
        to_hf(model)


# ------------------------------------------------------------------ what cannot be loaded


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(scale_attn_weights=False), "scale_attn_weights"),
        (dict(scale_attn_by_inverse_layer_idx=True), "layer-scaled"),
        (dict(add_cross_attention=True), "cross-attention"),
        (dict(activation_function="relu"), "activation_function 'relu'"),
    ],
)
def test_unsupported_gpt2_variants_are_refused(tmp_path, fields, message):
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, **fields)
    with pytest.raises(ValueError, match=message):
        config_from_hf(config.to_dict())


def test_other_model_types_are_refused():
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        config_from_hf({"model_type": "llama"})


def test_tensorflow_only_folder_is_refused(tmp_path):
    transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path)
    (tmp_path / "tf_model.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(FileNotFoundError, match="TensorFlow") as info:
        GPT.from_pretrained(tmp_path)
    assert "model.safetensors or pytorch_model.bin" in str(info.value)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        GPT.from_pretrained(tmp_path)


def test_unknown_name_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a folder nor a GPT-2 name"):
        GPT.from_pretrained("gpt-5")


def test_gpt2_by_name_offline_says_what_to_do(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub")
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.chdir(tmp_path)  # no folder called "gpt2" here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    # huggingface_hub reads the environment once, at import: set its constants as well
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub.constants, "HF_HOME", str(home))
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    with pytest.raises(OSError) as info:
        GPT.from_pretrained("gpt2")
    message = str(info.value)
    assert "'gpt2'" in message and "not in the Hugging Face cache" in message
    assert "hf download gpt2" in message and "local folder" in message
    assert not any((home / "hub").glob("**/*.safetensors"))


def test_exported_config_is_plain_gpt2(tmp_path):
    save_hf(random_minigpt(), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["scale_attn_weights"] is True
    assert config["n_positions"] == 32 and config["activation_function"] == "gelu_new"
    assert config["bos_token_id"] is None  # a 128-token vocabulary has no end-of-text id
