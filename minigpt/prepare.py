"""`prepare`: tokenize a corpus once into token files, in parallel, with bounded memory, and
resumably.

Used from notebooks/06_transformer_block.ipynb on and at scale in notebooks/08_pretraining.ipynb;
`minigpt.data` re-exports `prepare`. Worker processes tokenize the corpus's tasks
(`minigpt.document_encoding`) in order; each split's stream goes to its `ShardWriter`
(`minigpt.shards`), and ``progress.json`` records how far the corpus has been read, so that a
killed `prepare` goes on where it stopped and ends with the files an uninterrupted run writes.
``meta.json``, written last, lists the shards and names the token stream by a fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm  # the text bar: tqdm.auto needs ipywidgets in notebooks

from minigpt.checkpoint import atomic_write_bytes, fsync_dir
from minigpt.corpora import load_corpus
from minigpt.document_encoding import DocumentEncoder, encoded_in_order, worker_count
from minigpt.documents import Corpus
from minigpt.shards import (
    FORMAT_VERSION,
    SHARD_TOKENS,
    SPLITS,
    CannotResume,
    ShardWriter,
    load_meta,
    shards_of,
    token_dtype,
)
from minigpt.tokenizer import load_tokenizer

__all__ = ["prepare"]

CHECKPOINT_SECONDS = 10.0  # at most this much work is redone after a kill (and a shard's worth)


# ---------------------------------------------------------------------------------------------
# Files


# Files that prepare owns in a token folder (everything else there is left alone): shards, their
# partial versions, the manifests, the pre-shard token files, and temporary files of killed runs.
_OWNED = re.compile(r"^(train|val)(\.\d+)?\.bin(\.partial)?$|^(meta|progress)\.json$")
_TEMPORARY = re.compile(r"^\.(meta\.json|progress\.json|tokenizer\.json|tokenizer)\..+\.tmp$")


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
# One run


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
                self.writers[split] = ShardWriter(folder, split, dtype, shard_tokens, state)
        except CannotResume:
            self.close()
            progress = None
        if progress is None:
            _remove(folder, _OWNED)
            self.writers = {s: ShardWriter(folder, s, dtype, shard_tokens) for s in SPLITS}
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
        atomic_write_bytes(self.folder / "progress.json", _json_bytes(progress))

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

    def run(self, source, encoder: DocumentEncoder, workers: int, bar) -> None:
        saved = time.monotonic()
        tasks = source.tasks(self.position)
        for encoded, position, units in encoded_in_order(tasks, encoder, workers):
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
# prepare


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
        for shard in shards_of(meta, split):
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


def _meta(corpus: Corpus, tokenizer, separator: list[int], run: _Tokenizing,
          tokenizer_json: bytes) -> dict:
    """What ``meta.json`` says: the layout of the token files, what they hold and where from."""
    spec = json.loads(tokenizer_json)
    return {
        "format": FORMAT_VERSION,
        "corpus": corpus.name,
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "vocab_size": tokenizer.vocab_size,
        "eot_token": tokenizer.eot_token,
        "separator": separator,
        "tokens": {split: w.tokens for split, w in run.writers.items()},
        "documents": {split: w.documents for split, w in run.writers.items()},
        "shard_tokens": run.shard_tokens,
        "max_tokens": run.max_tokens,
        "shards": {split: w.shards for split, w in run.writers.items()},
        # The scalar fields of the saved tokenizer (its type, name...), not its vocabulary.
        "tokenizer": {k: v for k, v in spec.items() if isinstance(v, str | int | float | bool)},
        "tokenizer_file": "tokenizer.json",
        "fingerprint": run.fingerprint,
    }


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
    encoder = DocumentEncoder(tokenizer, dtype, separator)
    source = corpus.documents()
    run = _Tokenizing(out_dir, fingerprint, dtype, shard_tokens, max_tokens, len(separator))
    workers = worker_count(source, encoder, num_workers)
    name = corpus.name if len(corpus.name) <= 40 else "…" + corpus.name[-39:]
    bar = tqdm(desc=name, unit="tok", unit_scale=True, initial=run.tokens, disable=not progress)
    try:
        run.run(source, encoder, workers, bar)
    finally:
        bar.close()
        run.close()
    if run.writers["train"].tokens == 0:
        raise ValueError(f"corpus {corpus.name!r} produced no training tokens")

    atomic_write_bytes(out_dir / "tokenizer.json", tokenizer_json)
    meta = _meta(corpus, tokenizer, separator, run, tokenizer_json)
    atomic_write_bytes(out_dir / "meta.json", _json_bytes(meta))
    (out_dir / "progress.json").unlink(missing_ok=True)
    fsync_dir(out_dir)
    return out_dir
