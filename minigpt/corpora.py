"""Corpora: named collections of real text, split into train and val documents.

Used from notebooks/02_language_modeling.ipynb on (`minigpt.data` re-exports everything here).
Built-in corpora work offline: ``"stdlib"`` (the Python source of the running interpreter's
standard library) and ``"stdlib-prose"`` (its docstrings and ``pydoc_data`` topics). Others are
downloaded into `minigpt.download.cache_dir` (``"tinyshakespeare"``), read from a local file or
folder, or streamed from the Hugging Face Hub (``"hf:<dataset>"``, optional ``datasets``).

Splits are by document and stable (`in_validation`): a text file goes to val by a hash of its
relative path, a record (a line of .jsonl, a row of .parquet or of a Hugging Face dataset) by a
hash of its text, so adding documents never moves another one across the split.

Large corpora are never held in memory. A folder or a dataset is a `DocumentSource`: an ordered
stream of small picklable *tasks* (a batch of files, a block of .jsonl lines, a parquet row
group, a batch of records), each of which a worker process turns into documents, and each of
which ends at a JSON-able *position* from which the stream can start again. `minigpt.data.prepare`
tokenizes the tasks in parallel and resumes from the last position it wrote.
"""

from __future__ import annotations

import ast
import gc
import gzip
import hashlib
import inspect
import itertools
import json
import os
import re
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from functools import lru_cache
from pathlib import Path

from minigpt.download import cache_dir, download

__all__ = [
    "KNOWN_CORPORA",
    "Corpus",
    "DocumentSource",
    "corpus_from_settings",
    "hf_corpus",
    "in_validation",
    "load_corpus",
    "local_corpus",
    "stdlib_corpus",
    "stdlib_prose_corpus",
    "stdlib_sources",
    "tinyshakespeare_corpus",
]

VAL_FRACTION = 0.05  # share of documents that go to the validation split
TEXT_VAL_FRACTION = 0.1  # a single text is cut: first 90% train, last 10% val
TASK_BYTES = 1 << 20  # about this much text per task: big enough to hide the cost of sending it
RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")  # files that hold one document per record

KNOWN_CORPORA = {
    "stdlib": "Python source of this interpreter's standard library (offline, default)",
    "stdlib-prose": "docstrings and pydoc topics of this interpreter's standard library (offline)",
    "tinyshakespeare": "Tiny Shakespeare, 1.1M characters (downloaded once, then cached)",
    "<path>": "a text file, or a folder of text (one document per file), .jsonl, .jsonl.gz "
    "and .parquet files (one document per record)",
    "hf:<dataset>": 'a Hugging Face dataset, streamed (pip install "minigpt[datasets]")',
}

REMOTE_FILES = {
    "tinyshakespeare": {
        "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        "filename": "tinyshakespeare/input.txt",
    },
}


# ---------------------------------------------------------------------------------------------
# Corpora


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


def in_validation(key: str, val_fraction: float = VAL_FRACTION) -> bool:
    """The stable split rule: does the document named `key` belong to the validation split?

    The first 8 bytes of sha256(key) read as a number in [0, 1) are compared with
    `val_fraction`, so the answer depends on the key alone (not on the Python version, the order
    of files or the other files present).
    """
    value = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    return value < val_fraction


def _split_by_key(items: list[tuple[str, str]], val_fraction: float):
    """Split (key, document) pairs with `in_validation`, keeping the given order in each split.

    With very few keys the hash can leave one side empty; the key with the smallest (largest)
    hash then moves over, which is still a function of the set of keys alone.
    """
    keys = sorted({key for key, _ in items})
    val_keys = {key for key in keys if in_validation(key, val_fraction)}
    if len(keys) >= 2 and val_fraction > 0:
        ranked = sorted(keys, key=lambda k: hashlib.sha256(k.encode("utf-8")).digest())
        if not val_keys:
            val_keys = {ranked[0]}
        elif len(val_keys) == len(keys):
            val_keys.discard(ranked[-1])
    train = tuple(doc for key, doc in items if key not in val_keys)
    val = tuple(doc for key, doc in items if key in val_keys)
    return train, val


