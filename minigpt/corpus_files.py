"""Local files as documents: text, .jsonl(.gz) and .parquet files, read as a resumable stream.

What `load_corpus(path)` reads (`minigpt.corpora.local_corpus`; corpora are introduced in
notebooks/02_language_modeling.ipynb). A folder is a `FolderSource`: its files in sorted order
of their relative paths, handed out as small picklable tasks (a batch of text files, a block of
.jsonl lines, a parquet row group) that worker processes turn into documents;
`minigpt.documents` describes the stream.

A text file is one document, in val when its relative path hashes there; a .jsonl(.gz) line or
a .parquet row is one document, in val when its text hashes there (`in_validation`).
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from minigpt import documents
from minigpt.documents import DocumentSource, TextsTask, hash_order, in_validation

__all__ = [
    "CorpusFile",
    "FolderSource",
    "JsonlTask",
    "ParquetTask",
    "TextFilesTask",
    "list_files",
    "listing_digest",
    "local_signature",
    "read_text_file",
    "val_paths",
]

RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")  # files that hold one document per record


def read_text_file(path: Path) -> str | None:
    """The file's text, or None for files that are not UTF-8 text (binary, other encodings)."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


# ---------------------------------------------------------------------------------------------
# Tasks: `documents()` returns [(is_val, text), ...] in file order, read in the worker


@dataclass(frozen=True)
class TextFilesTask:
    """Whole files, one document each; files that are binary, not UTF-8 or blank are skipped."""

    files: tuple  # ((path, is_val), ...)

    def documents(self) -> list[tuple[bool, str]]:
        found = []
        for path, is_val in self.files:
            text = read_text_file(Path(path))
            if text is not None and text.strip():
                found.append((is_val, text))
        return found


@dataclass(frozen=True)
class JsonlTask:
    """Whole lines of a .jsonl file, one JSON object (one document) per line."""

    path: str
    data: bytes  # lines, each ending in a newline (but maybe the file's last)
    first_line: int
    text_field: str
    val_fraction: float

    def documents(self) -> list[tuple[bool, str]]:
        found = []
        for number, line in enumerate(self.data.split(b"\n"), start=self.first_line):
            if not line.strip():
                continue
            text = self._text(line, number)
            if text:
                found.append((in_validation(text, self.val_fraction), text))
        return found

    def _text(self, line: bytes, number: int) -> str | None:
        where = f"{self.path}, line {number}"
        try:
            record = json.loads(line)
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
            raise ValueError(
                f"{where}: not valid JSON ({err}); each line of a .jsonl file must be one "
                "JSON object"
            ) from None
        if not isinstance(record, dict) or self.text_field not in record:
            fields = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(
                f"{where}: no field {self.text_field!r} (found {fields}); set text_field= to "
                "the field that holds the document"
            )
        text = record[self.text_field]
        if text is not None and not isinstance(text, str):
            raise ValueError(
                f"{where}: field {self.text_field!r} holds a {type(text).__name__}, not a string"
            )
        return text


@dataclass(frozen=True)
class ParquetTask:
    """One row group of a .parquet file: the `text_field` column, one document per row."""

    path: str
    row_group: int
    first_row: int
    text_field: str
    val_fraction: float

    def documents(self) -> list[tuple[bool, str]]:
        table = _parquet_file(self.path).read_row_group(self.row_group, columns=[self.text_field])
        texts = table.column(0).to_pylist()
        where = f"{self.path}, row group {self.row_group}"
        return TextsTask(tuple(texts), None, self.val_fraction, where, self.first_row).documents()


def pyarrow_parquet():
    """The `pyarrow.parquet` module, or an ImportError that says how to install it."""
    try:
        import pyarrow.parquet
    except ImportError:
        raise ImportError(
            'reading .parquet files needs pyarrow: pip install "minigpt[datasets]" (or pyarrow)'
        ) from None
    return pyarrow.parquet


def _parquet_file(path):
    return pyarrow_parquet().ParquetFile(path)


# ---------------------------------------------------------------------------------------------
# A folder as a stream of tasks


@dataclass(frozen=True)
class CorpusFile:
    """A file of a folder corpus: its path relative to the folder, size and modification time."""

    relpath: str
    size: int
    mtime_ns: int

    @property
    def kind(self) -> str:
        name = self.relpath.lower()
        return next((s[1:] for s in RECORD_SUFFIXES if name.endswith(s)), "text")


