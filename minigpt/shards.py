"""Token files: a split's token stream as shards on disk, written resumably and read back as one
array.

`minigpt.data.prepare` writes them once per corpus and tokenizer, and training reads them
(notebooks/08_pretraining.ipynb). A split's token stream is its documents in corpus order,
separated by the tokenizer's end-of-text token, cut into flat uint16/uint32 arrays of
`shard_tokens` tokens: ``train.000000.bin``, ``train.000001.bin``, ... (the last one shorter).
`ShardWriter` writes one split's shards so that a killed writer can go on where it stopped;
``meta.json``, written last by `prepare`, lists them; `load_tokens` maps a split back as one
read-only array (a `TokenShards` when it has several shards).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from minigpt.checkpoint import fsync_dir

__all__ = ["ShardWriter", "TokenShards", "load_meta", "load_tokens", "shard_name", "token_dtype"]

FORMAT_VERSION = 2  # bump when the layout of the token files changes (2: shards)
SHARD_TOKENS = 100_000_000  # tokens per shard: 200 MB of uint16
SPLITS = ("train", "val")


# ---------------------------------------------------------------------------------------------
# Names and types


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits (vocab_size <= 65536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def shard_name(split: str, index: int) -> str:
    """The file name of shard `index` of `split`: ``train.000003.bin``."""
    return f"{split}.{index:06d}.bin"


# ---------------------------------------------------------------------------------------------
# Writing


class CannotResume(Exception):
    """The files on disk do not match the progress manifest: start over."""


class ShardWriter:
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
                raise CannotResume(f"{path} is missing or has the wrong size")
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
                raise CannotResume(f"{partial} is missing")
            return
        if partial.stat().st_size < size:
            raise CannotResume(f"{partial} is shorter than recorded")
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


# ---------------------------------------------------------------------------------------------
# Reading


def load_meta(data_dir) -> dict:
    """The ``meta.json`` that `prepare` wrote in `data_dir`."""
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: tokenize a corpus first, e.g. minigpt.data.prepare('stdlib', "
            f"'byte', {str(data_dir)!r})"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def shards_of(meta: dict, split: str) -> list[dict]:
    """The shards of `split` that `meta` lists: [{"file": ..., "tokens": ...}, ...]."""
    if "shards" in meta:
        return meta["shards"][split]
    return [{"file": f"{split}.bin", "tokens": meta["tokens"][split]}]  # format 1: one file


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
    for shard in shards_of(meta, split):
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
