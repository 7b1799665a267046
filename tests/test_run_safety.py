"""Nothing a user saved is overwritten, and every interruption is safe.

Real processes and real signals: a second run on a locked folder, SIGTERM mid-run, SIGKILL at
random moments followed by resumes, finetuning into the base's folder or stopped half-way.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minigpt import GPT, GPTConfig
from minigpt import finetune as ft
from minigpt.checkpoint import CheckpointError, load_checkpoint
from minigpt.metrics import read_metrics
from minigpt.runlock import LOCK_NAME, RunLock, RunLockedError
from minigpt.tokenizer import ByteTokenizer
from minigpt.train import TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["n_layer=1", "n_head=2", "n_embd=16", "block_size=16", "batch_size=2", "eval_iters=1",
        "warmup_iters=5", "progress=false", "sample_tokens=0", "device=cpu", "dtype=float32"]


def minigpt(*args) -> list[str]:
    return [sys.executable, "-m", "minigpt", *args]


def start(args, cwd, env) -> subprocess.Popen:
    return subprocess.Popen(minigpt(*args), cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, process, what, timeout=300):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"exited before {what}: {process.stderr.read()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def signal_when(process, condition, signum, what) -> tuple[int, str]:
    """Send `signum` to `process` once `condition()` holds; its exit code and stderr."""
    try:
        wait_for(condition, process, what)
        process.send_signal(signum)
        returncode = process.wait(120)
        return returncode, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()


def logged_steps(run: Path) -> list[int]:
    try:  # a new run replaces the file: it may vanish between a look and a read
        return [r["step"] for r in read_metrics(run / "metrics.jsonl")]
    except FileNotFoundError:
        return []


def last_logged(run: Path) -> int:
    """The last logged step, or -1 before the first line is in (read at any moment)."""
    steps = logged_steps(run)
    return steps[-1] if steps else -1


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def small_config(out_dir, corpus_file, **overrides) -> TrainConfig:
    values = dict(out_dir=str(out_dir), dataset=str(corpus_file), n_layer=1, n_head=2, n_embd=16,
                  block_size=16, batch_size=2, max_iters=12, eval_interval=6, eval_iters=1,
                  log_interval=2, checkpoint_interval=4, warmup_iters=2, progress=False,
                  sample_tokens=0, device="cpu", dtype="float32")
    values.update(overrides)
    return TrainConfig(**values)


def saved_model(folder: Path) -> Path:
    model = GPT(GPTConfig(vocab_size=256, block_size=64, n_layer=1, n_head=2, n_embd=16))
    model.save_pretrained(folder)
    ByteTokenizer().save(folder / "tokenizer.json")
    return folder


# --------------------------------------------------------------------------- never overwrite


def test_training_refuses_a_saved_model_folder_and_leaves_it_unchanged(cache, corpus_file,
                                                                       tmp_path):
    folder = saved_model(tmp_path / "model")
    before = digests(folder)
    for resume in (False, True):
        with pytest.raises(CheckpointError, match="holds a saved model .*Choose another out_dir"):
            Trainer(small_config(folder, corpus_file), resume=resume)
    assert digests(folder) == before


def test_finetuning_into_the_base_folder_is_refused_and_the_base_unchanged(tmp_path):
    base = saved_model(tmp_path / "base")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "Add.", "input": "1 2", "output": "3"}) + "\n")
    before = digests(base)
    same = ft.FinetuneConfig(data=str(data), base=str(base), out_dir=str(base), steps=1,
                             device="cpu", progress=False, val_fraction=0)
    with pytest.raises(CheckpointError, match="is the base model's folder"):
        ft.finetune(same)
    # the same folder spelled another way is still the base
    with pytest.raises(CheckpointError, match="is the base model's folder"):
        ft.finetune(ft.FinetuneConfig(**{**same.to_dict(), "out_dir": f"{base}/../base/"}))
    other = saved_model(tmp_path / "other")
    with pytest.raises(CheckpointError, match="already holds model.safetensors, config.json of "
                                              "another run; choose another out_dir$"):
        ft.finetune(ft.FinetuneConfig(**{**same.to_dict(), "out_dir": str(other)}))
    assert digests(base) == before


def test_a_finished_finetune_is_not_overwritten_but_resumes(tmp_path):
    base = saved_model(tmp_path / "base")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "Add.", "input": "1 2", "output": "3"}) + "\n")
    config = ft.FinetuneConfig(data=str(data), base=str(base), out_dir=str(tmp_path / "ft"),
                               steps=2, device="cpu", progress=False, val_fraction=0)
    ft.finetune(config)
    out = tmp_path / "ft"
    before = digests(out)
    with pytest.raises(CheckpointError, match="or pass --resume to continue the same finetune"):
        ft.finetune(config)
    assert digests(out) == before
    with pytest.raises(CheckpointError, match="cannot resume .* rank: then 8, now 4"):
        ft.finetune(ft.FinetuneConfig(**{**config.to_dict(), "rank": 4}), resume=True)
    assert digests(out) == before
    ft.finetune(config, resume=True)  # the same finetune: allowed
    assert json.loads((out / "finetune.json").read_text())["status"] == "finished"


# --------------------------------------------------------------------------- one run per folder


def test_a_second_process_on_a_locked_folder_exits_naming_the_holder(minigpt_env, corpus_file,
                                                                     tmp_path):
    args = ["train", *TINY, f"dataset={corpus_file}", "out_dir=run", "max_iters=100000",
            "eval_interval=100000", "log_interval=50"]
    first = start(args, tmp_path, minigpt_env)
    try:
        wait_for(lambda: (tmp_path / "run/metrics.jsonl").exists(), first, "the first run")
        second = subprocess.run(minigpt(*args, "--resume"), cwd=tmp_path, env=minigpt_env,
                                capture_output=True, text=True, timeout=300)
        assert second.returncode != 0
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert f"in use by process {first.pid} on " in lines[0]
        assert first.poll() is None, "the first run must go on"
        first.send_signal(signal.SIGKILL)  # dies holding the lock: the file stays behind
        first.wait(60)
    finally:
        if first.poll() is None:
            first.kill()
        first.stderr.close()
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == first.pid
    third = subprocess.run(minigpt(*args[:-3], "max_iters=8", "eval_interval=8", "--resume"),
                           cwd=tmp_path, env=minigpt_env, capture_output=True, text=True,
                           timeout=300)
    assert third.returncode == 0, third.stderr
    assert f"taking over the run lock of run: process {first.pid}" in third.stderr
    assert not (tmp_path / "run" / LOCK_NAME).exists(), "a finished run leaves no lock behind"


def test_the_lock_is_reentrant_in_one_process_and_refuses_other_hosts(tmp_path):
    with RunLock(tmp_path / "a") as lock:
        assert RunLock(tmp_path / "a").acquire() is lock  # a notebook cell run twice
        lock.release()
        assert (tmp_path / "a" / LOCK_NAME).exists()
    assert not (tmp_path / "a" / LOCK_NAME).exists()
    # a lock file written on another machine cannot be checked from here: ask the user
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(RunLockedError, match="process 1 on elsewhere.*delete .*minigpt.lock"):
        RunLock(tmp_path / "b").acquire()


def test_under_torchrun_every_rank_stops_when_the_folder_is_locked(minigpt_env, corpus_file,
                                                                   tmp_path):
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("this PyTorch build has no gloo backend for CPU process groups")
    with RunLock(tmp_path / "run"):  # this test process holds it
        result = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             "-m", "minigpt", "train", *TINY, f"dataset={corpus_file}", "out_dir=run",
             "max_iters=4"], cwd=tmp_path, env=minigpt_env, capture_output=True, text=True,
            timeout=300)  # a rank left waiting at a barrier would hang until the timeout
    assert result.returncode != 0
    assert f"in use by process {os.getpid()}" in result.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# --------------------------------------------------------------------------- signals


def test_sigterm_checkpoints_the_current_step_and_exits_143(minigpt_env, corpus_file, tmp_path):
    args = ["train", *TINY, f"dataset={corpus_file}", "out_dir=run", "max_iters=100000",
            "eval_interval=100000", "log_interval=7", "checkpoint_interval=1000"]
    returncode, stderr = signal_when(start(args, tmp_path, minigpt_env),
                                     lambda: len(logged_steps(tmp_path / "run")) >= 2,
                                     signal.SIGTERM, "two log lines")
    assert returncode == 143, stderr
    assert "interrupted (SIGTERM)" in stderr and "Traceback" not in stderr
    step = load_checkpoint(tmp_path / "run/ckpt.pt")["step"]
    steps = logged_steps(tmp_path / "run")
    assert steps[-1] == step, "the checkpoint's step must be the last logged one"
    resumed = subprocess.run(minigpt(*args[:-4], f"max_iters={step + 3}", "--resume"),
                             cwd=tmp_path, env=minigpt_env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = logged_steps(tmp_path / "run")
    assert after[: len(steps)] == steps and after[-1] == step + 3 and after == sorted(set(after))


def test_metrics_are_complete_after_repeated_sigkills(minigpt_env, corpus_file, tmp_path):
    """Kill at random moments, resume each time: every logged step appears exactly once."""
    total, log_every, eval_every = 400, 3, 50
    args = ["train", *TINY, f"dataset={corpus_file}", "out_dir=run", f"max_iters={total}",
            f"log_interval={log_every}", "checkpoint_interval=3", f"eval_interval={eval_every}"]
    rng = random.Random(0)
    run = tmp_path / "run"
    for kill in range(6):
        process = start([*args, "--resume"], tmp_path, minigpt_env)
        try:
            before = last_logged(run)
            wait_for(lambda b=before: last_logged(run) > b, process,
                     f"progress before kill {kill}")
            time.sleep(rng.uniform(0.0, 0.4))
            process.send_signal(signal.SIGKILL)
            process.wait(60)
        finally:
            if process.poll() is None:
                process.kill()
            process.stderr.close()
        if process.returncode == 0:
            break  # it finished before the signal came
    final = subprocess.run(minigpt(*args, "--resume"), cwd=tmp_path, env=minigpt_env,
                           capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    expected = sorted({0, total, *range(log_every, total + 1, log_every),
                       *range(eval_every, total + 1, eval_every)})
    assert logged_steps(run) == expected


class _Killed(Exception):
    pass


@pytest.mark.parametrize("moment", ["after the metrics line", "after the checkpoint"])
def test_a_crash_on_either_side_of_a_checkpoint_keeps_one_line_per_step(
        cache, corpus_file, tmp_path, monkeypatch, moment):
    """The window a random SIGKILL rarely hits, hit on purpose: the process dies just before
    or just after the checkpoint of step 8 is written."""
    config = small_config(tmp_path / "run", corpus_file)
    original = Trainer.save

    def dying_save(trainer):
        if trainer.step == 8:
            if moment == "after the checkpoint":
                original(trainer)
            raise _Killed
        original(trainer)

    monkeypatch.setattr(Trainer, "save", dying_save)
    with pytest.raises(_Killed), Trainer(config) as trainer:
        trainer.fit()
    monkeypatch.setattr(Trainer, "save", original)
    with Trainer(config, resume=True) as trainer:
        trainer.fit()
    assert logged_steps(tmp_path / "run") == [0, 2, 4, 6, 8, 10, 12]


def test_an_interrupted_finetune_writes_no_model_and_resumes(minigpt_env, tmp_path):
    base = saved_model(tmp_path / "base")
    rows = [{"instruction": "Add.", "input": f"{i} {i}", "output": str(2 * i)} for i in range(20)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["finetune", f"base={base}", "data=d.jsonl", "out_dir=ft", "steps=100000",
            "eval_interval=100000", "device=cpu", "progress=false", "eval_examples=0"]
    returncode, stderr = signal_when(start(args, tmp_path, minigpt_env),
                                     (tmp_path / "ft/train/metrics.jsonl").exists,
                                     signal.SIGTERM, "training")
    assert returncode == 143, stderr
    assert "interrupted by SIGTERM at step" in stderr and "--resume" in stderr
    out = tmp_path / "ft"
    assert not (out / "model.safetensors").exists() and not (out / "adapter.safetensors").exists()
    record = json.loads((out / "finetune.json").read_text())
    step = load_checkpoint(out / "train/ckpt.pt")["step"]
    assert record["status"] == "interrupted" and record["steps"] == step
    resumed = subprocess.run(minigpt(*[a for a in args if not a.startswith("steps=")],
                                     f"steps={step + 2}", "--resume"),
                             cwd=tmp_path, env=minigpt_env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr  # steps may change on resume, as max_iters
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "finetune.json").read_text())["status"] == "finished"
