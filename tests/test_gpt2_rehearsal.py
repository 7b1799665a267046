"""A rehearsal of the gpt2-124m path, shrunk to run on a CPU in CI.

The same preset and the same code a GPU run uses: `minigpt prepare --config gpt2-124m` on a
Hugging Face dataset (a local one, written here with the `datasets` package from stdlib text as
parquet shards), GPT-2's tokenizer, token shards small enough that training crosses them, a
`prepare` and a `train` each killed and resumed, validation loss and HellaSwag (a fixture in the
official format) measured during training and plotted, a sample at the end, and
`minigpt eval --task hellaswag` on the result. Only sizes are overridden on the command line.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minigpt.checkpoint import load_checkpoint
from minigpt.data import load_meta
from minigpt.metrics import read_metrics

pytestmark = pytest.mark.slow

# What a small CPU can do; everything else comes from configs/gpt2-124m.toml.
SHRINK = ["n_layer=2", "n_head=2", "n_embd=32", "block_size=64", "batch_size=4",
          "total_batch_tokens=512", "max_iters=24", "warmup_iters=4", "eval_interval=8",
          "eval_iters=2", "log_interval=2", "checkpoint_interval=4", "hellaswag_interval=8",
          "shard_tokens=20000", "sample_tokens=24", "dtype=float32", "compile=false",
          "device=cpu", "progress=false", "dataset_config="]


def stdlib_documents(count: int) -> list[str]:
    """Module docstrings and sources of the running Python's stdlib: real text at hand."""
    from minigpt.corpora import stdlib_sources

    sources = [text for _, text in stdlib_sources()]
    random.Random(0).shuffle(sources)
    return [text[:3000] for text in sources[:count]]


def write_hf_dataset(folder: Path, documents: list[str], shards: int = 3) -> Path:
    """A dataset folder in the Hugging Face layout (data/train-0000k-of-0000n.parquet)."""
    datasets = pytest.importorskip("datasets")
    (folder / "data").mkdir(parents=True)
    for k in range(shards):
        part = datasets.Dataset.from_dict({"text": documents[k::shards]})
        part.to_parquet(str(folder / "data" / f"train-{k:05d}-of-{shards:05d}.parquet"))
    return folder


def hellaswag_fixture(path: Path) -> Path:
    """Six examples in the official layout, written for this test."""
    rows = []
    for i, (activity, ctx, endings) in enumerate([
        ("Cooking", "A man cracks two eggs into a bowl. He",
         ["whisks them with a fork.", "paints the bowl.", "sings to the eggs.", "sleeps."]),
        ("Gardening", "[header] How to water a plant [title] Fill a can. [step] Use cool water.",
         ["[title] Pour slowly at the base.", "Eat the soil.", "[title] Sell the can.",
          "Fly away."]),
        ("Running", "A woman laces her shoes at the start line. She",
         ["runs down the track.", "eats her shoes.", "becomes a track.", "reads a shoe."]),
        ("Reading", "A boy opens a book on his desk. He",
         ["turns the first page.", "throws the desk.", "becomes a page.", "drinks the book."]),
        ("Painting", "An artist dips a brush in blue paint. She",
         ["draws a line on the canvas.", "drinks the paint.", "paints the sun off.",
          "swims in the brush."]),
        ("Cycling", "A cyclist climbs onto the bike. He",
         ["pedals up the hill.", "folds the bike into a hat.", "eats the wheel.",
          "turns into a hill."]),
    ]):
        ctx_a, _, ctx_b = ctx.rpartition(". ")
        rows.append({"ind": i, "activity_label": activity, "ctx_a": ctx_a + ".",
                     "ctx_b": ctx_b, "ctx": ctx, "split": "val", "split_type": "indomain",
                     "label": 0, "endings": endings, "source_id": f"rehearsal~{i}"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def kill_when(condition, command, cwd, env, timeout=600) -> int:
    """Start `command`, SIGKILL it once `condition()` holds; return its exit code."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not condition():
            assert process.poll() is None, f"finished before the kill: {process.stderr.read()}"
            assert time.monotonic() < deadline, "timed out before the kill"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        return process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()


def run(command, cwd, env) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result


def test_the_gpt2_124m_path_end_to_end(tmp_path):
    pytest.importorskip("datasets")
    env = {**os.environ, "MINIGPT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf-cache")}
    web = write_hf_dataset(tmp_path / "web", stdlib_documents(240))
    fixture = hellaswag_fixture(tmp_path / "hellaswag.jsonl")
    settings = ["--config", "gpt2-124m", *SHRINK, f"dataset=hf:{web}",
                f"hellaswag_data={fixture}", "out_dir=run"]
    minigpt = [sys.executable, "-m", "minigpt"]

    # prepare, killed once a shard is written, then resumed to the end
    tokens = tmp_path / "cache" / "tokens"
    shard_written = lambda: any(tokens.glob("*/train.*.bin"))  # noqa: E731
    assert kill_when(shard_written, [*minigpt, "prepare", *settings], tmp_path, env) == -9
    prepared = run([*minigpt, "prepare", *settings], tmp_path, env)
    data_dir = Path(prepared.stdout.strip().splitlines()[-1])
    meta = load_meta(data_dir)
    assert meta["vocab_size"] == 50257 and meta["dtype"] == "uint16"
    assert len(meta["shards"]["train"]) >= 3, "training must cross shard boundaries"
    assert meta["documents"]["train"] + meta["documents"]["val"] == 240

    # train, killed after its first checkpoint, then resumed to the end
    checkpoint = tmp_path / "run" / "ckpt.pt"
    assert kill_when(checkpoint.exists, [*minigpt, "train", *settings], tmp_path, env) == -9
    trained = run([*minigpt, "train", *settings, "--resume"], tmp_path, env)
    assert load_checkpoint(checkpoint)["step"] == 24
    assert "resuming from step" in trained.stdout and "sample:" in trained.stdout
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records if "val_loss" in r] == [0, 8, 16, 24]
    hellaswag = [r["hellaswag_acc_norm"] for r in records if "hellaswag_acc_norm" in r]
    assert len(hellaswag) == 4 and all(0 <= a <= 1 for a in hellaswag)
    losses = [r["val_loss"] for r in records if "val_loss" in r]
    assert losses[-1] < losses[0], "the loss must fall"
    assert (tmp_path / "run" / "loss.png").is_file()

    # the finished model: a sample, and HellaSwag scored with every ending's log-likelihood
    sampled = run([*minigpt, "sample", "out_dir=run", "prompt=Return the", "max_new_tokens=8",
                   "device=cpu"], tmp_path, env)
    assert sampled.stdout.startswith("Return the")
    run([*minigpt, "eval", "--task", "hellaswag", "out_dir=run", f"data={fixture}",
         "device=cpu", "--json", "hs.json"], tmp_path, env)
    scored = json.loads((tmp_path / "hs.json").read_text())
    assert scored["n"] == 6 and len(scored["loglikelihoods"]) == 6
    assert all(len(row) == 4 for row in scored["loglikelihoods"])
