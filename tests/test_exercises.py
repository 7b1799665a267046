"""Exercises and their solutions: same notebook, checks that can fail, and fail helpfully.

- Every exercise notebook has a solved twin in solutions/ with exactly the same cells, except
  that each TODO cell (tagged `exercise`) is a solution cell (tagged `solution`) there.
- Executed as committed (unsolved), every check cell of an exercise fails with `CheckFailed`
  and a message, and nothing else breaks; the solved notebook runs under strict nbval
  (pyproject.toml puts solutions/ in the test paths).
- Put the solution code into the TODO cells of an exercise and you get the solution notebook.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXERCISES = sorted((ROOT / "exercises").glob("*.ipynb"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _solution_of(path: Path) -> Path:
    return ROOT / "solutions" / path.name


def test_every_exercise_has_a_solution_and_the_reverse():
    exercises = {p.name for p in EXERCISES}
    solutions = {p.name for p in (ROOT / "solutions").glob("*.ipynb")}
    assert exercises == solutions, f"unpaired: {sorted(exercises ^ solutions)}"


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.stem)
def test_exercise_and_solution_differ_only_in_the_solution_cells(path):
    exercise, solution = _load(path)["cells"], _load(_solution_of(path))["cells"]
    assert len(exercise) == len(solution), "the two notebooks have different numbers of cells"
    for number, (mine, theirs) in enumerate(zip(exercise, solution, strict=True), 1):
        if "exercise" in _tags(mine):
            assert "solution" in _tags(theirs), f"cell {number}: the solution cell is not tagged"
            assert mine["cell_type"] == theirs["cell_type"] == "code"
            assert "TODO" in _source(mine), f"cell {number}: an exercise cell needs a TODO"
        else:
            assert "solution" not in _tags(theirs), f"cell {number}: tagged only in solutions"
            assert mine["cell_type"] == theirs["cell_type"], f"cell {number}: different types"
            assert _source(mine) == _source(theirs), f"cell {number}: the notebooks drifted apart"


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.stem)
def test_exercise_notebook_has_at_least_three_checked_exercises(path):
    cells = _load(path)["cells"]
    todo = [c for c in cells if "exercise" in _tags(c)]
    checks = [c for c in cells if "check" in _tags(c)]
    assert len(todo) >= 3 and len(checks) >= 3, "at least three exercises, each with a check"
    assert all("from checks" in _source(c) or "check." in _source(c) for c in checks)
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not outputs, "exercise notebooks are committed without outputs"


def test_solution_cells_put_into_the_exercises_give_the_solutions():
    for path in EXERCISES:
        exercise, solution = _load(path)["cells"], _load(_solution_of(path))["cells"]
        spliced = [_source(s) if "exercise" in _tags(e) else _source(e)
                   for e, s in zip(exercise, solution, strict=True)]
        assert spliced == [_source(s) for s in solution], path.name


@pytest.mark.parametrize("path", EXERCISES, ids=lambda p: p.stem)
def test_unsolved_exercise_fails_every_check_with_a_message(path):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    for number, cell in enumerate(notebook.cells, 1):
        if cell.cell_type != "code":
            continue
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        if "check" in _tags(cell):
            assert errors, f"cell {number}: the check passed on the unsolved exercise"
            assert errors[0]["ename"] == "CheckFailed", (
                f"cell {number}: failed with {errors[0]['ename']}, not a CheckFailed message"
            )
            assert len(errors[0]["evalue"]) > 20, f"cell {number}: the message says too little"
        else:
            assert not errors, (
                f"cell {number} breaks before any check: {errors[0]['ename']}: "
                f"{errors[0]['evalue']}"
            )
