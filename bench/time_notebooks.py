"""How long each course notebook takes, run top to bottom in a fresh kernel, as CI runs it.

    python bench/time_notebooks.py [--folder notebooks] [--json out.json] [NAME ...]

An instructor planning a class, or a contributor checking a change, gets each notebook's wall
time and the suite's total. Nothing is written back to the notebooks: the executed copies are
dropped. A notebook that raises is reported with its error and counts as failed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parents[1]


def time_notebook(path: Path, timeout: int = 600) -> dict:
    """Execute `path` in a fresh kernel started in its folder; return seconds and any error."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellExecutionError as exc:
        error = str(exc).strip().splitlines()[-1]
    return {"notebook": path.name, "seconds": round(time.perf_counter() - start, 1),
            "error": error}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="notebook names or prefixes (default: all)")
    parser.add_argument("--folder", default="notebooks", help="notebooks, solutions or exercises")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    folder = ROOT / args.folder
    paths = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if args.names:
        paths = [p for p in paths if any(p.name.startswith(n) for n in args.names)]
    if not paths:
        print(f"no notebooks matching {args.names or '*'} in {folder}")
        return 1
    rows = []
    for path in paths:
        rows.append(time_notebook(path))
        row = rows[-1]
        status = f"FAILED: {row['error']}" if row["error"] else "ok"
        print(f"{row['notebook']:40s} {row['seconds']:7.1f} s  {status}", flush=True)
    total = sum(r["seconds"] for r in rows)
    print(f"{'total':40s} {total:7.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"folder": args.folder, "python": sys.version.split()[0],
             "machine": platform.machine(), "notebooks": rows, "total_seconds": round(total, 1)},
            indent=2) + "\n")
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
