"""Build the 简体中文 notebooks from the English ones and the stored translations.

    python zh-CN/build.py            # write zh-CN/{notebooks,exercises,solutions}/*.ipynb
    python zh-CN/build.py --check    # exit 1 and list every cell whose English changed, every
                                     # cell without a translation, every notebook out of date
    python zh-CN/build.py --sync     # add an entry to the translation files for every new or
                                     # changed English cell (its Chinese left empty to fill in)

Only the prose is translated. A Chinese notebook is its English notebook with each markdown
cell replaced by its translation: code cells, outputs and metadata are copied byte for byte, so
the two editions cannot compute different things. Relative links are re-pointed so that a
figure or a source file is found from zh-CN/ too.

Translations live in zh-CN/translations/<folder>/<name>.md, one entry per English markdown cell:

    <!-- en 0123456789ab -->
    the English cell, as it was when translated
    <!-- zh-CN 0123456789ab -->
    its translation

The key is the start of the SHA-256 of the English source. When the English changes, its key
changes, the old entry no longer matches, and --check names the cell and shows what changed in
the English since it was translated. Exercises and their solutions share one file: their prose
is the same.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FOLDERS = ("notebooks", "exercises", "solutions")
TRANSLATION_FOLDER = {"notebooks": "notebooks", "exercises": "exercises", "solutions": "exercises"}
EN_MARK = re.compile(r"^<!-- en ([0-9a-f]{12}) -->$")
ZH_MARK = re.compile(r"^<!-- zh-CN ([0-9a-f]{12}) -->$")
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def cell_key(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:12]


@dataclass
class Entry:
    english: str
    chinese: str


# ---------------------------------------------------------------- translation files


def read_translations(path: Path) -> dict[str, Entry]:
    """Entries of one translation file by key; a stored English that does not hash to its key
    means the file was edited by hand in the wrong place, and is refused."""
    if not path.exists():
        return {}
    entries: dict[str, Entry] = {}
    key, part, lines = None, None, {"en": [], "zh": []}

    def close():
        if key is None:
            return
        english, chinese = "\n".join(lines["en"]), "\n".join(lines["zh"])
        if cell_key(english) != key:
            sys.exit(f"{path}: the English stored under key {key} is not the text that key was "
                     "made from; restore it (the English is a record, edit only the Chinese)")
        entries[key] = Entry(english, chinese.strip("\n"))

    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        match = EN_MARK.match(line)
        if match:
            close()
            key, part, lines = match.group(1), "en", {"en": [], "zh": []}
        elif (zh_match := ZH_MARK.match(line)) and part == "en":
            if zh_match.group(1) != key:
                sys.exit(f"{path}:{number}: '<!-- zh-CN KEY -->' must repeat the key {key} of "
                         "the English above it")
            part = "zh"
        elif part is None:
            if line.strip():
                sys.exit(f"{path}:{number}: text before the first '<!-- en KEY -->' line")
        else:
            lines[part].append(line)
    close()
    return entries


def write_translations(path: Path, entries: list[tuple[str, Entry]]) -> None:
    parts = [f"<!-- en {key} -->\n{entry.english}\n<!-- zh-CN {key} -->\n{entry.chinese}\n"
             for key, entry in entries]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")


# ---------------------------------------------------------------- notebooks


def english_notebooks(only: list[str] | None = None) -> list[Path]:
    paths = [p for folder in FOLDERS for p in sorted((ROOT / folder).glob("*.ipynb"))]
    if only:
        paths = [p for p in paths if any(name in p.as_posix() for name in only)]
    return paths


def translation_file(english: Path) -> Path:
    folder = TRANSLATION_FOLDER[english.parent.name]
    return HERE / "translations" / folder / (english.stem + ".md")


def markdown_cells(notebook: dict) -> list[tuple[int, str]]:
    return [(index, "".join(cell["source"])) for index, cell in enumerate(notebook["cells"])
            if cell["cell_type"] == "markdown"]


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def dump(notebook: dict) -> str:
    # the layout nbformat writes, so a rebuilt notebook is byte-identical to a saved one
    return json.dumps(notebook, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


@functools.cache
def translated_paths() -> frozenset[str]:
    """Repository paths that have a Chinese edition: every notebook, and the README."""
    return frozenset(p.relative_to(ROOT).as_posix() for p in english_notebooks()) | {"README.md"}


def repoint_links(text: str, english: Path) -> str:
    """Make relative links work from zh-CN/<folder>/: a notebook or the README goes to its
    Chinese edition, a figure to its Chinese variant (figures/zh-CN/) where there is one, and
    anything else (a source file) to the file in the repository."""
    zh_dir = HERE / english.parent.name

    def repoint(match: re.Match) -> str:
        target = match.group(2)
        if re.match(r"^[a-z]+:|^#|^/", target):
            return match.group(0)
        path, anchor = (target.split("#", 1) + [""])[:2]
        in_repo = os.path.normpath((english.parent / path).relative_to(ROOT).as_posix())
        if in_repo.startswith(".."):
            return match.group(0)
        goal = HERE / in_repo if in_repo in translated_paths() else ROOT / in_repo
        localized = goal.parent / "zh-CN" / goal.name  # a figure drawn with Chinese labels
        if localized.is_file():
            goal = localized
        new = os.path.relpath(goal, zh_dir).replace(os.sep, "/") + (f"#{anchor}" if anchor else "")
        return match.group(1) + new + match.group(3)

    return LINK.sub(repoint, text)


def build_notebook(english: Path, entries: dict[str, Entry]) -> tuple[str, list[int]]:
    """The Chinese notebook's text, and the indices of markdown cells left in English."""
    notebook = load(english)
    untranslated = []
    for index, source in markdown_cells(notebook):
        entry = entries.get(cell_key(source))
        if entry is None or not entry.chinese.strip():
            untranslated.append(index)
            continue
        chinese = repoint_links(entry.chinese, english)
        notebook["cells"][index]["source"] = chinese.splitlines(keepends=True)
    return dump(notebook), untranslated


