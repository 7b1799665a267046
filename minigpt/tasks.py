"""Finetuning tasks made from real code: the running interpreter's standard library.

Used in notebooks/10_finetuning.ipynb and notebooks/11_applications.ipynb, and by
bench/bench_finetune.py. Every example is built at run time from the `.py` files of the standard
library (`minigpt.data.stdlib_sources`); nothing is copied into the repository. Four tasks:

    summarize  a function's code (signature + body, docstring removed)
               -> the first line of its docstring                      ROUGE (eq. 10.6)
    codegen    a function's signature + docstring -> its body          share that parses with
                                                                       `ast`, exact match, ROUGE
    qa         a function's signature + "what is the default value     exact match (eq. 10.7)
               of the parameter `p`?" -> the default, as written
    classify   a function's source -> the package that defines it,     accuracy (eq. 10.7)
               one of CLASSIFY_PACKAGES

`summarize`, `codegen` and `qa` are instruction data in the Alpaca layout (`instruction`, `input`,
`output`) that `minigpt.finetune` reads; `classify` is `{"text", "label"}`. Every example also
carries `meta` (module and function name), which the finetuning code ignores.

Splits are by module (source file), decided by a hash of the file's path (`module_split`): all
functions of a file land in the same split, for every task, so no function, nor a sibling from
the same file, appears in training and in evaluation. Examples whose text repeats one already in
an earlier split (train, then val, then test) are dropped, so copies of a function in two files
cannot leak either.

    python -m minigpt.tasks summarize data/summarize     # writes train/val/test.jsonl there
"""

from __future__ import annotations

import ast
import gc
import hashlib
import json
import random
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from minigpt.data import stdlib_sources

TASKS = ("summarize", "codegen", "qa", "classify")
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = {"test": 0.1, "val": 0.1}  # the rest is train
# Five packages present in every supported Python (3.10-3.13), each with 20+ files and 500+
# functions, and each with its own vocabulary (event loops, mail headers, Tk widgets, processes,
# XML nodes), so the package can be learned from the code; split by file, it must generalise.
CLASSIFY_PACKAGES = ("asyncio", "email", "idlelib", "multiprocessing", "xml")
# Examples whose input and answer together are longer than this many characters are left out
# (qa counts its input, the signature, alone; classify cuts its text to this length instead). The
# instruction and the prompt template are not counted: `longest_as_read` says how long the
# longest example is as the model reads it.
DEFAULT_MAX_CHARS = 600

INSTRUCTIONS = {
    "summarize": "Summarize this Python function in one line.",
    "codegen": "Write the body of this Python function.",
    "qa": "What is the default value of the parameter `{name}`?",
    "classify": "Which package defines this function? Answer with one of: {labels}.",
}


# ---------------------------------------------------------------------------------------------
# Functions of the standard library


@dataclass(frozen=True)
class Function:
    """One function or method of a standard-library file, cut into its parts.

    Every text is dedented to the `def` line, so a method reads like a top-level function.
    `header` is the `def` line(s) without decorators, `docstring` the docstring statement as
    written (quotes included, or "" when there is none), `body` the statements after it.
    """

    module: str  # relative path of the file, e.g. "asyncio/base_events.py"
    qualname: str  # "BaseEventLoop.run_forever"
    lineno: int
    header: str
    docstring: str
    summary: str  # first line of the cleaned docstring ("" when there is none)
    body: str
    defaults: tuple[tuple[str, str], ...]  # (parameter, default as written) pairs

    @property
    def source(self) -> str:
        return "\n".join(part for part in (self.header, self.docstring, self.body) if part)

    @property
    def package(self) -> str:
        return self.module.split("/", 1)[0] if "/" in self.module else ""


def _dedent(lines: list[str], column: int) -> list[str]:
    # Lines indented less than the `def` can only be inside a string literal: kept as they are.
    return [line[column:] if line[:column].isspace() or not line[:column] else line
            for line in lines]


def _defaults(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]):
    args = node.args
    positional = [*args.posonlyargs, *args.args]
    pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults,
                     strict=True))
    pairs += [(arg, default) for arg, default in zip(args.kwonlyargs, args.kw_defaults,
                                                      strict=True) if default is not None]
    found = []
    for arg, default in pairs:
        if default.lineno == default.end_lineno:  # one line: cut it out (offsets are in bytes)
            line = lines[default.lineno - 1].encode("utf-8")
            found.append((arg.arg, line[default.col_offset: default.end_col_offset].decode()))
    return tuple(found)


