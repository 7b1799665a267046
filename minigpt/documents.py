"""Documents: a `Corpus` of train and val documents, the rule that splits them, and the stream
they are read through.

Used from notebooks/02_language_modeling.ipynb on; the corpora themselves are in
`minigpt.corpora`, the reading of local files in `minigpt.corpus_files`.

Splits are by document and stable (`in_validation`): a text file goes to val by a hash of its
relative path, a record (a line of .jsonl, a row of .parquet or of a Hugging Face dataset) by a
hash of its text, so adding documents never moves another one across the split.

Large corpora are never held in memory. A folder or a dataset is a `DocumentSource`: an ordered
stream of small picklable *tasks* (a batch of files, a block of .jsonl lines, a parquet row
group, a batch of records), each of which a worker process turns into documents, and each of
which ends at a JSON-able *position* from which the stream can start again. `minigpt.data.prepare`
tokenizes the tasks in parallel and resumes from the last position it wrote. Here: the stream
itself, documents held in memory (`SplitsSource`) and a Hugging Face dataset (`HFSource`).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field

__all__ = [
    "Corpus",
    "DocumentSource",
    "HFSource",
    "SourceSplit",
    "SplitsSource",
    "TextsTask",
    "hash_order",
    "in_validation",
    "split_by_key",
    "split_text",
]

VAL_FRACTION = 0.05  # share of documents that go to the validation split
TEXT_VAL_FRACTION = 0.1  # a single text is cut: first 90% train, last 10% val
TASK_BYTES = 1 << 20  # about this much text per task: big enough to hide the cost of sending it


# ---------------------------------------------------------------------------------------------
# Corpus


@dataclass(frozen=True)
class Corpus:
    """A named text collection split into ``train`` and ``val`` documents.

    ``train`` and ``val`` are tuples of strings, except for streamed corpora (folders, ``hf:``),
    whose splits are re-iterable objects read lazily from `source`; ``spec`` then identifies
    the corpus in place of its contents (see `fingerprint`).
    """

    name: str
    train: Sequence[str] | Iterable[str]
    val: Sequence[str] | Iterable[str]
    spec: str | None = None
    source: DocumentSource | None = dataclass_field(default=None, repr=False, compare=False)

    @property
    def streamed(self) -> bool:
        return not (isinstance(self.train, Sequence) and isinstance(self.val, Sequence))

    def documents(self) -> DocumentSource:
        """The corpus as a resumable stream of tasks (what `minigpt.data.prepare` reads)."""
        return self.source if self.source is not None else SplitsSource(self.train, self.val)

    def text(self, split: str = "train", separator: str = "\n\n") -> str:
        """All documents of a split joined by `separator`."""
        return separator.join(_split_of(self, split))

    def fingerprint(self) -> str:
        """A sha256 that changes whenever the name, the documents or the split change."""
        digest = hashlib.sha256(f"{self.name}\0{self.spec}\0".encode())
        if not self.streamed:
            for split in ("train", "val"):
                digest.update(f"{split}:{len(getattr(self, split))}\0".encode())
                for document in getattr(self, split):
                    encoded = document.encode("utf-8", errors="surrogatepass")
                    digest.update(len(encoded).to_bytes(8, "little"))
                    digest.update(encoded)
        return digest.hexdigest()

    def __repr__(self) -> str:
        if self.streamed:
            return f"Corpus({self.name!r}, streamed: {self.spec})"
        sizes = ", ".join(
            f"{split}: {len(docs):,} documents, {sum(map(len, docs)):,} characters"
            for split, docs in (("train", self.train), ("val", self.val))
        )
        return f"Corpus({self.name!r}, {sizes})"


def _split_of(corpus: Corpus, split: str):
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    return getattr(corpus, split)


# ---------------------------------------------------------------------------------------------
# The split rules


def in_validation(key: str, val_fraction: float = VAL_FRACTION) -> bool:
    """The stable split rule: does the document named `key` belong to the validation split?

    The first 8 bytes of sha256(key) read as a number in [0, 1) are compared with
    `val_fraction`, so the answer depends on the key alone (not on the Python version, the order
    of files or the other files present).
    """
    value = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return value < val_fraction


def hash_order(keys: Iterable[str]) -> list[str]:
    """`keys` sorted by their sha256: the first is the one `in_validation` holds out first."""
    return sorted(keys, key=lambda k: hashlib.sha256(k.encode("utf-8")).digest())


def split_by_key(items: list[tuple[str, str]], val_fraction: float):
    """Split (key, document) pairs with `in_validation`, keeping the given order in each split.

    With very few keys the hash can leave one side empty; the key with the smallest (largest)
    hash then moves over, which is still a function of the set of keys alone.
    """
    keys = sorted({key for key, _ in items})
    val_keys = {key for key in keys if in_validation(key, val_fraction)}
    if len(keys) >= 2 and val_fraction > 0:
        ranked = hash_order(keys)
        if not val_keys:
            val_keys = {ranked[0]}
        elif len(val_keys) == len(keys):
            val_keys.discard(ranked[-1])
    train = tuple(doc for key, doc in items if key not in val_keys)
    val = tuple(doc for key, doc in items if key in val_keys)
    return train, val


def split_text(name: str, text: str, val_fraction: float = TEXT_VAL_FRACTION) -> Corpus:
    """One long text: the first (1 - val_fraction) of its characters train, the rest val."""
    if not text.strip():
        raise ValueError(f"corpus {name!r} is empty: there is no text to train on")
    cut = int(len(text) * (1 - val_fraction))
    if cut == len(text) or cut == 0:
        raise ValueError(
            f"corpus {name!r} has {len(text)} characters, too few to split into train and val"
        )
    return Corpus(name, (text[:cut],), (text[cut:],))


# ---------------------------------------------------------------------------------------------
# Tasks: slices of a corpus that a worker process turns into documents
#
# `documents()` returns [(is_val, text), ...] in corpus order. Tasks are small and picklable:
# files are named, not read, by the process that hands the tasks out (see minigpt.corpus_files).


@dataclass(frozen=True)
class TextsTask:
    """Documents given as strings; `is_val` None: split each by a hash of its text."""

    texts: tuple
    is_val: bool | None
    val_fraction: float = VAL_FRACTION
    where: str = "records"  # names the records in error messages
    first: int = 0  # the number of the first record, for error messages

    def documents(self) -> list[tuple[bool, str]]:
        if self.is_val is not None:
            return [(self.is_val, text) for text in self.texts]
        found = []
        for number, text in enumerate(self.texts, start=self.first):
            if text is None or text == "":
                continue
            if not isinstance(text, str):
                raise ValueError(
                    f"{self.where}, record {number}: the text field holds a "
                    f"{type(text).__name__}, not a string; set text_field= to a text field"
                )
            found.append((in_validation(text, self.val_fraction), text))
        return found


# ---------------------------------------------------------------------------------------------
# Document sources: a corpus as an ordered, resumable stream of tasks


class DocumentSource:
    """An ordered stream of tasks, resumable from any task boundary.

    ``tasks(position)`` yields ``(task, position_after, units)``: `position_after` (a JSON-able
    dict) starts the stream again just after the task, and `units` measures the input the task
    covered, out of `total_units` (None when unknown), for progress bars.
    """

    total_units: int | None = None

    def tasks(self, position: dict | None = None) -> Iterator[tuple[object, dict, int]]:
        raise NotImplementedError

    def split(self, split: str) -> SourceSplit:
        return SourceSplit(self, split)


class SourceSplit:
    """One split of a `DocumentSource`, read in this process; iterable again and again."""

    def __init__(self, source: DocumentSource, split: str):
        self.source, self.want_val = source, split == "val"

    def __iter__(self) -> Iterator[str]:
        for task, _, _ in self.source.tasks():
            for is_val, text in task.documents():
                if is_val == self.want_val:
                    yield text


class SplitsSource(DocumentSource):
    """Documents already split: every train document, then every val document, in order."""

    def __init__(self, train: Iterable[str], val: Iterable[str]):
        self.splits = {"train": train, "val": val}
        if isinstance(train, Sequence) and isinstance(val, Sequence):
            self.total_units = sum(map(len, train)) + sum(map(len, val))

    def tasks(self, position=None):
        position = position or {"split": "train", "documents": 0}
        names = ["train", "val"][["train", "val"].index(position["split"]) :]
        for name in names:
            skip = position["documents"] if name == position["split"] else 0
            documents = itertools.islice(self.splits[name], skip, None)
            count, batch, size = skip, [], 0
            for document in documents:
                batch.append(document)
                count, size = count + 1, size + len(document)
                if size >= TASK_BYTES:
                    yield TextsTask(tuple(batch), name == "val"), _at(name, count), size
                    batch, size = [], 0
            if batch:
                yield TextsTask(tuple(batch), name == "val"), _at(name, count), size


def _at(split: str, documents: int) -> dict:
    return {"split": split, "documents": documents}


HF_BATCH = 256  # records read from a dataset at a time


class HFSource(DocumentSource):
    """A Hugging Face dataset, streamed; resumable through the dataset's own `state_dict`."""

    def __init__(self, open_stream, description: str, text_field: str, val_fraction: float,
                 total_records: int | None):
        self.open_stream, self.description = open_stream, description
        self.text_field, self.val_fraction = text_field, val_fraction
        self.total_units = total_records

    def tasks(self, position=None):
        stream = self._stream(position)
        records = position["records"] if position else 0
        batch, size = [], 0
        try:
            for part in stream.iter(batch_size=HF_BATCH):
                texts = self._texts(part)
                batch += texts
                size += sum(len(t) for t in texts if isinstance(t, str))
                records += len(texts)
                if size >= TASK_BYTES:
                    yield self._task(batch, records), self._position(stream, records), len(batch)
                    batch, size = [], 0
        except (KeyError, ValueError):
            raise
        except Exception as err:
            raise hf_streaming_error(self.description, err) from err
        if batch:
            yield self._task(batch, records), self._position(stream, records), len(batch)

    def _stream(self, position):
        try:
            stream = self.open_stream()
            if position:
                try:
                    stream.load_state_dict(position["state"])
                except Exception:  # a dataset that cannot resume: read up to the position
                    stream = stream.skip(position["records"])
        except Exception as err:
            raise hf_streaming_error(self.description, err) from err
        return stream

    def _texts(self, part: dict) -> list:
        if self.text_field not in part:
            raise KeyError(
                f"{self.description} has no text field {self.text_field!r} (found "
                f"{sorted(part)}); set text_field= to the field that holds the documents"
            )
        return part[self.text_field]

    def _task(self, batch: list, records: int) -> TextsTask:
        first = records - len(batch)
        return TextsTask(tuple(batch), None, self.val_fraction, self.description, first)

    @staticmethod
    def _position(stream, records: int) -> dict:
        state = stream.state_dict() if hasattr(stream, "state_dict") else None
        return {"records": records, "state": state}


def hf_streaming_error(description: str, err: Exception) -> ConnectionError:
    """The error for a dataset that could not be streamed: most often, no network."""
    return ConnectionError(
        f"could not stream {description}: {type(err).__name__}: {err}\n"
        "Streaming needs the Hugging Face Hub; this machine may be offline. Offline, use a "
        "local corpus instead: 'stdlib', 'stdlib-prose', or the path of a text file or folder."
    )
