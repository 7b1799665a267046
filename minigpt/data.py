"""Corpora, token files and batch samplers: the data side of next-token prediction.

Derived in notebooks/02_language_modeling.ipynb (windows of tokens, inputs ``x`` and targets
``y = x`` shifted by one) and used at scale in notebooks/08_pretraining.ipynb. Three layers:

1. `load_corpus` gives a `Corpus`: a name and ``train``/``val`` documents; the corpora
   themselves live in `minigpt.corpora` and are re-exported here.
2. `prepare` tokenizes a corpus once into *shards*: ``train.000000.bin``, ``train.000001.bin``,
   ... and ``val.000000.bin``, ... A split's token stream is its documents in corpus order,
   separated by the tokenizer's end-of-text token, cut into flat uint16/uint32 arrays of
   `shard_tokens` tokens (the last one shorter). Worker processes on every core tokenize it
   with constant memory, and a killed `prepare` goes on where it stopped. ``meta.json``, written
   last, lists the shards; `load_tokens` maps a split back as one read-only array (a
   `TokenShards` when it has several shards).
3. `RandomWindowSampler` (training) and `SequentialSampler` (evaluation) cut (x, y) batches out of
   a token array. Both are resumable (`state_dict`) and split the global batch between
   data-parallel ranks, so N ranks see exactly the windows one process would see.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import pickle
import re
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm  # the text bar: tqdm.auto needs ipywidgets in notebooks

from minigpt.checkpoint import fsync_dir
from minigpt.corpora import (  # re-exported: `minigpt.data` is the one import for data
    KNOWN_CORPORA,
    Corpus,
    SplitsSource,
    corpus_from_settings,
    hf_corpus,
    in_validation,
    load_corpus,
    local_corpus,
    stdlib_corpus,
    stdlib_prose_corpus,
    stdlib_sources,
    tinyshakespeare_corpus,
)
from minigpt.tokenizer import (
    GPT2_SPLIT_PATTERN,
    BPETokenizer,
    ByteTokenizer,
    GPT2Tokenizer,
    load_tokenizer,
)

# torch is imported inside the samplers only: tokenizing worker processes import this module, and
# on platforms that spawn them (macOS, Windows) each would otherwise pay for importing torch.
if TYPE_CHECKING:
    import torch

__all__ = [
    "KNOWN_CORPORA",
    "Corpus",
    "RandomWindowSampler",
    "SequentialSampler",
    "TokenShards",
    "corpus_from_settings",
    "hf_corpus",
    "in_validation",
    "load_corpus",
    "local_corpus",
    "load_meta",
    "load_tokens",
    "prepare",
    "stdlib_corpus",
    "stdlib_prose_corpus",
    "stdlib_sources",
    "tinyshakespeare_corpus",
    "token_dtype",
]


FORMAT_VERSION = 2  # bump when the layout of the token files changes (2: shards)
SHARD_TOKENS = 100_000_000  # tokens per shard: 200 MB of uint16
CHECKPOINT_SECONDS = 10.0  # at most this much work is redone after a kill (and a shard's worth)
SPLITS = ("train", "val")


# ---------------------------------------------------------------------------------------------
# Files


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits (vocab_size <= 65536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def shard_name(split: str, index: int) -> str:
    """The file name of shard `index` of `split`: ``train.000003.bin``."""
    return f"{split}.{index:06d}.bin"


# Files that prepare owns in a token folder (everything else there is left alone): shards, their
# partial versions, the manifests, the pre-shard token files, and temporary files of killed runs.
_OWNED = re.compile(r"^(train|val)(\.\d+)?\.bin(\.partial)?$|^(meta|progress)\.json$")
_TEMPORARY = re.compile(r"^\.(meta\.json|progress\.json|tokenizer\.json|tokenizer)\..+\.tmp$")


@contextlib.contextmanager
def _atomic_open(path: Path):
    """Write a file in one step: a temp file in the same folder, fsync, then `os.replace`."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _atomic_write(path: Path, data: bytes) -> None:
    with _atomic_open(path) as f:
        f.write(data)


def _json_bytes(value) -> bytes:
    return (json.dumps(value, indent=1) + "\n").encode()


def _tokenizer_json(tokenizer, folder: Path) -> bytes:
    """What `tokenizer.save` writes, captured as bytes (saved under a temporary name)."""
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".tokenizer.", suffix=".tmp")
    os.close(fd)
    try:
        tokenizer.save(temp)
        return Path(temp).read_bytes()
    finally:
        os.unlink(temp)


def _remove(folder: Path, pattern: re.Pattern) -> None:
    for path in folder.iterdir():
        if pattern.match(path.name):
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Encoding documents


