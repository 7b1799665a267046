"""The training loop: schedule, optimizer groups, FLOP counts, exact resume, divergence, metrics.

Expected numbers are computed here from first principles, never by asking the code under test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import pytest
import torch
from torch import nn

from minigpt import platform
from minigpt.checkpoint import CheckpointError, load_checkpoint
from minigpt.layers import LayerNorm
from minigpt.metrics import mfu, read_metrics, truncate_metrics
from minigpt.model import GPT, GPTConfig
from minigpt.train import (
    TrainConfig,
    Trainer,
    TrainingDiverged,
    configure_optimizer,
    learning_rate_at,
)

pytestmark = pytest.mark.usefixtures("one_thread")

LN_256 = math.log(256)  # the loss of a uniform guess over the 256 byte values


def small_config(out_dir, dataset, **overrides) -> TrainConfig:
    """A model of a few thousand parameters that takes milliseconds per step on a CPU."""
    values = dict(
        out_dir=str(out_dir), dataset=str(dataset), tokenizer="byte", n_layer=1, n_head=2,
        n_embd=16, block_size=16, batch_size=2, max_iters=8, eval_interval=4, eval_iters=2,
        log_interval=1, warmup_iters=2, learning_rate=1e-2, min_lr=1e-3, device="cpu",
        dtype="float32", progress=False, sample_tokens=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


def losses_by_step(out_dir, key="loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in read_metrics(out_dir / "metrics.jsonl") if key in r}


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- the schedule

def test_learning_rate_warms_up_linearly_then_decays_by_cosine():
    config = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110)
    # warm-up: lr(s) = lr · (s + 1) / warmup, a straight line through (−1, 0) and (9, lr)
    for step in range(10):
        assert learning_rate_at(step, config) == pytest.approx((step + 1) / 10)
    assert learning_rate_at(9, config) == pytest.approx(1.0)  # the peak at the end of warm-up
    assert learning_rate_at(10, config) == pytest.approx(1.0)  # cosine starts at its top
    # halfway through the decay, cos(π/2) = 0: the mean of the two ends
    assert learning_rate_at(60, config) == pytest.approx((1.0 + 0.1) / 2)
    # a quarter of the way: min + (lr - min) · (1 + cos(π/4)) / 2
    assert learning_rate_at(35, config) == pytest.approx(0.1 + 0.9 * (1 + math.sqrt(0.5)) / 2)
    assert learning_rate_at(110, config) == pytest.approx(0.1)
    assert learning_rate_at(500, config) == 0.1
    decay = [learning_rate_at(s, config) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))


def test_lr_decay_iters_ends_the_decay_before_max_iters():
    config = TrainConfig(learning_rate=2.0, min_lr=0.0, warmup_iters=0, max_iters=100,
                         lr_decay_iters=40)
    assert learning_rate_at(0, config) == pytest.approx(2.0)
    assert learning_rate_at(20, config) == pytest.approx(1.0)
    assert learning_rate_at(40, config) == 0.0
    assert learning_rate_at(99, config) == 0.0


# --------------------------------------------------------------------------- the optimizer

def test_weight_decay_applies_to_matrices_and_embeddings_only():
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16))
    config = TrainConfig(weight_decay=0.25)
    optimizer = configure_optimizer(model, config, torch.device("cpu"))

    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    assert set(groups) == {0.25, 0.0}
    # Expected membership from the module types, not from the parameters' shapes.
    expect_decay, expect_plain = set(), set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, LayerNorm | nn.LayerNorm) or name == "bias":
                expect_plain.add(id(p))
            elif isinstance(module, nn.Linear | nn.Embedding) and name == "weight":
                expect_decay.add(id(p))
            else:
                raise AssertionError(f"unexpected parameter {name} of {type(module).__name__}")
    assert groups[0.25] == expect_decay
    assert groups[0.0] == expect_plain
    # every parameter exactly once (the tied embedding / head matrix too)
    listed = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(listed) == len(set(listed))
    assert set(listed) == {id(p) for p in model.parameters()}
    assert id(model.token_emb.weight) in groups[0.25]
    assert sum(p.numel() for g in optimizer.param_groups for p in g["params"]) == (
        model.num_params()
    )


# --------------------------------------------------------------------------- FLOPs and MFU

def test_flops_per_token_matches_a_hand_count():
    V, T, L, C = 101, 16, 3, 32
    model = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=4, n_embd=C))
    per_layer = 3 * C * C + C * C + 8 * C * C  # qkv, output projection, MLP (C→4C→C)
    weights = L * per_layer + V * C  # plus the output head (tied or not, it is a matmul)
    forward = 2 * weights + L * 4 * T * C  # 2 FLOPs per weight; QKᵀ and AV: 2·T·C each
    assert model.flops_per_token(T, training=False) == forward
    assert model.flops_per_token(T) == 3 * forward  # backward ≈ twice the forward
    assert model.flops_per_token() == 3 * forward  # the default context is block_size
    shorter = 2 * weights + L * 4 * 8 * C
    assert model.flops_per_token(8, training=False) == shorter


def test_mfu_is_achieved_over_peak():
    # 6e6 FLOPs per token at 5e4 tokens/s is 3e11 FLOP/s; on a 1e12 peak that is 30 %.
    assert mfu(6e6, 5e4, 1e12) == pytest.approx(0.3)
    assert mfu(1.0, 0.0, 1e12) == 0.0
    assert mfu(6e6, 5e4, None) is None


def test_peak_flops_on_cpu_and_for_unknown_gpus_is_none(monkeypatch):
    assert platform.peak_flops(torch.device("cpu"), torch.float32) is None
    assert platform.peak_flops(torch.device("cpu"), torch.bfloat16) is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Imaginary GPU 9000")
    assert platform.peak_flops(torch.device("cuda"), torch.bfloat16) is None


@pytest.mark.parametrize("name, dtype, expected", [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989e12),
    ("NVIDIA H100 80GB HBM3", torch.float32, 494e12),
    ("NVIDIA H100 PCIe", torch.bfloat16, 756e12),
    ("NVIDIA A100-SXM4-40GB", torch.bfloat16, 312e12),
    ("NVIDIA A100-SXM4-40GB", torch.float16, 312e12),
    ("NVIDIA A100-SXM4-40GB", torch.float32, 156e12),
    ("NVIDIA L40S", torch.bfloat16, 362e12),
    ("NVIDIA L4", torch.bfloat16, 121e12),
    ("NVIDIA A10G", torch.bfloat16, None),
])
def test_peak_flops_reads_the_datasheet_table(monkeypatch, name, dtype, expected):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert platform.peak_flops(torch.device("cuda"), dtype) == expected


# --------------------------------------------------------------------------- resuming exactly

def test_resume_reproduces_an_uninterrupted_run_exactly(cache, corpus_file, tmp_path):
    k = 5
    settings = dict(max_iters=2 * k, dropout=0.2, grad_accum_steps=2, eval_interval=3,
                    checkpoint_interval=2, log_interval=1, warmup_iters=3)
    straight = Trainer(small_config(tmp_path / "straight", corpus_file, **settings))
    straight.fit()

    first = Trainer(small_config(tmp_path / "resumed", corpus_file, **settings))
    first.fit(stop_at=k)
    assert first.step == k
    assert load_checkpoint(tmp_path / "resumed" / "ckpt.pt")["step"] == k
    del first
    second = Trainer(small_config(tmp_path / "resumed", corpus_file, **settings), resume=True)
    assert second.step == k
    second.fit()

    expected = losses_by_step(tmp_path / "straight")
    assert sorted(expected) == list(range(1, 2 * k + 1))
    assert losses_by_step(tmp_path / "resumed") == expected  # == on floats, not approx
    assert losses_by_step(tmp_path / "resumed", "val_loss") == losses_by_step(
        tmp_path / "straight", "val_loss")
    steps = [r["step"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl")]
    assert steps == sorted(set(steps)), "a step was logged twice"

    assert second.step == straight.step == 2 * k
    final, reference = second.model.state_dict(), straight.model.state_dict()
    assert final.keys() == reference.keys()
    for name in reference:
        assert torch.equal(final[name], reference[name]), name
    on_disk = load_checkpoint(tmp_path / "resumed" / "ckpt.pt")["model"]
    for name in reference:
        assert torch.equal(on_disk[name], reference[name]), name


def test_dropout_makes_the_rng_matter(cache, corpus_file, tmp_path):
    """The resume test above would pass vacuously if dropout drew no random numbers."""
    config = small_config(tmp_path / "a", corpus_file, dropout=0.2, max_iters=2)
    trainer = Trainer(config)
    x, y = trainer.train_data.next_batch()
    trainer.model.train()
    _, first = trainer.model(x, y)
    _, second = trainer.model(x, y)
    assert first.item() != second.item()


# --------------------------------------------------------------------------- divergence

def test_nan_loss_raises_and_keeps_the_last_good_checkpoint(cache, corpus_file, tmp_path):
    config = small_config(tmp_path / "run", corpus_file, max_iters=10, checkpoint_interval=2,
                          eval_interval=100, log_interval=1)
    trainer = Trainer(config)
    real_forward = trainer.model.forward
    calls = {"train": 0}
    snapshots = {}

    def forward(idx, targets=None, kv_caches=None):
        logits, loss = real_forward(idx, targets, kv_caches)
        if trainer.model.training:
            calls["train"] += 1
            if calls["train"] > 4:  # the 5th optimizer step and later
                loss = loss * float("nan")
        return logits, loss

    trainer.model.forward = forward
    real_save = trainer.save

    def save():
        snapshots[trainer.step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        real_save()

    trainer.save = save
    with pytest.raises(TrainingDiverged, match="NaN"):
        trainer.fit()
    assert trainer.step == 5  # stopped at once, not at the next checkpoint
    checkpoint = load_checkpoint(tmp_path / "run" / "ckpt.pt")
    assert checkpoint["step"] == 4
    for name, tensor in checkpoint["model"].items():
        assert torch.isfinite(tensor).all(), name
        assert torch.equal(tensor, snapshots[4][name]), name


def test_an_update_that_breaks_the_weights_is_never_checkpointed(cache, corpus_file, tmp_path):
    """A step's loss is computed before its update, so a finite loss does not prove that the
    weights saved after the update are finite (an overflow in the update, say)."""
    config = small_config(tmp_path / "run", corpus_file, max_iters=6, checkpoint_interval=1,
                          eval_interval=100, log_interval=1)
    trainer = Trainer(config)
    real_step = trainer.optimizer.step
    calls = {"n": 0}
    saved = {}

    def step(*args, **kwargs):
        result = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # the third update overflows
            with torch.no_grad():
                trainer.model.blocks[0].mlp.fc.weight[0, 0] = float("inf")
        return result

    trainer.optimizer.step = step
    real_save = trainer.save

    def save():
        saved[trainer.step] = sha256_state(trainer.model)
        real_save()

    trainer.save = save
    with pytest.raises(TrainingDiverged):
        trainer.fit()
    checkpoint = load_checkpoint(tmp_path / "run" / "ckpt.pt")
    assert checkpoint["step"] == 2
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())
    assert 3 not in saved


def sha256_state(model) -> str:
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- metrics and plots

def test_loss_falls_on_stdlib_bytes_and_metrics_are_written(cache, tmp_path):
    config = TrainConfig(
        out_dir=str(tmp_path / "run"), dataset="stdlib", tokenizer="byte", n_layer=1, n_head=2,
        n_embd=32, block_size=32, batch_size=8, max_iters=100, warmup_iters=10,
        learning_rate=3e-3, min_lr=3e-4, eval_interval=50, eval_iters=4, log_interval=10,
        device="cpu", dtype="float32", progress=False, sample_tokens=0,
    )
    trainer = Trainer(config)
    assert trainer.model.config.vocab_size == 256
    last = trainer.fit()

    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all("step" in r for r in records)
    assert [r["step"] for r in records if "loss" in r] == list(range(10, 101, 10))
    assert [r["step"] for r in records if "val_loss" in r] == [0, 50, 100]
    first_val = records[0]["val_loss"]
    # Weights of std 0.02 give logits near zero: the first guess is almost uniform, ln 256.
    # (Tied embeddings give the current byte a logit of about |e|²/σ ≈ 0.5 more, and code
    # repeats bytes (indentation), so the start can sit a little below ln 256.)
    assert LN_256 - 0.4 < first_val < LN_256 + 0.1
    # 100 small steps learn at least the byte frequencies of Python source: far below uniform.
    assert last["step"] == 100
    assert last["val_loss"] < 0.75 * LN_256
    assert last["loss"] < records[1]["loss"]
    png = (tmp_path / "run" / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_a_new_run_replaces_stale_metrics(cache, corpus_file, tmp_path):
    """A run killed before its first checkpoint leaves metrics.jsonl behind; starting again
    must not append a second history to it."""
    out = tmp_path / "run"
    out.mkdir()
    stale = [{"step": 0, "val_loss": 9.0}, {"step": 1, "loss": 9.0}, {"step": 2, "loss": 9.0}]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stale))
    Trainer(small_config(out, corpus_file, max_iters=3), resume=True).fit()
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert steps == [0, 1, 2, 3]
    assert 9.0 not in losses_by_step(out).values()


def test_truncate_metrics_keeps_everything_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [
        {"step": 0, "train_loss": 5.0, "val_loss": 5.0},
        {"step": 4, "loss": 4.0},
        {"step": 6, "train_loss": 3.5, "val_loss": 3.6},  # an evaluation between log steps
        {"step": 8, "loss": 3.0},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    truncate_metrics(path, 6)
    assert read_metrics(path) == records[:3]


def test_resume_survives_a_torn_last_metrics_line(cache, corpus_file, tmp_path):
    config = small_config(tmp_path / "run", corpus_file, max_iters=6)
    Trainer(config).fit(stop_at=3)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 3.')  # the machine died in the middle of a line
    trainer = Trainer(config, resume=True)
    trainer.fit()
    assert sorted(losses_by_step(tmp_path / "run")) == [1, 2, 3, 4, 5, 6]


# --------------------------------------------------------------------------- bad input

def test_an_existing_checkpoint_is_never_overwritten_without_resume(cache, corpus_file,
                                                                     tmp_path):
    config = small_config(tmp_path / "run", corpus_file, max_iters=2)
    Trainer(config).fit()
    files = {p.name: sha256(p) for p in (tmp_path / "run").iterdir()}
    with pytest.raises(CheckpointError, match="resume") as error:
        Trainer(config)
    assert "ckpt" in str(error.value) or str(tmp_path / "run") in str(error.value)
    assert {p.name: sha256(p) for p in (tmp_path / "run").iterdir()} == files


def test_resuming_with_a_different_model_names_the_fields(cache, corpus_file, tmp_path):
    Trainer(small_config(tmp_path / "run", corpus_file, max_iters=2)).fit()
    before = sha256(tmp_path / "run" / "ckpt.pt")
    changed = small_config(tmp_path / "run", corpus_file, max_iters=4, n_layer=2, n_embd=32)
    with pytest.raises(CheckpointError) as error:
        Trainer(changed, resume=True)
    message = str(error.value)
    assert "n_layer" in message and "n_embd" in message
    assert "n_head" not in message and "block_size" not in message
    assert sha256(tmp_path / "run" / "ckpt.pt") == before


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_resuming_a_damaged_checkpoint_names_the_file(cache, corpus_file, tmp_path, damage):
    config = small_config(tmp_path / "run", corpus_file, max_iters=2)
    Trainer(config).fit()
    path = tmp_path / "run" / "ckpt.pt"
    data = path.read_bytes()
    path.write_bytes(b"not a checkpoint" * 10 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as error:
        Trainer(config, resume=True)
    assert str(path) in str(error.value)


def test_bad_datasets_fail_before_anything_is_written(cache, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("a few words only, fewer than one context")
    cases = [
        (empty, ValueError, "empty"),
        (tmp_path / "no-such-file.txt", FileNotFoundError, "no-such-file.txt"),
        (short, ValueError, "block_size"),
    ]
    for dataset, error, words in cases:
        out = tmp_path / f"run-{dataset.stem}"
        with pytest.raises(error, match=words):
            Trainer(small_config(out, dataset, block_size=64))
        assert not out.exists()


def test_total_batch_tokens_must_divide_evenly(cache, corpus_file, tmp_path):
    config = small_config(tmp_path / "run", corpus_file, total_batch_tokens=100)
    with pytest.raises(ValueError, match="total_batch_tokens=100"):
        Trainer(config)
    config = small_config(tmp_path / "run", corpus_file, total_batch_tokens=2 * 16 * 3)
    assert Trainer(config).grad_accum_steps == 3


def test_a_checkpoint_from_before_a_new_data_setting_still_resumes(cache, corpus_file, tmp_path):
    """Settings added after a checkpoint was written count as their defaults, not as changes."""
    config = small_config(tmp_path / "run", corpus_file, max_iters=2)
    with Trainer(config) as trainer:
        trainer.fit()
    path = tmp_path / "run" / "ckpt.pt"
    state = torch.load(path, weights_only=True)
    for name in ("dataset_config", "text_field", "max_tokens"):
        del state["config"][name]
    torch.save(state, path)
    with Trainer(dataclasses.replace(config, max_iters=4), resume=True) as trainer:
        trainer.fit()
        assert trainer.step == 4
    with pytest.raises(CheckpointError, match="max_tokens: checkpoint 0, now 100"):
        Trainer(dataclasses.replace(config, max_iters=6, max_tokens=100), resume=True)