def _function(module: str, qualname: str, node, lines: list[str]):
    """The `Function` of an ast node, or None when its parts cannot be cut apart cleanly."""
    first = node.body[0]
    if first.lineno <= node.lineno:  # `def f(): return 1` on one line
        return None
    column = node.col_offset
    header = lines[node.lineno - 1: first.lineno - 1]
    has_doc = (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
               and isinstance(first.value.value, str))
    docstring, summary, rest = [], "", node.body
    if has_doc:
        rest = node.body[1:]
        if rest and rest[0].lineno <= first.end_lineno:  # `"""doc"""; x = 1`
            return None
        docstring = lines[first.lineno - 1: first.end_lineno]
        cleaned = ast.get_docstring(node) or ""
        summary = cleaned.strip().splitlines()[0].strip() if cleaned.strip() else ""
    body = lines[rest[0].lineno - 1: node.end_lineno] if rest else []
    if rest and getattr(rest[0], "decorator_list", None):  # a nested decorated def
        body = lines[rest[0].decorator_list[0].lineno - 1: node.end_lineno]
    join = lambda part: "\n".join(_dedent(part, column)).rstrip()  # noqa: E731
    return Function(module, qualname, node.lineno, join(header), join(docstring), summary,
                    join(body), _defaults(node, lines))


def _walk(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, ast.AST]]:
    """(qualname, node) of the functions in module or class bodies; nested functions are part
    of their parent's body and are not listed on their own."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
        elif isinstance(node, ast.ClassDef):
            yield from _walk(node.body, prefix + node.name + ".")
        elif isinstance(node, (ast.If, ast.Try)):  # `if sys.platform == ...: def f(): ...`
            for block in (node.body, node.orelse, getattr(node, "finalbody", [])):
                yield from _walk(block, prefix)


def stdlib_functions(root=None) -> tuple[Function, ...]:
    """Every function and method of the standard library, in file and line order."""
    return _stdlib_functions(str(root) if root is not None else None)


@lru_cache(maxsize=2)
def _stdlib_functions(root: str | None) -> tuple[Function, ...]:
    found = []
    # Parsing makes millions of short-lived nodes without cycles; the cyclic garbage collector
    # would scan them again and again, so it pauses meanwhile (as in minigpt.data).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for module, source in stdlib_sources(root):
            try:
                tree = ast.parse(source)
            except (SyntaxError, ValueError):
                continue
            # ast numbers lines at \n, \r\n and \r only; str.splitlines would also cut at
            # form feeds, which some files hold, and shift every line after them
            lines = source.replace("\r\n", "\n").replace("\r", "\n").split("\n")
            for qualname, node in _walk(tree.body, ""):
                function = _function(module, qualname, node, lines)
                if function is not None:
                    found.append(function)
    finally:
        if was_enabled:
            gc.enable()
    return tuple(found)


# ---------------------------------------------------------------------------------------------
# Splits by module


def _unit_hash(key: str) -> float:
    """sha256 of `key` read as a number in [0, 1): depends on the key alone."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64


def module_split(module: str) -> str:
    """"train", "val" or "test" for a module path; the same answer for every task."""
    value = _unit_hash("minigpt.tasks:" + module)
    if value < SPLIT_FRACTIONS["test"]:
        return "test"
    if value < SPLIT_FRACTIONS["test"] + SPLIT_FRACTIONS["val"]:
        return "val"
    return "train"


def split_modules(modules) -> dict[str, str]:
    """module -> split for a group of modules, with every split non-empty where the group has
    three modules or more: when the hash leaves a split empty, the train module with the
    smallest hash moves there (still a function of the set of modules alone)."""
    modules = sorted(set(modules))
    splits = {m: module_split(m) for m in modules}
    if len(modules) >= 3:
        for split in ("test", "val"):
            if split not in splits.values():
                train = sorted((m for m in modules if splits[m] == "train"),
                               key=lambda m: _unit_hash("minigpt.tasks:" + m))
                if len(train) > 1:
                    splits[train[0]] = split
    return splits