class _Encoder:
    """Documents -> (ids, lengths): each document's ids after the separator, and the length of
    each (separator included). Picklable, so that worker processes can run it."""

    def __init__(self, tokenizer, dtype, separator: list[int]):
        self.tokenizer, self.dtype = tokenizer, np.dtype(dtype)
        self.separator = np.asarray(separator, dtype=self.dtype)
        # ByteTokenizer's ids are the UTF-8 bytes: numpy reads them without a Python list.
        self.bytes_fast_path = type(tokenizer) is ByteTokenizer
        self.fast_bpe = _LookaheadFreeBPE.applies_to(tokenizer, separator)
        self._bpe = None  # built where it is used: in each worker

    def __getstate__(self):
        return {**self.__dict__, "_bpe": None}

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if not texts:
            return np.zeros(0, self.dtype), np.zeros(0, np.int64)
        if self.bytes_fast_path:
            return self._bytes(texts)
        if self.fast_bpe:
            if self._bpe is None:
                self._bpe = _LookaheadFreeBPE(self.tokenizer.encoding, int(self.separator[0]))
            ids, lengths = self._bpe.encode(texts)
            return ids.astype(self.dtype), lengths
        return self._generic(texts)

    def _bytes(self, texts):
        separator = self.separator.astype(np.uint8).tobytes()
        encoded = [text.encode("utf-8") for text in texts]
        lengths = np.fromiter(map(len, encoded), np.int64, len(encoded)) + len(separator)
        joined = separator + separator.join(encoded)
        return np.frombuffer(joined, np.uint8).astype(self.dtype), lengths

    def _generic(self, texts):
        pieces, lengths = [], []
        vocab_size = self.tokenizer.vocab_size
        for text in texts:
            ids = np.asarray(self.tokenizer.encode(text), dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
                raise ValueError(
                    f"the tokenizer produced id {int(ids.max())} (or {int(ids.min())}), outside "
                    f"its vocabulary of {vocab_size}"
                )
            pieces += [self.separator, ids.astype(self.dtype)]
            lengths.append(len(self.separator) + len(ids))
        return np.concatenate(pieces), np.asarray(lengths, dtype=np.int64)


# Unicode White_Space: what `\s` matches in tiktoken's regular expressions. Index 0x3001 stands
# for every code point above U+3000, none of which is whitespace.
_WHITESPACE = np.zeros(0x3002, dtype=bool)
_WHITESPACE[[*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028,
             0x2029, 0x202F, 0x205F, 0x3000]] = True
# The UTF-8 of the whitespace characters above U+007F: text without them has one-byte spaces.
_WIDE_SPACE = re.compile(
    rb"\xc2[\x85\xa0]|\xe1\x9a\x80|\xe2\x80[\x80-\x8a\xa8\xa9\xaf]|\xe2\x81\x9f|\xe3\x80\x80"
)
_CUT_UTF8 = np.frombuffer("\ue000".encode(), dtype=np.uint8)  # EE 80 80
_ASCII_SPACE = (np.arange(256) < 128) & _WHITESPACE[:256]  # a UTF-8 byte that is a whole space


class _LookaheadFreeBPE:
    """``encoding.encode(text, allowed_special="all")`` for GPT-2's split pattern, without its
    look-ahead: the same ids, about twice as fast.

    GPT-2's pattern ends in ``\\s+(?!\\S)|\\s+``. That look-ahead forces tiktoken's regex engine
    into a slow backtracking mode, yet it only acts at one kind of place: a run of two or more
    whitespace characters followed by a non-space, where GPT-2 leaves the run's last character
    for the next chunk (so that it can be the space of " word"). We mark each such place with a
    private-use character, ``CUT``, that is a chunk (and a token) of its own; with it, the plain
    ``\\s+`` splits the text into exactly GPT-2's chunks, and the ``CUT`` tokens are dropped.
    A batch of documents is encoded in one call, each after a second marker, ``START``, whose
    token becomes the separator. Documents holding a marker or a special token's text take the
    reference path.
    """

    CUT, START = "\ue000", "\ue001"
    PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}\x{E000}\x{E001}]+"""
               r"""|\s+|[\x{E000}\x{E001}]""")

    @staticmethod
    def applies_to(tokenizer, separator) -> bool:
        """Does `tokenizer.encode` use GPT-2's pattern through tiktoken, as this class assumes?"""
        if type(tokenizer).encode not in (GPT2Tokenizer.encode, BPETokenizer.encode):
            return False
        encoding = tokenizer.encoding
        return (len(separator) == 1 and getattr(encoding, "_pat_str", None) == GPT2_SPLIT_PATTERN
                and hasattr(encoding, "_mergeable_ranks") and hasattr(encoding, "_special_tokens"))

    def __init__(self, encoding, separator_id: int):
        import tiktoken

        self.reference, self.separator_id = encoding, separator_id
        self.cut_id, self.start_id = encoding.max_token_value + 1, encoding.max_token_value + 2
        ranks = {**encoding._mergeable_ranks, self.CUT.encode(): self.cut_id,
                 self.START.encode(): self.start_id}
        self.fast = tiktoken.Encoding(f"{encoding.name}-lookahead-free", pat_str=self.PATTERN,
                                      mergeable_ranks=ranks,
                                      special_tokens=dict(encoding._special_tokens))
        self.specials = tuple(encoding._special_tokens)

    def _safe(self, text: str, starts: int) -> bool:
        return (self.CUT not in text and text.count(self.START) == starts
                and not any(special in text for special in self.specials))

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, lengths) of `texts`, as `_Encoder` returns them."""
        joined = self.START + self.START.join(texts)
        if self._safe(joined, len(texts)):
            with contextlib.suppress(UnicodeEncodeError):  # lone surrogates: the reference path
                return self._encode_joined(joined)
        return self._encode_each(texts)

    def _encode_joined(self, joined: str) -> tuple[np.ndarray, np.ndarray]:
        raw = joined.encode("utf-8")
        if raw.isascii() or not _WIDE_SPACE.search(raw):  # every space is one byte
            cuts, text = self._cut_bytes(raw)
        else:
            cuts, text = self._cut_code_points(joined)
        ids = self.fast.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
        ids = ids[ids != self.cut_id] if cuts else np.array(ids)
        starts = np.flatnonzero(ids == self.start_id)  # one per document
        ids[starts] = self.separator_id
        return ids, np.diff(np.append(starts, ids.size))

    def _cut_bytes(self, raw: bytes) -> tuple[int, str]:
        """Mark the cuts in UTF-8 text whose whitespace is all ASCII; (cuts, marked text)."""
        data = np.frombuffer(raw, dtype=np.uint8)  # (n,) bytes
        space = _ASCII_SPACE[data]  # (n,)
        follows = ~space  # a non-space that is not a document's START
        leads = np.flatnonzero(data[:-2] == 0xEE)  # START is EE 80 81 in UTF-8
        follows[leads[(data[leads + 1] == 0x80) & (data[leads + 2] == 0x81)]] = False
        cuts = np.flatnonzero(space[:-2] & space[1:-1] & follows[2:]) + 1
        if not cuts.size:
            return 0, raw.decode("utf-8")
        marked = np.insert(data, np.repeat(cuts, 3), np.tile(_CUT_UTF8, cuts.size))
        return int(cuts.size), marked.tobytes().decode("utf-8")

    def _cut_code_points(self, joined: str) -> tuple[int, str]:
        """The same for any text, one code point at a time (four bytes each)."""
        points = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)  # (n,) code points
        space = _WHITESPACE[np.minimum(points, len(_WHITESPACE) - 1)]
        follows = ~space & (points != ord(self.START))
        cuts = np.flatnonzero(space[:-2] & space[1:-1] & follows[2:]) + 1
        if not cuts.size:
            return 0, joined
        marked = np.insert(points, cuts, ord(self.CUT))
        return int(cuts.size), marked.tobytes().decode("utf-32-le")

    def _encode_each(self, texts):
        """Runs of safe documents together, the others one by one through the reference."""
        pieces = []
        for safe, group in itertools.groupby(texts, key=lambda text: self._safe(text, 0)):
            group = list(group)
            if safe:
                with contextlib.suppress(UnicodeEncodeError):
                    pieces.append(self._encode_joined(self.START + self.START.join(group)))
                    continue
            for text in group:
                ids = self.reference.encode(text, allowed_special="all")  # mends lone surrogates
                pieces.append((np.array([self.separator_id, *ids], dtype=np.uint32),
                               np.array([len(ids) + 1])))
        return (np.concatenate([ids for ids, _ in pieces]),
                np.concatenate([lengths for _, lengths in pieces]))


_worker_encoder: _Encoder | None = None


def _init_worker(encoder: _Encoder) -> None:
    global _worker_encoder
    _worker_encoder = encoder


def _encode_task(task):
    """In a worker: a task's documents -> (is_val per document, (train ids, lengths), (val ...))."""
    documents = task.documents()
    is_val = np.fromiter((v for v, _ in documents), dtype=bool, count=len(documents))
    train = _worker_encoder([text for v, text in documents if not v])
    val = _worker_encoder([text for v, text in documents if v])
    return is_val, train, val


