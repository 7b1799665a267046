"""Corpora, token files and batch samplers: the data side of next-token prediction.

Derived in notebooks/02_language_modeling.ipynb (windows of tokens, inputs ``x`` and targets
``y = x`` shifted by one) and used at scale in notebooks/08_pretraining.ipynb. Three layers:

1. `load_corpus` gives a `Corpus`: a name and ``train``/``val`` lists of documents (strings);
   the corpora themselves live in `minigpt.corpora` and are re-exported here.
2. `prepare` tokenizes a corpus once into ``train.bin``/``val.bin`` (flat uint16/uint32 arrays,
   documents separated by the tokenizer's end-of-text token), ``meta.json`` and
   ``tokenizer.json``; `load_tokens` maps a split back as a read-only array.
3. `RandomWindowSampler` (training) and `SequentialSampler` (evaluation) cut (x, y) batches out of
   a token array. Both are resumable (`state_dict`) and split the global batch between
   data-parallel ranks, so N ranks see exactly the windows one process would see.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import pickle
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm  # the text bar: tqdm.auto needs ipywidgets in notebooks

from minigpt.corpora import (  # re-exported: `minigpt.data` is the one import for data
    KNOWN_CORPORA,
    Corpus,
    hf_corpus,
    in_validation,
    load_corpus,
    local_corpus,
    stdlib_corpus,
    stdlib_prose_corpus,
    stdlib_sources,
    tinyshakespeare_corpus,
)
from minigpt.tokenizer import ByteTokenizer, load_tokenizer

# torch is imported inside the samplers only: tokenizing worker processes import this module, and
# on platforms that spawn them (macOS, Windows) each would otherwise pay for importing torch.
if TYPE_CHECKING:
    import torch

__all__ = [
    "KNOWN_CORPORA",
    "Corpus",
    "RandomWindowSampler",
    "SequentialSampler",
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


FORMAT_VERSION = 1  # bump when the layout of the token files changes


# ---------------------------------------------------------------------------------------------
# Token files


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in 16 bits (vocab_size <= 65536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


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


def _tokenizer_json(tokenizer, folder: Path) -> bytes:
    """What `tokenizer.save` writes, captured as bytes (saved under a temporary name)."""
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".tokenizer.", suffix=".tmp")
    os.close(fd)
    try:
        tokenizer.save(temp)
        return Path(temp).read_bytes()
    finally:
        os.unlink(temp)


class _Encoder:
    """Text -> array of ids, picklable so that pool workers can run it."""

    def __init__(self, tokenizer, dtype):
        self.tokenizer, self.dtype = tokenizer, np.dtype(dtype)
        # ByteTokenizer's ids are the UTF-8 bytes: numpy reads them without a Python list.
        self.bytes_fast_path = type(tokenizer) is ByteTokenizer

    def __call__(self, text: str) -> np.ndarray:
        if self.bytes_fast_path:
            return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(self.dtype)
        ids = np.asarray(self.tokenizer.encode(text), dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.tokenizer.vocab_size):
            raise ValueError(
                f"the tokenizer produced id {int(ids.max())} (or {int(ids.min())}), outside its "
                f"vocabulary of {self.tokenizer.vocab_size}"
            )
        return ids.astype(self.dtype)


_worker_encoder: _Encoder | None = None


def _init_worker(encoder: _Encoder) -> None:
    global _worker_encoder
    _worker_encoder = encoder


def _encode_in_worker(text: str) -> np.ndarray:
    return _worker_encoder(text)


# Below this many characters, starting worker processes costs more than it saves.
PARALLEL_MIN_CHARACTERS = 4_000_000


def _worker_count(documents, encoder: _Encoder, num_workers: int | None) -> int:
    if num_workers is not None:
        return max(1, num_workers)
    if encoder.bytes_fast_path:
        return 1
    if isinstance(documents, Sequence):
        if sum(map(len, documents)) < PARALLEL_MIN_CHARACTERS:
            return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cpus or 1, 8))


def _encode_all(documents, encoder: _Encoder, workers: int) -> Iterator[np.ndarray]:
    """Encoded documents in corpus order, in worker processes when `workers` > 1."""
    if workers > 1:
        try:
            pickle.dumps(encoder)
        except Exception as err:
            warnings.warn(
                f"tokenizer cannot be sent to worker processes ({err}); tokenizing serially",
                stacklevel=3,
            )
            workers = 1
    if workers <= 1:
        yield from map(encoder, documents)
        return
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(encoder,)) as pool:
        yield from pool.imap(_encode_in_worker, documents, chunksize=8)


def _write_split(documents, path: Path, encoder, separator, workers, desc) -> tuple[int, int]:
    """Tokenize `documents` into `path`, separator between documents; (tokens, documents)."""
    total = len(documents) if isinstance(documents, Sequence) else None
    separator_bytes = np.asarray(separator, dtype=encoder.dtype).tobytes()
    n_tokens = n_documents = 0
    with _atomic_open(path) as f:
        for ids in tqdm(
            _encode_all(documents, encoder, workers),
            total=total,
            desc=desc,
            unit="doc",
            disable=desc is None,
        ):
            if n_documents:
                f.write(separator_bytes)
                n_tokens += len(separator)
            f.write(ids.tobytes())
            n_tokens += len(ids)
            n_documents += 1
    return n_tokens, n_documents


def load_meta(data_dir) -> dict:
    """The ``meta.json`` that `prepare` wrote in `data_dir`."""
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: tokenize a corpus first, e.g. minigpt.data.prepare('stdlib', "
            f"'byte', {str(data_dir)!r})"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def _is_current(out_dir: Path, fingerprint: str) -> bool:
    try:
        meta = load_meta(out_dir)
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if meta.get("fingerprint") != fingerprint or not (out_dir / "tokenizer.json").exists():
        return False
    itemsize = np.dtype(meta["dtype"]).itemsize
    for split, count in meta["tokens"].items():
        path = out_dir / f"{split}.bin"
        if not path.exists() or path.stat().st_size != count * itemsize:
            return False
    return True


def prepare(
    corpus, tokenizer, out_dir, num_workers: int | None = None, *, progress: bool = True
) -> Path:
    """Tokenize `corpus` into `out_dir` and return `out_dir`.

    Writes ``train.bin`` and ``val.bin`` (flat arrays of `token_dtype`; documents separated by
    the tokenizer's ``eot_token``, or by the encoding of ``"\\n\\n"`` when it has none),
    ``tokenizer.json`` and ``meta.json``, each atomically. ``meta.json`` is written last and holds
    a fingerprint of corpus and tokenizer: calling again with the same pair returns at once.

    `corpus` is a `Corpus` or anything `load_corpus` takes; `tokenizer` a tokenizer or anything
    `load_tokenizer` takes. `num_workers`: processes for tokenizing (None: decide by corpus size;
    0 or 1: serial). Document order is preserved either way.
    """
    corpus = load_corpus(corpus)
    if isinstance(tokenizer, str | os.PathLike):
        tokenizer = load_tokenizer(tokenizer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not corpus.streamed and not corpus.train:
        raise ValueError(f"corpus {corpus.name!r} has no training documents; nothing to prepare")

    tokenizer_json = _tokenizer_json(tokenizer, out_dir)
    fingerprint = hashlib.sha256(
        json.dumps([FORMAT_VERSION, corpus.fingerprint(), tokenizer_json.decode("utf-8")]).encode()
    ).hexdigest()
    if _is_current(out_dir, fingerprint):
        return out_dir
    # From here on the folder is not a valid token folder until the new meta.json lands.
    (out_dir / "meta.json").unlink(missing_ok=True)

    dtype = token_dtype(tokenizer.vocab_size)
    eot = tokenizer.eot_token
    separator = [eot] if eot is not None else list(tokenizer.encode("\n\n"))
    encoder = _Encoder(tokenizer, dtype)
    tokens, documents = {}, {}
    for split in ("train", "val"):
        docs = getattr(corpus, split)
        workers = _worker_count(docs, encoder, num_workers)
        desc = f"{corpus.name} {split}" if progress else None
        tokens[split], documents[split] = _write_split(
            docs, out_dir / f"{split}.bin", encoder, separator, workers, desc
        )
    if tokens["train"] == 0:
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
        "tokens": tokens,
        "documents": documents,
        # The scalar fields of the saved tokenizer (its type, name...), not its vocabulary.
        "tokenizer": {k: v for k, v in spec.items() if isinstance(v, str | int | float | bool)},
        "tokenizer_file": "tokenizer.json",
        "fingerprint": fingerprint,
    }
    _atomic_write(out_dir / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    return out_dir


def load_tokens(data_dir, split: str) -> np.ndarray:
    """The tokens of `split` ("train" or "val") in `data_dir`, as a read-only ``np.memmap``.

    (An empty split has nothing to map and comes back as an empty read-only array.)
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    meta = load_meta(data_dir)
    dtype, count = np.dtype(meta["dtype"]), meta["tokens"][split]
    path = Path(data_dir) / f"{split}.bin"
    if path.stat().st_size != count * dtype.itemsize:
        raise ValueError(
            f"{path} has {path.stat().st_size} bytes, but meta.json says {count} tokens of "
            f"{dtype.name}; run prepare() again"
        )
    if count == 0:
        empty = np.zeros(0, dtype=dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


# ---------------------------------------------------------------------------------------------
# Samplers


def _as_tokens(tokens) -> np.ndarray:
    import torch

    if isinstance(tokens, torch.Tensor):
        return tokens.detach().cpu().numpy()
    if isinstance(tokens, np.ndarray):
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
            filename = getattr(self.tokens, "filename", None)
            split = Path(filename).stem if filename else "token"
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
