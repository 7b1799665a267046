"""Corpora: named collections of real text, split into train and val documents.

Used from notebooks/02_language_modeling.ipynb on (`minigpt.data` re-exports everything here).
Built-in corpora work offline: ``"stdlib"`` (the Python source of the running interpreter's
standard library) and ``"stdlib-prose"`` (its docstrings and ``pydoc_data`` topics). Others are
downloaded into `minigpt.download.cache_dir` (``"tinyshakespeare"``), read from a local file or
folder, or streamed from the Hugging Face Hub (``"hf:<dataset>"``, optional ``datasets``).
`load_corpus` finds each by its name.

What a corpus is, the rule that splits it into train and val, and the stream of tasks through
which large corpora are read live in `minigpt.documents`; the reading of local .txt,
.jsonl(.gz) and .parquet files in `minigpt.corpus_files`.
"""

from __future__ import annotations

import ast
import gc
import inspect
import json
import os
import re
import sysconfig
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from minigpt.corpus_files import (
    CorpusFile,
    FolderSource,
    list_files,
    listing_digest,
    local_signature,
    pyarrow_parquet,
    read_text_file,
    val_paths,
)
from minigpt.documents import (  # Corpus, DocumentSource, in_validation: re-exported
    TEXT_VAL_FRACTION,
    VAL_FRACTION,
    Corpus,
    DocumentSource,
    HFSource,
    hf_streaming_error,
    in_validation,
    split_by_key,
    split_text,
)
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
# The standard library, offline


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
    train, val = split_by_key(list(_stdlib_sources(str(root))), val_fraction)
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
    train, val = split_by_key(items, val_fraction)
    return _checked(Corpus("stdlib-prose", train, val), str(root))


# ---------------------------------------------------------------------------------------------
# Downloaded


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
    return split_text("tinyshakespeare", path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Local files and folders


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
    if path.is_file() and CorpusFile(path.name, 0, 0).kind == "text":
        return _text_file_corpus(path, name, val_fraction)
    root = path
    if path.is_file():  # one record file: read as a folder that holds only it
        stat, root = path.stat(), path.parent
        files = [CorpusFile(path.name, stat.st_size, stat.st_mtime_ns)]
    elif path.is_dir():
        files = list_files(path, glob)
    else:
        raise FileNotFoundError(f"no such file or folder: {path}\n{_known_corpora()}")
    if not files:
        raise ValueError(f"corpus {name!r} is empty: no files matching {glob!r} in {path}")
    if len(files) == 1 and files[0].kind == "text":
        return _text_file_corpus(root / files[0].relpath, name, val_fraction)
    if any(f.kind == "parquet" for f in files):
        pyarrow_parquet()  # fail now, not hours into prepare
    fraction = VAL_FRACTION if val_fraction is None else val_fraction
    source = FolderSource(root, files, val_paths(files, root, fraction), text_field, fraction)
    spec = f"local:{name}|{glob}|{text_field}|{fraction}|{listing_digest(files)}"
    return Corpus(name, source.split("train"), source.split("val"), spec=spec, source=source)


def _text_file_corpus(path: Path, name: str, val_fraction: float | None) -> Corpus:
    text = read_text_file(path)
    if text is None:
        raise ValueError(f"{path} is not a UTF-8 text file")
    return split_text(name, text, TEXT_VAL_FRACTION if val_fraction is None else val_fraction)


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets


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
        raise hf_streaming_error(description, err) from err
    source = HFSource(open_stream, description, text_field, val_fraction, _num_records(stream))
    options = json.dumps(load_options, sort_keys=True, default=str)
    spec = (f"hf:{dataset}|{config}|{split}|{text_field}|{val_fraction}|{options}|"
            f"{local_signature(dataset)}")
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