def _assign(examples: list[dict], splits: dict[str, str]) -> dict[str, list[dict]]:
    """Group examples by their module's split; drop exact repeats of an earlier split's text."""
    out = {split: [] for split in SPLITS}
    seen = set()
    for split in SPLITS:
        for example in examples:
            if splits[example["meta"]["module"]] != split:
                continue
            key = json.dumps({k: v for k, v in example.items() if k != "meta"}, sort_keys=True)
            input_key = example.get("input", example.get("text"))
            if key in seen or (split != "train" and ("input", input_key) in seen):
                continue
            seen.add(key)
            seen.add(("input", input_key))
            out[split].append(example)
    return out


# ---------------------------------------------------------------------------------------------
# The four tasks


def _meta(function: Function) -> dict:
    return {"module": function.module, "function": function.qualname}


def summarize_examples(functions, max_chars: int = DEFAULT_MAX_CHARS) -> list[dict]:
    """Code without its docstring -> the docstring's first line (2 to 25 words)."""
    examples = []
    for f in functions:
        if not (f.docstring and f.body and 2 <= len(f.summary.split()) <= 25):
            continue
        code = f"{f.header}\n{f.body}"
        if len(code) + len(f.summary) > max_chars:
            continue
        examples.append({"instruction": INSTRUCTIONS["summarize"], "input": code,
                         "output": f.summary, "meta": _meta(f)})
    return examples


def codegen_examples(functions, max_chars: int = DEFAULT_MAX_CHARS) -> list[dict]:
    """Signature + docstring -> body (indented as in a function, 4 spaces for most)."""
    examples = []
    for f in functions:
        if not (f.docstring and f.body):
            continue
        prompt = f"{f.header}\n{f.docstring}"
        if len(prompt) + len(f.body) > max_chars:
            continue
        examples.append({"instruction": INSTRUCTIONS["codegen"], "input": prompt,
                         "output": f.body, "meta": _meta(f)})
    return examples


def qa_examples(functions, max_chars: int = DEFAULT_MAX_CHARS, max_answer: int = 30):
    """A signature and one of its parameters -> that parameter's default value, as written.

    The parameter is picked by a hash of the function's name (deterministic) among those whose
    default is not None, where there is one: half of all defaults are None, and a task whose
    answer is mostly "None" would measure little beyond the majority baseline.
    """
    examples = []
    for f in functions:
        defaults = [(name, value) for name, value in f.defaults if len(value) <= max_answer]
        if not defaults or len(f.header) > max_chars:
            continue
        defaults = [(name, value) for name, value in defaults if value != "None"] or defaults
        name, value = defaults[int(_unit_hash(f.module + ":" + f.qualname) * len(defaults))]
        examples.append({"instruction": INSTRUCTIONS["qa"].format(name=name), "input": f.header,
                         "output": value, "meta": _meta(f)})
    return examples


def classify_examples(functions, max_chars: int = DEFAULT_MAX_CHARS,
                      packages=CLASSIFY_PACKAGES) -> list[dict]:
    """A function's source (cut to max_chars at a line end) -> its package."""
    examples = []
    for f in functions:
        if f.package not in packages or not f.body:
            continue
        text = f.source
        if len(text) > max_chars:
            text = text[:max_chars].rsplit("\n", 1)[0]
        if len(text) < 40:  # a bare `def f(): pass` says nothing about its package
            continue
        examples.append({"text": text, "label": f.package, "meta": _meta(f)})
    return examples


_BUILDERS = {"summarize": summarize_examples, "codegen": codegen_examples, "qa": qa_examples,
             "classify": classify_examples}


