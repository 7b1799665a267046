"""Checkpoints: atomic writes, clear errors for damaged files, and surviving SIGKILL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from minigpt import checkpoint as ckpt
from minigpt import config as configs
from minigpt.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minigpt.metrics import read_metrics
from minigpt.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def test_save_and_load_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "step": 7, "name": "run",
             "nested": {"values": [1, 2.5, None, True]}}
    save_checkpoint(state, tmp_path / "sub" / "ckpt.pt")
    loaded = load_checkpoint(tmp_path / "sub" / "ckpt.pt")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"])
    assert {k: v for k, v in loaded.items() if k != "model"} == {
        k: v for k, v in state.items() if k != "model"}
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["ckpt.pt"]  # no temp file left


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"model": {}, "step": 1}, path)
    before = path.read_bytes()

    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"model": {}, "step": 2}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid now names no process
    path = tmp_path / "ckpt.pt"
    stale = tmp_path / f".ckpt.pt.{dead.pid}.tmp"
    live = tmp_path / f".ckpt.pt.{os.getppid()}.tmp"  # a running process's file is kept
    other = tmp_path / f".other.pt.{dead.pid}.tmp"  # another checkpoint's file is not ours
    for f in (stale, live, other):
        f.write_bytes(b"half a checkpoint")
    save_checkpoint({"model": {}}, path)
    assert not stale.exists()
    assert live.exists() and other.exists()
    assert load_checkpoint(path) == {"model": {}}


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint") as error:
        load_checkpoint(tmp_path / "ckpt.pt")
    assert str(tmp_path / "ckpt.pt") in str(error.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_damaged_checkpoint_names_the_file(tmp_path, damage):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"model": {"w": torch.randn(64, 64)}, "step": 3}, path)
    data = path.read_bytes()
    damaged = {"garbage": os.urandom(len(data)), "truncated": data[: len(data) // 2],
               "empty": b""}[damage]
    path.write_bytes(damaged)
    with pytest.raises(CheckpointError, match="corrupt or truncated") as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


def test_a_file_that_is_not_a_training_checkpoint(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a minigpt training checkpoint"):
        load_checkpoint(tmp_path / "list.pt")


class Payload:
    """An arbitrary object: unpickling it would mean running code from the file."""


def test_checkpoints_are_data_not_code(tmp_path):
    torch.save({"model": {}, "payload": Payload()}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="ckpt.pt"):
        load_checkpoint(tmp_path / "ckpt.pt")


# --------------------------------------------------------------------------- SIGKILL

KILL_SETTINGS = [
    "n_layer=1", "n_head=2", "n_embd=16", "block_size=16", "batch_size=2", "max_iters=120",
    "checkpoint_interval=1", "eval_interval=100", "eval_iters=2", "log_interval=1",
    "warmup_iters=5", "progress=false", "sample_tokens=0", "device=cpu", "dtype=float32",
]


def test_sigkill_at_any_moment_leaves_a_checkpoint_that_resumes(minigpt_env, corpus_file,
                                                                tmp_path):
    settings = [*KILL_SETTINGS, f"dataset={corpus_file}", "out_dir=run"]
    command = [sys.executable, "-m", "minigpt", "train", *settings]
    env = minigpt_env
    checkpoint = tmp_path / "run" / "ckpt.pt"
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.exists():
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        time.sleep(random.uniform(0.0, 0.5))  # somewhere in the loop, maybe mid-write
        process.send_signal(signal.SIGKILL)
        returncode = process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    assert returncode == -signal.SIGKILL, "the run finished before it could be killed"

    state = load_checkpoint(checkpoint)
    killed_at = state["step"]
    assert 1 <= killed_at < 120
    # A temp file from an interrupted write (real or planted) must never be taken for it.
    (tmp_path / "run" / ".ckpt.pt.999999.tmp").write_bytes(b"half a checkpoint")

    result = subprocess.run([*command, "--resume"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert load_checkpoint(checkpoint)["step"] == 120
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 121)), "a step is missing or was logged twice"

    # The killed-and-resumed run ends exactly where an uninterrupted one does.
    straight = configs.build(TrainConfig, "tiny", [*KILL_SETTINGS, f"dataset={corpus_file}",
                                                   f"out_dir={tmp_path / 'straight'}"])
    reference = Trainer(straight)
    reference.fit()
    final = load_checkpoint(checkpoint)["model"]
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(final[name], tensor), name
