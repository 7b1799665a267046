"""Corpora: named collections of real text, split into train and val documents.

Used from notebooks/02_language_modeling.ipynb on (`minigpt.data` re-exports everything here).
Built-in corpora work offline: ``"stdlib"`` (the Python source of the running interpreter's
standard library) and ``"stdlib-prose"`` (its docstrings and ``pydoc_data`` topics). Others are
downloaded into `minigpt.download.cache_dir` (``"tinyshakespeare"``), read from a local file or
folder, or streamed from the Hugging Face Hub (``"hf:<dataset>"``, optional ``datasets``).

Splits are by document: a file is entirely in train or entirely in val, decided by a hash of its
relative path (`in_validation`), so adding a file never moves another one across the split.
"""

from __future__ import annotations

import ast
import gc
import hashlib
import inspect
import os
import re
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from minigpt.download import cache_dir, download

# torch is imported inside the samplers only: tokenizing worker processes import this module, and
# on platforms that spawn them (macOS, Windows) each would otherwise pay for importing torch.
if TYPE_CHECKING:
    pass

__all__ = [
    "KNOWN_CORPORA",
    "Corpus",
    "hf_corpus",
    "in_validation",
    "load_corpus",
    "local_corpus",
    "stdlib_corpus",
    "stdlib_prose_corpus",
    "stdlib_sources",
    "tinyshakespeare_corpus",
]

VAL_FRACTION = 0.05  # share of files that go to the validation split
TEXT_VAL_FRACTION = 0.1  # a single text is cut: first 90% train, last 10% val

KNOWN_CORPORA = {
    "stdlib": "Python source of this interpreter's standard library (offline, default)",
    "stdlib-prose": "docstrings and pydoc topics of this interpreter's standard library (offline)",
    "tinyshakespeare": "Tiny Shakespeare, 1.1M characters (downloaded once, then cached)",
    "<path>": "a local text file, or a folder of text files (glob= selects files)",
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

    ``train`` and ``val`` are tuples of strings, except for streamed corpora (``hf:``), whose
    splits are re-iterable objects read lazily; ``spec`` then identifies the corpus in place of
    its contents (see `fingerprint`).
    """

    name: str
    train: Sequence[str] | Iterable[str]
    val: Sequence[str] | Iterable[str]
    spec: str | None = None

    @property
    def streamed(self) -> bool:
        return not (isinstance(self.train, Sequence) and isinstance(self.val, Sequence))

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


def local_corpus(path, glob: str = "**/*", val_fraction: float | None = None) -> Corpus:
    """A local text file (90/10 split by characters) or folder (split by file).

    In a folder, every UTF-8 text file matching `glob` is a document, in sorted order of its
    relative path; hidden files and folders are skipped, as are binary files.
    """
    path = Path(path).expanduser()
    name = str(path)
    if path.is_file():
        text = _read_text_file(path)
        if text is None:
            raise ValueError(f"{path} is not a UTF-8 text file")
        return _split_text(name, text, TEXT_VAL_FRACTION if val_fraction is None else val_fraction)
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or folder: {path}\n{_known_corpora()}")
    items = []
    for file in path.glob(glob):
        relpath = file.relative_to(path).as_posix()
        if not file.is_file() or any(part.startswith(".") for part in Path(relpath).parts):
            continue
        text = _read_text_file(file)
        if text is not None and text.strip():
            items.append((relpath, text))
    items.sort()
    if not items:
        raise ValueError(f"corpus {name!r} is empty: no text files matching {glob!r} in {path}")
    if len(items) == 1:
        fraction = TEXT_VAL_FRACTION if val_fraction is None else val_fraction
        return _split_text(name, items[0][1], fraction)
    train, val = _split_by_key(items, VAL_FRACTION if val_fraction is None else val_fraction)
    return Corpus(name, train, val)


class _StreamedSplit:
    """One split of a streamed dataset: the first `max_documents` records, filtered by hash."""

    def __init__(self, dataset, text_field, max_documents, val_fraction, split, description):
        self.dataset, self.text_field = dataset, text_field
        self.max_documents, self.val_fraction = max_documents, val_fraction
        self.split, self.description = split, description

    def __iter__(self) -> Iterator[str]:
        want_val = self.split == "val"
        try:
            for index, record in enumerate(self.dataset):
                if index >= self.max_documents:
                    break
                text = record[self.text_field]
                if text and in_validation(text, self.val_fraction) == want_val:
                    yield text
        except KeyError as err:
            raise KeyError(f"{self.description} has no text field {self.text_field!r}") from err
        except Exception as err:
            raise _hf_error(self.description, err) from err


def _hf_error(description: str, err: Exception) -> ConnectionError:
    return ConnectionError(
        f"could not stream {description}: {type(err).__name__}: {err}\n"
        "Streaming needs the Hugging Face Hub; this machine may be offline. Offline, use a "
        "local corpus instead: 'stdlib', 'stdlib-prose', or the path of a text file or folder."
    )


def hf_corpus(
    dataset: str,
    config: str | None = None,
    *,
    split: str = "train",
    text_field: str = "text",
    max_documents: int = 20_000,
    val_fraction: float = VAL_FRACTION,
    **load_options,
) -> Corpus:
    """A Hugging Face dataset, streamed: its first `max_documents` records of `split`.

    Each record's `text_field` is a document; validation documents are picked by a hash of the
    text (`in_validation`). Needs the optional ``datasets`` package.
    """
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            f'the corpus "hf:{dataset}" needs the optional datasets package: '
            'pip install "minigpt[datasets]"'
        ) from err
    description = f"Hugging Face dataset {dataset!r}" + (f" ({config})" if config else "")
    try:
        stream = datasets.load_dataset(dataset, config, split=split, streaming=True, **load_options)
    except Exception as err:
        raise _hf_error(description, err) from err
    spec = f"hf:{dataset}|{config}|{split}|{text_field}|{max_documents}|{val_fraction}"
    halves = [
        _StreamedSplit(stream, text_field, max_documents, val_fraction, part, description)
        for part in ("train", "val")
    ]
    return Corpus(f"hf:{dataset}", *halves, spec=spec)


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
