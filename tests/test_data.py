"""minigpt.data: corpora, token files and samplers."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
import types

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minigpt import corpora, data
from minigpt.data import (
    Corpus,
    RandomWindowSampler,
    SequentialSampler,
    in_validation,
    load_corpus,
    load_meta,
    load_tokens,
    prepare,
    stdlib_sources,
)
from minigpt.tokenizer import ByteTokenizer, load_tokenizer

# ---------------------------------------------------------------------------------------------
# Tokenizers for the tests


class GenericByteTokenizer(ByteTokenizer):
    """ByteTokenizer's ids through the generic path (a subclass skips the numpy fast path)."""


class EotByteTokenizer(ByteTokenizer):
    """Bytes plus an end-of-text token 256."""

    vocab_size = 257
    eot_token = 256

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i != 256).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {"type": "byte-eot"}


class WideTokenizer(ByteTokenizer):
    """A vocabulary too large for uint16: byte b is id 70000 + b."""

    vocab_size = 70_256
    eot_token = 70_255

    def encode(self, text: str) -> list[int]:
        return [70_000 + b for b in text.encode("utf-8")]

    def to_dict(self) -> dict:
        return {"type": "wide"}


class FailingTokenizer(ByteTokenizer):
    """Raises on the third document it sees."""

    def __init__(self):
        self.calls = 0

    def encode(self, text: str) -> list[int]:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("tokenizer broke")
        return super().encode(text)

    def to_dict(self) -> dict:
        return {"type": "failing"}


def folder_corpus(tmp_path, n=12, name="docs"):
    """A folder of `n` text files, read into memory (a folder corpus itself is streamed)."""
    folder = tmp_path / name
    folder.mkdir()
    for i in range(n):
        (folder / f"doc{i:02d}.txt").write_text(f"document {i}: " + "héllo wörld " * (i + 3))
    streamed = load_corpus(folder)
    return Corpus(streamed.name, tuple(streamed.train), tuple(streamed.val))


# ---------------------------------------------------------------------------------------------
# One import for data


def test_data_and_corpora_keep_every_name_they_promise():
    # Corpora, token files and prepare live in modules of their own; these two re-export them.
    import importlib

    for module in (data, corpora):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, f"{module.__name__} lacks {missing}"
    defined_in = {"prepare": "minigpt.prepare", "load_tokens": "minigpt.shards",
                  "TokenShards": "minigpt.shards", "Corpus": "minigpt.documents",
                  "in_validation": "minigpt.documents", "load_corpus": "minigpt.corpora"}
    for name, module in defined_in.items():
        assert getattr(data, name) is getattr(importlib.import_module(module), name), name


# ---------------------------------------------------------------------------------------------
# The stdlib corpora


def test_stdlib_corpus_is_deterministic():
    first = load_corpus("stdlib")
    corpora._stdlib_sources.cache_clear()  # read the files again
    second = load_corpus("stdlib")
    assert first.train == second.train and first.val == second.val
    assert first.fingerprint() == second.fingerprint()
    assert first.name == "stdlib"
    assert len(first.train) > 100 and len(first.val) > 5


def test_stdlib_has_no_tests_or_site_packages():
    paths = [path for path, _ in stdlib_sources()]
    assert paths == sorted(paths)
    assert {"os.py", "json/decoder.py", "unittest/case.py"} <= set(paths)
    for path in paths:
        parts = path.split("/")
        assert not {"test", "tests", "idle_test", "site-packages", "dist-packages"} & set(parts)
        assert not any(part.startswith("test_") for part in parts), path
    text = "".join(source for _, source in stdlib_sources())
    assert "import unittest\n" not in stdlib_sources_of("json/decoder.py")
    assert len(text) > 1_000_000


def stdlib_sources_of(relpath):
    return dict(stdlib_sources())[relpath]