def _split_text(name: str, text: str, val_fraction: float = TEXT_VAL_FRACTION) -> Corpus:
    """One long text: the first (1 - val_fraction) of its characters train, the rest val."""
    if not text.strip():
        raise ValueError(f"corpus {name!r} is empty: there is no text to train on")
    cut = int(len(text) * (1 - val_fraction))
    if cut == len(text) or cut == 0:
        raise ValueError(
            f"corpus {name!r} has {len(text)} characters, too few to split into train and val"
        )
    return Corpus(name, (text[:cut],), (text[cut:],))


def _checked(corpus: Corpus, where: str) -> Corpus:
    if not corpus.train and not corpus.val:
        raise ValueError(f"corpus {corpus.name!r} is empty: no text found in {where}")
    return corpus


_TEST_DIR = re.compile(r"^(tests?|.+_tests?|tests?_.+)$")  # test, tests, idle_test, test_ttk, ...
_SKIPPED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def _is_excluded_dir(name: str) -> bool:
    return name in _SKIPPED_DIRS or name.startswith(".") or bool(_TEST_DIR.match(name))


def _is_test_file(name: str) -> bool:
    return name.startswith("test_") or name.endswith("_test.py") or name == "conftest.py"


def stdlib_root() -> Path:
    """The standard library folder of the running interpreter."""
    return Path(sysconfig.get_paths()["stdlib"])


@lru_cache(maxsize=4)
def _stdlib_sources(root: str) -> tuple[tuple[str, str], ...]:
    """(relative posix path, source) of every non-test .py file under `root`, sorted by path.

    Files that are not valid UTF-8 are skipped (the same ones every time).
    """
    sources = []
    for folder, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _is_excluded_dir(d))
        for filename in filenames:
            if not filename.endswith(".py") or _is_test_file(filename):
                continue
            path = Path(folder, filename)
            try:
                source = path.read_bytes().decode("utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if source.strip():
                sources.append((path.relative_to(root).as_posix(), source))
    sources.sort()
    return tuple(sources)


def stdlib_sources(root=None) -> tuple[tuple[str, str], ...]:
    """(relative posix path, source) of the files in the ``"stdlib"`` corpus, sorted by path."""
    return _stdlib_sources(str(Path(root) if root is not None else stdlib_root()))


def stdlib_corpus(val_fraction: float = VAL_FRACTION, root=None) -> Corpus:
    """The ``"stdlib"`` corpus: one document per .py file of the standard library.

    Test folders (``test``, ``tests``, ``idle_test``, ``test_*``, ...), test files and
    site-packages/dist-packages are left out; files are split by relative path (`in_validation`).
    """
    root = Path(root) if root is not None else stdlib_root()
    train, val = _split_by_key(list(_stdlib_sources(str(root))), val_fraction)
    return _checked(Corpus("stdlib", train, val), str(root))


_DEFINITIONS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement in `body` and in the blocks nested inside it (if, try, with, def, ...).

    Expressions are never entered: docstrings only live at the top of statement blocks, and
    skipping expressions makes this several times faster than `ast.walk`.
    """
    for statement in body:
        yield statement
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            block = getattr(statement, field, None)
            if isinstance(block, list):
                yield from _statements(block)


def _docstrings(source: str) -> list[str]:
    """Module, class and function docstrings of `source`, cleaned, in source order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    nodes = [tree, *(node for node in _statements(tree.body) if isinstance(node, _DEFINITIONS))]
    found = []
    for node in nodes:
        docstring = ast.get_docstring(node, clean=False)
        if docstring and docstring.strip():
            found.append(inspect.cleandoc(docstring).strip())
    return found


@lru_cache(maxsize=4)
def _stdlib_docstrings(root: str) -> tuple[tuple[str, str], ...]:
    """(relative path, docstring) for the files of `_stdlib_sources`, in order."""
    # Parsing creates millions of short-lived AST nodes without reference cycles; the cyclic
    # garbage collector would scan them over and over (it doubles the time), so pause it.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return tuple(
            (relpath, docstring)
            for relpath, source in _stdlib_sources(root)
            for docstring in _docstrings(source)
        )
    finally:
        if was_enabled:
            gc.enable()


