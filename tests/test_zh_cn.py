"""The 简体中文 edition: built from the English notebooks plus translations, and unable to drift.

The Chinese notebooks are the English ones with the markdown cells translated. These tests hold
the build to that: drift is reported by `build.py --check`, code and outputs are identical, the
mathematics, code spans, links and numbers of every prose cell survive translation, and the
glossary's one-term-per-concept rule is kept.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
ZH = ROOT / "zh-CN"
ENGLISH = [p for folder in ("notebooks", "exercises", "solutions")
           for p in sorted((ROOT / folder).glob("*.ipynb"))]
CJK = re.compile(r"[\u4e00-\u9fff]")
SPEC = importlib.util.spec_from_file_location("zh_build", ZH / "build.py")
BUILD = sys.modules.setdefault("zh_build", importlib.util.module_from_spec(SPEC))
SPEC.loader.exec_module(BUILD)


def zh_path(english: Path) -> Path:
    return ZH / english.parent.name / english.name


def ids(english: Path) -> str:
    return english.relative_to(ROOT).as_posix()


load = BUILD.load


def run_build(*args: str, root: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(root / "zh-CN" / "build.py"), *args],
                          capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- markdown anatomy

FENCE = re.compile(r"```.*?```", re.S)
CODE = re.compile(r"``.+?``|`[^`]+`", re.S)  # a span may wrap onto the next line
DISPLAY = re.compile(r"\$\$.+?\$\$", re.S)
INLINE = re.compile(r"(?<![\\$])\$(?!\$)[^$]+?(?<!\\)\$")  # may span a line break
LINK_TARGET = re.compile(r"\]\(([^)\s]+)\)")
URL = re.compile(r"https?://\S+")
NUMBER = re.compile(r"(?<![\w.])(?>\d+(?:[.,]\d+)*)(?!\s+(?:thousand|million|billion))")
# "8 million" is "800 万" in Chinese and "10 billion" is "100 亿": such numbers may change form
HEADING = re.compile(r"^(#+)\s", re.M)


def anatomy(markdown: str) -> dict:
    """What a translation must carry over unchanged, and the prose that is left."""
    fences = FENCE.findall(markdown)
    rest = FENCE.sub(" ", markdown)
    code = CODE.findall(rest)
    rest = CODE.sub(" ", rest)
    display = DISPLAY.findall(rest)
    rest = DISPLAY.sub(" ", rest)
    inline = INLINE.findall(rest)
    rest = INLINE.sub(" ", rest)
    targets = LINK_TARGET.findall(rest)
    rest = URL.sub(" ", LINK_TARGET.sub("] ", rest))
    return {"fences": fences, "code": code, "display": display, "inline": inline,
            "targets": targets, "headings": HEADING.findall(markdown), "prose": rest}


def prose_words(prose: str) -> list[str]:
    return re.findall(r"[A-Za-z]{2,}", prose)


def repointed(target: str, english: Path) -> str:
    """Where the build sends a relative link of an English notebook."""
    return BUILD.repoint_links(f"[x]({target})", english)[len("[x]("):-1]


def cell_pairs(english: Path):
    en_nb, zh_nb = load(english), load(zh_path(english))
    for index, (en, zh) in enumerate(zip(en_nb["cells"], zh_nb["cells"], strict=True)):
        if en["cell_type"] == "markdown":
            yield index, "".join(en["source"]), "".join(zh["source"])


# ---------------------------------------------------------------- the build and its check


def test_check_passes_on_the_committed_tree():
    result = run_build("--check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout


@pytest.fixture(scope="module")
def copy_of_the_course(tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("course")
    for folder in ("notebooks", "exercises", "solutions", "zh-CN"):
        shutil.copytree(ROOT / folder, copy / folder)
    shutil.copy(ROOT / "README.md", copy / "README.md")
    return copy


def edit_markdown(path: Path, index: int, change) -> None:
    notebook = load(path)
    cell = notebook["cells"][index]
    assert cell["cell_type"] == "markdown"
    cell["source"] = change("".join(cell["source"]))
    path.write_text(BUILD.dump(notebook), encoding="utf-8")


def first_prose_cell(path: Path) -> int:
    cells = load(path)["cells"]
    return next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and i > 0)


def test_an_english_edit_fails_the_check_naming_the_cell(copy_of_the_course):
    english = copy_of_the_course / "notebooks" / "03_attention.ipynb"
    index = first_prose_cell(english)
    original = english.read_text(encoding="utf-8")
    try:
        edit_markdown(english, index, lambda s: s.replace(" the ", " the very ", 1))
        result = run_build("--check", root=copy_of_the_course)
        assert result.returncode == 1
        assert f"notebooks/03_attention.ipynb cell {index}: the English changed" in result.stdout
        assert "+" in result.stdout and "very" in result.stdout  # the diff shows what changed
        assert "translates no cell" in result.stdout  # the old entry is now stale
    finally:
        english.write_text(original, encoding="utf-8")
    assert run_build("--check", root=copy_of_the_course).returncode == 0


def test_a_new_english_cell_is_reported_untranslated_until_synced_and_translated(
        copy_of_the_course):
    english = copy_of_the_course / "exercises" / "01_tokenization.ipynb"
    original = english.read_text(encoding="utf-8")
    tfile = copy_of_the_course / "zh-CN" / "translations" / "exercises" / "01_tokenization.md"
    saved = tfile.read_text(encoding="utf-8")
    try:
        notebook = load(english)
        notebook["cells"].append(nbformat.v4.new_markdown_cell(
            "A wholly new paragraph about merges.", id="feedbeef"))
        english.write_text(BUILD.dump(notebook), encoding="utf-8")
        result = run_build("--check", root=copy_of_the_course)
        last = len(notebook["cells"]) - 1
        assert f"exercises/01_tokenization.ipynb cell {last}: no translation" in result.stdout
        assert run_build("--sync", root=copy_of_the_course).returncode == 0
        text = tfile.read_text(encoding="utf-8")
        assert "A wholly new paragraph about merges." in text
        key = re.search(r"<!-- zh-CN (\w+) -->\n\n*$", text).group(1)
        tfile.write_text(text.replace(f"<!-- zh-CN {key} -->", f"<!-- zh-CN {key} -->\n"
                                      "一段关于合并的全新文字。"), encoding="utf-8")
        assert "differs from what the build makes" in run_build(
            "--check", root=copy_of_the_course).stdout
        assert run_build(root=copy_of_the_course).returncode == 0
        assert run_build("--check", root=copy_of_the_course).returncode == 0
        built = load(copy_of_the_course / "zh-CN" / "exercises" / "01_tokenization.ipynb")
        assert "".join(built["cells"][-1]["source"]) == "一段关于合并的全新文字。"
    finally:
        english.write_text(original, encoding="utf-8")
        tfile.write_text(saved, encoding="utf-8")
        run_build(root=copy_of_the_course)


def test_a_hand_edited_chinese_notebook_or_translation_record_is_caught(copy_of_the_course):
    built = copy_of_the_course / "zh-CN" / "notebooks" / "02_language_modeling.ipynb"
    original = built.read_text(encoding="utf-8")
    try:
        built.write_text(original.replace("\n", "\n ", 1), encoding="utf-8")
        result = run_build("--check", root=copy_of_the_course)
        assert "zh-CN/notebooks/02_language_modeling.ipynb: differs" in result.stdout
    finally:
        built.write_text(original, encoding="utf-8")
    tfile = copy_of_the_course / "zh-CN" / "translations" / "notebooks" / "02_language_modeling.md"
    saved = tfile.read_text(encoding="utf-8")
    try:  # the stored English is the record of what was translated: editing it is refused
        lines = saved.split("\n")
        lines[1] = lines[1] + " (edited)"
        tfile.write_text("\n".join(lines), encoding="utf-8")
        result = run_build("--check", root=copy_of_the_course)
        assert result.returncode != 0 and "is not the text that key was made from" in result.stderr
    finally:
        tfile.write_text(saved, encoding="utf-8")


# ---------------------------------------------------------------- structure of every notebook


@pytest.mark.parametrize("english", ENGLISH, ids=ids)
def test_code_outputs_and_metadata_are_identical(english):
    en, zh = load(english), load(zh_path(english))
    assert en["metadata"] == zh["metadata"]
    assert [c["cell_type"] for c in en["cells"]] == [c["cell_type"] for c in zh["cells"]]
    assert [c.get("id") for c in en["cells"]] == [c.get("id") for c in zh["cells"]]
    for en_cell, zh_cell in zip(en["cells"], zh["cells"], strict=True):
        if en_cell["cell_type"] != "markdown":
            assert en_cell == zh_cell


@pytest.mark.parametrize("english", ENGLISH, ids=ids)
def test_every_prose_cell_is_translated_and_keeps_math_code_links_and_numbers(english):
    for index, en, zh in cell_pairs(english):
        where = f"{ids(english)} cell {index}"
        a, b = anatomy(en), anatomy(zh)
        assert b["display"] == a["display"], f"{where}: display math changed"
        assert Counter(b["inline"]) == Counter(a["inline"]), f"{where}: inline math changed"
        changed = set(a["code"]) ^ set(b["code"])
        assert not changed, f"{where}: inline code {sorted(changed)} changed"
        assert b["fences"] == a["fences"], f"{where}: a fenced block changed"
        assert b["headings"] == a["headings"], f"{where}: headings changed"
        assert b["targets"] == [repointed(t, english) for t in a["targets"]], f"{where}: links"
        missing = set(NUMBER.findall(a["prose"])) - set(NUMBER.findall(b["prose"]))
        assert not missing, f"{where}: numbers {sorted(missing)} are missing from the Chinese"
        if len(prose_words(a["prose"])) >= 3:
            assert CJK.search(b["prose"]), f"{where}: not translated"
            run = re.search(r"(?:\b[A-Za-z]+[,;:]?\s+){9}[A-Za-z]+", b["prose"])
            assert run is None, f"{where}: English left in the translation: {run.group(0)!r}"


@pytest.mark.parametrize("english", ENGLISH, ids=ids)
def test_every_relative_link_of_a_chinese_notebook_resolves(english):
    zh = zh_path(english)
    for _, _, text in cell_pairs(english):
        for target in anatomy(text)["targets"]:
            if not re.match(r"^[a-z]+:|^#", target):
                assert (zh.parent / target.split("#")[0]).exists(), f"{ids(english)}: {target}"


@pytest.mark.parametrize("english", ENGLISH, ids=ids)
def test_chinese_notebooks_are_valid_nbformat(english):
    nbformat.validate(nbformat.read(zh_path(english), as_version=4))


# ---------------------------------------------------------------- the glossary


def glossary() -> list[tuple[str, str, list[str]]]:
    """(English, Chinese, words not to use) for each row of the glossary's table."""
    rows = []
    for line in (ZH / "GLOSSARY.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] != "English":
            rows.append((cells[0], cells[1], [w for w in cells[2].split("、") if w]))
    return rows


def test_the_glossary_is_read_and_covers_the_core_terms():
    terms = {zh for _, zh, _ in glossary()}
    for needed in ("注意力", "多头注意力", "位置编码", "层归一化", "残差连接", "预训练", "微调",
                   "低秩适配", "困惑度", "词元"):
        assert needed in terms


def chinese_text(path: Path) -> str:
    """A notebook's markdown without code, math or link targets, headings included."""
    cells = [c for c in load(path)["cells"] if c["cell_type"] == "markdown"]
    return "\n".join(anatomy("".join(c["source"]))["prose"] for c in cells)


def running_text(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def normalise(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


@pytest.mark.parametrize("english", ENGLISH, ids=ids)
def test_glossary_terms_are_used_consistently_and_introduced_with_their_english(english):
    text = chinese_text(zh_path(english))
    rows = glossary()
    for _, zh, avoid in rows:
        for word in avoid:
            assert word not in text, f"{ids(english)}: '{word}' is not used; write '{zh}'"
    prose = running_text(text)  # the first use is looked for outside headings
    english_of = {zh: en for en, zh, _ in rows}
    pattern = re.compile("|".join(re.escape(zh) for zh in sorted(english_of, key=len,
                                                                  reverse=True)))
    seen = set()
    for match in pattern.finditer(prose):
        term = match.group(0)
        if term in seen:
            continue
        seen.add(term)
        if len(term) == 1 or term == english_of[term]:
            continue
        after = re.match(r"\s*[（(]([^）)]*)[）)]", prose[match.end():])
        given = normalise(after.group(1)) if after else ""
        wanted = normalise(english_of[term])
        assert len(given) >= 3 and (wanted in given or given in wanted), (
            f"{ids(english)}: the first use of '{term}' must give the English in parentheses, "
            f"'{term}（{english_of[term]}）'; found {prose[match.start():match.end() + 30]!r}")


# ---------------------------------------------------------------- reading and running it


def test_the_two_readmes_link_each_other_and_every_chinese_notebook():
    assert "](zh-CN/README.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    readme = (ZH / "README.md").read_text(encoding="utf-8")
    assert "](../README.md)" in readme
    for english in ENGLISH:
        target = f"{english.parent.name}/{english.name}"
        assert f"]({target})" in readme, f"zh-CN/README.md does not link {target}"
        assert (ZH / target).exists()


def test_a_chinese_solution_runs_from_its_own_folder():
    """The code is the English code; run from zh-CN/solutions/ it must still find `checks`."""
    notebook = ZH / "solutions" / "01_tokenization.ipynb"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-c", os.devnull, "-p", "no:cacheprovider",
         "--rootdir", str(ZH), "--nbval", "--nbval-sanitize-with",
         str(ROOT / "tests" / "nbval_sanitize.cfg"), str(notebook)],
        cwd=ZH, capture_output=True, text=True, timeout=900,
        env={**os.environ, "MINIGPT_CHECK_SEED": "2026"})
    assert result.returncode == 0, result.stdout[-3000:]