def test_stdlib_split_is_by_file_and_stable():
    corpus = load_corpus("stdlib")
    sources = stdlib_sources()
    val_paths = [path for path, _ in sources if in_validation(path)]
    train_paths = [path for path, _ in sources if not in_validation(path)]
    assert 0 < len(val_paths) < 0.15 * len(sources)
    assert corpus.val == tuple(dict(sources)[path] for path in val_paths)
    assert corpus.train == tuple(dict(sources)[path] for path in train_paths)
    assert set(corpus.train).isdisjoint(corpus.val)


def test_split_rule_is_pinned():
    # Changing the rule would silently move files across the split; these values pin it.
    keys = [f"file{i}.py" for i in range(200)]
    assert [k for k in keys if in_validation(k)][:5] == [
        "file0.py",
        "file11.py",
        "file69.py",
        "file90.py",
        "file135.py",
    ]
    assert not in_validation("os.py") and not in_validation("json/decoder.py")
    fraction = np.mean([in_validation(f"file{i}.py") for i in range(20_000)])
    assert 0.045 < fraction < 0.055
    assert not in_validation("anything", 0.0) and in_validation("anything", 1.0)


def test_stdlib_exclusion_rules_on_a_fake_tree(tmp_path):
    files = {
        "keep.py": "x = 1\n",
        "pkg/mod.py": "y = 2\n",
        "unittest/case.py": "z = 3\n",  # 'unittest' is library code, not a test folder
        "test/test_os.py": "t = 1\n",
        "pkg/tests/helper.py": "t = 2\n",
        "idlelib/idle_test/x.py": "t = 3\n",
        "tkinter/test/test_ttk/y.py": "t = 4\n",
        "pkg/test_thing.py": "t = 5\n",
        "site-packages/lib.py": "t = 6\n",
        "dist-packages/lib.py": "t = 7\n",
        "pkg/empty.py": "",
        "pkg/notes.txt": "not python",
    }
    for relpath, text in files.items():
        (tmp_path / relpath).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relpath).write_text(text)
    (tmp_path / "latin.py").write_bytes(b"# -*- coding: latin-1 -*-\ns = '\xe9'\n")
    kept = [path for path, _ in stdlib_sources(tmp_path)]
    assert kept == ["keep.py", "pkg/mod.py", "unittest/case.py"]
    corpus = data.stdlib_corpus(root=tmp_path)
    assert sorted(corpus.train + corpus.val) == ["x = 1\n", "y = 2\n", "z = 3\n"]
    assert corpus.val  # few files: the smallest hash goes to val rather than leaving it empty


def test_stdlib_prose():
    corpus = load_corpus("stdlib-prose")
    assert corpus.name == "stdlib-prose"
    assert len(corpus.train) > 1000 and len(corpus.val) > 10
    text = corpus.text("train")
    letters = sum(c.isalpha() or c.isspace() for c in text)
    assert letters / len(text) > 0.8  # prose, not code
    assert text.count(". ") > 5000
    from pydoc_data.topics import topics

    assert topics["assert"].strip() in corpus.train + corpus.val
    # Cleaned: no docstring keeps the indentation of its source.
    assert not any(doc.startswith((" ", "\n")) for doc in corpus.train)


def test_prose_follows_the_code_split(tmp_path):
    for i in range(40):
        (tmp_path / f"m{i}.py").write_text(
            f'"""Module {i} docstring."""\n\nclass C:\n    """Class of module {i}."""\n'
            f'    def f(self):\n        """Method of module {i}."""\n'
        )
    prose = data.stdlib_prose_corpus(root=tmp_path)
    code = data.stdlib_corpus(root=tmp_path)
    assert len(prose.train) + len(prose.val) == 120
    assert prose.train[:3] == ("Module 0 docstring.", "Class of module 0.", "Method of module 0.")
    val_modules = {re.search(r"(\d+)", doc).group(1) for doc in code.val}
    assert val_modules == {re.search(r"(\d+)", doc).group(1) for doc in prose.val}


# ---------------------------------------------------------------------------------------------
# Local corpora and errors


