"""The course's shape: every notebook follows the conventions and stays tied to its module.

nbval (configured in pyproject.toml) re-executes each notebook and compares outputs; these tests
check what nbval does not: the notebook <-> module map, equation numbering, the parameters cell,
a fresh top-to-bottom execution, a plot, and the pointer to the matching exercise.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The spine of the course: notebook -> the module it derives and checks against.
COURSE = {
    "01_tokenization": "minigpt.tokenizer",
    "02_language_modeling": "minigpt.data",
    "03_attention": "minigpt.attention",
    "04_multi_head_attention": "minigpt.attention",
    "05_positional_encoding": "minigpt.positional",
    "06_transformer_block": "minigpt.layers",
    "07_gpt_model": "minigpt.model",
    "08_pretraining": "minigpt.train",
    "09_sampling": "minigpt.generate",
    "10_finetuning": "minigpt.lora",
    "11_applications": "minigpt.hf",
    "12_inside_the_black_box": "minigpt.interpret",
    "13_scaling_up": "minigpt.train",
}
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _code(nb) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_every_notebook_belongs_to_the_course():
    unknown = [p.stem for p in NOTEBOOKS if p.stem not in COURSE]
    assert not unknown, f"notebooks outside the course map: {unknown}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_imports_its_module(path):
    module = COURSE[path.stem]
    package, _, name = module.rpartition(".")
    code = "\n".join(_source(c) for c in _code(_load(path)))
    patterns = [rf"import {re.escape(module)}\b", rf"from {re.escape(module)} import",
                rf"from {re.escape(package)} import .*\b{name}\b"]
    assert any(re.search(p, code) for p in patterns), f"{path.name} never imports {module}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_module_docstring_cites_its_notebook(path):
    module = importlib.import_module(COURSE[path.stem])
    assert path.stem in (module.__doc__ or ""), (
        f"{module.__name__}'s docstring should point at notebooks/{path.name}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_was_executed_top_to_bottom_without_errors(path):
    code = _code(_load(path))
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), "re-run it top to bottom in a fresh kernel"
    errors = [o for c in code for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert not errors, f"cells end in errors: {[e['ename'] for e in errors]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_follows_the_lesson_conventions(path):
    nb = _load(path)
    number = path.stem.split("_")[0].lstrip("0")
    markdown = "\n".join(_source(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    tags = [c.get("metadata", {}).get("tags", []) for c in _code(nb)]
    assert sum("parameters" in t for t in tags) == 1, "exactly one cell tagged `parameters`"
    equations = re.findall(rf"\\tag\{{{number}\.(\d+)\}}", markdown)
    assert equations, f"no numbered equations \\tag{{{number}.k}}"
    assert len(equations) == len(set(equations)), "an equation number is used twice"
    outputs = [o for c in _code(nb) for o in c.get("outputs", [])]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, "at least one plot"
    first = _source(nb["cells"][0])
    assert nb["cells"][0]["cell_type"] == "markdown" and first.lstrip().startswith("# ")
    assert re.search(r"exercises/" + re.escape(path.stem), markdown), "point to the exercise"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_prints_no_machine_paths(path):
    for cell in _code(_load(path)):
        for output in cell.get("outputs", []):
            text = json.dumps(output.get("text", "")) + json.dumps(
                output.get("data", {}).get("text/plain", ""))
            assert not re.search(r"/(root|tmp|work|home|Users)/", text), (
                f"{path.name} prints a machine path; nbval would fail on another machine"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_nbval_markers_are_ones_nbval_recognises(path):
    # nbval only honours a comment line that is exactly the marker; anything after it on the
    # same line silently turns the marker off and the cell is compared strictly.
    for cell in _code(_load(path)):
        for line in _source(cell).splitlines():
            if "NBVAL_" in line:
                assert re.fullmatch(r"\s*# NBVAL_[A-Z_]+\s*", line), f"{path.name}: {line!r}"