def output_path(english: Path) -> Path:
    return HERE / english.parent.name / english.name


# ---------------------------------------------------------------- check and sync


def closest_stale(source: str, stale: dict[str, Entry]) -> tuple[str, Entry] | None:
    """The unused entry whose English is most like this cell's: its translation went out of
    date when the English was edited."""
    best, best_ratio = None, 0.5
    for key, entry in stale.items():
        ratio = difflib.SequenceMatcher(None, entry.english, source, autojunk=False).ratio()
        if ratio > best_ratio:
            best, best_ratio = (key, entry), ratio
    return best


def english_diff(old: str, new: str) -> str:
    lines = difflib.unified_diff(old.splitlines(), new.splitlines(), "translated from",
                                 "English now", lineterm="", n=1)
    return "\n".join("      " + line for line in lines)


def english_sources(group: list[Path]) -> list[str]:
    """The markdown cells of a translation file's notebooks, in order, each once."""
    return list(dict.fromkeys(s for english in group for _, s in markdown_cells(load(english))))


def stale_entries(entries: dict[str, Entry], sources: list[str]) -> dict[str, Entry]:
    """Entries that translate none of these cells: what remains of an edited cell's English."""
    keys = {cell_key(source) for source in sources}
    return {key: entry for key, entry in entries.items() if key not in keys}


def groups_by_translation_file(only: list[str] | None) -> dict[Path, list[Path]]:
    groups: dict[Path, list[Path]] = {}
    for english in english_notebooks(only):
        groups.setdefault(translation_file(english), []).append(english)
    return groups


def check(only: list[str] | None = None) -> list[str]:
    problems = []
    for tfile, group in groups_by_translation_file(only).items():
        entries = read_translations(tfile)
        stale = stale_entries(entries, english_sources(group))
        for english in group:
            name = english.relative_to(ROOT).as_posix()
            for index, source in markdown_cells(load(english)):
                entry = entries.get(cell_key(source))
                if entry is not None and entry.chinese.strip():
                    continue
                if entry is not None:
                    problems.append(f"{name} cell {index}: translation is empty in "
                                    f"{tfile.relative_to(ROOT)}")
                    continue
                old = closest_stale(source, stale)
                if old is None:
                    problems.append(f"{name} cell {index}: no translation (run --sync, then "
                                    f"translate it in {tfile.relative_to(ROOT)})")
                else:
                    problems.append(f"{name} cell {index}: the English changed since it was "
                                    f"translated (entry {old[0]} in {tfile.relative_to(ROOT)}):"
                                    f"\n{english_diff(old[1].english, source)}")
            built, _ = build_notebook(english, entries)
            out = output_path(english)
            if not out.exists() or out.read_text(encoding="utf-8") != built:
                problems.append(f"{out.relative_to(ROOT).as_posix()}: differs from what the "
                                "build makes (run python zh-CN/build.py)")
        for key in stale:
            problems.append(f"{tfile.relative_to(ROOT)}: entry {key} translates no cell of "
                            f"{', '.join(e.name for e in group)} any more; delete it once its "
                            "text has been carried over")
    return problems


def sync(only: list[str] | None = None) -> None:
    """Rewrite each translation file in cell order, with an empty entry for each new cell; the
    entry of a cell whose English changed stays beside it until it is deleted by hand."""
    for tfile, group in groups_by_translation_file(only).items():
        entries = read_translations(tfile)
        sources = english_sources(group)
        stale = stale_entries(entries, sources)
        ordered = []
        for source in sources:
            key = cell_key(source)
            ordered.append((key, entries.get(key, Entry(source, ""))))
            old = None if key in entries else closest_stale(source, stale)
            if old is not None:
                ordered.append((old[0], stale.pop(old[0])))
        ordered += list(stale.items())
        write_translations(tfile, ordered)


def build(only: list[str] | None = None) -> None:
    for tfile, group in groups_by_translation_file(only).items():
        entries = read_translations(tfile)
        for english in group:
            text, untranslated = build_notebook(english, entries)
            out = output_path(english)
            out.parent.mkdir(parents=True, exist_ok=True)
            temporary = out.with_suffix(".tmp")
            temporary.write_text(text, encoding="utf-8")
            temporary.replace(out)
            if untranslated:
                print(f"{out.relative_to(ROOT)}: cells {untranslated} still in English")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report drift, write nothing")
    mode.add_argument("--sync", action="store_true", help="add entries for new English cells")
    parser.add_argument("only", nargs="*", help="notebook names to limit to, e.g. 03_attention")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.only)
        for problem in problems:
            print(problem)
        print(f"{len(problems)} problem(s)" if problems else "zh-CN is up to date")
        return 1 if problems else 0
    if args.sync:
        sync(args.only)
        return 0
    build(args.only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