def _pydoc_topics() -> dict[str, str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions ship the standard library without it
        return {}
    return topics


def stdlib_prose_corpus(val_fraction: float = VAL_FRACTION, root=None) -> Corpus:
    """The ``"stdlib-prose"`` corpus: English prose from the standard library.

    One document per docstring (module, class, function; cleaned with `inspect.cleandoc`) and
    one per ``pydoc_data`` help topic. Docstrings are split by their file's relative path, the
    same rule as ``"stdlib"``, so a file's code and its docstrings sit on the same side.
    """
    root = Path(root) if root is not None else stdlib_root()
    items = list(_stdlib_docstrings(str(root)))
    if root == stdlib_root():
        for topic, text in sorted(_pydoc_topics().items()):
            if text.strip():
                items.append((f"pydoc_data/topics/{topic}", text.strip()))
    train, val = _split_by_key(items, val_fraction)
    return _checked(Corpus("stdlib-prose", train, val), str(root))


def remote_file(name: str, url: str | None = None, progress: bool = True) -> Path:
    """The cached copy of a known downloadable file, downloaded (and verified) if missing.

    The URL can be replaced by `url` or by ``$MINIGPT_DATA_URL_<NAME>`` (a mirror, or a local
    server); the sha256 check stays.
    """
    entry = REMOTE_FILES[name]
    env = "MINIGPT_DATA_URL_" + re.sub(r"\W", "_", name.upper())
    url = url or os.environ.get(env) or entry["url"]
    return download(url, cache_dir() / entry["filename"], entry["sha256"], progress=progress)


def tinyshakespeare_corpus(url: str | None = None, progress: bool = True) -> Corpus:
    """Tiny Shakespeare: first 90% of the characters train, last 10% val."""
    path = remote_file("tinyshakespeare", url=url, progress=progress)
    return _split_text("tinyshakespeare", path.read_text(encoding="utf-8"))


def _read_text_file(path: Path) -> str | None:
    """The file's text, or None for files that are not UTF-8 text (binary, other encodings)."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


# ---------------------------------------------------------------------------------------------
# Tasks: slices of a corpus that a worker process turns into documents
#
# `documents()` returns [(is_val, text), ...] in corpus order. Tasks are small and picklable:
# files are named, not read, by the process that hands the tasks out.


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


@dataclass(frozen=True)
class TextFilesTask:
    """Whole files, one document each; files that are binary, not UTF-8 or blank are skipped."""

    files: tuple  # ((path, is_val), ...)

    def documents(self) -> list[tuple[bool, str]]:
        found = []
        for path, is_val in self.files:
            text = _read_text_file(Path(path))
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


def _pyarrow_parquet():
    try:
        import pyarrow.parquet
    except ImportError:
        raise ImportError(
            'reading .parquet files needs pyarrow: pip install "minigpt[datasets]" (or pyarrow)'
        ) from None
    return pyarrow.parquet


def _parquet_file(path):
    return _pyarrow_parquet().ParquetFile(path)


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


@dataclass(frozen=True)
class _File:
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

    def __init__(self, root: Path, files: list[_File], val_paths: set[str], text_field: str,
                 val_fraction: float):
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
            if end > index and size + self.files[end].size > TASK_BYTES:
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
                block = stream.read(TASK_BYTES)
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
# Local files and folders


def _listing(path: Path, glob: str) -> list[_File]:
    """The files of a folder matching `glob`, sorted by relative path; hidden ones left out."""
    files = []
    for file in path.glob(glob):
        relpath = file.relative_to(path).as_posix()
        if any(part.startswith(".") for part in Path(relpath).parts) or not file.is_file():
            continue
        stat = file.stat()
        files.append(_File(relpath, stat.st_size, stat.st_mtime_ns))
    files.sort(key=lambda f: f.relpath)
    return files


def _val_paths(files: list[_File], root: Path, val_fraction: float) -> set[str]:
    """Text files that go to val (`in_validation` of the relative path).

    In a folder of text files only, with very few files the hash can leave one side empty; the
    usable file with the smallest (largest) hash then moves over, as in `_split_by_key`.
    """
    keys = [f.relpath for f in files if f.kind == "text"]
    val = {key for key in keys if in_validation(key, val_fraction)}
    if len(keys) < 2 or val_fraction <= 0 or len(keys) < len(files):
        return val
    ranked = sorted(keys, key=lambda k: hashlib.sha256(k.encode("utf-8")).digest())
    usable = (k for k in ranked if (t := _read_text_file(root / k)) is not None and t.strip())
    if not val:
        val = set(itertools.islice(usable, 1))
    elif len(val) == len(keys):
        ranked.reverse()
        usable = (k for k in ranked if (t := _read_text_file(root / k)) is not None and t.strip())
        val.difference_update(itertools.islice(usable, 1))
    return val


def local_corpus(path, glob: str = "**/*", val_fraction: float | None = None,
                 text_field: str = "text") -> Corpus:
    """A local text file (90/10 split by characters), record file or folder, read lazily.

    In a folder, every file matching `glob` is read in sorted order of its relative path
    (hidden files and folders are skipped): .jsonl and .jsonl.gz files hold one JSON object per
    line and .parquet files one row per document, the text in `text_field`; any other UTF-8
    text file is one document (binary files are skipped). A folder's documents are streamed,
    never all held in memory; a single text file is read whole and cut 90/10.
    """
    path = Path(path).expanduser()
    name = str(path)
    if path.is_file() and _File(path.name, 0, 0).kind == "text":
        return _text_file_corpus(path, name, val_fraction)
    root = path
    if path.is_file():  # one record file: read as a folder that holds only it
        stat, root = path.stat(), path.parent
        files = [_File(path.name, stat.st_size, stat.st_mtime_ns)]
    elif path.is_dir():
        files = _listing(path, glob)
    else:
        raise FileNotFoundError(f"no such file or folder: {path}\n{_known_corpora()}")
    if not files:
        raise ValueError(f"corpus {name!r} is empty: no files matching {glob!r} in {path}")
    if len(files) == 1 and files[0].kind == "text":
        return _text_file_corpus(root / files[0].relpath, name, val_fraction)
    if any(f.kind == "parquet" for f in files):
        _pyarrow_parquet()  # fail now, not hours into prepare
    fraction = VAL_FRACTION if val_fraction is None else val_fraction
    source = FolderSource(root, files, _val_paths(files, root, fraction), text_field, fraction)
    listing = hashlib.sha256(json.dumps([[f.relpath, f.size, f.mtime_ns] for f in files]).encode())
    spec = f"local:{name}|{glob}|{text_field}|{fraction}|{listing.hexdigest()}"
    return Corpus(name, source.split("train"), source.split("val"), spec=spec, source=source)


def _text_file_corpus(path: Path, name: str, val_fraction: float | None) -> Corpus:
    text = _read_text_file(path)
    if text is None:
        raise ValueError(f"{path} is not a UTF-8 text file")
    return _split_text(name, text, TEXT_VAL_FRACTION if val_fraction is None else val_fraction)


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets

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
            raise _hf_error(self.description, err) from err
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
            raise _hf_error(self.description, err) from err
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


def _hf_error(description: str, err: Exception) -> ConnectionError:
    return ConnectionError(
        f"could not stream {description}: {type(err).__name__}: {err}\n"
        "Streaming needs the Hugging Face Hub; this machine may be offline. Offline, use a "
        "local corpus instead: 'stdlib', 'stdlib-prose', or the path of a text file or folder."
    )


def _local_signature(dataset: str) -> str:
    """For a dataset on this machine: a digest of its files' names, sizes and times."""
    path = Path(dataset).expanduser()
    if not path.exists():
        return ""
    files = _listing(path, "**/*") if path.is_dir() else [_File(path.name, 0, 0)]
    return hashlib.sha256(json.dumps([[f.relpath, f.size, f.mtime_ns] for f in files])
                          .encode()).hexdigest()


def hf_corpus(
    dataset: str,
    config: str | None = None,
    *,
    split: str = "train",
    text_field: str = "text",
    val_fraction: float = VAL_FRACTION,
    **load_options,
) -> Corpus:
    """A Hugging Face dataset, streamed: every record of `split` of its configuration `config`.

    Each record's `text_field` is a document (empty ones are skipped); validation documents are
    held out by a hash of the text (`in_validation`). `load_options` go to
    ``datasets.load_dataset`` (e.g. ``data_files=``). Needs the optional ``datasets`` package.
    """
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f'the corpus "hf:{dataset}" needs the optional datasets package: '
            'pip install "minigpt[datasets]"'
        ) from err
    description = f"Hugging Face dataset {dataset!r}" + (f" ({config})" if config else "")

    def open_stream():
        stream = datasets.load_dataset(dataset, config, split=split, streaming=True,
                                       **load_options)
        return stream

    try:
        stream = open_stream()
    except Exception as err:
        raise _hf_error(description, err) from err
    source = HFSource(open_stream, description, text_field, val_fraction, _num_records(stream))
    options = json.dumps(load_options, sort_keys=True, default=str)
    spec = (f"hf:{dataset}|{config}|{split}|{text_field}|{val_fraction}|{options}|"
            f"{_local_signature(dataset)}")
    return Corpus(f"hf:{dataset}", source.split("train"), source.split("val"), spec=spec,
                  source=source)


