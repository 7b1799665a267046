"""A small SVG 1.1 canvas for the course's diagrams: boxes, arrows, labels and matrix grids.

Plain string building, so the same script writes the same bytes on every machine: coordinates are
rounded to 0.1 px and nothing depends on installed fonts or library versions. Labels take a tiny
markup: `code` is set in a monospace font, x_{i} is a subscript and W^{Q} a superscript.

Every label's box is estimated from its characters (generously, for DejaVu Sans, the widest font
of the stack; Chinese characters one em each), so `Canvas.overlapping_labels()` can tell when two
labels would collide.

A canvas can draw its figure in another language: `translate` maps each label as written in English
to the one shown (draw.py passes labels_zh.translate for zh-CN), and `font` is the font stack.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"
# The same stack with common Chinese fonts before the generic family, for the zh-CN figures: Latin
# letters keep DejaVu Sans (or Helvetica, Arial) and Chinese characters fall back to the first
# installed CJK font.
FONT_CJK = ('DejaVu Sans, Helvetica, Arial, "PingFang SC", "Noto Sans CJK SC", '
            '"Source Han Sans SC", "Microsoft YaHei", sans-serif')

# One colour per idea, the same in every figure (Okabe-Ito hues, readable by colour-blind eyes).
PALETTE = {
    "ink": "#222222",  # text, outlines, plain data flow
    "muted": "#6b6b6b",  # secondary text: shapes, notes
    "faint": "#c8c8c8",  # grid lines, separators
    "paper": "#ffffff",  # background (a white rect, so the figures read in dark mode too)
    "query": "#d55e00",  # q, Q
    "key": "#0072b2",  # k, K
    "value": "#009e73",  # v, V
    "residual": "#cc79a7",  # the residual stream
    "trainable": "#e69f00",  # weights that learn
    "frozen": "#8c8c8c",  # weights that do not
    "norm": "#f0e442",  # layer norm
    "mask": "#4d4d4d",  # masked (-inf) entries
}

CODE_SPAN = re.compile(r"`([^`]*)`")


def tint(color: str, amount: float) -> str:
    """`color` mixed with white: amount 0 is white, 1 the colour itself."""
    channels = [int(color[i : i + 2], 16) for i in (1, 3, 5)]
    mixed = [round(255 + (c - 255) * amount) for c in channels]
    return "#" + "".join(f"{c:02x}" for c in mixed)


def num(x: float) -> str:
    """A coordinate as text: rounded to 0.1 px, without a trailing .0."""
    text = f"{round(x, 1):.1f}"
    text = text[:-2] if text.endswith(".0") else text
    return "0" if text == "-0" else text


# ----------------------------------------------------------------------------- label markup


@dataclass(frozen=True)
class Run:
    text: str
    mono: bool = False
    shift: int = 0  # 0 on the baseline, -1 subscript, +1 superscript


def parse_label(label: str) -> list[Run]:
    """Split "softmax(q·k_{j}/√d_{k})" or "`qkv_proj`" into runs of one style each."""
    runs, i, mono, plain = [], 0, False, ""
    while i < len(label):
        ch = label[i]
        if ch == "`":
            if plain:
                runs.append(Run(plain, mono))
                plain = ""
            mono = not mono
            i += 1
        elif ch in "_^" and label[i + 1 : i + 2] == "{":
            end = label.index("}", i)
            if plain:
                runs.append(Run(plain, mono))
                plain = ""
            runs.append(Run(label[i + 2 : end], mono, -1 if ch == "_" else 1))
            i = end + 1
        else:
            plain += ch
            i += 1
    if plain:
        runs.append(Run(plain, mono))
    return runs


NARROW = set("ijlI.,'`")
SEMI = set("frt()[]/ -\":;!|")
WIDE = set("mwMWω∑Σ⊕⊙")


def char_width(ch: str, mono: bool) -> float:
    """Advance width of one character in em, an upper bound for DejaVu Sans (Mono)."""
    if unicodedata.east_asian_width(ch) in ("W", "F"):
        return 1.0  # Chinese characters and full-width punctuation, in any font
    if mono:
        return 0.61
    if ch in NARROW:
        return 0.33
    if ch in SEMI:
        return 0.45
    if ch in WIDE:
        return 1.0
    if ch.isupper():
        return 0.8
    if ch.isdigit() or ch.islower():
        return 0.67
    return 0.9  # symbols, arrows, braces


SCRIPT = 0.72  # size of sub- and superscripts relative to the label


def label_width(label: str, size: float) -> float:
    return sum(
        char_width(ch, run.mono) * size * (SCRIPT if run.shift else 1.0)
        for run in parse_label(label)
        for ch in run.text
    )


# ----------------------------------------------------------------------------- the canvas


@dataclass
class Canvas:
    """One figure: draw into it with the methods below, then `svg()` returns the document."""

    name: str
    width: int
    height: int
    known_names: frozenset[str] = frozenset()
    lang: str = "en"
    translate: Callable[[str], str] = str  # English label -> the label shown
    font: str = FONT
    parts: list[str] = field(default_factory=list)
    labels: list[tuple[float, float, float, float, str]] = field(default_factory=list)
    markers: dict[str, tuple[str, float]] = field(default_factory=dict)
    translated: set[str] = field(default_factory=set)  # the English labels `translate` changed
    boxed: list[tuple[int, float, float]] = field(default_factory=list)  # label index, box x0, x1

    # --- language

    def tr(self, template: str, **values) -> str:
        """A label computed from values: "step t = {t}" translated first, then filled in."""
        shown = self.translate(template)
        if shown != template:
            self.translated.add(template)
        return shown.format(**values)

    # --- primitives

    def rect(self, x, y, w, h, fill="none", stroke=None, width=1.2, rx=0, dash=None):
        attrs = f'x="{num(x)}" y="{num(y)}" width="{num(w)}" height="{num(h)}"'
        if rx:
            attrs += f' rx="{num(rx)}"'
        self.parts.append(f"<rect {attrs}{_paint(fill, stroke, width, dash)}/>")

    def circle(self, cx, cy, r, fill="none", stroke=None, width=1.2, dash=None):
        attrs = f'cx="{num(cx)}" cy="{num(cy)}" r="{num(r)}"'
        self.parts.append(f"<circle {attrs}{_paint(fill, stroke, width, dash)}/>")

    def line(self, x1, y1, x2, y2, color=PALETTE["ink"], width=1.5, dash=None, arrow=False):
        self.polyline([(x1, y1), (x2, y2)], color, width, dash, arrow)

    def polyline(self, points, color=PALETTE["ink"], width=1.5, dash=None, arrow=False):
        """A line through `points`; with arrow=True an arrowhead ends exactly at the last point."""
        points = [tuple(p) for p in points]
        marker = ""
        if arrow:
            head = self._marker(color, width)
            (xa, ya), (xb, yb) = points[-2], points[-1]
            length = math.hypot(xb - xa, yb - ya)
            back = min(self.markers[head][1] * 0.6, length)  # stop the line inside the head
            points[-1] = (xb - (xb - xa) * back / length, yb - (yb - ya) * back / length)
            marker = f' marker-end="url(#{head})"'
        coords = " ".join(f"{num(x)},{num(y)}" for x, y in points)
        self.parts.append(
            f'<polyline points="{coords}" fill="none"{_paint(None, color, width, dash)}'
            f' stroke-linejoin="round"{marker}/>'
        )

    def path(self, d: str, fill="none", stroke=PALETTE["ink"], width=1.5, dash=None, arrow=False):
        marker = f' marker-end="url(#{self._marker(stroke, width)})"' if arrow else ""
        self.parts.append(f'<path d="{d}"{_paint(fill, stroke, width, dash)}{marker}/>')

    def text(self, x, y, label, size=14, color=PALETTE["ink"], anchor="middle", bold=False,
             italic=False):
        """A label with its baseline at y; anchor is start, middle or end."""
        shown = self.translate(label)
        if shown != label:
            self.translated.add(label)
            label = shown
        self._check_code_names(label)
        runs = parse_label(label)
        body, shift = [], 0
        for run in runs:
            attrs = []
            if run.shift != shift:
                attrs.append(f'dy="{num((shift - run.shift) * 0.35 * size)}"')
                shift = run.shift
            if run.shift:
                attrs.append(f'font-size="{num(size * SCRIPT)}"')
            if run.mono:
                attrs.append(f"font-family={quoteattr(MONO)}")
            content = escape(run.text)
            body.append(f"<tspan {' '.join(attrs)}>{content}</tspan>" if attrs else content)
        style = ' font-weight="bold"' if bold else ""
        style += ' font-style="italic"' if italic else ""
        self.parts.append(
            f'<text x="{num(x)}" y="{num(y)}" font-size="{num(size)}" fill="{color}"'
            f' text-anchor="{anchor}"{style}>{"".join(body)}</text>'
        )
        w = label_width(label, size) * (1.08 if bold else 1.0)
        left = {"start": x, "middle": x - w / 2, "end": x - w}[anchor]
        top = y - 0.8 * size - (0.35 * size if any(r.shift > 0 for r in runs) else 0)
        bottom = y + 0.25 * size + (0.3 * size if any(r.shift < 0 for r in runs) else 0)
        self.labels.append((left, top, left + w, bottom, label))

    # --- helpers built on the primitives

    def box(self, x, y, w, h, label=None, fill=PALETTE["paper"], stroke=PALETTE["ink"],
            size=14, sub=None, sub_size=12, color=PALETTE["ink"], width=1.4, rx=6, dash=None):
        """A rounded box with a centred label and an optional second line below it."""
        self.rect(x, y, w, h, fill, stroke, width, rx, dash)
        if label is None:
            return
        if sub is None:
            self.text(x + w / 2, y + h / 2 + 0.36 * size, label, size, color)
        else:
            gap = (h - size - sub_size) / 3
            self.text(x + w / 2, y + gap + 0.8 * size, label, size, color)
            self.boxed.append((len(self.labels) - 1, x, x + w))
            self.text(x + w / 2, y + h - gap - 0.2 * sub_size, sub, sub_size, PALETTE["muted"])
        self.boxed.append((len(self.labels) - 1, x, x + w))

    def grid(self, x, y, rows, cols, cell, fills, stroke=PALETTE["faint"], outline=PALETTE["ink"],
             texts=None, size=11, text_colors=None):
        """A matrix of square cells: fills[r][c] colours cell (r, c), texts[r][c] labels it."""
        for r in range(rows):
            for c in range(cols):
                self.rect(x + c * cell, y + r * cell, cell, cell, fills[r][c], stroke, 0.8)
                if texts and texts[r][c]:
                    color = text_colors[r][c] if text_colors else PALETTE["ink"]
                    self.text(x + (c + 0.5) * cell, y + (r + 0.5) * cell + 0.36 * size,
                              texts[r][c], size, color)
        self.rect(x, y, cols * cell, rows * cell, "none", outline, 1.3)

    def plus(self, cx, cy, r=9, color=PALETTE["ink"], fill=PALETTE["paper"]):
        """The ⊕ of a residual addition, drawn with lines so it never depends on a font."""
        self.circle(cx, cy, r, fill, color, 1.5)
        self.line(cx - r * 0.6, cy, cx + r * 0.6, cy, color, 1.5)
        self.line(cx, cy - r * 0.6, cx, cy + r * 0.6, color, 1.5)

    # --- checks and output

    def overlapping_labels(self, margin: float = 1.0) -> list[tuple[str, str]]:
        """Pairs of labels whose estimated boxes intersect by more than `margin` px."""
        pairs = []
        for i, a in enumerate(self.labels):
            for b in self.labels[i + 1 :]:
                if min(a[2], b[2]) - max(a[0], b[0]) > margin and min(a[3], b[3]) - max(
                    a[1], b[1]
                ) > margin:
                    pairs.append((a[4], b[4]))
        return pairs

    def labels_wider_than_their_box(self, padding: float = 3.0) -> list[str]:
        """Labels drawn by `box()` whose estimated width leaves less than `padding` px each side."""
        return [self.labels[i][4] for i, x0, x1 in self.boxed
                if self.labels[i][0] < x0 + padding or self.labels[i][2] > x1 - padding]

    def labels_outside(self) -> list[str]:
        return [lab for x0, y0, x1, y1, lab in self.labels
                if x0 < 0 or y0 < 0 or x1 > self.width or y1 > self.height]

    def svg(self) -> str:
        w, h = self.width, self.height
        head = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            "<!-- Drawn by notebooks/figures/draw.py: edit the script, not this file. -->",
            f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{w}" height="{h}"'
            f' viewBox="0 0 {w} {h}" font-family={quoteattr(self.font)}'
            + ("" if self.lang == "en" else f' xml:lang="{self.lang}"') + ' xml:space="preserve">',
        ]
        defs = [f'<marker id="{mid}" viewBox="0 0 10 10" refX="4" refY="5"'
                f' markerUnits="userSpaceOnUse" markerWidth="{num(size)}"'
                f' markerHeight="{num(size)}" orient="auto">'
                f'<path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>'
                for mid, (color, size) in self.markers.items()]
        body = [f'<rect x="0" y="0" width="{w}" height="{h}" fill="{PALETTE["paper"]}"/>']
        defs_block = ["<defs>", *defs, "</defs>"] if defs else []
        return "\n".join([*head, *defs_block, *body, *self.parts, "</svg>"]) + "\n"

    # --- internals

    def _marker(self, color: str, width: float) -> str:
        size = 10.0 if width < 2.5 else 2.8 * width
        mid = f"{self.name}-head-{color.lstrip('#')}-{num(size).replace('.', '_')}"
        self.markers.setdefault(mid, (color, size))
        return mid

    def _check_code_names(self, label: str) -> None:
        """Every identifier set as `code` must exist in minigpt, so a rename breaks the build."""
        if not self.known_names:
            return
        for span in CODE_SPAN.findall(label):
            bare = re.sub(r'"[^"]*"', "", span)  # string literals are values, not names
            for word in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", bare):
                if word not in self.known_names:
                    raise ValueError(
                        f"{self.name}: label {label!r} names `{word}`, which minigpt does not "
                        "define; update the label to the code's current name"
                    )


def _paint(fill, stroke, width, dash) -> str:
    out = f' fill="{fill}"' if fill is not None else ""
    if stroke:
        out += f' stroke="{stroke}" stroke-width="{num(width)}"'
        if dash:
            out += f' stroke-dasharray="{dash}"'
    return out