class FolderSource(DocumentSource):
    """The files of a folder (or one record file) in sorted order of their relative paths.

    A text file is one document, in val when its relative path hashes there; a .jsonl(.gz)
    line or a .parquet row is one document, in val when its text hashes there.
    """

    def __init__(self, root: Path, files: list[CorpusFile], val_paths: set[str],
                 text_field: str, val_fraction: float):
        self.root, self.files, self.val_paths = root, files, val_paths
        self.text_field, self.val_fraction = text_field, val_fraction
        self.total_units = sum(f.size for f in files)

    def tasks(self, position=None):
        position = position or {"file": 0}
        index = position["file"]
        while index < len(self.files):
            kind = self.files[index].kind
            if kind == "text":
                task, after, units = self._text_files(index)
                yield task, after, units
                index = after["file"]
                continue
            resume = position if position.get("file") == index else {}
            if kind == "parquet":
                yield from self._parquet(index, resume.get("row_group", 0))
            else:
                yield from self._jsonl(index, resume.get("offset", 0), resume.get("line", 1))
            index += 1

    def _text_run_end(self, index: int) -> int:
        """Where the batch of text files that starts at `index` ends."""
        size, end = 0, index
        while end < len(self.files) and self.files[end].kind == "text":
            # TASK_BYTES is read through its module: one setting sizes every source's tasks.
            if end > index and size + self.files[end].size > documents.TASK_BYTES:
                break
            size, end = size + self.files[end].size, end + 1
        return end

    def _text_files(self, index: int):
        end = self._text_run_end(index)
        batch = self.files[index:end]
        files = tuple((str(self.root / f.relpath), f.relpath in self.val_paths) for f in batch)
        return TextFilesTask(files), {"file": end}, sum(f.size for f in batch)

    def _path(self, index: int) -> Path:
        return self.root / self.files[index].relpath

    def _jsonl(self, index: int, offset: int, line: int):
        path = self._path(index)
        with open(path, "rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw
            stream.seek(offset)  # a gzip stream decompresses up to there
            used, carry = raw.tell(), b""
            while True:
                block = stream.read(documents.TASK_BYTES)
                data = carry + block
                if not data:
                    return
                cut = data.rfind(b"\n") + 1 if block else len(data)
                if cut == 0:  # one line longer than a block: read on
                    carry = data
                    continue
                chunk, carry = data[:cut], data[cut:]
                if chunk:
                    offset += len(chunk)
                    after = {"file": index, "offset": offset, "line": line + chunk.count(b"\n")}
                    task = JsonlTask(str(path), chunk, line, self.text_field, self.val_fraction)
                    yield task, after, raw.tell() - used
                    used, line = raw.tell(), after["line"]
                if not block:
                    return

    def _parquet(self, index: int, start: int):
        path = self._path(index)
        parquet = _parquet_file(path)
        if self.text_field not in parquet.schema_arrow.names:
            raise ValueError(
                f"{path}: no column {self.text_field!r} (found {parquet.schema_arrow.names}); "
                "set text_field= to the column that holds the documents"
            )
        groups = parquet.metadata.num_row_groups
        rows = [parquet.metadata.row_group(g).num_rows for g in range(groups)]
        size = self.files[index].size
        for group in range(start, groups):
            task = ParquetTask(str(path), group, sum(rows[:group]), self.text_field,
                               self.val_fraction)
            units = size * (group + 1) // groups - size * group // groups
            yield task, {"file": index, "row_group": group + 1}, units


# ---------------------------------------------------------------------------------------------
# Listing a folder


def list_files(path: Path, glob: str) -> list[CorpusFile]:
    """The files of a folder matching `glob`, sorted by relative path; hidden ones left out."""
    files = []
    for file in path.glob(glob):
        relpath = file.relative_to(path).as_posix()
        if any(part.startswith(".") for part in Path(relpath).parts) or not file.is_file():
            continue
        stat = file.stat()
        files.append(CorpusFile(relpath, stat.st_size, stat.st_mtime_ns))
    files.sort(key=lambda f: f.relpath)
    return files


def listing_digest(files: list[CorpusFile]) -> str:
    """A sha256 of the files' names, sizes and times: it changes when any file does."""
    listing = json.dumps([[f.relpath, f.size, f.mtime_ns] for f in files])
    return hashlib.sha256(listing.encode()).hexdigest()


def local_signature(dataset: str) -> str:
    """For a dataset on this machine: a digest of its files' names, sizes and times ("" for a
    dataset that is not a local path, such as a name on the Hugging Face Hub)."""
    path = Path(dataset).expanduser()
    if not path.exists():
        return ""
    files = list_files(path, "**/*") if path.is_dir() else [CorpusFile(path.name, 0, 0)]
    return listing_digest(files)


def val_paths(files: list[CorpusFile], root: Path, val_fraction: float) -> set[str]:
    """Text files that go to val (`in_validation` of the relative path).

    In a folder of text files only, with very few files the hash can leave one side empty; the
    usable file with the smallest (largest) hash then moves over, as in `split_by_key`.
    """
    keys = [f.relpath for f in files if f.kind == "text"]
    val = {key for key in keys if in_validation(key, val_fraction)}
    if len(keys) < 2 or val_fraction <= 0 or len(keys) < len(files):
        return val
    ranked = hash_order(keys)
    if not val:
        val = set(itertools.islice(_with_text(ranked, root), 1))
    elif len(val) == len(keys):
        val.difference_update(itertools.islice(_with_text(reversed(ranked), root), 1))
    return val


def _with_text(relpaths, root: Path):
    """The files that hold text, in the given order; read lazily (usually just the first)."""
    return (k for k in relpaths if (t := read_text_file(root / k)) is not None and t.strip())
