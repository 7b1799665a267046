"""`minigpt bench`: throughput of the real training step on synthetic tokens."""

from __future__ import annotations

import json

import pytest
import torch

from minigpt import benchmark
from minigpt.cli import main
from minigpt.train import TrainConfig

SMALL = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, batch_size=2, device="cpu",
             dtype="float32", compile=False, progress=False, tokenizer="byte")


def test_vocab_size_follows_the_tokenizer_setting(tmp_path):
    assert benchmark.vocab_size_of("gpt2") == 50257
    assert benchmark.vocab_size_of("byte") == 256
    assert benchmark.vocab_size_of("bpe:1000") == 1000
    with pytest.raises(ValueError, match="tokenizer='nope'"):
        benchmark.vocab_size_of("nope")


def test_pattern_tokens_follow_their_successor_table():
    data = benchmark.SyntheticTokens(1000, 12, 3, torch.device("cpu"), pattern=True, seed=4)
    x, y = data.next_batch()
    assert x.shape == y.shape == (3, 12)
    assert torch.equal(y, data.successor[x])  # every next token is the table's successor
    assert int(x.max()) < 512 and data.step == 1
    noise = benchmark.SyntheticTokens(1000, 12, 3, torch.device("cpu"))
    assert int(noise.next_batch()[0].max()) >= 512  # uniform over the whole vocabulary


def test_measured_tokens_and_mfu_follow_from_the_timed_steps(tmp_path, monkeypatch):
    monkeypatch.setattr("minigpt.platform.peak_flops", lambda device, dtype: 1e12)
    config = TrainConfig(out_dir=str(tmp_path), total_batch_tokens=96, **SMALL)
    result = benchmark.measure_training(config, steps=2, warmup=1)
    assert result["grad_accum_steps"] == 3  # 96 tokens / (2 sequences x 16 tokens)
    assert result["tokens_per_s"] == pytest.approx(2 * 96 / result["seconds"])
    from minigpt.model import GPT

    flops = GPT(config.model_config(256)).flops_per_token(16)
    assert result["flops_per_token"] == flops
    assert result["mfu"] == pytest.approx(flops * result["tokens_per_s"] / 1e12)
    assert result["params"] > 0 and torch.isfinite(torch.tensor(result["final_loss"]))


def test_a_cpu_gets_no_mfu_rather_than_a_guess(tmp_path):
    result = benchmark.measure_training(TrainConfig(out_dir=str(tmp_path), **SMALL), steps=1,
                                        warmup=0)
    assert result["mfu"] is None and result["peak_tflops"] is None
    assert "no known peak" in benchmark.format_report(result)


def test_minigpt_bench_prints_and_writes_the_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    settings = [f"{k}={v}" for k, v in SMALL.items() if k not in ("progress",)]
    assert main(["bench", "--config", "tiny", "--steps", "2", "--warmup", "0",
                 "--json", str(out), *settings]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["steps"] == 2 and result["seq_len"] == 16 and result["batch_size"] == 2
    assert f"{result['tokens_per_s']:,.0f} tokens/s" in printed
    assert main(["bench", "--steps", "0"]) == 2
    assert "need steps >= 1" in capsys.readouterr().err
