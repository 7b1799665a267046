"""Documents to token ids, fast: the encoder that `prepare`'s worker processes run, and the
pool that runs it.

Used by `minigpt.data.prepare` (notebooks/08_pretraining.ipynb tokenizes its corpus with it);
GPT-2's split pattern, which `LookaheadFreeBPE` reproduces without its look-ahead, is met in
notebooks/01_tokenization.ipynb. `DocumentEncoder` turns a batch of documents into their ids,
each after a separator, by the fastest exact path the tokenizer allows: numpy for
`ByteTokenizer`, `LookaheadFreeBPE` for GPT-2's pattern through tiktoken, the tokenizer's own
`encode` otherwise. `encoded_in_order` runs it on a stream of tasks in worker processes, keeping
the order of the tasks and a bounded number of them in flight.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pickle
import re
import warnings
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from minigpt.documents import SplitsSource
from minigpt.tokenizer import GPT2_SPLIT_PATTERN, BPETokenizer, ByteTokenizer, GPT2Tokenizer

__all__ = ["DocumentEncoder", "LookaheadFreeBPE", "encoded_in_order", "worker_count"]


# ---------------------------------------------------------------------------------------------
# Encoding documents


class DocumentEncoder:
    """Documents -> (ids, lengths): each document's ids after the separator, and the length of
    each (separator included). Picklable, so that worker processes can run it."""

    def __init__(self, tokenizer, dtype, separator: list[int]):
        self.tokenizer, self.dtype = tokenizer, np.dtype(dtype)
        self.separator = np.asarray(separator, dtype=self.dtype)
        # ByteTokenizer's ids are the UTF-8 bytes: numpy reads them without a Python list.
        self.bytes_fast_path = type(tokenizer) is ByteTokenizer
        self.fast_bpe = LookaheadFreeBPE.applies_to(tokenizer, separator)
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
                self._bpe = LookaheadFreeBPE(self.tokenizer.encoding, int(self.separator[0]))
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


# ---------------------------------------------------------------------------------------------
# GPT-2's BPE without the look-ahead


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


class LookaheadFreeBPE:
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
        """(ids, lengths) of `texts`, as `DocumentEncoder` returns them."""
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


# ---------------------------------------------------------------------------------------------
# Worker processes


_worker_encoder: DocumentEncoder | None = None  # set in each worker by _init_worker


def _init_worker(encoder: DocumentEncoder) -> None:
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


def worker_count(source, encoder: DocumentEncoder, num_workers: int | None) -> int:
    """`num_workers` when given; else 1 for a small corpus held in memory, else every core."""
    if num_workers is not None:
        return max(1, num_workers)
    if isinstance(source, SplitsSource) and source.total_units is not None:  # held in memory
        if encoder.bytes_fast_path or source.total_units < PARALLEL_MIN_CHARACTERS:
            return 1
    return _cpu_count()


def _picklable(encoder: DocumentEncoder) -> bool:
    try:
        pickle.dumps(encoder)
    except Exception as err:
        warnings.warn(
            f"tokenizer cannot be sent to worker processes ({err}); tokenizing serially",
            stacklevel=4,
        )
        return False
    return True


def encoded_in_order(tasks, encoder: DocumentEncoder, workers: int):
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