def build_task(name: str, max_chars: int = DEFAULT_MAX_CHARS, limits: dict | None = None,
               seed: int = 0, root=None) -> dict[str, list[dict]]:
    """{"train": [...], "val": [...], "test": [...]} for task `name`.

    limits: at most this many examples per split (e.g. {"train": 2000, "test": 200}), a seeded
    random sample kept in source order; None keeps everything.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown task {name!r}; choose one of {TASKS}")
    examples = _BUILDERS[name](stdlib_functions(root), max_chars)
    if not examples:
        raise ValueError(f"task {name!r}: no function of the standard library fits "
                         f"max_chars={max_chars}; raise it")
    groups: dict[str, set] = {}
    for example in examples:
        label = example.get("label", "")  # classify: each package is split on its own
        groups.setdefault(label, set()).add(example["meta"]["module"])
    splits = {}
    for modules in groups.values():
        splits.update(split_modules(modules))
    data = _assign(examples, splits)
    for split, limit in (limits or {}).items():
        if limit is not None and len(data[split]) > limit:
            rng = random.Random(f"{seed}:{name}:{split}")
            keep = sorted(rng.sample(range(len(data[split])), limit))
            data[split] = [data[split][i] for i in keep]
    return data


def write_jsonl(examples, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for example in examples:
            f.write(json.dumps(example, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def write_task(name: str, out_dir, **options) -> dict[str, Path]:
    """Build task `name` (see `build_task` for options) and write out_dir/{train,val,test}.jsonl."""
    data = build_task(name, **options)
    return {split: write_jsonl(data[split], Path(out_dir) / f"{split}.jsonl") for split in SPLITS}


# ---------------------------------------------------------------------------------------------
# Scores that belong to one task, and trivial baselines


def code_parses(prompt: str, body: str) -> bool:
    """Does signature + docstring (`prompt`) followed by the generated `body` parse as one
    function? An empty body does not count (the docstring alone would parse), nor does an
    unindented one (it would parse as statements after the function)."""
    if not body.strip():
        return False
    try:
        tree = ast.parse(f"{prompt}\n{body}")
    except (SyntaxError, ValueError):
        return False
    return len(tree.body) == 1 and isinstance(tree.body[0], (ast.FunctionDef,
                                                             ast.AsyncFunctionDef))


def parse_rate(prompts, bodies) -> float:
    """Share of generated bodies that make a function Python can parse (codegen's score)."""
    prompts, bodies = list(prompts), list(bodies)
    if not prompts:
        raise ValueError("parse_rate needs at least one example")
    return sum(map(code_parses, prompts, bodies)) / len(prompts)


def baseline_predictions(name: str, train: list[dict], examples: list[dict]) -> list[str]:
    """What a trivial rule answers for each example:

    summarize  copy the first line of the code (the `def` line)
    codegen    `raise NotImplementedError` (parses, but says nothing)
    qa         the most common default in the training split
    classify   the most common package in the training split
    """
    if name == "summarize":
        return [example["input"].splitlines()[0] for example in examples]
    if name == "codegen":
        return ["    raise NotImplementedError"] * len(examples)
    key = "output" if name == "qa" else "label"
    if name not in ("qa", "classify"):
        raise ValueError(f"unknown task {name!r}; choose one of {TASKS}")
    majority = Counter(example[key] for example in train).most_common(1)[0][0]
    return [majority] * len(examples)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m minigpt.tasks",
                                     description="Write a stdlib task as train/val/test JSONL.")
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("out_dir")
    parser.add_argument("--max-chars", type=int, default=DEFAULT_MAX_CHARS,
                        help="leave out examples whose input and answer exceed this many "
                             "characters (classify: cut the text to it); the instruction and "
                             f"prompt template come on top (default {DEFAULT_MAX_CHARS})")
    args = parser.parse_args(argv)
    longest = 0
    for split, path in write_task(args.task, args.out_dir, max_chars=args.max_chars).items():
        examples = [json.loads(line) for line in open(path, encoding="utf-8")]
        longest = max(longest, longest_as_read(examples))
        print(f"{split:5s} {len(examples):6d} examples  {path}")
    print(f"longest example as a model reads it (prompt and answer): {longest} characters, at "
          "least as many tokens for a byte-level base such as the tiny preset's (context 128); "
          "finetuning refuses what does not fit, or leaves it out with skip_long=true")
    return 0


def longest_as_read(examples) -> int:
    """Characters of the longest example as finetuning formats it: the whole prompt (instruction,
    input, template) and the answer; a classification example's text."""
    from minigpt.instruct import format_prompt

    def length(example):
        if "label" in example:
            return len(example["text"])
        return len(format_prompt(example["instruction"], example.get("input", ""))) + len(
            example["output"])

    return max(map(length, examples), default=0)


if __name__ == "__main__":
    sys.exit(main())
