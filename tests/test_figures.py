"""The diagrams in notebooks/figures/ are exactly what draw.py writes, and plain, valid SVG."""

from __future__ import annotations

import importlib.util
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

FIGURES_DIR = Path(__file__).resolve().parents[1] / "notebooks" / "figures"
SVG = "{http://www.w3.org/2000/svg}"
# SVG 1.1 elements the figures may use: shapes, text and arrowheads; no scripts, styles, images.
ALLOWED = {"svg", "defs", "marker", "rect", "circle", "line", "polyline", "path", "text", "tspan"}


def load_draw():
    spec = importlib.util.spec_from_file_location("figures_draw", FIGURES_DIR / "draw.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def draw():
    return load_draw()


@pytest.fixture(scope="module")
def regenerated(draw, tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    draw.main(["--out", str(out)])
    return out


def listed(draw) -> list[str]:
    return [f"{figure.__name__}.svg" for figure in draw.FIGURES]


def test_the_folder_holds_exactly_the_listed_figures(draw):
    on_disk = sorted(p.name for p in FIGURES_DIR.glob("*.svg"))
    assert on_disk == sorted(listed(draw)), (
        "notebooks/figures/ and draw.FIGURES disagree; run python notebooks/figures/draw.py "
        "and delete SVG files that no figure function writes"
    )


def test_the_script_regenerates_every_committed_svg_byte_for_byte(draw, regenerated):
    assert sorted(p.name for p in regenerated.iterdir()) == sorted(listed(draw))
    stale = [name for name in listed(draw)
             if (regenerated / name).read_bytes() != (FIGURES_DIR / name).read_bytes()]
    assert not stale, f"{stale} differ from draw.py's output; run python notebooks/figures/draw.py"


def test_two_runs_write_the_same_bytes(draw, regenerated, tmp_path):
    draw.main(["--out", str(tmp_path)])
    for name in listed(draw):
        assert (tmp_path / name).read_bytes() == (regenerated / name).read_bytes(), name


@pytest.mark.parametrize("name", [p.name for p in sorted(FIGURES_DIR.glob("*.svg"))])
def test_each_svg_is_plain_svg_with_a_size_and_a_white_background(name):
    root = ET.parse(FIGURES_DIR / name).getroot()
    assert root.tag == f"{SVG}svg"
    width, height = int(root.get("width")), int(root.get("height"))
    assert root.get("viewBox") == f"0 0 {width} {height}"
    assert 600 <= width <= 800, "the figures are drawn for about 700 px of page width"
    tags = {element.tag.removeprefix(SVG) for element in root.iter()}
    assert tags <= ALLOWED, f"{name} uses {sorted(tags - ALLOWED)}"
    background = next(e for e in root if e.tag == f"{SVG}rect")
    assert (background.get("width"), background.get("height")) == (str(width), str(height))
    assert background.get("fill") == "#ffffff"
    text = (FIGURES_DIR / name).read_text(encoding="utf-8")
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "@import" not in text and "href" not in text


def test_labels_neither_collide_nor_leave_the_figure(draw):
    for figure in draw.FIGURES:
        canvas = figure()
        assert canvas.name == figure.__name__, "marker ids are prefixed with the figure's name"
        assert canvas.overlapping_labels() == [], figure.__name__
        assert canvas.labels_outside() == [], figure.__name__


def test_the_overlap_check_sees_two_labels_on_top_of_each_other(draw):
    canvas = draw.new_canvas("probe", 700, 100)
    canvas.text(100, 50, "attention weights", 14)
    canvas.text(120, 54, "softmax", 14)
    canvas.text(600, 50, "alone", 14)
    assert canvas.overlapping_labels() == [("attention weights", "softmax")]


def test_a_label_naming_code_that_minigpt_lacks_is_refused(draw):
    canvas = draw.new_canvas("probe", 700, 100)
    canvas.text(10, 20, "`qkv_proj` and `lm_head.weight` exist")  # accepted
    with pytest.raises(ValueError, match="c_attn"):
        canvas.text(10, 40, "`c_attn`, GPT-2's name for it, does not")


def _figures_referenced_by_notebooks() -> dict[str, set[str]]:
    import json
    import re

    found = {}
    for path in sorted(FIGURES_DIR.parent.glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        text = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
        names = set(re.findall(r"\]\(figures/([\w.-]+\.svg)\)", text))
        if names:
            found[path.stem] = names
    return found


def test_every_figure_is_drawn_in_the_course_and_every_reference_exists(draw):
    drawn = listed(draw)
    referenced = _figures_referenced_by_notebooks()
    used = set().union(*referenced.values())
    missing = sorted(used - set(drawn))
    assert not missing, f"notebooks reference figures that the script does not draw: {missing}"
    unused = sorted(set(drawn) - used)
    assert not unused, f"figures no notebook shows: {unused}"
    assert len(referenced) >= 7, f"only {sorted(referenced)} show a diagram"