def test_local_file_split_90_10(tmp_path):
    text = "".join(f"line {i}\n" for i in range(500))
    path = tmp_path / "book.txt"
    path.write_text(text)
    corpus = load_corpus(path)
    assert corpus.train == (text[: int(len(text) * 0.9)],)
    assert corpus.train[0] + corpus.val[0] == text
    assert load_corpus(str(path)).train == corpus.train


def test_local_folder(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    expected = {}
    for i in range(30):
        relpath = f"sub/{i:02d}.md" if i % 3 == 0 else f"{i:02d}.txt"
        expected[relpath] = f"text number {i}\n"
        (folder / relpath).write_text(expected[relpath])
    (folder / ".hidden" / "secret.txt").write_text("hidden")
    (folder / "image.bin").write_bytes(b"\x89PNG\0\0\x01")
    (folder / "empty.txt").write_text("")
    corpus = load_corpus(folder)
    assert corpus.streamed
    train, val = list(corpus.train), list(corpus.val)
    assert val and train
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == sorted(expected.values())
    ordered = [expected[k] for k in sorted(expected)]  # sorted by relative path
    assert train == [t for t in ordered if t in train]
    # No path hashes into val here, so the usable file with the smallest hash moves over.
    assert not any(in_validation(k) for k in [*expected, "image.bin", "empty.txt"])
    assert val == [expected[min(expected, key=lambda k: hashlib.sha256(k.encode()).digest())]]
    only_md = load_corpus(folder, glob="**/*.md")
    assert sorted([*only_md.train, *only_md.val]) == sorted(
        text for relpath, text in expected.items() if relpath.endswith(".md")
    )


def test_empty_corpora(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        load_corpus(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("  \n")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(tmp_path / "blank.txt")
    with pytest.raises(ValueError, match="no training documents"):
        prepare(Corpus("nothing", (), ()), ByteTokenizer(), tmp_path / "out", progress=False)


def test_missing_path_and_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError) as excinfo:
        load_corpus(tmp_path / "nope.txt")
    assert "nope.txt" in str(excinfo.value)
    assert "stdlib" in str(excinfo.value) and "tinyshakespeare" in str(excinfo.value)
    with pytest.raises(ValueError) as excinfo:
        load_corpus("shakespear")
    message = str(excinfo.value)
    assert "'shakespear'" in message
    for known in ("stdlib", "stdlib-prose", "tinyshakespeare", "hf:<dataset>"):
        assert known in message


def test_hf_needs_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ImportError, match=re.escape('pip install "minigpt[datasets]"')):
        load_corpus("hf:HuggingFaceFW/fineweb-edu")


def fake_datasets(load_dataset):
    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset
    return module


def test_hf_offline_message(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/web' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setitem(sys.modules, "datasets", fake_datasets(load_dataset))
    with pytest.raises(ConnectionError) as excinfo:
        load_corpus("hf:someone/web")
    message = str(excinfo.value)
    assert "'someone/web'" in message and "offline" in message and "stdlib" in message


# ---------------------------------------------------------------------------------------------
# Token files


def decoded_split(out, split, tokenizer):
    return tokenizer.decode(load_tokens(out, split).tolist())


def test_prepare_writes_token_files(tmp_path):
    corpus = folder_corpus(tmp_path)
    out = prepare(corpus, ByteTokenizer(), tmp_path / "tokens", progress=False)
    for split in ("train", "val"):
        tokens = load_tokens(out, split)  # one shard: a plain memory map
        assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16
        assert decoded_split(out, split, ByteTokenizer()) == "\n\n".join(getattr(corpus, split))
        with pytest.raises(ValueError):
            tokens[0] = 1  # read-only
    meta = json.loads((out / "meta.json").read_text())
    train_bytes = len("\n\n".join(corpus.train).encode())
    assert meta["tokens"] == {"train": train_bytes, "val": len("\n\n".join(corpus.val).encode())}
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 256
    assert meta["corpus"] == corpus.name and meta["tokenizer"] == {"type": "byte"}
    assert meta["documents"] == {"train": len(corpus.train), "val": len(corpus.val)}
    assert (out / "train.000000.bin").stat().st_size == 2 * train_bytes
    assert meta["shards"]["train"] == [
        {"file": "train.000000.bin", "tokens": train_bytes,
         "end": {"document": len(corpus.train) - 1, "token": 2 + len(corpus.train[-1].encode())}}
    ]
    assert isinstance(load_tokenizer(out / "tokenizer.json"), ByteTokenizer)
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json",
        "tokenizer.json",
        "train.000000.bin",
        "val.000000.bin",
    ]  # no temporary files, no progress.json left behind


def test_prepare_separates_documents_with_eot(tmp_path):
    corpus = folder_corpus(tmp_path)
    out = prepare(corpus, EotByteTokenizer(), tmp_path / "tokens", progress=False)
    tokens = load_tokens(out, "train")
    assert (tokens == 256).sum() == len(corpus.train) - 1
    pieces = np.split(np.asarray(tokens), np.flatnonzero(tokens == 256))
    documents = [bytes(p[p != 256].astype(np.uint8)).decode() for p in pieces]
    assert documents == list(corpus.train)
    assert load_meta(out)["separator"] == [256]


def test_prepare_uint32_for_large_vocabularies(tmp_path):
    corpus = folder_corpus(tmp_path)
    out = prepare(corpus, WideTokenizer(), tmp_path / "tokens", progress=False)
    tokens = load_tokens(out, "train")
    assert tokens.dtype == np.uint32 and load_meta(out)["dtype"] == "uint32"
    assert tokens.max() == 70_255 and tokens.min() >= 70_000


def test_prepare_reuses_and_rebuilds(tmp_path):
    corpus = folder_corpus(tmp_path)
    out = tmp_path / "tokens"
    prepare(corpus, ByteTokenizer(), out, progress=False)
    before = (out / "train.000000.bin").stat()
    prepare(corpus, ByteTokenizer(), out, progress=False)  # same corpus and tokenizer: reused
    after = (out / "train.000000.bin").stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)

    prepare(corpus, EotByteTokenizer(), out, progress=False)  # another tokenizer: rebuilt
    assert load_meta(out)["separator"] == [256]
    changed = Corpus(corpus.name, corpus.train[:-1], corpus.val)
    prepare(changed, EotByteTokenizer(), out, progress=False)  # other documents: rebuilt
    assert load_meta(out)["documents"]["train"] == len(corpus.train) - 1

    (out / "val.000000.bin").write_bytes(b"\0\0")  # damaged file: rebuilt
    prepare(changed, EotByteTokenizer(), out, progress=False)
    assert len(load_tokens(out, "val")) == load_meta(out)["tokens"]["val"] > 1


