"""Token shards: one stream cut into files, read back as one array, written resumably with
bounded memory, and GPT-2 tokenization without the look-ahead."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from corpus_helpers import WORDS, EotByteTokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from minigpt.data import (
    Corpus,
    RandomWindowSampler,
    SequentialSampler,
    TokenShards,
    in_validation,
    load_meta,
    load_tokens,
    prepare,
)
from minigpt.document_encoding import DocumentEncoder
from minigpt.tokenizer import BPETokenizer, ByteTokenizer, gpt2_tokenizer


def documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"doc {k}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30)))
            for k in range(n)]


def write_jsonl_folder(folder, texts, files=4):
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        lines = "".join(json.dumps({"text": t}) + "\n" for t in texts[f::files])
        (folder / f"part{f}.jsonl").write_text(lines)
    return folder


def expected_stream(texts) -> np.ndarray:
    """What a split of these documents must hold: bytes, 256 between documents."""
    pieces = []
    for i, text in enumerate(texts):
        if i:
            pieces.append([256])
        pieces.append(list(text.encode()))
    return np.array([t for piece in pieces for t in piece], dtype=np.uint16)


# ---------------------------------------------------------------------------------------------
# Shards on disk


def test_shards_cut_one_stream_and_record_where_they_end(tmp_path):
    texts = documents(400)
    corpus = Corpus("docs", tuple(texts), ())
    out = prepare(corpus, EotByteTokenizer(), tmp_path / "t", progress=False, shard_tokens=1000)
    stream = expected_stream(texts)
    meta = load_meta(out)
    shards = meta["shards"]["train"]
    assert meta["format"] == 2 and meta["tokens"]["train"] == stream.size
    assert [s["tokens"] for s in shards[:-1]] == [1000] * (len(shards) - 1)
    assert 0 < shards[-1]["tokens"] <= 1000 and len(shards) == -(-stream.size // 1000)
    on_disk = [np.fromfile(out / s["file"], dtype=np.uint16) for s in shards]
    assert np.array_equal(np.concatenate(on_disk), stream)
    # "end": the shard's last token is token number `token` (from 1, separator first) of
    # document `document`.
    lengths = [len(t.encode()) + (1 if i else 0) for i, t in enumerate(texts)]
    ends = np.cumsum(lengths)
    for k, shard in enumerate(shards):
        last = min((k + 1) * 1000, stream.size)
        document = int(np.searchsorted(ends, last))
        start = int(ends[document - 1]) if document else 0
        assert shard["end"] == {"document": document, "token": last - start}
    assert meta["shards"]["val"] == [] and meta["tokens"]["val"] == 0


def test_another_shard_size_rewrites_the_files_of_the_same_stream(tmp_path):
    corpus = Corpus("docs", tuple(documents(300)), ())
    out = tmp_path / "t"
    first = load_meta(prepare(corpus, EotByteTokenizer(), out, progress=False, shard_tokens=900))
    again = load_meta(prepare(corpus, EotByteTokenizer(), out, progress=False, shard_tokens=400))
    assert again["shard_tokens"] == 400 and len(again["shards"]["train"]) > len(
        first["shards"]["train"])
    assert again["fingerprint"] == first["fingerprint"]  # names the stream, not its files
    assert np.array_equal(np.asarray(load_tokens(out, "train")),
                          expected_stream(corpus.train))
    assert not [p.name for p in out.iterdir() if p.name.startswith("train.") and p.name not in {
        s["file"] for s in again["shards"]["train"]}]  # the old shards are gone


def test_token_shards_index_like_their_concatenation():
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 60000, n).astype(np.uint16) for n in (7, 1, 30, 12)]
    whole = np.concatenate(parts)
    shards = TokenShards(parts, split="train")
    assert len(shards) == whole.size and shards.shape == whole.shape
    assert shards.dtype == np.uint16 and shards.split == "train"
    for i in [0, 6, 7, 8, 37, 49, -1, -50]:
        assert shards[i] == whole[i]
    for piece in [slice(None), slice(5, 9), slice(6, 8), slice(3, 45, 4), slice(40, 2, -3),
                  slice(20, 20), slice(-13, None)]:
        assert np.array_equal(shards[piece], whole[piece]), piece
    index = rng.integers(-whole.size, whole.size, (5, 11))
    assert np.array_equal(shards[index], whole[index])
    assert np.array_equal(np.asarray(shards), whole) and shards.tolist() == whole.tolist()
    for bad in [50, -51, np.array([0, 50])]:
        with pytest.raises(IndexError):
            shards[bad]


def shard_pair(n=20_000, shard=777, seed=0):
    tokens = np.random.default_rng(seed).integers(0, 50_000, n).astype(np.uint16)
    parts = [tokens[i : i + shard] for i in range(0, n, shard)]
    return tokens, TokenShards(parts, split="train")


def test_random_windows_on_shards_are_the_windows_of_the_concatenation():
    tokens, shards = shard_pair()
    crossed = 0
    single = RandomWindowSampler(tokens, 64, 8, seed=3)
    sharded = RandomWindowSampler(shards, 64, 8, seed=3)
    for _ in range(40):
        starts = sharded.global_starts(sharded.step)
        crossed += int(np.sum(starts // 777 != (starts + 64) // 777))
        (x, y), (sx, sy) = single.next_batch(), sharded.next_batch()
        assert torch.equal(x, sx) and torch.equal(y, sy)
    assert crossed > 20  # many windows span two shards
    # Exact resume and rank slicing work the same on shards.
    state = sharded.state_dict()
    expected = [sharded.next_batch()[0] for _ in range(3)]
    resumed = RandomWindowSampler(shards, 64, 8, seed=0)
    resumed.load_state_dict(state)
    assert all(torch.equal(e, resumed.next_batch()[0]) for e in expected)
    whole = RandomWindowSampler(tokens, 64, 8, seed=9).next_batch()[0]
    ranks = [RandomWindowSampler(shards, 64, 4, seed=9, rank=r, world_size=2) for r in range(2)]
    assert torch.equal(torch.cat([r.next_batch()[0] for r in ranks]), whole)


def test_sequential_windows_on_shards_are_the_windows_of_the_concatenation():
    tokens, shards = shard_pair(n=5003)
    for world in (1, 2):
        for rank in range(world):
            single = SequentialSampler(tokens, 50, 3, rank=rank, world_size=world)
            sharded = SequentialSampler(shards, 50, 3, rank=rank, world_size=world)
            assert len(single) == len(sharded)
            for (x, y), (sx, sy) in zip(single, sharded, strict=True):
                assert torch.equal(x, sx) and torch.equal(y, sy)


def test_load_tokens_gives_one_array_over_many_shards(tmp_path):
    texts = documents(300)
    corpus = Corpus("docs", tuple(texts[:250]), tuple(texts[250:]))
    out = prepare(corpus, EotByteTokenizer(), tmp_path / "t", progress=False, shard_tokens=500)
    train, val = load_tokens(out, "train"), load_tokens(out, "val")
    assert isinstance(train, TokenShards) and len(train.shards) > 5
    assert np.array_equal(np.asarray(train), expected_stream(texts[:250]))
    assert np.array_equal(np.asarray(val), expected_stream(texts[250:]))
    with pytest.raises(ValueError, match=r"the val split has \d+ tokens"):
        RandomWindowSampler(val, len(val) + 5, 2)
    (out / "train.000002.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match=r"train\.000002\.bin has 10 bytes.*prepare"):
        load_tokens(out, "train")


# ---------------------------------------------------------------------------------------------
# The token budget


@pytest.mark.parametrize("budget", [1, 999, 1000, 4321, 10**9])
def test_max_tokens_cuts_the_train_split_exactly(tmp_path, budget, monkeypatch):
    monkeypatch.setattr("minigpt.documents.TASK_BYTES", 3000)
    texts = documents(600, seed=1)
    folder = write_jsonl_folder(tmp_path / "c", texts, files=1)
    out = prepare(folder, EotByteTokenizer(), tmp_path / f"t{budget}", progress=False,
                  shard_tokens=700, max_tokens=budget)
    train_docs = [t for t in texts if not in_validation(t)]
    full = expected_stream(train_docs)
    train = np.asarray(load_tokens(out, "train"))
    assert np.array_equal(train, full[:budget])  # the first max_tokens tokens
    # val: the val documents that come before the record where the budget ran out.
    ends = np.cumsum([len(t.encode()) + (1 if i else 0) for i, t in enumerate(train_docs)])
    last = train_docs[int(np.searchsorted(ends, min(budget, full.size)))]
    before = texts[: texts.index(last)] if budget < full.size else texts
    assert np.array_equal(np.asarray(load_tokens(out, "val")),
                          expected_stream([t for t in before if in_validation(t)]))
    assert load_meta(out)["max_tokens"] == budget


def test_bad_settings_are_refused(tmp_path):
    for name, value in [("shard_tokens", 0), ("max_tokens", -1), ("shard_tokens", 1.5)]:
        with pytest.raises(ValueError, match=rf"{name} must be an integer"):
            prepare("stdlib", ByteTokenizer(), tmp_path, progress=False, **{name: value})


# ---------------------------------------------------------------------------------------------
# Killed and resumed

PREPARE = """
import sys
import minigpt.documents
from minigpt.data import prepare
minigpt.documents.TASK_BYTES = 16_000  # many small steps, each recorded in progress.json
prepare(sys.argv[1], "gpt2", sys.argv[2], num_workers=2, progress=False, shard_tokens=4_000)
"""


def run_prepare(corpus, out, env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PREPARE, str(corpus), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finished_shards(folder) -> list[str]:
    """The train shards that progress.json lists as finished (written atomically: no torn reads)."""
    try:
        progress = json.loads((folder / "progress.json").read_text())
    except FileNotFoundError:
        return []
    return [shard["file"] for shard in progress["splits"]["train"]["shards"]]


def folder_files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_killed_prepare_resumes_and_ends_byte_identical(tmp_path):
    corpus = write_jsonl_folder(tmp_path / "corpus", documents(9000, seed=2))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    process = run_prepare(corpus, killed, env)
    deadline = time.monotonic() + 120
    while not finished_shards(killed):  # until at least one shard is finished and recorded
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "no shard after 120 s"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "meta.json").exists()  # not taken for a finished folder
    recorded = finished_shards(killed)
    inodes = {name: (killed / name).stat().st_ino for name in recorded}

    resumed = run_prepare(corpus, killed, env)
    assert resumed.wait(timeout=300) == 0, resumed.communicate()[1].decode()[-2000:]
    whole = tmp_path / "whole"
    uninterrupted = run_prepare(corpus, whole, env)
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.communicate()[1].decode()[-2000:]

    assert folder_files(killed) == folder_files(whole)  # every file, byte for byte
    assert len(load_meta(whole)["shards"]["train"]) > len(recorded)  # killed part-way
    for name, inode in inodes.items():  # finished shards were kept, not written again
        assert (killed / name).stat().st_ino == inode


def test_a_resumed_prepare_starts_over_when_the_corpus_changed(tmp_path):
    from minigpt.prepare import _fingerprint, _Tokenizing

    texts = documents(200)
    corpus = Corpus("docs", tuple(texts), ())
    out = tmp_path / "t"
    out.mkdir()
    (out / "progress.json").write_text(json.dumps({"format": 2, "fingerprint": "other"}))
    (out / "train.000000.bin").write_bytes(b"\1\1")
    (out / "notes.txt").write_text("not ours")
    run = _Tokenizing(out, _fingerprint(corpus, b"{}", 0), np.uint16, 10, 0, 1)
    run.close()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # only its own files went


# ---------------------------------------------------------------------------------------------
# Constant memory

MEASURE = """
import json, re, resource, sys
from pathlib import Path
import minigpt.documents
from minigpt.data import prepare
minigpt.documents.TASK_BYTES = 1 << 16  # what is in flight fills up early in both corpora
prepare(sys.argv[1], "byte", sys.argv[2], num_workers=2, progress=False, shard_tokens=1_000_000)
# VmHWM: the peak of this process image alone (ru_maxrss would also count the parent's memory
# at the time it spawned us). The workers have ended and been waited for.
status = Path("/proc/self/status").read_text()
print(json.dumps([int(re.search(r"VmHWM:\\s+(\\d+)", status)[1]),
                  resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))
"""


def peak_rss_kib(corpus, out) -> tuple[int, int]:
    """Peak resident memory (KiB) of a prepare process and of its largest worker."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", MEASURE, str(corpus), str(out)], env=env,
                          capture_output=True, text=True, timeout=300, check=True)
    return tuple(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's VmHWM")
def test_peak_memory_does_not_grow_with_the_corpus(tmp_path):
    line = json.dumps({"text": " ".join(WORDS) * 8}) + "\n"  # about 0.6 KB a document
    sizes = {}
    for name, copies in (("small", 10_000), ("large", 40_000)):
        folder = tmp_path / name
        folder.mkdir()
        for f in range(4):
            with open(folder / f"part{f}.jsonl", "w") as file:
                file.writelines(line for _ in range(copies // 4))
        sizes[name] = sum(p.stat().st_size for p in folder.iterdir())
        sizes[name + "_rss"] = peak_rss_kib(folder, tmp_path / f"tokens-{name}")
    assert sizes["large"] > 4 * sizes["small"] - 100 and sizes["large"] > 20e6
    # The large corpus is 18 MB bigger; holding its text would add at least that much.
    for who, small, large in zip(("main", "worker"), sizes["small_rss"], sizes["large_rss"],
                                 strict=True):
        assert large - small < 4 * 1024, f"{who}: {small} KiB -> {large} KiB"


# ---------------------------------------------------------------------------------------------
# GPT-2's tokenization without the look-ahead


def reference(tokenizer, texts) -> np.ndarray:
    return np.array([t for text in texts for t in [tokenizer.eot_token, *tokenizer.encode(text)]],
                    dtype=np.int64)


ALPHABET = st.sampled_from([
    " ", "  ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x85", "\xa0", "\u2003", "\u3000", "\x1c",
    "a", "Z", "é", "中", "1", "٣", "'s", "'ll", "'", ".", "!!", "-", "😀", "\ue000", "\ue001",
    "<|endoftext|>", "<|", "\ud800",
])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(ALPHABET, max_size=25).map("".join), min_size=1, max_size=6))
def test_lookahead_free_gpt2_matches_the_reference(texts):
    tokenizer = gpt2_tokenizer()
    encoder = DocumentEncoder(tokenizer, np.uint16, [tokenizer.eot_token])
    assert encoder.fast_bpe
    ids, lengths = encoder(texts)
    assert np.array_equal(ids, reference(tokenizer, texts))
    assert lengths.tolist() == [1 + len(tokenizer.encode(t)) for t in texts]


def test_lookahead_free_gpt2_on_real_text():
    from minigpt.data import stdlib_prose_corpus, stdlib_sources

    tokenizer = gpt2_tokenizer()
    encoder = DocumentEncoder(tokenizer, np.uint16, [tokenizer.eot_token])
    texts = [source for _, source in stdlib_sources()[:40]]
    texts += list(stdlib_prose_corpus().train[:400])
    ids, _ = encoder(texts)
    assert np.array_equal(ids, reference(tokenizer, texts))


def test_lookahead_free_applies_to_trained_bpe_too():
    from minigpt.data import stdlib_prose_corpus

    text = "\n\n".join(stdlib_prose_corpus().train[:300])
    tokenizer = BPETokenizer.train_fast([text], 300, special_tokens=["<|endoftext|>"])
    encoder = DocumentEncoder(tokenizer, np.uint16, [tokenizer.eot_token])
    assert encoder.fast_bpe
    texts = [text, "  x  y\t\tz <|endoftext|>  ", ""]
    assert np.array_equal(encoder(texts)[0], reference(tokenizer, texts))


def test_the_progress_bar_shows_rate_and_time_left(tmp_path, capsys):
    folder = write_jsonl_folder(tmp_path / "c", documents(2000))
    prepare(folder, ByteTokenizer(), tmp_path / "t", num_workers=1, progress=True)
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "tok/s" in bar and "documents" in bar and "<00:00" in bar, bar