# Below this many characters, starting worker processes costs more than it saves.
PARALLEL_MIN_CHARACTERS = 4_000_000


def _cpu_count() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cpus or 1)


def _worker_count(source, encoder: _Encoder, num_workers: int | None) -> int:
    if num_workers is not None:
        return max(1, num_workers)
    if isinstance(source, SplitsSource) and source.total_units is not None:  # held in memory
        if encoder.bytes_fast_path or source.total_units < PARALLEL_MIN_CHARACTERS:
            return 1
    return _cpu_count()


def _picklable(encoder: _Encoder) -> bool:
    try:
        pickle.dumps(encoder)
    except Exception as err:
        warnings.warn(
            f"tokenizer cannot be sent to worker processes ({err}); tokenizing serially",
            stacklevel=4,
        )
        return False
    return True


def _encoded_in_order(tasks, encoder: _Encoder, workers: int):
    """(encoded task, position, units) in task order, from `workers` processes.

    At most two tasks per worker are in flight, so memory stays bounded however fast the tasks
    are read (``Pool.imap`` would read ahead without limit).
    """
    if workers <= 1 or not _picklable(encoder):
        _init_worker(encoder)
        for task, position, units in tasks:
            yield _encode_task(task), position, units
        return
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(encoder,)) as pool:
        pending = deque()
        try:
            for task, position, units in tasks:
                pending.append((pool.submit(_encode_task, task), position, units))
                if len(pending) > 2 * workers:
                    future, done_position, done_units = pending.popleft()
                    yield future.result(), done_position, done_units
            while pending:
                future, done_position, done_units = pending.popleft()
                yield future.result(), done_position, done_units
        finally:
            for future, _, _ in pending:
                future.cancel()


