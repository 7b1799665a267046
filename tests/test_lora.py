"""Tests for minigpt.lora: low-rank adapters (eqs. 10.3-10.5 of notebooks/10_finetuning.ipynb)."""

import pytest
import torch
from torch import nn

from minigpt import GPT, GPTConfig
from minigpt.lora import (
    LoRALinear,
    apply_lora,
    count_parameters,
    load_lora,
    lora_layers,
    merge_lora,
    save_lora,
    unmerge_lora,
)

CONFIG = dict(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=24)


def small_gpt(seed=0, **fields):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**CONFIG, **fields})).eval()


def trained_adapters(model, seed=1):
    """Give every adapter a non-zero B, as training would, so that merging changes W."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(std=0.05)
    return model


def tokens(seed=2, batch=3, length=16):
    return torch.randint(0, CONFIG["vocab_size"], (batch, length),
                         generator=torch.Generator().manual_seed(seed))


def test_fresh_adapter_is_a_no_op():
    model = small_gpt()
    idx = tokens()
    with torch.no_grad():
        before = model(idx)[0]
        apply_lora(model, rank=4, alpha=8)
        after = model(idx)[0]
    assert all(torch.count_nonzero(layer.lora_B) == 0 for layer in lora_layers(model).values())
    assert all(torch.count_nonzero(layer.lora_A) > 0 for layer in lora_layers(model).values())
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_forward_is_w_x_plus_scaled_b_a_x():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, rank=2, alpha=3.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 6)
    expected = x @ base.weight.T + base.bias + (3.0 / 2) * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), expected)


def test_merged_outputs_equal_unmerged_outputs():
    model = trained_adapters(apply_lora(small_gpt(), rank=4, alpha=8,
                                        targets=("qkv_proj", "out_proj", "fc", "proj")))
    idx = tokens()
    with torch.no_grad():
        unmerged = model(idx)[0]
        merge_lora(model, unload=False)
        merged = model(idx)[0]
    assert (unmerged - merged).abs().max().item() < 1e-6
    # and the adapters really matter: without them the outputs differ
    plain = small_gpt()
    with torch.no_grad():
        assert (plain(idx)[0] - merged).abs().max().item() > 1e-3


def test_unload_gives_a_plain_gpt_with_the_same_outputs():
    model = trained_adapters(apply_lora(small_gpt(), rank=4))
    idx = tokens()
    with torch.no_grad():
        before = model(idx)[0]
        merge_lora(model)
        after = model(idx)[0]
    assert not lora_layers(model)
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))
    assert (before - after).abs().max().item() < 1e-6


def test_unmerge_restores_weights_exactly():
    model = trained_adapters(apply_lora(small_gpt(), rank=4))
    original = {name: layer.weight.detach().clone() for name, layer in lora_layers(model).items()}
    merge_lora(model, unload=False)
    changed = [not torch.equal(layer.weight, original[name])
               for name, layer in lora_layers(model).items()]
    assert all(changed), "merging must fold a non-zero ΔW into W"
    unmerge_lora(model)
    for name, layer in lora_layers(model).items():
        assert torch.equal(layer.weight, original[name])  # bit for bit
        assert not layer.merged


def test_only_adapter_parameters_receive_gradients():
    model = apply_lora(small_gpt(), rank=4).train()
    idx = tokens()
    _, loss = model(idx[:, :-1], idx[:, 1:])
    loss.backward()
    for name, parameter in model.named_parameters():
        is_adapter = name.endswith(("lora_A", "lora_B"))
        assert parameter.requires_grad == is_adapter, name
        if is_adapter:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None, name
    # B = 0 at the start, so A's gradient is zero and B's is not (why A starts random)
    layer = next(iter(lora_layers(model).values()))
    assert torch.count_nonzero(layer.lora_B.grad) > 0


@pytest.mark.parametrize("targets", [("qkv_proj", "out_proj"), ("qkv_proj", "out_proj", "fc",
                                                                  "proj"), ("fc",)])
def test_trainable_parameter_count_is_r_times_d_in_plus_d_out(targets):
    rank, c = 3, CONFIG["n_embd"]
    # (d_in, d_out) of each layer, written out from the architecture: qkv C -> 3C, out C -> C,
    # feed-forward fc C -> 4C and proj 4C -> C, in each of n_layer blocks
    shapes = {"qkv_proj": (c, 3 * c), "out_proj": (c, c), "fc": (c, 4 * c), "proj": (4 * c, c)}
    expected = CONFIG["n_layer"] * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)
    model = apply_lora(small_gpt(), rank=rank, targets=targets)
    counts = count_parameters(model)
    assert counts["trainable"] == expected
    assert counts["total"] == small_gpt().num_params() + expected
    assert len(lora_layers(model)) == CONFIG["n_layer"] * len(targets)


def test_adapter_round_trip_and_the_file_is_small(tmp_path):
    model = trained_adapters(apply_lora(small_gpt(n_embd=64, vocab_size=500), rank=2))
    path = tmp_path / "adapter.safetensors"
    save_lora(model, path)
    fresh = load_lora(small_gpt(n_embd=64, vocab_size=500), path)
    idx = tokens()
    with torch.no_grad():
        torch.testing.assert_close(fresh(idx)[0], model(idx)[0], rtol=0, atol=0)
    assert fresh.lora_config == model.lora_config
    full_size = 4 * small_gpt(n_embd=64, vocab_size=500).num_params()  # float32 bytes
    adapter_bytes = 4 * count_parameters(model)["trainable"]
    assert path.stat().st_size < adapter_bytes + 4096  # the tensors plus a small header
    assert path.stat().st_size < full_size / 10


def test_load_lora_rejects_a_model_it_does_not_fit(tmp_path):
    model = apply_lora(small_gpt(), rank=2)
    save_lora(model, tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="does not fit"):
        load_lora(small_gpt(n_layer=3), tmp_path / "a.safetensors")


def test_apply_lora_names_the_layers_when_no_target_matches():
    with pytest.raises(ValueError, match="qkv_proj"):
        apply_lora(small_gpt(), targets=("c_attn",))


def test_save_lora_without_adapters_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="apply_lora"):
        save_lora(small_gpt(), tmp_path / "a.safetensors")
