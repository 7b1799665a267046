"""Corpora, token files and batch samplers: the data side of next-token prediction.

Derived in notebooks/02_language_modeling.ipynb (windows of tokens, inputs ``x`` and targets
``y = x`` shifted by one) and used at scale in notebooks/08_pretraining.ipynb. Three layers:

1. `load_corpus` gives a `Corpus`: a name and ``train``/``val`` lists of documents (strings).
   Built-in corpora work offline: ``"stdlib"`` (the Python source of the running interpreter's
   standard library) and ``"stdlib-prose"`` (its docstrings and ``pydoc_data`` topics). Others are
   downloaded into `minigpt.download.cache_dir` (``"tinyshakespeare"``), read from a local file or
   folder, or streamed from the Hugging Face Hub (``"hf:<dataset>"``, optional ``datasets``).
2. `prepare` tokenizes a corpus once into ``train.bin``/``val.bin`` (flat uint16/uint32 arrays,
   documents separated by the tokenizer's end-of-text token), ``meta.json`` and
   ``tokenizer.json``; `load_tokens` maps a split back as a read-only array.
3. `RandomWindowSampler` (training) and `SequentialSampler` (evaluation) cut (x, y) batches out of
   a token array. Both are resumable (`state_dict`) and split the global batch between
   data-parallel ranks, so N ranks see exactly the windows one process would see.

Splits are by document: a file is entirely in train or entirely in val, decided by a hash of its
relative path (`in_validation`), so adding a file never moves another one across the split.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import hashlib
import inspect
import json
import multiprocessing
import os
import pickle
import re
import sysconfig
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm  # the text bar: tqdm.auto needs ipywidgets in notebooks

from minigpt.download import cache_dir, download
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

VAL_FRACTION = 0.05  # share of files that go to the validation split
TEXT_VAL_FRACTION = 0.1  # a single text is cut: first 90% train, last 10% val
FORMAT_VERSION = 1  # bump when the layout of the token files changes

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