# ---------------------------------------------------------------------------------------------
# Shards


class _CannotResume(Exception):
    """The files on disk do not match the progress manifest: start over."""


class _ShardWriter:
    """One split's token stream, cut into shards of `shard_tokens` tokens.

    Tokens are appended to ``<shard>.partial``; a full shard is synced and renamed to its final
    name at once, so a shard file is always complete. `state` (saved in ``progress.json``)
    records the finished shards, each with the place in the split's documents where it ends,
    and the length of the partial shard, from which a new writer goes on.
    """

    def __init__(self, folder: Path, split: str, dtype, shard_tokens: int, state=None):
        self.folder, self.split, self.dtype = folder, split, np.dtype(dtype)
        self.shard_tokens = shard_tokens
        resumed = state is not None
        state = state or {"shards": [], "partial": 0, "tokens": 0, "documents": 0, "last": None}
        self.shards, self.partial = [dict(s) for s in state["shards"]], state["partial"]
        self.tokens, self.documents, self.last = state["tokens"], state["documents"], state["last"]
        self.file, self.finished_shard = None, False
        if resumed:
            self._reopen()

    def _path(self, index: int, partial: bool = False) -> Path:
        return self.folder / (shard_name(self.split, index) + (".partial" if partial else ""))

    def _reopen(self) -> None:
        """Check the finished shards, and truncate the partial one to its recorded length."""
        for index, shard in enumerate(self.shards):
            path = self._path(index)
            if not path.exists() or path.stat().st_size != shard["tokens"] * self.dtype.itemsize:
                raise _CannotResume(f"{path} is missing or has the wrong size")
        current = len(self.shards)
        shard_file = re.compile(rf"^{self.split}\.(\d+)\.bin(\.partial)?$")
        for path in self.folder.iterdir():  # shards begun after the manifest was written
            match = shard_file.match(path.name)
            if match and int(match[1]) > current:
                path.unlink()
        partial, final = self._path(current, partial=True), self._path(current)
        if final.exists():  # it filled up after the manifest was written: continue inside it
            os.replace(final, partial)
        size = self.partial * self.dtype.itemsize
        if not partial.exists():
            if size:
                raise _CannotResume(f"{partial} is missing")
            return
        if partial.stat().st_size < size:
            raise _CannotResume(f"{partial} is shorter than recorded")
        self.file = open(partial, "r+b")  # noqa: SIM115 (closed by close() or finish())
        self.file.truncate(size)
        self.file.seek(size)

    def write(self, ids: np.ndarray, lengths: np.ndarray) -> None:
        """Append whole documents: `ids` holds them back to back, `lengths` their sizes."""
        ends = np.cumsum(lengths)
        done = 0
        while done < ids.size:
            if self.file is None:
                self.file = open(self._path(len(self.shards), partial=True), "wb")  # noqa: SIM115
            take = min(self.shard_tokens - self.partial, ids.size - done)
            self.file.write(memoryview(ids[done : done + take]))
            done, self.partial = done + take, self.partial + take
            if self.partial == self.shard_tokens:
                k = int(np.searchsorted(ends, done))  # the document holding the shard's last token
                before = int(ends[k - 1]) if k else 0
                self._close_shard({"document": self.documents + k, "token": done - before})
        if lengths.size:
            self.last = {"document": self.documents + lengths.size - 1, "token": int(lengths[-1])}
        self.tokens += int(ids.size)
        self.documents += int(lengths.size)

    def _close_shard(self, end: dict) -> None:
        self._sync()
        self.file.close()
        self.file = None
        index = len(self.shards)
        os.replace(self._path(index, partial=True), self._path(index))
        fsync_dir(self.folder)
        self.shards.append({"file": shard_name(self.split, index), "tokens": self.partial,
                            "end": end})
        self.partial, self.finished_shard = 0, True

    def _sync(self) -> None:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())

    def state(self) -> dict:
        """Sync the partial shard and describe where this writer stands (JSON-able)."""
        self._sync()
        self.finished_shard = False
        return {"shards": self.shards, "partial": self.partial, "tokens": self.tokens,
                "documents": self.documents, "last": self.last}

    def finish(self) -> None:
        """The partial shard becomes the last shard."""
        if self.partial:
            self._close_shard(self.last)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class _Tokenizing:
    """One `prepare` run: the writers of both splits, the token budget, and ``progress.json``."""

    def __init__(self, folder: Path, fingerprint: str, dtype, shard_tokens: int, max_tokens: int,
                 separator_length: int):
        self.folder, self.fingerprint, self.shard_tokens = folder, fingerprint, shard_tokens
        self.max_tokens, self.separator_length = max_tokens, separator_length
        progress = self._read_progress()
        self.writers = {}
        try:
            for split in SPLITS:
                state = progress["splits"][split] if progress else None
                self.writers[split] = _ShardWriter(folder, split, dtype, shard_tokens, state)
        except _CannotResume:
            self.close()
            progress = None
        if progress is None:
            _remove(folder, _OWNED)
            self.writers = {s: _ShardWriter(folder, s, dtype, shard_tokens) for s in SPLITS}
        self.position = progress["position"] if progress else None
        self.units = progress["units"] if progress else 0

    def _read_progress(self) -> dict | None:
        try:
            progress = json.loads((self.folder / "progress.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        expected = (FORMAT_VERSION, self.fingerprint, self.shard_tokens)
        found = (progress.get("format"), progress.get("fingerprint"), progress.get("shard_tokens"))
        return progress if found == expected else None

    @property
    def tokens(self) -> int:
        return sum(writer.tokens for writer in self.writers.values())

    def save(self) -> None:
        """Record the position reached; everything before it is on disk."""
        progress = {"format": FORMAT_VERSION, "fingerprint": self.fingerprint,
                    "shard_tokens": self.shard_tokens, "position": self.position,
                    "units": self.units,
                    "splits": {split: w.state() for split, w in self.writers.items()}}
        _atomic_write(self.folder / "progress.json", _json_bytes(progress))

    def add(self, encoded) -> bool:
        """Write one encoded task; True when the token budget is spent."""
        is_val, train, val = encoded
        train, val = self._without_first_separator("train", train), self._without_first_separator(
            "val", val
        )
        train, val, spent = self._within_budget(is_val, train, val)
        self.writers["train"].write(*train)
        self.writers["val"].write(*val)
        return spent

    def _without_first_separator(self, split, encoded):
        """Separators go *between* documents: the split's first document has none."""
        ids, lengths = encoded
        if self.writers[split].documents or not lengths.size:
            return encoded
        lengths = lengths.copy()
        lengths[0] -= self.separator_length
        return ids[self.separator_length :], lengths

    def _within_budget(self, is_val, train, val):
        """Cut the train split at exactly `max_tokens`; keep the val documents read before the
        record where that happens, and stop reading."""
        ids, lengths = train
        remaining = self.max_tokens - self.writers["train"].tokens
        if not self.max_tokens or ids.size < remaining:
            return train, val, False
        ends = np.cumsum(lengths)
        k = int(np.searchsorted(ends, remaining))  # the train document where the budget is spent
        lengths = lengths[: k + 1].copy()
        lengths[k] -= int(ends[k]) - remaining
        record = int(np.flatnonzero(~is_val)[k])
        kept = int(np.count_nonzero(is_val[:record]))
        val_ids, val_lengths = val
        val = val_ids[: int(val_lengths[:kept].sum())], val_lengths[:kept]
        return (ids[:remaining], lengths), val, True

    def run(self, source, encoder: _Encoder, workers: int, bar) -> None:
        saved = time.monotonic()
        tasks = source.tasks(self.position)
        for encoded, position, units in _encoded_in_order(tasks, encoder, workers):
            before = self.tokens
            spent = self.add(encoded)
            self.units += units
            _show_progress(bar, self, source, self.tokens - before)
            if spent:
                break
            self.position = position
            finished = any(w.finished_shard for w in self.writers.values())
            if finished or time.monotonic() - saved > CHECKPOINT_SECONDS:
                self.save()
                saved = time.monotonic()
        for writer in self.writers.values():
            writer.finish()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _show_progress(bar, run: _Tokenizing, source, new_tokens: int) -> None:
    """Advance the bar; its total (hence the ETA) is estimated from the input read so far."""
    bar.update(new_tokens)
    estimate = None
    if source.total_units and run.units:
        estimate = run.tokens * source.total_units / run.units
    train = run.writers["train"].tokens
    if run.max_tokens and train:
        budget = run.max_tokens * run.tokens / train  # both splits, at the current mix
        estimate = min(estimate, budget) if estimate else budget
    if estimate:
        bar.total = max(int(estimate), bar.n)
    bar.set_postfix_str(f"{sum(w.documents for w in run.writers.values()):,} documents",
                        refresh=False)


# ---------------------------------------------------------------------------------------------
# prepare, load_tokens


def load_meta(data_dir) -> dict:
    """The ``meta.json`` that `prepare` wrote in `data_dir`."""
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: tokenize a corpus first, e.g. minigpt.data.prepare('stdlib', "
            f"'byte', {str(data_dir)!r})"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def _shards_of(meta: dict, split: str) -> list[dict]:
    if "shards" in meta:
        return meta["shards"][split]
    return [{"file": f"{split}.bin", "tokens": meta["tokens"][split]}]  # format 1: one file


def _is_current(out_dir: Path, fingerprint: str, shard_tokens: int) -> bool:
    try:
        meta = load_meta(out_dir)
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if meta.get("fingerprint") != fingerprint or meta.get("shard_tokens") != shard_tokens:
        return False
    if not (out_dir / "tokenizer.json").exists():
        return False
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split in SPLITS:
        for shard in _shards_of(meta, split):
            path = out_dir / shard["file"]
            if not path.exists() or path.stat().st_size != shard["tokens"] * itemsize:
                return False
    return True


def _check_count(name: str, value, smallest: int) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < smallest:
        raise ValueError(f"{name} must be an integer ≥ {smallest}, not {value!r}")


def _fingerprint(corpus: Corpus, tokenizer_json: bytes, max_tokens: int) -> str:
    """Names the token stream: the same for any shard size (checked apart, in `_is_current`)."""
    settings = [FORMAT_VERSION, corpus.fingerprint(), tokenizer_json.decode("utf-8"), max_tokens]
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()


def prepare(
    corpus,
    tokenizer,
    out_dir,
    num_workers: int | None = None,
    *,
    progress: bool = True,
    shard_tokens: int = SHARD_TOKENS,
    max_tokens: int = 0,
) -> Path:
    """Tokenize `corpus` into shards in `out_dir` and return `out_dir`.

    Each split's token stream (its documents in corpus order, separated by the tokenizer's
    ``eot_token``, or by the encoding of ``"\\n\\n"`` when it has none) is cut into shards of
    `shard_tokens` tokens, ``train.000000.bin``, ... (flat arrays of `token_dtype`).
    `max_tokens` > 0 caps the train split at exactly that many tokens (reading stops there;
    val keeps the documents read until then); 0 uses every document.

    `num_workers` processes tokenize (None: every core, or 1 for a small corpus held in memory);
    the order of documents is kept, and memory stays bounded whatever the corpus size.
    Resumable: every shard is written atomically, and ``progress.json`` records how far the
    corpus has been read; run again after a kill, `prepare` goes on from there and ends with the
    files an uninterrupted run writes. ``meta.json``, written last, lists the shards and holds a
    fingerprint of the token stream (corpus, tokenizer, `max_tokens`): with the same stream and
    `shard_tokens`, `prepare` returns at once.

    `corpus` is a `Corpus` or anything `load_corpus` takes; `tokenizer` a tokenizer or anything
    `load_tokenizer` takes.
    """
    _check_count("shard_tokens", shard_tokens, 1)
    _check_count("max_tokens", max_tokens, 0)
    corpus = load_corpus(corpus)
    if isinstance(tokenizer, str | os.PathLike):
        tokenizer = load_tokenizer(tokenizer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not corpus.streamed and not corpus.train:
        raise ValueError(f"corpus {corpus.name!r} has no training documents; nothing to prepare")

    _remove(out_dir, _TEMPORARY)  # left by a killed run
    tokenizer_json = _tokenizer_json(tokenizer, out_dir)
    fingerprint = _fingerprint(corpus, tokenizer_json, max_tokens)
    if _is_current(out_dir, fingerprint, shard_tokens):
        (out_dir / "progress.json").unlink(missing_ok=True)
        return out_dir
    # From here on the folder is not a valid token folder until the new meta.json lands.
    (out_dir / "meta.json").unlink(missing_ok=True)

    dtype = token_dtype(tokenizer.vocab_size)
    eot = tokenizer.eot_token
    separator = [eot] if eot is not None else list(tokenizer.encode("\n\n"))
    encoder = _Encoder(tokenizer, dtype, separator)
    source = corpus.documents()
    run = _Tokenizing(out_dir, fingerprint, dtype, shard_tokens, max_tokens, len(separator))
    workers = _worker_count(source, encoder, num_workers)
    name = corpus.name if len(corpus.name) <= 40 else "…" + corpus.name[-39:]
    bar = tqdm(desc=name, unit="tok", unit_scale=True, initial=run.tokens, disable=not progress)
    try:
        run.run(source, encoder, workers, bar)
    finally:
        bar.close()
        run.close()
    if run.writers["train"].tokens == 0:
        raise ValueError(f"corpus {corpus.name!r} produced no training tokens")

    spec = json.loads(tokenizer_json)
    _atomic_write(out_dir / "tokenizer.json", tokenizer_json)
    meta = {
        "format": FORMAT_VERSION,
        "corpus": corpus.name,
        "dtype": dtype.name,
        "vocab_size": tokenizer.vocab_size,
        "eot_token": eot,
        "separator": separator,
        "tokens": {split: w.tokens for split, w in run.writers.items()},
        "documents": {split: w.documents for split, w in run.writers.items()},
        "shard_tokens": shard_tokens,
        "max_tokens": max_tokens,
        "shards": {split: w.shards for split, w in run.writers.items()},
        # The scalar fields of the saved tokenizer (its type, name...), not its vocabulary.
        "tokenizer": {k: v for k, v in spec.items() if isinstance(v, str | int | float | bool)},
        "tokenizer_file": "tokenizer.json",
        "fingerprint": fingerprint,
    }
    _atomic_write(out_dir / "meta.json", _json_bytes(meta))
    (out_dir / "progress.json").unlink(missing_ok=True)
    fsync_dir(out_dir)
    return out_dir


def load_tokens(data_dir, split: str) -> np.ndarray | TokenShards:
    """The tokens of `split` ("train" or "val") in `data_dir`, read-only and memory-mapped.

    A split of one shard is an ``np.memmap``; one of several is a `TokenShards`, which indexes
    like their concatenation. (An empty split comes back as an empty read-only array.)
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    meta = load_meta(data_dir)
    dtype = np.dtype(meta["dtype"])
    shards = []
    for shard in _shards_of(meta, split):
        path, count = Path(data_dir) / shard["file"], shard["tokens"]
        size = path.stat().st_size if path.exists() else 0
        if size != count * dtype.itemsize:
            raise ValueError(
                f"{path} has {size} bytes, but meta.json says {count} tokens of {dtype.name}; "
                "run prepare() again"
            )
        if count:
            shards.append(np.memmap(path, dtype=dtype, mode="r", shape=(count,)))
    if not shards:
        empty = np.zeros(0, dtype=dtype)
        empty.flags.writeable = False
        return empty
    return shards[0] if len(shards) == 1 else TokenShards(shards, split)


class TokenShards:
    """The shards of one split seen as one read-only token array, without reading them.

    Indexing with an integer, a slice or an array of integers gives what the same index gives
    on ``np.concatenate(shards)``, reading only the shards it touches: a window may span two
    shards. ``np.asarray`` builds the whole concatenation (in memory).
    """

    ndim = 1

    def __init__(self, shards: Sequence[np.ndarray], split: str | None = None):
        self.shards = list(shards)
        if not self.shards or any(s.ndim != 1 or s.dtype != self.shards[0].dtype for s in shards):
            raise ValueError("TokenShards needs one or more flat arrays of one dtype")
        sizes = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.ends = np.cumsum(sizes)  # (shards,) position just after each shard
        self.starts = self.ends - sizes
        self.dtype, self.split = self.shards[0].dtype, split

    def __len__(self) -> int:
        return int(self.ends[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    @property
    def size(self) -> int:
        return len(self)

    def __getitem__(self, index):
        if isinstance(index, int | np.integer):
            position = self._checked(np.array([index]))[0]
            shard = int(np.searchsorted(self.ends, position, side="right"))
            return self.shards[shard][position - self.starts[shard]]
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            return self._range(start, stop) if step == 1 else self[np.arange(start, stop, step)]
        positions = np.asarray(index)
        if not np.issubdtype(positions.dtype, np.integer):
            raise IndexError(f"TokenShards takes integers, slices or integer arrays, not {index!r}")
        return self._gather(positions)

    def _checked(self, positions: np.ndarray) -> np.ndarray:
        positions = positions.astype(np.int64)
        positions = np.where(positions < 0, positions + len(self), positions)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} tokens")
        return positions

    def _range(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.zeros(0, self.dtype)
        first = int(np.searchsorted(self.ends, start, side="right"))
        last = int(np.searchsorted(self.ends, stop - 1, side="right"))
        pieces = [self.shards[s][max(start - self.starts[s], 0) : stop - self.starts[s]]
                  for s in range(first, last + 1)]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def _gather(self, positions: np.ndarray) -> np.ndarray:
        flat = self._checked(positions.reshape(-1))
        shard = np.searchsorted(self.ends, flat, side="right")  # which shard holds each
        out = np.empty(flat.shape, dtype=self.dtype)
        order = np.argsort(shard, kind="stable")
        bounds = np.searchsorted(shard[order], np.arange(len(self.shards) + 1))
        for s in np.flatnonzero(np.diff(bounds)):
            picked = order[bounds[s] : bounds[s + 1]]
            out[picked] = self.shards[s][flat[picked] - self.starts[s]]
        return out.reshape(positions.shape)

    def __array__(self, dtype=None, copy=None):
        whole = np.concatenate(self.shards)
        return whole if dtype is None else whole.astype(dtype)

    def tolist(self) -> list[int]:
        return np.asarray(self).tolist()

    def __repr__(self) -> str:
        return (f"TokenShards({self.split or 'tokens'}: {len(self):,} tokens of {self.dtype.name} "
                f"in {len(self.shards)} shards)")


# ---------------------------------------------------------------------------------------------
# Samplers


def _as_tokens(tokens) -> np.ndarray:
    import torch

    if isinstance(tokens, torch.Tensor):
        return tokens.detach().cpu().numpy()
    if isinstance(tokens, np.ndarray | TokenShards):
        return tokens
    return np.asarray(tokens, dtype=np.int64)


def _check_ints(**values) -> None:
    for name, value in values.items():
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")


class _WindowSampler:
    """Shared by both samplers: validation, the rank's slice, and cutting windows into (x, y)."""

    def __init__(self, tokens, block_size, batch_size, rank, world_size, split):
        self.tokens = _as_tokens(tokens)
        if self.tokens.ndim != 1:
            raise ValueError(f"tokens must be a flat array, not of shape {self.tokens.shape}")
        _check_ints(block_size=block_size, batch_size=batch_size, world_size=world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), not {rank}")
        if split is None:
            split = getattr(self.tokens, "split", None)
        if split is None:  # a shard "val.000000.bin" (or a "val.bin") is of the val split
            filename = getattr(self.tokens, "filename", None)
            split = Path(filename).name.split(".")[0] if filename else "token"
        n = len(self.tokens)
        if n == 0:
            raise ValueError(f"the {split} split is empty (0 tokens): prepare a non-empty corpus")
        if n < block_size + 1:
            raise ValueError(
                f"the {split} split has {n} tokens, but one window needs block_size + 1 = "
                f"{block_size + 1}; use a larger corpus or a smaller block_size (at most {n - 1})"
            )
        self.block_size, self.batch_size = block_size, batch_size
        self.rank, self.world_size, self.split = rank, world_size, split

    @property
    def global_batch_size(self) -> int:
        """Windows per step summed over all ranks."""
        return self.batch_size * self.world_size

    def _rank_slice(self, global_starts: np.ndarray) -> np.ndarray:
        return global_starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def _windows(self, starts: np.ndarray, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        offsets = np.arange(self.block_size + 1)
        windows = self.tokens[starts[:, None] + offsets].astype(np.int64)  # (B, T + 1)
        x = torch.from_numpy(np.ascontiguousarray(windows[:, :-1]))  # (B, T) inputs
        y = torch.from_numpy(np.ascontiguousarray(windows[:, 1:]))  # (B, T) next-token targets
        if device is not None:
            device = torch.device(device)
            if device.type == "cuda":  # pinned memory lets the copy overlap with compute
                return (
                    x.pin_memory().to(device, non_blocking=True),
                    y.pin_memory().to(device, non_blocking=True),
                )
            x, y = x.to(device), y.to(device)
        return x, y

    def _check_state(self, state: dict, kind: str) -> None:
        if state.get("sampler") != kind:
            raise ValueError(f"this state is from a {state.get('sampler')!r} sampler, not {kind!r}")
        if state["block_size"] != self.block_size or state["global_batch_size"] != (
            self.global_batch_size
        ):
            raise ValueError(
                f"cannot resume: the state has block_size={state['block_size']} and "
                f"global_batch_size={state['global_batch_size']}, this sampler "
                f"block_size={self.block_size} and global_batch_size={self.global_batch_size}"
            )


class RandomWindowSampler(_WindowSampler):
    """Random windows for training: ``x = tokens[s : s + T]``, ``y = tokens[s + 1 : s + T + 1]``.

    Step k draws the global batch (``batch_size * world_size`` starts) from a generator seeded
    with ``(seed, k)``, the same on every rank, and this rank keeps its ``batch_size`` slice. So
    two ranks with batch b see exactly the windows one process with batch 2b sees, and the whole
    state is the step counter: resuming from `state_dict` gives identical batches.
    """

    def __init__(
        self,
        tokens,
        block_size: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        *,
        split: str | None = None,
    ):
        super().__init__(tokens, block_size, batch_size, rank, world_size, split)
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
        self.seed, self.step = int(seed), 0

    def global_starts(self, step: int) -> np.ndarray:
        """Start offsets of all ranks' windows at `step`, shape (batch_size * world_size,)."""
        generator = np.random.default_rng([self.seed, step])
        return generator.integers(0, len(self.tokens) - self.block_size, self.global_batch_size)

    def next_batch(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), int64 tensors of shape (batch_size, block_size), y = x shifted by one."""
        starts = self._rank_slice(self.global_starts(self.step))
        self.step += 1
        return self._windows(starts, device)

    def __iter__(self):
        """An endless stream of batches (training runs count steps, not epochs)."""
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {
            "sampler": "random",
            "seed": self.seed,
            "step": self.step,
            "block_size": self.block_size,
            "global_batch_size": self.global_batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        self._check_state(state, "random")
        self.seed, self.step = int(state["seed"]), int(state["step"])


class SequentialSampler(_WindowSampler):
    """Non-overlapping windows in order, for evaluation: window i starts at ``i * block_size``.

    An epoch visits each of the ``(len(tokens) - 1) // block_size`` windows once; step by step,
    the next ``batch_size * world_size`` windows form the global batch and each rank keeps its
    slice. The last batch of an epoch is smaller (some ranks' slices may even be empty) unless
    ``drop_last=True``. After the last batch the epoch counter moves on and it starts over.
    """

    def __init__(
        self,
        tokens,
        block_size: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        *,
        split: str | None = None,
        drop_last: bool = False,
    ):
        super().__init__(tokens, block_size, batch_size, rank, world_size, split)
        self.num_windows = (len(self.tokens) - 1) // block_size
        self.drop_last = drop_last
        if drop_last and self.num_windows < self.global_batch_size:
            raise ValueError(
                f"the {self.split} split has {self.num_windows} windows of {block_size} tokens, "
                f"fewer than one global batch of {self.global_batch_size}; use drop_last=False "
                "or a smaller batch"
            )
        self.epoch, self.position = 0, 0  # position: index of the next window

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.num_windows, self.global_batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def next_batch(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) for the next windows; shapes (rows, block_size) with rows <= batch_size."""
        end = min(self.position + self.global_batch_size, self.num_windows)
        window_ids = self._rank_slice(np.arange(self.position, end))
        self.position = end
        if self.position >= len(self) * self.global_batch_size or end == self.num_windows:
            self.epoch, self.position = self.epoch + 1, 0
        return self._windows(window_ids * self.block_size, device)

    def __iter__(self):
        """The remaining batches of the current epoch."""
        epoch = self.epoch
        while self.epoch == epoch:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {
            "sampler": "sequential",
            "epoch": self.epoch,
            "position": self.position,
            "block_size": self.block_size,
            "global_batch_size": self.global_batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        self._check_state(state, "sequential")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
