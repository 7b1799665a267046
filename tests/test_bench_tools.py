"""The notebook timer reports each notebook's time and names a failing cell's error."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)
    return path


def test_time_notebooks_runs_in_the_notebooks_folder_and_reports_failures(tmp_path,
                                                                          monkeypatch):
    timer = _load("time_notebooks")
    (tmp_path / "nbs").mkdir()
    _notebook(tmp_path / "nbs" / "01_ok.ipynb",
              "import os, time\ntime.sleep(0.3)", "assert os.path.isfile('01_ok.ipynb')")
    _notebook(tmp_path / "nbs" / "02_bad.ipynb", "raise ValueError('block_size too small')")
    monkeypatch.setattr(timer, "ROOT", tmp_path)
    out = tmp_path / "times.json"
    assert timer.main(["--folder", "nbs", "--json", str(out)]) == 1  # one failed
    rows = {r["notebook"]: r for r in json.loads(out.read_text())["notebooks"]}
    assert rows["01_ok.ipynb"]["error"] is None and rows["01_ok.ipynb"]["seconds"] >= 0.3
    assert "block_size too small" in rows["02_bad.ipynb"]["error"]
    assert timer.main(["--folder", "nbs", "01"]) == 0  # a prefix picks one notebook
    assert timer.main(["--folder", "nbs", "99"]) == 1  # nothing matches: said, not silent
