"""The `minigpt` command, run the way a user types it: train, resume, sample, eval, --help, errors.

Subprocesses run in a temporary folder with MINIGPT_CACHE pointing at the test cache; quicker
checks of the same entry point call `minigpt.cli.main` in-process.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minigpt import cli
from minigpt.checkpoint import load_checkpoint
from minigpt.metrics import read_metrics

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["n_layer=1", "n_embd=32", "block_size=32", "batch_size=4", "eval_iters=2",
         "eval_interval=30", "sample_tokens=20"]
LN_256 = math.log(256)


def minigpt_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m minigpt`."""
    script = Path(sys.executable).with_name("minigpt")
    if script.is_file():
        return [str(script)]
    found = shutil.which("minigpt")
    return [found] if found else [sys.executable, "-m", "minigpt"]


def run(args, cwd, env, timeout=600):
    return subprocess.run([*minigpt_command(), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def module_env(session_cache):
    return {**os.environ, "MINIGPT_CACHE": str(session_cache), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, module_env):
    """`minigpt train` to step 60, then `--resume` to 120, in one folder; returns what it saw."""
    cwd = tmp_path_factory.mktemp("cli")
    first = run(["train", "--config", "tiny", "max_iters=60", "out_dir=runs/a", *SMALL], cwd,
                module_env)
    assert first.returncode == 0, first.stderr[-3000:]
    after_first = (cwd / "runs/a/metrics.jsonl").read_text()
    second = run(["train", "--config", "tiny", "max_iters=120", "out_dir=runs/a", *SMALL,
                  "--resume"], cwd, module_env)
    assert second.returncode == 0, second.stderr[-3000:]
    return {"cwd": cwd, "first": first, "second": second, "after_first": after_first}


def test_train_reports_the_loss_and_a_sample(trained):
    out = trained["first"].stdout
    assert re.search(r"step 60: val loss \d+\.\d+ \(perplexity \d+\.\d+\)", out)
    assert "checkpoint: runs/a/ckpt.pt" in out
    assert "sample:" in out and "\ndef " in out  # the tiny preset's prompt
    assert "Traceback" not in trained["first"].stderr


def test_resume_continues_from_step_60_without_repeating_it(trained):
    run_dir = trained["cwd"] / "runs/a"
    assert load_checkpoint(run_dir / "ckpt.pt")["step"] == 120
    assert "no checkpoint" not in trained["second"].stdout
    assert "step 120: val loss" in trained["second"].stdout
    text = (run_dir / "metrics.jsonl").read_text()
    assert text.startswith(trained["after_first"])  # the first 60 steps are kept as they were
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, *range(10, 121, 10)]
    assert [r["step"] for r in records if "val_loss" in r] == [0, 30, 60, 90, 120]
    new = [r["step"] for r in read_metrics_text(text[len(trained["after_first"]):])]
    assert new == list(range(70, 121, 10))
    assert (run_dir / "loss.png").is_file() and (run_dir / "tokenizer.json").is_file()


def read_metrics_text(text: str) -> list[dict]:
    import json

    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_sample_is_seeded_and_starts_with_the_prompt(trained, module_env):
    args = ["sample", "out_dir=runs/a", "prompt=def ", "max_new_tokens=100", "seed=1"]
    first = run(args, trained["cwd"], module_env)
    second = run(args, trained["cwd"], module_env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("def ")
    assert len(first.stdout) > len("def ") + 20
    assert first.stdout == second.stdout
    other = run([*args[:-1], "seed=2"], trained["cwd"], module_env)
    assert other.returncode == 0 and other.stdout != first.stdout


def test_eval_prints_loss_and_perplexity(trained, module_env):
    result = run(["eval", "out_dir=runs/a", "max_batches=4"], trained["cwd"], module_env)
    assert result.returncode == 0, result.stderr
    match = re.search(r"val loss (\d+\.\d+)\s+perplexity (\d+\.\d+)\s+over (\d+) tokens",
                      result.stdout)
    assert match, result.stdout
    loss, perplexity, tokens = float(match[1]), float(match[2]), int(match[3])
    assert 0 < loss < LN_256  # trained: better than a uniform guess over bytes
    assert perplexity == pytest.approx(math.exp(loss), rel=1e-3)
    assert tokens == 4 * 16 * 32  # max_batches × the eval batch_size default × block_size


def test_train_help_in_a_shell(module_env, tmp_path):
    result = run(["train", "--help"], tmp_path, module_env)
    assert result.returncode == 0
    assert "settings (KEY=VALUE)" in result.stdout and "n_layer=4" in result.stdout
    assert "--resume" in result.stdout and "--config" in result.stdout


@pytest.mark.parametrize("command, setting", [
    ("train", "learning_rate=0.002"), ("prepare", "tokenizer='byte'"),
    ("sample", "max_new_tokens=200"), ("eval", "max_batches=200"),
    ("finetune", "method='lora'"), ("bench", "batch_size=16"),
])
def test_every_subcommand_has_help(capsys, command, setting):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "settings (KEY=VALUE):" in out and setting in out


def test_top_level_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("train", "prepare", "sample", "eval", "finetune", "bench"):
        assert command in out


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("args, words", [
    (["train", "--config", "tinyy"], "unknown preset 'tinyy'"),
    (["train", "n_layers=2"], "did you mean n_layer"),
    (["train", "n_layer=abc"], "n_layer='abc': expected int"),
    (["sample", "temperature=hot"], "temperature='hot': expected float"),
])
def test_typing_errors_give_one_line_and_no_traceback(module_env, tmp_path, args, words):
    result = run(args, tmp_path, module_env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"minigpt {args[0]}: error:") and words in lines[0]
    assert not (tmp_path / "runs").exists()


def tiny_args(out_dir, dataset, *more) -> list[str]:
    return ["train", f"out_dir={out_dir}", f"dataset={dataset}", "n_layer=1", "n_embd=16",
            "n_head=2", "block_size=16", "batch_size=2", "max_iters=3", "eval_iters=1",
            "eval_interval=3", "log_interval=1", "sample_tokens=0", "progress=false",
            "device=cpu", *more]


def main_result(capsys, args):
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bad_datasets_give_a_clear_error(cache, capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("print('hi')\n")
    cases = [
        (tmp_path / "missing.txt", "missing.txt"),
        (empty, "empty"),
        (short, "block_size"),
    ]
    for dataset, words in cases:
        out_dir = tmp_path / f"run-{dataset.stem}"
        code, _, err = main_result(capsys, tiny_args(out_dir, dataset))
        assert code == 2
        first_line = err.strip().splitlines()[0]
        assert first_line.startswith("minigpt train: error:") and words in first_line, err
        assert "Traceback" not in err
        assert not out_dir.exists()


def test_a_checkpoint_is_not_overwritten_without_resume(cache, capsys, corpus_file, tmp_path):
    out_dir = tmp_path / "run"
    assert main_result(capsys, tiny_args(out_dir, corpus_file))[0] == 0
    before = {p.name: sha256(p) for p in out_dir.iterdir()}
    code, _, err = main_result(capsys, tiny_args(out_dir, corpus_file, "max_iters=6"))
    assert code == 1
    assert "CheckpointError" in err and "--resume" in err and str(out_dir) in err
    assert len(err.strip().splitlines()) == 1
    assert {p.name: sha256(p) for p in out_dir.iterdir()} == before

    # settings may follow --resume
    args = tiny_args(out_dir, corpus_file, "max_iters=6")
    code, _, err = main_result(capsys, ["train", "--resume", *args[1:]])
    assert code == 0, err
    assert load_checkpoint(out_dir / "ckpt.pt")["step"] == 6

    code, _, err = main_result(capsys, [*tiny_args(out_dir, corpus_file, "max_iters=9",
                                                   "n_layer=2"), "--resume"])
    assert code == 1 and "n_layer: checkpoint 1, now 2" in err
    assert load_checkpoint(out_dir / "ckpt.pt")["step"] == 6


def test_a_damaged_checkpoint_is_named(cache, capsys, corpus_file, tmp_path):
    out_dir = tmp_path / "run"
    assert main_result(capsys, tiny_args(out_dir, corpus_file))[0] == 0
    path = out_dir / "ckpt.pt"
    path.write_bytes(path.read_bytes()[:100])
    for args in ([*tiny_args(out_dir, corpus_file, "max_iters=6"), "--resume"],
                 ["sample", f"out_dir={out_dir}", "max_new_tokens=5"],
                 ["eval", f"out_dir={out_dir}"]):
        code, _, err = main_result(capsys, args)
        assert code == 1, args
        assert f"CheckpointError: checkpoint {path} is corrupt or truncated" in err
        assert "Traceback" not in err


def test_sampling_from_a_folder_without_a_model(cache, capsys, tmp_path):
    code, _, err = main_result(capsys, ["sample", f"out_dir={tmp_path / 'nothing'}"])
    assert code == 2 and "holds no checkpoint" in err


def test_an_argument_that_is_not_a_setting(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--fast"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --fast" in capsys.readouterr().err


def test_prepare_reports_the_token_folder(cache, capsys, corpus_file):
    code, out, err = main_result(capsys, ["prepare", f"dataset={corpus_file}"])
    assert code == 0, err
    folder = Path(out.strip().splitlines()[-1])  # alone on the last line, for scripts
    assert (folder / "meta.json").is_file()
    assert folder.is_relative_to(cache)


# ------------------------------------------------------------------- every error is one line


@pytest.fixture(scope="module")
def broken(trained):
    """Folders that hold damaged or foreign files, next to the trained run."""
    import json

    import torch

    from minigpt import GPT, GPTConfig

    cwd = trained["cwd"]
    (cwd / "nocfg").mkdir()
    torch.save({"model": {}}, cwd / "nocfg" / "ckpt.pt")
    (cwd / "badcfg").mkdir()
    (cwd / "badcfg" / "config.json").write_text('{"model_type": "minigpt"}')
    model = GPT(GPTConfig(vocab_size=256, block_size=32, n_layer=1, n_head=2, n_embd=32))
    model.save_pretrained(cwd / "trunc")
    weights = (cwd / "trunc" / "model.safetensors").read_bytes()
    (cwd / "trunc" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    shutil.copy(cwd / "runs/a/tokenizer.json", cwd / "trunc")
    (cwd / "pickled").mkdir()  # a pickle that would run code if it were unpickled
    torch.save({"step": Path("x")}, cwd / "pickled" / "pytorch_model.bin")
    (cwd / "pickled" / "config.json").write_text(json.dumps(
        {"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 32, "vocab_size": 256}))
    (cwd / "objects").mkdir()
    torch.save({"model": {}, "config": Path("x")}, cwd / "objects" / "ckpt.pt")
    return cwd


BAD_INPUTS = [  # (what a user types, words the one line must hold)
    (["eval", "out_dir=runs/a", "max_batches=0"], "max_batches=0: must be ≥ 1"),
    (["eval", "out_dir=runs/a", "batch_size=0"], "batch_size=0: must be ≥ 1"),
    (["sample", "out_dir=nocfg"], "lacks 'model_config'"),
    (["train", "out_dir=nocfg", "--resume"], "lacks 'optimizer'"),
    (["sample", "out_dir=badcfg"], "has no 'config' table"),
    (["sample", "out_dir=trunc"], "model.safetensors is truncated"),
    (["train", "init_from=pickled", "out_dir=new1"], "holds Python objects"),
    (["sample", "out_dir=objects"], "holds Python objects"),
    (["sample", "out_dir=runs/a", "num_samples=0"], "num_samples=0: must be ≥ 1"),
    (["sample", "out_dir=runs/a", "temperature=nan"], "temperature='nan': must be a finite"),
    (["sample", "out_dir=runs/a", "top_k=2.5"], "top_k='2.5': expected int"),
    (["sample", "out_dir=runs/a", "top_p=inf"], "top_p='inf': must be a finite"),
    (["train", "grad_clip=nan", "out_dir=new2"], "grad_clip='nan': must be a finite number"),
    (["train", "min_lr=inf", "out_dir=new3"], "min_lr='inf': must be a finite number"),
    (["finetune", "base=runs/a", "data=missing.jsonl", "out_dir=ft1"],
     "python -m minigpt.tasks"),
    (["finetune", "base=gpt2", "data=d.jsonl", "out_dir=ft2"], "could not load 'gpt2'"),
]


def test_every_bad_input_gives_one_line_and_no_traceback(broken, module_env):
    """Each case in its own process, as a user would type it; all of them at once."""
    writers = [arg for args, _ in BAD_INPUTS
               if args[0] in ("train", "finetune") and "--resume" not in args
               for arg in args if arg.startswith("out_dir=")]
    assert len(writers) == len(set(writers)), "concurrent runs would meet at one out_dir's lock"
    (broken / "d.jsonl").write_text('{"instruction": "Add.", "output": "3"}\n')
    env = {**module_env, "HF_HUB_OFFLINE": "1"}  # no model hub here: fail fast, as offline
    processes = [subprocess.Popen([*minigpt_command(), *args], cwd=broken, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for args, _ in BAD_INPUTS]
    for (args, words), process in zip(BAD_INPUTS, processes, strict=True):
        out, err = process.communicate(timeout=600)
        assert process.returncode not in (0, None), (args, out)
        assert "Traceback" not in err and "weights_only=False" not in err, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1, (args, err)
        assert lines[0].startswith(f"minigpt {args[0]}:") and words in lines[0], (args, err)
    assert not (broken / "new").exists() and not (broken / "ft").exists()


def test_temperature_near_zero_samples_greedily(trained, module_env):
    tiny = run(["sample", "out_dir=runs/a", "temperature=1e-45", "max_new_tokens=30"],
               trained["cwd"], module_env)
    greedy = run(["sample", "out_dir=runs/a", "temperature=0", "max_new_tokens=30"],
                 trained["cwd"], module_env)
    assert tiny.returncode == 0, tiny.stderr
    assert tiny.stdout == greedy.stdout


def test_a_character_tokenizer_works_on_a_file_without_newlines(cache, capsys, tmp_path):
    one_line = tmp_path / "one.txt"
    one_line.write_text("the cat sat on the mat and the dog sat on the log " * 30)
    code, _, err = main_result(capsys, tiny_args(tmp_path / "run", one_line, "tokenizer=char"))
    assert code == 0, err


def test_eval_says_which_windows_it_read(trained, module_env):
    result = run(["eval", "out_dir=runs/a", "max_batches=2"], trained["cwd"], module_env)
    assert result.returncode == 0, result.stderr
    assert "32 consecutive windows of 32 tokens of the val split" in result.stdout
    assert "eval_iters random windows" in result.stdout


def test_train_says_what_it_will_do_and_where(trained):
    first, second = trained["first"].stdout, trained["second"].stdout
    assert re.search(r"training \d+\.\d[KM] parameters on stdlib: 60 steps, 128 tokens per "
                     r"step, cpu float32", first), first
    assert "60 steps" in first and "run folder: runs/a" in first
    assert "to go on this machine" in first
    assert "resuming from step 60 of 120" in second


# --------------------------------------------------------------------------- the default job

@pytest.mark.slow
def test_plain_minigpt_train_runs_the_tiny_preset(module_env, tmp_path):
    result = run(["train"], tmp_path, module_env, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "runs" / "tiny"
    state = load_checkpoint(run_dir / "ckpt.pt")
    assert state["step"] == 600
    assert (run_dir / "loss.png").is_file()
    match = re.search(r"step 600: val loss (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:]
    # 600 steps of a 0.8M-parameter model learn much more than byte frequencies
    assert float(match[1]) < 0.5 * LN_256
    assert "sample:\n" + "-" * 60 + "\ndef " in result.stdout


def test_eval_says_when_the_corpus_changed_since_training(cache, capsys, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 60)
    out_dir = tmp_path / "run"
    assert main_result(capsys, tiny_args(out_dir, corpus))[0] == 0
    code, _, err = main_result(capsys, ["eval", f"out_dir={out_dir}", "max_batches=1"])
    assert code == 0 and "note:" not in err
    corpus.write_text("a different text altogether, read after training\n" * 60)
    code, out, err = main_result(capsys, ["eval", f"out_dir={out_dir}", "max_batches=1"])
    assert code == 0 and "val loss" in out
    assert "note: the corpus (or tokenizer) differs from the one this run's checkpoint" in err
