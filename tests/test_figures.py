"""The diagrams in notebooks/figures/ are exactly what draw.py writes, and plain, valid SVG; so are
their Chinese variants in notebooks/figures/zh-CN/."""

from __future__ import annotations

import importlib.util
import unicodedata
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

FIGURES_DIR = Path(__file__).resolve().parents[1] / "notebooks" / "figures"
ZH_DIR = FIGURES_DIR / "zh-CN"
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


def svg_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.svg"))


@pytest.mark.parametrize("folder", [FIGURES_DIR, ZH_DIR], ids=["en", "zh-CN"])
def test_the_folder_holds_exactly_the_listed_figures(draw, folder):
    assert svg_names(folder) == sorted(listed(draw)), (
        f"{folder} and draw.FIGURES disagree; run python notebooks/figures/draw.py "
        "and delete SVG files that no figure function writes"
    )


@pytest.mark.parametrize("lang", ["", "zh-CN"], ids=["en", "zh-CN"])
def test_the_script_regenerates_every_committed_svg_byte_for_byte(draw, regenerated, lang):
    assert svg_names(regenerated / lang) == sorted(listed(draw))
    stale = [name for name in listed(draw) if (regenerated / lang / name).read_bytes()
             != (FIGURES_DIR / lang / name).read_bytes()]
    assert not stale, f"{stale} differ from draw.py's output; run python notebooks/figures/draw.py"


def test_two_runs_write_the_same_bytes(draw, regenerated, tmp_path):
    draw.main(["--out", str(tmp_path)])
    for lang in ("", "zh-CN"):
        for name in listed(draw):
            again, first = tmp_path / lang / name, regenerated / lang / name
            assert again.read_bytes() == first.read_bytes(), (lang, name)


ALL_SVGS = [p.relative_to(FIGURES_DIR).as_posix()
            for p in sorted([*FIGURES_DIR.glob("*.svg"), *ZH_DIR.glob("*.svg")])]


@pytest.mark.parametrize("name", ALL_SVGS)
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


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
def test_labels_neither_collide_nor_leave_the_figure(draw, lang):
    for figure in draw.FIGURES:
        canvas = figure(lang)
        assert canvas.name == figure.__name__, "marker ids are prefixed with the figure's name"
        assert canvas.overlapping_labels() == [], (lang, figure.__name__)
        assert canvas.labels_outside() == [], (lang, figure.__name__)


# ----------------------------------------------------------------------------- the zh-CN variants


def is_cjk(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


def test_chinese_characters_count_one_em_wide(draw):
    canvas = draw.new_canvas("probe", 700, 100)
    canvas.text(100, 50, "注意力，权重", 14, anchor="start")  # full-width punctuation too
    canvas.text(100, 80, "KV 缓存", 14, anchor="start")
    (a0, _, a1, _, _), (b0, _, b1, _, _) = canvas.labels
    assert a1 - a0 == pytest.approx(6 * 14)
    assert b1 - b0 == pytest.approx((0.8 + 0.8 + 0.45 + 2) * 14)


def test_every_chinese_figure_has_chinese_text_in_a_cjk_font_stack(draw):
    for name in listed(draw):
        root = ET.parse(ZH_DIR / name).getroot()
        text = "".join("".join(e.itertext()) for e in root.iter(f"{SVG}text"))
        assert sum(map(is_cjk, text)) >= 10, name
        assert "Noto Sans CJK SC" in root.get("font-family"), name
        assert "CJK" not in ET.parse(FIGURES_DIR / name).getroot().get("font-family"), name


@pytest.mark.parametrize("figure", [p.stem for p in sorted(FIGURES_DIR.glob("*.svg"))])
def test_chinese_labels_leave_no_english_prose_and_fit_their_boxes(draw, figure):
    """Words of 3+ letters outside code, formulas and kept names (labels_zh.english_prose)."""
    labels_zh = draw.labels_zh
    canvas = getattr(draw, figure)("zh-CN")
    prose = {label: labels_zh.english_prose(label) for *_, label in canvas.labels}
    assert not {label: words for label, words in prose.items() if words}
    # English labels that a formula fills its box with may be tight; every Chinese one fits.
    assert [label for label in canvas.labels_wider_than_their_box() if any(map(is_cjk, label))] \
        == []


def test_the_prose_check_tells_prose_from_code_and_math(draw):
    english_prose = draw.labels_zh.english_prose
    assert english_prose("Trains r numbers instead of d_{in} d_{out}") == [
        "Trains", "numbers", "instead"]
    assert english_prose("`qkv_proj`：一个 (C, 3C) 映射   (4.4)") == []
    assert english_prose("head_{i} = softmax(Q_{i}K_{i}^{T} / √d + M) V_{i}") == []
    assert english_prose("GPT-2 small 的 n_embd = 768，BAx，MHA(x)，\"def f(\"") == []
    assert english_prose("再 transpose back") == ["transpose", "back"]


def test_every_translation_is_used_and_the_zh_build_refuses_a_missing_one(draw):
    used = set().union(*(figure("zh-CN").translated for figure in draw.FIGURES))
    assert sorted(set(draw.labels_zh.ZH) - used) == [], "labels_zh.ZH has labels no figure draws"
    canvas = draw.new_canvas("probe", 700, 100, "zh-CN")
    canvas.text(10, 20, "S + M")  # no prose: shown as it is
    with pytest.raises(KeyError, match="no Chinese label"):
        canvas.text(10, 40, "a label nobody translated")


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