def _num_records(stream) -> int | None:
    """The number of records of the split, where the dataset's card tells it."""
    try:
        return int(stream.info.splits[stream.split].num_examples) or None
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------
# By name

_BUILTIN = {
    "stdlib": stdlib_corpus,
    "stdlib-prose": stdlib_prose_corpus,
    "tinyshakespeare": tinyshakespeare_corpus,
}


def _known_corpora() -> str:
    rows = "\n".join(f"  {name:16} {about}" for name, about in KNOWN_CORPORA.items())
    return f"Known corpora:\n{rows}"


def load_corpus(name_or_path="stdlib", **options) -> Corpus:
    """A corpus by name (see `KNOWN_CORPORA`), local path, or ``"hf:<dataset>"``.

    `options` go to the loader: `stdlib_corpus`, `stdlib_prose_corpus`, `tinyshakespeare_corpus`,
    `local_corpus` or `hf_corpus`.
    """
    if isinstance(name_or_path, Corpus):
        return name_or_path
    name = os.fspath(name_or_path)
    if name in _BUILTIN:
        return _BUILTIN[name](**options)
    if name.startswith("hf:"):
        return hf_corpus(name[3:], **options)
    path = Path(name).expanduser()
    if path.exists():
        return local_corpus(path, **options)
    if any(sep in name for sep in "/\\") or name.startswith((".", "~")) or path.suffix:
        raise FileNotFoundError(f"no such file or folder: {name}\n{_known_corpora()}")
    raise ValueError(f"unknown corpus {name!r}\n{_known_corpora()}")