def test_failed_prepare_leaves_no_partial_state(tmp_path):
    corpus = folder_corpus(tmp_path)
    out = tmp_path / "tokens"
    prepare(corpus, ByteTokenizer(), out, progress=False)
    with pytest.raises(RuntimeError, match="tokenizer broke"):
        prepare(corpus, FailingTokenizer(), out, num_workers=1, progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert "meta.json" not in names and not [n for n in names if n.endswith(".tmp")], names
    with pytest.raises(FileNotFoundError, match="prepare"):
        load_tokens(out, "train")  # meta.json went first: the folder is not taken for valid


def test_parallel_and_generic_paths_match_the_fast_path(tmp_path):
    corpus = folder_corpus(tmp_path, n=40)
    fast = prepare(corpus, ByteTokenizer(), tmp_path / "fast", progress=False)
    serial = prepare(
        corpus, GenericByteTokenizer(), tmp_path / "serial", num_workers=1, progress=False
    )
    parallel = prepare(
        corpus, GenericByteTokenizer(), tmp_path / "parallel", num_workers=2, progress=False
    )
    for split in ("train", "val"):
        expected = (fast / f"{split}.000000.bin").read_bytes()
        assert (serial / f"{split}.000000.bin").read_bytes() == expected
        assert (parallel / f"{split}.000000.bin").read_bytes() == expected


def test_prepare_full_stdlib_is_fast(tmp_path):
    corpus = load_corpus("stdlib")
    start = time.perf_counter()
    out = prepare(corpus, ByteTokenizer(), tmp_path / "stdlib", progress=False)
    elapsed = time.perf_counter() - start
    expected = sum(len(doc.encode()) for doc in corpus.train) + 2 * (len(corpus.train) - 1)
    assert load_meta(out)["tokens"]["train"] == expected
    assert elapsed < 15, f"preparing the stdlib corpus took {elapsed:.1f} s"
    assert prepare("stdlib", "byte", out, progress=False) == out  # names work too


def test_load_tokens_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare"):
        load_tokens(tmp_path, "train")
    out = prepare(folder_corpus(tmp_path), ByteTokenizer(), tmp_path / "t", progress=False)
    with pytest.raises(ValueError, match="'train' or 'val'"):
        load_tokens(out, "test")


# ---------------------------------------------------------------------------------------------
# Samplers


def positions(n):
    """Tokens whose value is their position, so a window tells where it was cut."""
    return np.arange(n, dtype=np.int64)


def test_random_batches_are_shifted_windows():
    sampler = RandomWindowSampler(positions(1000), block_size=16, batch_size=4, seed=3)
    for _ in range(5):
        x, y = sampler.next_batch()
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
        assert x.is_contiguous() and y.is_contiguous()
        assert torch.equal(x, x[:, :1] + torch.arange(16))  # contiguous windows
        assert torch.equal(y, x + 1)  # targets: the next token


def test_random_windows_reach_both_ends():
    block = 8
    sampler = RandomWindowSampler(positions(block + 3), block, batch_size=16)
    starts = {int(s) for _ in range(10) for s in sampler.next_batch()[0][:, 0]}
    assert starts == {0, 1, 2}  # the last window ends exactly at the last token


def test_random_sampler_resumes_exactly():
    tokens = positions(5000)
    sampler = RandomWindowSampler(tokens, 32, 8, seed=7)
    for _ in range(3):
        sampler.next_batch()
    state = json.loads(json.dumps(sampler.state_dict()))  # a checkpoint survives JSON
    expected = [sampler.next_batch() for _ in range(4)]
    resumed = RandomWindowSampler(tokens, 32, 8, seed=0)
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(expected, (resumed.next_batch() for _ in range(4)), strict=True):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    fresh = RandomWindowSampler(tokens, 32, 8, seed=7)
    assert not torch.equal(fresh.next_batch()[0], expected[0][0])
    with pytest.raises(ValueError, match="block_size"):
        RandomWindowSampler(tokens, 16, 8).load_state_dict(state)


def test_random_sampler_seeds():
    tokens = positions(10_000)
    a, b, c = (RandomWindowSampler(tokens, 8, 4, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.next_batch()[0], b.next_batch()[0])
    assert not torch.equal(a.next_batch()[0], c.next_batch()[0])


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_split_the_global_batch(world_size):
    tokens = positions(10_000)
    single = RandomWindowSampler(tokens, 16, 2 * world_size, seed=5)
    ranks = [
        RandomWindowSampler(tokens, 16, 2, seed=5, rank=r, world_size=world_size)
        for r in range(world_size)
    ]
    for _ in range(5):
        x, y = single.next_batch()
        parts = [sampler.next_batch() for sampler in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
    assert len({tuple(p[0][:, 0].tolist()) for p in parts}) == world_size  # ranks differ


def epoch_starts(sampler):
    return [int(s) for x, _ in sampler for s in x[:, 0]]


def test_sequential_covers_each_window_once_per_epoch():
    n, block = 1003, 10
    sampler = SequentialSampler(positions(n), block, batch_size=7)
    num_windows = (n - 1) // block
    assert len(sampler) == -(-num_windows // 7)
    first = epoch_starts(sampler)
    assert first == list(range(0, num_windows * block, block))
    assert sampler.epoch == 1
    assert epoch_starts(sampler) == first and sampler.epoch == 2
    x, y = SequentialSampler(positions(n), block, 7).next_batch()
    assert torch.equal(y, x + 1) and x.shape == (7, block)


def test_sequential_ranks_and_resume():
    tokens = positions(2001)
    single = epoch_starts(SequentialSampler(tokens, 10, 8))
    ranks = [SequentialSampler(tokens, 10, 4, rank=r, world_size=2) for r in range(2)]
    batches = [list(sampler) for sampler in ranks]
    assert len(batches[0]) == len(batches[1])
    merged = [int(s) for a, b in zip(*batches, strict=True) for s in torch.cat([a[0], b[0]])[:, 0]]
    assert merged == single

    sampler = SequentialSampler(tokens, 10, 8)
    for _ in range(5):
        sampler.next_batch()
    state = sampler.state_dict()
    expected = [sampler.next_batch()[0] for _ in range(30)]  # crosses into the next epoch
    resumed = SequentialSampler(tokens, 10, 8)
    resumed.load_state_dict(state)
    assert all(torch.equal(e, resumed.next_batch()[0]) for e in expected)
    assert resumed.epoch == sampler.epoch == 1


def test_sequential_drop_last():
    sampler = SequentialSampler(positions(1001), 10, 8, drop_last=True)  # 100 windows
    assert len(sampler) == 12
    starts = epoch_starts(sampler)
    assert starts == list(range(0, 96 * 10, 10))
    with pytest.raises(ValueError, match="drop_last"):
        SequentialSampler(positions(51), 10, 8, drop_last=True)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 400),
    block=st.integers(1, 20),
    batch=st.integers(1, 6),
    world=st.integers(1, 4),
)
def test_sequential_partition_property(n, block, batch, world):
    assume(n >= block + 1)
    samplers = [
        SequentialSampler(positions(n), block, batch, rank=r, world_size=world)
        for r in range(world)
    ]
    seen = []
    for _ in range(len(samplers[0])):
        for sampler in samplers:
            x, _ = sampler.next_batch()
            assert x.shape[1] == block and x.shape[0] <= batch
            seen += x[:, 0].tolist()
    assert seen == list(range(0, ((n - 1) // block) * block, block))
    assert all(sampler.epoch == 1 and sampler.position == 0 for sampler in samplers)


def test_sampler_inputs():
    for tokens in (list(range(100)), torch.arange(100), np.arange(100, dtype=np.uint16)):
        x, y = RandomWindowSampler(tokens, 10, 2).next_batch()
        assert x.dtype == torch.int64 and torch.equal(y, x + 1)


def test_sampler_errors(tmp_path):
    with pytest.raises(ValueError) as excinfo:
        RandomWindowSampler(positions(50), block_size=64, batch_size=2, split="val")
    message = str(excinfo.value)
    assert "val" in message and "50 tokens" in message and "block_size" in message
    assert "65" in message and "smaller block_size" in message and "larger corpus" in message
    with pytest.raises(ValueError, match="empty"):
        SequentialSampler(np.zeros(0, dtype=np.uint16), 8, 2)
    with pytest.raises(ValueError, match="rank"):
        RandomWindowSampler(positions(100), 8, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="block_size"):
        RandomWindowSampler(positions(100), 0, 2)

    # The split name comes from the token file when it is not given.
    folder = tmp_path / "small"
    folder.mkdir()
    (folder / "a.txt").write_text("x" * 1000)
    out = prepare(load_corpus(folder), ByteTokenizer(), tmp_path / "t", progress=False)
    with pytest.raises(ValueError, match=r"the val split has 100 tokens"):
        RandomWindowSampler(load_tokens(out, "val"), 128, 4)
