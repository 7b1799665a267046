"""Data parallelism: two gloo processes with batch b take the same steps as one with batch 2b."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from minigpt import config as configs
from minigpt import distributed
from minigpt.checkpoint import load_checkpoint
from minigpt.metrics import read_metrics
from minigpt.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

HELPERS = Path(__file__).resolve().parent / "helpers"


def require_gloo():
    if not dist.is_available():
        pytest.skip("this PyTorch build has no torch.distributed")
    if not dist.is_gloo_available():
        pytest.skip("this PyTorch build has no gloo backend for CPU process groups")


def torchrun(args, cwd, env, nproc=2):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def settings(corpus_file, **overrides) -> list[str]:
    values = dict(dataset=corpus_file, n_layer=2, n_head=2, n_embd=16, block_size=16,
                  max_iters=8, grad_accum_steps=2, warmup_iters=2, learning_rate=1e-2,
                  min_lr=1e-3, eval_interval=4, eval_iters=2, log_interval=1, dropout=0.0,
                  progress=False, sample_tokens=0, device="cpu", dtype="float32")
    values.update(overrides)
    return [f"{key}={value}" for key, value in values.items()]


def test_single_process_info_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info, device = distributed.setup(torch.device("cpu"))
    assert (info.rank, info.world_size, info.enabled, info.is_main) == (0, 1, False, True)
    assert device == torch.device("cpu")
    value = torch.tensor(3.0)
    assert distributed.mean_across_ranks(value, info) is value
    distributed.barrier(info)  # a no-op without a process group


def test_two_processes_match_one_with_twice_the_batch(minigpt_env, corpus_file, tmp_path):
    require_gloo()
    b = 2
    result = torchrun(["-m", "minigpt", "train", *settings(corpus_file, batch_size=b),
                       "out_dir=ddp"], tmp_path, minigpt_env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr

    single = configs.build(TrainConfig, "tiny", [*settings(corpus_file, batch_size=2 * b),
                                                 f"out_dir={tmp_path / 'single'}"])
    trainer = Trainer(single)
    trainer.fit()

    ddp = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    one = read_metrics(tmp_path / "single" / "metrics.jsonl")
    assert [r["step"] for r in ddp] == [r["step"] for r in one]
    for key in ("loss", "val_loss", "train_loss"):
        ddp_values = [r[key] for r in ddp if key in r]
        one_values = [r[key] for r in one if key in r]
        assert len(ddp_values) == len(one_values) > 0, key
        assert ddp_values == pytest.approx(one_values, rel=1e-5, abs=1e-6), key

    ddp_state = load_checkpoint(tmp_path / "ddp" / "ckpt.pt")
    assert ddp_state["step"] == single.max_iters
    for name, tensor in trainer.model.state_dict().items():
        torch.testing.assert_close(ddp_state["model"][name], tensor, rtol=1e-5, atol=1e-5)
    # the ranks really did split the batch: each saw b sequences per micro-batch
    assert ddp_state["train_data"]["global_batch_size"] == 2 * b
    assert ddp_state["config"]["batch_size"] == b


def test_a_nan_on_one_rank_stops_every_rank(minigpt_env, corpus_file, tmp_path):
    """Rank 1 alone sees a NaN loss; both ranks must raise TrainingDiverged (none may wait
    forever at a barrier, none may checkpoint the poisoned weights)."""
    require_gloo()
    script = HELPERS / "ddp_nan_on_one_rank.py"
    args = [str(script), str(corpus_file), str(tmp_path / "run")]
    result = torchrun(args, tmp_path, minigpt_env)
    assert result.returncode != 0
    assert result.stdout.count("diverged on rank") == 2, result.stdout + result.stderr[-3000:]
    state = load_checkpoint(tmp_path / "run" / "ckpt.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(t).all() for t in state["model"].values())