def corpus_from_settings(dataset: str, dataset_config: str = "", dataset_split: str = "train",
                         text_field: str = "text") -> Corpus:
    """The corpus that a training preset names (`TrainConfig`'s data settings).

    `dataset_config` and `dataset_split` pick a Hugging Face dataset's configuration and split
    (``hf:`` only); `text_field` is the field of a record that holds its text (``hf:``, .jsonl,
    .parquet).
    """
    if dataset.startswith("hf:"):
        return hf_corpus(dataset[3:], dataset_config or None, split=dataset_split,
                         text_field=text_field)
    for setting, value, default in (("dataset_config", dataset_config, ""),
                                    ("dataset_split", dataset_split, "train")):
        if value != default:
            raise ValueError(
                f"{setting}={value!r} applies to Hugging Face datasets (dataset='hf:<name>'), "
                f"not to dataset={dataset!r}; remove it"
            )
    if dataset in _BUILTIN:
        if text_field != "text":
            raise ValueError(
                f"text_field={text_field!r} applies to hf:, .jsonl and .parquet corpora, not to "
                f"dataset={dataset!r}; remove it"
            )
        return load_corpus(dataset)
    path = Path(dataset).expanduser()
    return load_corpus(dataset, text_field=text_field) if path.exists() else load_corpus(dataset)
