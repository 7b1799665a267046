"""Draw the course's diagrams: `python notebooks/figures/draw.py [--out DIR]`.

Each figure is one function below that draws on a `Canvas` (svgcanvas.py) and is listed once, in
FIGURES; the SVG files are written next to this script unless --out names another folder. Every
figure is drawn twice: `figure("en")` as written here, and `figure("zh-CN")` for the Chinese
edition, into zh-CN/ below that folder, its labels translated by labels_zh.py. The output is plain
SVG 1.1 and byte-identical on every run. Names set as `code` in a label are checked against
minigpt, and the example sizes (GPT-2 small) come from GPTConfig's defaults, so a renamed module or
a changed default shows up here instead of drifting silently.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import math
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # svgcanvas.py sits beside this script

import labels_zh  # noqa: E402
from svgcanvas import FONT, FONT_CJK, PALETTE, Canvas, tint  # noqa: E402

INK, MUTED, FAINT = PALETTE["ink"], PALETTE["muted"], PALETTE["faint"]
Q, K, V = PALETTE["query"], PALETTE["key"], PALETTE["value"]
RESIDUAL, TRAINABLE, FROZEN = PALETTE["residual"], PALETTE["trainable"], PALETTE["frozen"]
NORM, MASK = PALETTE["norm"], PALETTE["mask"]


@functools.cache
def code_names() -> frozenset[str]:
    """Every name a label may set as `code`: minigpt's modules, parameters, fields and functions."""
    import torch

    from minigpt import attention, generate, layers, lora, model, positional, train

    config = model.GPTConfig(vocab_size=8, block_size=4, n_layer=1, n_head=2, n_embd=4)
    gpt = lora.apply_lora(model.GPT(config), rank=1)
    names = {part for full, _ in gpt.named_parameters() for part in full.split(".")}
    names |= {part for full, _ in gpt.named_modules() for part in full.split(".")}
    names |= {name for m in gpt.modules() for name in vars(m) if not name.startswith("_")}
    cache = attention.KVCache(1, 1, 2, 2)
    names |= set(vars(cache))
    for dataclass in (model.GPTConfig, train.TrainConfig):
        names |= {f.name for f in dataclasses.fields(dataclass)}
    for owner in (attention, generate, layers, lora, model, positional, train, attention.KVCache,
                  attention.MultiHeadAttention, model.GPT, model.GPTConfig, train.Trainer,
                  torch.Tensor):
        names |= {name for name in dir(owner) if not name.startswith("__")}
    for module in (attention, generate, layers, lora, model, positional, train):
        for obj in vars(module).values():
            if inspect.isfunction(obj) and obj.__module__ == module.__name__:
                names |= set(inspect.signature(obj).parameters)  # e.g. is_causal, rank
    return frozenset(names | {"True", "False", "None"})


@functools.cache
def gpt2_small():
    """GPT-2 small, the sizes GPTConfig defaults to."""
    from minigpt.model import GPTConfig

    return GPTConfig()


def sinusoid_base() -> float:
    from minigpt.positional import sinusoidal_encoding

    return inspect.signature(sinusoidal_encoding).parameters["base"].default


def lora_defaults() -> tuple[int, float]:
    from minigpt.lora import LoRALinear

    parameters = inspect.signature(LoRALinear).parameters
    return parameters["rank"].default, parameters["alpha"].default


# The languages every figure is drawn in: the folder below the output folder, how a label written
# in English is shown, and the font stack. English labels are shown as written.
LANGUAGES = {
    "en": ("", str, FONT),
    "zh-CN": ("zh-CN", labels_zh.translate, FONT_CJK),
}


def new_canvas(name: str, width: int, height: int, lang: str = "en") -> Canvas:
    _, translate, font = LANGUAGES[lang]
    return Canvas(name, width, height, known_names=code_names(), lang=lang, translate=translate,
                  font=font)


def title(c: Canvas, text: str, y: float = 26) -> None:
    c.text(20, y, text, 16, anchor="start", bold=True)


def vector(c: Canvas, x, y, values, color, cell=24, size=11, vertical=False):
    """A vector as a strip of cells, tinted by its colour, each holding its number."""
    for i, value in enumerate(values):
        cx, cy = (x, y + i * cell) if vertical else (x + i * cell, y)
        c.rect(cx, cy, cell, cell, tint(color, 0.18), color, 1.2)
        c.text(cx + cell / 2, cy + cell / 2 + 0.36 * size, fmt(value), size)


def fmt(value) -> str:
    """1.0 -> "1", -1.0 -> "−1", 0.25 -> "0.25": numbers as the figures print them."""
    text = f"{value:g}" if isinstance(value, (int, float)) else str(value)
    return text.replace("-", "−")


def softmax(scores: list[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    return [e / sum(exps) for e in exps]


# ----------------------------------------------------------------------------- notebook 03


def soft_lookup(lang: str = "en") -> Canvas:
    """A query scored against four keys, softmax weights, and the weighted sum of values."""
    c = new_canvas("soft_lookup", 780, 400, lang)
    title(c, "Soft look-up: one query q against keys k_{j} and values v_{j}   (eq. 3.2)")
    q = [2, 0, 1, 1]
    keys = [[2, 1, 0, 1], [0, 1, 1, -1], [1, 0, 2, 0], [-1, 2, 0, 0]]
    values = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]]
    d_k = len(q)
    scores = [sum(a * b for a, b in zip(q, k, strict=True)) / math.sqrt(d_k) for k in keys]
    weights = softmax(scores)
    output = [sum(w * v[i] for w, v in zip(weights, values, strict=True)) for i in range(3)]

    rows = [128 + 52 * j for j in range(len(keys))]  # centre of each key's row
    middle = (rows[0] + rows[-1]) / 2
    heads = {75: ("query", "q"), 226: ("keys", "k_{j}"),
             352: ("scores", "s_{j} = q·k_{j} / √d_{k}"),
             488: ("weights", "α_{j} = softmax_{j}(s)"), 620: ("values", "v_{j}"),
             740: ("output", "Σ_{j} α_{j} v_{j}")}
    for x, (word, formula) in heads.items():
        c.text(x, 68, word, 14, bold=True)
        c.text(x, 88, formula, 13, MUTED)

    vector(c, 27, middle - 12, q, Q)
    for y, key, score, weight, value in zip(rows, keys, scores, weights, values, strict=True):
        c.line(125, middle, 172, y, Q, 1.2)
        vector(c, 178, y - 12, key, K)
        c.line(282, y, 318, y, INK, 1.2, arrow=True)
        c.text(352, y + 5, f"{fmt(score)}", 14)
        c.line(386, y, 418, y, INK, 1.2, arrow=True)
        c.rect(426, y - 9, 100 * weight, 18, tint(INK, 0.55), None)
        c.text(430 + 100 * weight, y + 5, f"{weight:.2f}", 13, anchor="start")
        vector(c, 584, y - 12, value, V)
        c.line(660, y, 700, middle, V, 1 + 7 * weight)
    c.circle(708, middle, 13, PALETTE["paper"], INK, 1.5)
    c.text(708, middle + 5, "Σ", 15)
    c.line(721, middle, 740, middle, INK, 1.2, arrow=True)
    vector(c, 742, middle - 51, [f"{o:.2f}" for o in output], V, cell=34, size=11,
           vertical=True)
    c.text(488, rows[-1] + 38, "Σ_{j} α_{j} = 1", 13, MUTED)
    c.text(352, rows[-1] + 38, f"d_{{k}} = {d_k}, √d_{{k}} = {math.sqrt(d_k):g}", 13, MUTED)
    c.text(620, rows[-1] + 38, "line width ∝ α_{j}", 13, MUTED)

    c.text(20, 350, "attend(q) = Σ_{j} α_{j} v_{j},   α_{j} = exp s_{j} / Σ_{l} exp s_{l}"
           "      (3.2)", 14, anchor="start")
    c.text(20, 376, "Hard look-up (3.1): all the weight on the key equal to q.  Soft: every key "
           "gets some, smoothly.", 13, MUTED, anchor="start")
    return c


def causal_mask(lang: str = "en") -> Canvas:
    """Scores, the same scores with the future masked to −∞, and the lower-triangular weights."""
    T, cell = 5, 32
    c = new_canvas("causal_mask", 760, 390, lang)
    title(c, "The causal mask: query i may read keys j ≤ i   (eqs. 3.4, 3.5)")
    rng = random.Random(3)
    scores = [[round(rng.uniform(-2, 2), 1) for _ in range(T)] for _ in range(T)]
    weights = [softmax(row[: i + 1]) + [0.0] * (T - i - 1) for i, row in enumerate(scores)]
    lefts, top = (80, 330, 580), 124
    panels = [
        ("S = QK^{T} / √d_{k}", "scores, every pair (i, j)"),
        ("S + M", "M_{ij} = −∞ where j > i"),
        ("A = softmax(S + M)", "each row sums to 1"),
    ]
    for x, (head, note) in zip(lefts, panels, strict=True):
        c.text(x + T * cell / 2, 62, head, 14, bold=True)
        c.text(x + T * cell / 2, 82, note, 12, MUTED)
        for j in range(T):
            c.text(x + (j + 0.5) * cell, top - 6, str(j), 11, MUTED)
        for i in range(T):
            c.text(x - 6, top + (i + 0.62) * cell, str(i), 11, MUTED, anchor="end")
    c.text(lefts[0] + T * cell / 2, top - 24, "key j →", 12, MUTED)
    c.text(lefts[0] - 2, top - 24, "query i ↓", 12, MUTED, anchor="end")

    blank = [[PALETTE["paper"]] * T for _ in range(T)]
    score_text = [[fmt(s) for s in row] for row in scores]
    c.grid(lefts[0], top, T, T, cell, blank, texts=score_text, size=11)

    future = [[j > i for j in range(T)] for i in range(T)]
    masked_fill = [[MASK if future[i][j] else PALETTE["paper"] for j in range(T)] for i in range(T)]
    masked_text = [["−∞" if future[i][j] else score_text[i][j] for j in range(T)] for i in range(T)]
    white = [[PALETTE["paper"] if future[i][j] else INK for j in range(T)] for i in range(T)]
    c.grid(lefts[1], top, T, T, cell, masked_fill, texts=masked_text, size=11, text_colors=white)

    weight_fill = [[tint(INK, 0.08 + 0.6 * w) if not future[i][j] else PALETTE["paper"]
                    for j, w in enumerate(row)] for i, row in enumerate(weights)]
    weight_text = [["0" if future[i][j] else "1" if w == 1 else f"{w:.2f}"[1:]
                    for j, w in enumerate(row)] for i, row in enumerate(weights)]
    weight_color = [[PALETTE["paper"] if w > 0.55 else INK if not future[i][j] else FAINT
                     for j, w in enumerate(row)] for i, row in enumerate(weights)]
    c.grid(lefts[2], top, T, T, cell, weight_fill, texts=weight_text, size=11,
           text_colors=weight_color)

    mid = top + T * cell / 2
    for x in (lefts[0] + T * cell, lefts[1] + T * cell):
        c.line(x + 10, mid, x + 70, mid, INK, 1.5, arrow=True)
    c.text(lefts[0] + T * cell + 40, mid - 10, "+ M", 13)
    c.text(lefts[1] + T * cell + 40, mid - 10, "softmax", 12)

    y = top + T * cell + 44
    c.text(20, y, "M_{ij} = 0 if j ≤ i and −∞ if j > i   (3.5):  exp(−∞) = 0, so no weight "
           "reaches the future.", 14, anchor="start")
    c.text(20, y + 26, "In code: `causal_mask(T, T)` is True where j ≤ i (may attend); "
           "`is_causal=True` masks the same.", 13, MUTED, anchor="start")
    return c


# ----------------------------------------------------------------------------- notebook 04


def bands(c: Canvas, x, y, labels, color, band=34, height=40, strength=0.3):
    """A (T, n·d) tensor drawn as n column bands of width d, one per head, each labelled."""
    for i, label in enumerate(labels):
        shade = strength + (0.12 if i % 2 else 0.0)
        c.rect(x + i * band, y, band, height, tint(color, shade), color, 1.0)
        c.text(x + (i + 0.5) * band, y + height / 2 + 5, label, 12)
    c.rect(x, y, band * len(labels), height, "none", color, 1.6)


def heads_split_merge(lang: str = "en") -> Canvas:
    """(B, T, C) -> qkv_proj -> heads -> attention per head -> concatenate -> out_proj."""
    h, band, tall = 4, 26, 40
    c = new_canvas("heads_split_merge", 760, 700, lang)
    title(c, "Multi-head attention: split into heads, attend, merge   (eqs. 4.1-4.4)")
    centre, note = 200, 410
    width = h * band
    left = centre - width / 2
    ys = {"x": 56, "qkv": 150, "heads": 262, "attn": 336, "out": 400, "concat": 512, "y": 604}

    c.rect(left, ys["x"], width, tall, tint(INK, 0.08), INK, 1.6)
    c.text(centre, ys["x"] + 26, "x", 15)
    c.line(centre, ys["x"] + tall + 4, centre, ys["qkv"] - 6, INK, 1.5, arrow=True)

    gap = 12
    block_x = {name: centre - (3 * width + 2 * gap) / 2 + k * (width + gap)
               for k, name in enumerate("QKV")}
    colors = {"Q": Q, "K": K, "V": V}
    for name, x in block_x.items():
        bands(c, x, ys["qkv"], [f"{name}_{{{i + 1}}}" for i in range(h)], colors[name], band)

    group = 3 * band + 6
    group_gap = 10
    group_x = [centre - (h * group + (h - 1) * group_gap) / 2 + i * (group + group_gap)
               for i in range(h)]
    for i, gx in enumerate(group_x):
        for k, name in enumerate("QKV"):
            sx = gx + k * (band + 3)
            c.line(block_x[name] + (i + 0.5) * band, ys["qkv"] + tall + 2,
                   sx + band / 2, ys["heads"] - 3, colors[name], 1.3, arrow=True)
            c.rect(sx, ys["heads"], band, tall, tint(colors[name], 0.3), colors[name], 1.6)
            c.text(sx + band / 2, ys["heads"] + tall / 2 + 5, f"{name}_{{{i + 1}}}", 12)
            c.line(sx + band / 2, ys["heads"] + tall + 2, sx + band / 2, ys["attn"] - 2,
                   colors[name], 1.3, arrow=True)
        c.box(gx, ys["attn"], group, 30, "attend", size=12)
        ox = gx + group / 2 - band / 2
        c.line(gx + group / 2, ys["attn"] + 30, gx + group / 2, ys["out"] - 2, INK, 1.3,
               arrow=True)
        c.rect(ox, ys["out"], band, tall, tint(INK, 0.14 + (0.1 if i % 2 else 0)), INK, 1.6)
        c.text(ox + band / 2, ys["out"] + tall / 2 + 5, str(i + 1), 12)
        c.line(ox + band / 2, ys["out"] + tall + 2, left + (i + 0.5) * band, ys["concat"] - 3,
               INK, 1.3, arrow=True)

    shades = [tint(INK, 0.14 + (0.1 if i % 2 else 0)) for i in range(h)]
    for i in range(h):
        c.rect(left + i * band, ys["concat"], band, tall, shades[i], INK, 1.0)
        c.text(left + (i + 0.5) * band, ys["concat"] + tall / 2 + 5, str(i + 1), 12)
    c.rect(left, ys["concat"], width, tall, "none", INK, 1.6)
    c.line(centre, ys["concat"] + tall + 4, centre, ys["y"] - 6, INK, 1.5, arrow=True)
    c.rect(left, ys["y"], width, tall, tint(INK, 0.08), INK, 1.6)
    c.text(centre, ys["y"] + 26, "MHA(x)", 14)

    notes = [
        (ys["x"] + 16, "(B, T, C),  C = `n_embd`", INK),
        (ys["x"] + 36, "token vectors", MUTED),
        (ys["x"] + 70, "`qkv_proj`: one (C, 3C) map   (4.4)", INK),
        (ys["qkv"] + 24, "`.split(n_embd, dim=2)`: 3 × (B, T, C)", INK),
        (ys["qkv"] + 60, "`split_heads`: view (B, T, h, d),", INK),
        (ys["qkv"] + 80, "then transpose(1, 2) → (B, h, T, d)", INK),
        (ys["qkv"] + 100, "h = `n_head`,  d = `head_dim` = C / h", MUTED),
        (ys["attn"] + 12, "each head on its own, in parallel   (4.2):", INK),
        (ys["attn"] + 34, "head_{i} = softmax(Q_{i}K_{i}^{T} / √d + M) V_{i}", INK),
        (ys["out"] + 26, "head_{1} … head_{h}: (B, h, T, d)", INK),
        (ys["out"] + 72, "`merge_heads`: transpose back, then view", INK),
        (ys["out"] + 92, "→ (B, T, C) = Concat(head_{1}, …, head_{h})", INK),
        (ys["concat"] + 66, "`out_proj`: W^{O}, a (C, C) map   (4.3)", INK),
        (ys["y"] + 26, "(B, T, C)", INK),
    ]
    for y, text, color in notes:
        c.text(note, y, text, 13, color, anchor="start")
    size = gpt2_small()
    c.text(20, 684, c.tr("Drawn with h = {h}; GPT-2 small has n_embd = {n_embd}, n_head = "
                         "{n_head}, head_dim = {head_dim} (GPTConfig defaults).", h=h,
                         n_embd=size.n_embd, n_head=size.n_head, head_dim=size.head_dim),
           12, MUTED, anchor="start")
    return c


# ----------------------------------------------------------------------------- notebook 05


def polar(cx, cy, radius, angle):
    """The point at `angle` (radians, counter-clockwise from the +x axis) on a circle."""
    return cx + radius * math.cos(angle), cy - radius * math.sin(angle)


def arc(c: Canvas, cx, cy, radius, start, end, color, width=1.3):
    (x1, y1), (x2, y2) = polar(cx, cy, radius, start), polar(cx, cy, radius, end)
    large = 1 if abs(end - start) > math.pi else 0
    sweep = 0 if end > start else 1  # SVG's y axis points down
    c.path(f"M{x1:.1f},{y1:.1f} A{radius:.1f},{radius:.1f} 0 {large} {sweep} {x2:.1f},{y2:.1f}",
           stroke=color, width=width)


def sinusoids_rope(lang: str = "en") -> Canvas:
    """Sinusoidal pairs as clock hands at different speeds; RoPE rotating a query and a key."""
    c = new_canvas("sinusoids_rope", 760, 430, lang)
    c.text(20, 28, "Sinusoidal encoding   (5.2)", 15, anchor="start", bold=True)
    c.text(20, 48, "each pair of features is a clock hand", 13, MUTED, anchor="start")
    dim, base, radius = 6, 10.0, 17
    left = 118 if lang == "en" else 126  # the clocks, right of "pair i = 0"
    omegas = [base ** (-2 * i / dim) for i in range(dim // 2)]
    for p in range(6):
        c.text(left + 48 * p, 74, f"p = {p}", 12, MUTED)
    for i, omega in enumerate(omegas):
        cy = 108 + 60 * i
        c.text(20, cy - 2, c.tr("pair i = {i}", i=i), 13, anchor="start")
        c.text(20, cy + 16, f"ω_{{{i}}} = {omega:.2f}", 12, MUTED, anchor="start")
        for p in range(6):
            cx = left + 48 * p
            c.circle(cx, cy, radius, tint(INK, 0.05), FAINT, 1.0)
            # PE(p, 2i) = sin(pω) across, PE(p, 2i+1) = cos(pω) up: p = 0 points straight up
            tip = polar(cx, cy, radius - 2, math.pi / 2 - p * omega)
            c.line(cx, cy, *tip, INK, 2.0)
            c.circle(*tip, 2.5, INK)
    c.text(20, 300, "PE(p, 2i) = sin(p ω_{i}),  PE(p, 2i+1) = cos(p ω_{i})", 13, anchor="start")
    c.text(20, 322, "ω_{i} = base^{−2i/d}: fast hands tell neighbours apart,", 13, MUTED,
           anchor="start")
    c.text(20, 342, "slow hands tell far positions apart.", 13, MUTED, anchor="start")
    c.text(20, 368, "p → p + k turns pair i by k ω_{i}, whatever p:", 13, anchor="start")
    c.text(20, 388, "PE(p + k) = M_{k} PE(p)   (5.3)", 13, anchor="start")
    c.text(20, 410, c.tr("drawn with d = {d}, base = {base:g}; minigpt: base = {default:g}",
                         d=dim, base=base, default=sinusoid_base()), 12, MUTED, anchor="start")

    c.line(392, 48, 392, 410, FAINT, 1.0)
    c.text(410, 28, "Rotary embedding, RoPE   (5.5, 5.6)", 15, anchor="start", bold=True)
    c.text(410, 48, "rotate q and k by angles set by their positions", 13, MUTED,
           anchor="start")
    theta, q_angle, k_angle = 0.35, 0.25, 1.0
    for cx, p, s in ((500, 1, 3), (670, 4, 6)):
        cy, r = 170, 68
        c.circle(cx, cy, r, "none", FAINT, 1.0)
        c.line(cx - r - 6, cy, cx + r + 6, cy, FAINT, 1.0)
        c.line(cx, cy + r + 6, cx, cy - r - 6, FAINT, 1.0)
        c.line(cx, cy, *polar(cx, cy, 60, q_angle), tint(Q, 0.45), 1.3, dash="4 3")
        c.line(cx, cy, *polar(cx, cy, 46, k_angle), tint(K, 0.45), 1.3, dash="4 3")
        rq, rk = q_angle + p * theta, k_angle + s * theta
        c.line(cx, cy, *polar(cx, cy, 60, rq), Q, 2.2, arrow=True)
        c.line(cx, cy, *polar(cx, cy, 46, rk), K, 2.2, arrow=True)
        arc(c, cx, cy, 24, rq, rk, INK)
        c.text(*polar(cx, cy, 80, rq), "R_{p}q", 13, Q)
        c.text(*polar(cx, cy, 66, rk), "R_{s}k", 13, K)
        c.text(cx, cy + r + 30, f"p = {p},  s = {s}", 13)
    c.text(585, 286, "shift both by 3: the angle between R_{p}q", 13, MUTED)
    c.text(585, 306, "and R_{s}k, so the score, does not change", 13, MUTED)
    c.text(410, 342, "⟨R_{p}q, R_{s}k⟩ = ⟨q, R_{s−p}k⟩   (5.6)", 14, anchor="start")
    c.text(410, 366, "pair i at position p turns by p θ_{i},  θ_{i} = base^{−2i/d}", 12, MUTED,
           anchor="start")
    c.text(410, 388, "`RotaryEmbedding` rotates q and k, never v", 13, MUTED, anchor="start")
    c.text(410, 410, "dashed: q and k before the rotation", 13, MUTED, anchor="start")
    return c


# ----------------------------------------------------------------------------- notebook 06


def norm_box(c: Canvas, x, y, w, h, label, code):
    c.box(x, y, w, h, label, fill=tint(NORM, 0.5), sub=code, size=13, sub_size=12)


def residual_branch(c: Canvas, stream_x, tap_y, join_y, boxes, box_x, box_w=128):
    """A branch that leaves the stream at tap_y, runs through `boxes` and is added at join_y."""
    mid = box_x + box_w / 2
    c.polyline([(stream_x, tap_y), (mid, tap_y), (mid, boxes[0][0] - 2)], INK, 1.5, arrow=True)
    for (top, height, label, code, is_norm), below in zip(boxes, boxes[1:] + [None], strict=True):
        if is_norm:
            norm_box(c, box_x, top, box_w, height, label, code)
        else:
            c.box(box_x, top, box_w, height, label, sub=code, size=13, sub_size=12)
        if below is not None:
            c.line(mid, top + height, mid, below[0] - 2, INK, 1.5, arrow=True)
    last = boxes[-1][0] + boxes[-1][1]
    c.polyline([(mid, last), (mid, join_y), (stream_x + 11, join_y)], INK, 1.5, arrow=True)
    c.plus(stream_x, join_y)


def block_pre_post_ln(lang: str = "en") -> Canvas:
    """The transformer block with a straight residual stream, pre-LN beside post-LN."""
    c = new_canvas("block_pre_post_ln", 760, 620, lang)
    top, bottom = 86, 470
    for cx, pre in ((70, True), (450, False)):
        head = "pre-LN (GPT-2)" if pre else "post-LN (Vaswani et al., 2017)"
        c.text(cx - 50, 28, head, 15, anchor="start", bold=True)
        c.text(cx - 50, 48, f'`norm_position="{"pre" if pre else "post"}"`', 13, MUTED,
               anchor="start")
        c.text(cx, top - 10, "x", 15)
        c.line(cx, top, cx, bottom, RESIDUAL, 5, arrow=True)
        c.text(cx, bottom + 20, "y", 15)
        bx = cx + 80
        if pre:
            residual_branch(c, cx, 106, 258, [(126, 40, "LN_{1}", "`ln_1`", True),
                                              (186, 40, "MHA", "`attn`", False)], bx)
            residual_branch(c, cx, 290, 442, [(310, 40, "LN_{2}", "`ln_2`", True),
                                              (370, 40, "FFN", "`mlp`", False)], bx)
        else:
            residual_branch(c, cx, 106, 196, [(126, 44, "MHA", "`attn`", False)], bx)
            norm_box(c, cx - 32, 216, 64, 40, "LN_{1}", "`ln_1`")
            residual_branch(c, cx, 290, 380, [(310, 44, "FFN", "`mlp`", False)], bx)
            norm_box(c, cx - 32, 400, 64, 40, "LN_{2}", "`ln_2`")
        c.text(cx - 14, 282, "h", 14, anchor="end")
    if lang == "en":
        c.text(60, 182, "residual", 12, RESIDUAL, anchor="end")
        c.text(60, 198, "stream", 12, RESIDUAL, anchor="end")
    else:  # one short word
        c.text(60, 190, "residual stream", 12, RESIDUAL, anchor="end")

    rows = [
        ("h = x + MHA(LN_{1}(x))", "h = LN_{1}(x + MHA(x))"),
        ("y = h + FFN(LN_{2}(h))", "y = LN_{2}(h + FFN(h))   (6.6)"),
    ]
    for k, (pre_eq, post_eq) in enumerate(rows):
        c.text(20, 522 + 22 * k, pre_eq, 14, anchor="start")
        c.text(400, 522 + 22 * k, post_eq, 14, anchor="start")
    notes = [("The stream is a pure sum, an identity path y → x;",
              "The stream itself is normalised: every path"),
             ("`ln_f` normalises it once, after the last block.",
              "from y to x crosses LN_{1} and LN_{2}.")]
    for k, (pre_note, post_note) in enumerate(notes):
        c.text(20, 584 + 20 * k, pre_note, 12, MUTED, anchor="start")
        c.text(400, 584 + 20 * k, post_note, 12, MUTED, anchor="start")
    return c


# ----------------------------------------------------------------------------- notebook 07


def gpt_stack(lang: str = "en") -> Canvas:
    """Token ids through embeddings, n_layer blocks, ln_f and the tied head to logits."""
    c = new_canvas("gpt_stack", 760, 690, lang)
    title(c, "The whole GPT: ids in, one score per vocabulary entry out   (eqs. 7.1-7.3)")
    cx, shape_x, eq_x = 250, 236, 450
    text = "def f("
    ids = list(text.encode())
    cell = 40
    left = cx - len(ids) * cell / 2
    for i, (ch, token) in enumerate(zip(text, ids, strict=True)):
        c.text(left + (i + 0.5) * cell, 62, repr(ch), 11, MUTED)
        c.rect(left + i * cell, 70, cell, 28, tint(INK, 0.06), INK, 1.0)
        c.text(left + (i + 0.5) * cell, 89, str(token), 12)
    c.text(left - 10, 89, "`idx`", 13, anchor="end")

    def arrow(y1, y2, shape, color=INK, width=1.5):
        c.line(cx, y1, cx, y2, color, width, arrow=True)
        c.text(shape_x - (6 if width > 2 else 0), (y1 + y2) / 2 + 5, shape, 13, MUTED,
               anchor="end")

    arrow(100, 126, "(B, T)")
    c.box(cx - 90, 128, 180, 44, "`token_emb`", sub="rows of E, (V, C)", size=13)
    arrow(172, 200, "(B, T, C)")
    c.plus(cx, 210)
    c.box(cx - 230, 190, 140, 40, "`pos_enc`", sub="P[0..T), (T, C)", size=13)
    c.line(cx - 90, 210, cx - 11, 210, INK, 1.5, arrow=True)

    c.line(cx, 220, cx, 262, RESIDUAL, 5, arrow=True)
    c.text(shape_x - 6, 246, "h^{0}  (B, T, C)", 13, MUTED, anchor="end")
    for k in (2, 1, 0):  # three cards, the front one last: n_layer blocks stacked
        c.rect(cx - 100 + 8 * k, 266 - 8 * k, 200, 96, PALETTE["paper"], INK, 1.4, rx=6)
    c.text(cx, 294, "Block", 14, bold=True)
    c.text(cx, 318, "`ln_1` → `attn` → ⊕", 12)
    c.text(cx, 340, "`ln_2` → `mlp` → ⊕", 12)
    c.text(cx - 112, 304, "L ×", 15, bold=True, anchor="end")
    c.text(cx - 112, 324, "`n_layer`", 12, MUTED, anchor="end")
    c.line(cx, 362, cx, 404, RESIDUAL, 5, arrow=True)
    c.text(shape_x - 6, 388, "h^{L}  (B, T, C)", 13, MUTED, anchor="end")
    norm_box(c, cx - 60, 406, 120, 44, "LN_{f}", "`ln_f`")
    arrow(450, 478, "(B, T, C)")
    c.box(cx - 90, 480, 180, 44, "`lm_head`", sub="× E^{T}, C → V", size=13)
    arrow(524, 552, "(B, T, V)")
    c.text(left - 10, 575, "logits", 13, anchor="end")
    for i in range(len(ids)):
        c.rect(left + i * cell, 556, cell, 28, tint(INK, 0.06), INK, 1.0)
        c.text(left + (i + 0.5) * cell, 575, "V", 11, MUTED)
    c.text(cx, 604, "row t scores every token as the next one, t + 1", 12, MUTED)

    c.path(f"M{cx + 90},502 C410,502 410,150 {cx + 90},150", stroke=INK, width=1.8,
           dash="6 4")
    for y in (150, 502):
        c.circle(cx + 90, y, 4, INK)
    c.text(398, 330, "tied", 13, anchor="start", bold=True)

    notes = [
        (150, "h^{0} = E[idx] + P[0..T)   (7.1)", INK),
        (170, "no P when `pos_encoding=\"rope\"`", MUTED),
        (296, "h^{l} = Block_{l}(h^{l−1}),  l = 1..L", INK),
        (316, "(7.2), each with its own weights", MUTED),
        (494, "logits = LN_{f}(h^{L}) E^{T}   (7.3)", INK),
        (514, "`lm_head.weight` is `token_emb.weight`", MUTED),
    ]
    for y, label, color in notes:
        c.text(eq_x + 20, y, label, 13, color, anchor="start")
    size = gpt2_small()
    c.text(20, 644, c.tr("GPT-2 small (GPTConfig defaults): V = `vocab_size` = {vocab_size}, "
                         "C = `n_embd` = {n_embd},", vocab_size=size.vocab_size,
                         n_embd=size.n_embd), 12, MUTED, anchor="start")
    c.text(20, 664, c.tr("L = `n_layer` = {n_layer}, T ≤ `block_size` = {block_size}.  "
                         "Drawn: the bytes of \"def f(\" as ids (V = 256).",
                         n_layer=size.n_layer, block_size=size.block_size), 12, MUTED,
           anchor="start")
    return c


# ----------------------------------------------------------------------------- notebook 08


def lr_inset(c: Canvas, x, y, w, h) -> None:
    """η(s) of the default preset, drawn by minigpt's own learning_rate_at (eq. 8.3)."""
    from minigpt.train import TrainConfig, learning_rate_at

    config = TrainConfig()
    steps = config.lr_decay_iters or config.max_iters
    c.line(x, y + h, x + w + 8, y + h, INK, 1.2, arrow=True)
    c.line(x, y + h, x, y - 8, INK, 1.2, arrow=True)
    points = [(x + w * s / steps, y + h - h * learning_rate_at(s, config) / config.learning_rate)
              for s in range(0, steps + 1, 5)]
    c.polyline(points, INK, 2.2)
    warm = x + w * config.warmup_iters / steps
    c.line(warm, y + h, warm, y, FAINT, 1.0, dash="3 3")
    floor = y + h - h * config.min_lr / config.learning_rate
    c.line(x, floor, x + w, floor, FAINT, 1.0, dash="3 3")
    c.text(x - 6, y + 5, "η_{max}", 12, MUTED, anchor="end")
    c.text(x - 6, floor + 5, "η_{min}", 12, MUTED, anchor="end")
    c.text(warm, y + h + 16, "W", 12, MUTED)
    c.text(x + w, y + h + 16, "S", 12, MUTED)
    c.text(x + w + 12, y + h + 5, "s", 12, MUTED, anchor="start")
    c.text(x + w * 0.55, y + 8, "warm-up, then cosine   (8.3)", 12)


def training_loop(lang: str = "en") -> Canvas:
    """One optimiser step of the Trainer, and what happens every N steps."""
    c = new_canvas("training_loop", 760, 520, lang)
    title(c, "The training loop: one optimiser step, repeated   (eqs. 8.1-8.4, 8.7)")
    row1, row2, bh = 76, 214, 58
    xs = (40, 262, 484)
    c.rect(26, row1 - 14, 652, bh + 48, "none", MUTED, 1.2, rx=10, dash="5 4")
    c.text(352, row1 + bh + 26, "× `grad_accum_steps` micro-batches: their gradients add up "
           "(8.7)", 12, MUTED)
    c.box(xs[0], row1, 180, bh, "batch x, y", sub="(B, T); y = x shifted by 1", size=14,
          sub_size=12)
    c.box(xs[1], row1, 180, bh, "forward", sub="loss ℒ(θ)   (8.1)", size=14)
    c.box(xs[2], row1, 180, bh, "backward", sub="`.grad` += ∇_{θ}ℒ / k", size=14)
    for a, b in ((xs[0], xs[1]), (xs[1], xs[2])):
        c.line(a + 182, row1 + bh / 2, b - 2, row1 + bh / 2, INK, 1.5, arrow=True)

    step_x, adam_x, clip_x = 40, 236, 512
    c.box(clip_x, row2, 200, bh, "clip   (8.4)", sub="g ← g · min(1, c / ‖g‖)", size=14)
    c.box(adam_x, row2, 240, bh, "AdamW step   (8.2)", sub="θ ← θ − η(s)(m̂ / (√v̂ + ε) + λθ)",
          size=14)
    c.box(step_x, row2, 160, bh, "s ← s + 1", sub="`step`", size=14)
    c.line(574, row1 + bh + 36, 574, row2 - 2, INK, 1.5, arrow=True)
    c.text(584, row2 - 16, "c = `grad_clip`", 12, MUTED, anchor="start")
    c.line(clip_x - 2, row2 + bh / 2, adam_x + 242, row2 + bh / 2, INK, 1.5, arrow=True)
    c.line(adam_x - 2, row2 + bh / 2, step_x + 162, row2 + bh / 2, INK, 1.5, arrow=True)
    c.line(step_x + 80, row2 - 2, step_x + 80, row1 + bh + 38, INK, 1.5, arrow=True)
    c.text(step_x + 90, row2 - 16, "next step", 12, MUTED, anchor="start")

    ey = 330
    c.line(xs[0] + 80, row2 + bh, xs[0] + 80, ey - 2, INK, 1.3, dash="5 4", arrow=True)
    c.text(xs[0] + 90, row2 + bh + 30, "every `eval_interval` steps", 12, MUTED, anchor="start")
    c.box(xs[0] - 14, ey, 260, 62, "`evaluate()`: train, val loss", sub="`save()`: ckpt.pt, "
          "every `checkpoint_interval`", size=13, sub_size=11)
    c.text(xs[0] - 14, ey + 86, "a checkpoint holds the model, AdamW's m and v,", 12, MUTED,
           anchor="start")
    c.text(xs[0] - 14, ey + 104, "the step, the data position and the RNG states:", 12, MUTED,
           anchor="start")
    c.text(xs[0] - 14, ey + 122, "a resumed run continues exactly", 12, MUTED, anchor="start")

    lr_inset(c, 420, 356, 280, 100)
    c.line(adam_x + 150, 348, adam_x + 150, row2 + bh + 2, INK, 1.5, arrow=True)
    c.text(adam_x + 142, 336, "η(s)", 13, anchor="end")
    config_note = ("`learning_rate_at(step, config)`: W = `warmup_iters`, S = `lr_decay_iters`; "
                   "drawn for TrainConfig's defaults")
    c.text(20, 506, config_note, 12, MUTED, anchor="start")
    return c


# ----------------------------------------------------------------------------- notebook 09


def column(c: Canvas, x, y, color, new: bool, w=18, h=56, slots=4):
    """One token's key or value: a column vector; the one computed this step is outlined."""
    c.rect(x, y, w, h, tint(color, 0.6 if new else 0.18), color, 2.4 if new else 1.0)
    for k in range(1, slots):
        c.line(x, y + k * h / slots, x + w, y + k * h / slots, tint(color, 0.5), 0.6)


def kv_cache(lang: str = "en") -> Canvas:
    """Decoding step by step: the cache gains one key and one value column per token."""
    c = new_canvas("kv_cache", 760, 560, lang)
    title(c, "The KV cache: per step, q, k, v of the new token only   (eq. 9.8)")
    capacity, col = 6, 22
    rng = random.Random(9)
    xs = {"tokens": 20, "q": 196, "K": 252, "A": 410, "V": 556, "y": 716}
    heads = [("tokens", 20 + 3 * col, "tokens so far"), ("q", xs["q"] + 9, "q_{t}"),
             ("K", xs["K"] + capacity * col / 2, "K cache"), ("A", xs["A"] + 54, "weights"),
             ("V", xs["V"] + capacity * col / 2, "V cache"), ("y", xs["y"] + 9, "y_{t}")]
    for _, x, label in heads:
        c.text(x, 62, label, 13, bold=True)
    for row, t in enumerate((3, 4, 5)):
        top = 84 + 118 * row
        mid = top + 28
        c.text(20, top - 4, c.tr("step t = {t}", t=t), 12, MUTED, anchor="start")
        for j in range(t):
            new = j == t - 1
            c.rect(20 + j * col, mid - 11, col - 2, 22, tint(INK, 0.3 if new else 0.06), INK,
                   2.0 if new else 0.8)
            c.text(20 + j * col + 10, mid + 4, str(j + 1), 11)
        c.line(20 + t * col + 4, mid, xs["q"] - 4, mid, INK, 1.3, arrow=True)
        column(c, xs["q"], top, Q, True)
        c.line(xs["q"] + 22, mid, xs["K"] - 4, mid, Q, 1.3, arrow=True)
        for j in range(capacity):
            if j < t:
                column(c, xs["K"] + j * col, top, K, j == t - 1)
                column(c, xs["V"] + j * col, top, V, j == t - 1)
            else:  # storage allocated up front, not yet filled
                c.rect(xs["K"] + j * col, top, 18, 56, "none", FAINT, 1.0, dash="3 3")
                c.rect(xs["V"] + j * col, top, 18, 56, "none", FAINT, 1.0, dash="3 3")
        c.line(xs["K"] + capacity * col + 4, mid, xs["A"] - 4, mid, INK, 1.3, arrow=True)
        weights = softmax([rng.uniform(-1.5, 1.5) for _ in range(t)])
        for j, w in enumerate(weights):
            c.rect(xs["A"] + j * col, mid - 11, col - 2, 22, tint(INK, 0.1 + 0.8 * w), INK, 0.8)
        c.line(xs["A"] + t * col + 4, mid, xs["V"] - 4, mid, INK, 1.3, arrow=True)
        c.line(xs["V"] + capacity * col + 4, mid, xs["y"] - 4, mid, V, 1.3, arrow=True)
        c.rect(xs["y"], top, 18, 56, tint(INK, 0.12), INK, 1.4)
        if row == 0:
            c.text((20 + t * col + xs["q"]) / 2, mid - 8, "`qkv_proj`", 11, MUTED)
            c.text(xs["K"] + 2.5 * col + 9, top + 78, "new column: k_{t}", 12, K)
            c.text(xs["V"] + 2.5 * col + 9, top + 78, "new column: v_{t}", 12, V)
            c.text(xs["A"] + 54, top + 78, "softmax over j ≤ t", 12, MUTED)

    notes = [
        ("y_{t} = softmax(q_{t} K_{≤t}^{T} / √d_{k}) V_{≤t},  K_{≤t} = [K_{<t}; k_{t}]   (9.8)",
         INK),
        ("Only token t goes through `qkv_proj`; `KVCache.append(k, v)` stores its key and value.",
         MUTED),
        ("The columns of tokens < t are reused as they are: the causal mask means x_{t} cannot "
         "change them.", MUTED),
        ("Per layer `k`, `v`: (B, n_head, t, head_dim); dashed: storage for `block_size` "
         "positions.", MUTED),
        ("Memory: 2 · L · T · C numbers per sequence   (9.10).  No mask is needed for a single "
         "new query.", MUTED),
    ]
    for k, (label, color) in enumerate(notes):
        c.text(20, 438 + 26 * k - (0 if k == 0 else 4), label, 13 if k == 0 else 12, color,
               anchor="start")
    return c


# ----------------------------------------------------------------------------- notebook 10


def matrix(c: Canvas, x, y, w, h, color, amount, name, shape, name_size=16):
    """A weight matrix drawn to its shape, its name inside and its shape below."""
    c.rect(x, y, w, h, tint(color, amount), color, 1.8)
    if w > 40 and h > 40:
        c.text(x + w / 2, y + h / 2 + 6, name, name_size, bold=True)
    c.text(x + w / 2, y + h + 18, shape, 12, MUTED)


def lora(lang: str = "en") -> Canvas:
    """The frozen W beside the trainable low-rank pair B·A."""
    from minigpt.lora import DEFAULT_TARGETS

    rank, alpha = lora_defaults()
    c = new_canvas("lora", 760, 540, lang)
    title(c, "LoRA: a frozen W plus a trainable low-rank update   (eqs. 10.3-10.5)")
    d, r = 150, 16  # d_in = d_out, drawn to scale against the rank
    top, low = 70, 336

    x_mid = 240
    c.rect(30, x_mid - d / 2, 18, d, tint(INK, 0.1), INK, 1.4)
    c.text(39, x_mid - d / 2 - 10, "x", 15)
    c.text(39, x_mid + d / 2 + 18, "d_{in}", 12, MUTED)
    c.polyline([(50, x_mid), (90, x_mid), (90, top + d / 2), (218, top + d / 2)], INK, 1.5,
               arrow=True)
    c.polyline([(90, x_mid), (90, low + r / 2), (218, low + r / 2)], INK, 1.5, arrow=True)

    matrix(c, 220, top, d, d, FROZEN, 0.3, "W", "d_{out} × d_{in}, frozen")
    c.text(220 + d / 2, top + d / 2 + 26, "pretrained", 12, MUTED)
    c.line(220 + d + 4, top + d / 2, 418, top + d / 2, INK, 1.5, arrow=True)
    c.rect(420, top, 18, d, tint(INK, 0.1), INK, 1.4)
    c.text(429, top - 8, "Wx", 13)

    matrix(c, 220, low, d, r, TRAINABLE, 0.55, "A", "")
    c.text(220 + d / 2, low - 8, "A = `lora_A`:  r × d_{in},  random", 12, anchor="middle")
    c.line(220 + d + 4, low + r / 2, 398, low + r / 2, INK, 1.5, arrow=True)
    c.rect(400, low, 18, r, tint(INK, 0.1), INK, 1.4)
    c.text(409, low + r + 18, "Ax", 13)
    c.text(409, low + r + 34, "r numbers", 12, MUTED)
    c.line(420, low + r / 2, 450, low + r / 2, INK, 1.5, arrow=True)
    b_top = low + r / 2 - d / 2
    c.rect(452, b_top, r, d, tint(TRAINABLE, 0.55), TRAINABLE, 1.8)
    c.text(460, b_top - 24, "B = `lora_B`", 12)
    c.text(460, b_top - 8, "d_{out} × r,  starts at 0", 12, MUTED)
    c.line(472, low + r / 2, 498, low + r / 2, INK, 1.5, arrow=True)
    c.rect(500, b_top, 18, d, tint(INK, 0.1), INK, 1.4)
    c.text(509, b_top + d + 18, "BAx", 13)

    c.line(520, low + r / 2, 548, low + r / 2, INK, 1.5, arrow=True)
    c.box(550, low + r / 2 - 16, 44, 32, "× α/r", size=12)
    plus_x, plus_y = 630, 240
    c.polyline([(594, low + r / 2), (plus_x, low + r / 2), (plus_x, plus_y + 11)], INK, 1.5,
               arrow=True)
    c.polyline([(440, top + d / 2), (plus_x, top + d / 2), (plus_x, plus_y - 11)], INK, 1.5,
               arrow=True)
    c.plus(plus_x, plus_y)
    c.line(plus_x + 11, plus_y, 680, plus_y, INK, 1.5, arrow=True)
    c.rect(682, plus_y - d / 2, 18, d, tint(INK, 0.1), INK, 1.4)
    c.text(691, plus_y - d / 2 - 8, "h", 15)
    c.text(691, plus_y + d / 2 + 18, "d_{out}", 12, MUTED)

    c.rect(20, 450, 14, 14, tint(FROZEN, 0.3), FROZEN, 1.5)
    c.text(40, 462, "frozen", 12, anchor="start")
    c.rect(100, 450, 14, 14, tint(TRAINABLE, 0.55), TRAINABLE, 1.5)
    c.text(120, 462, "trainable", 12, anchor="start")
    c.text(200, 462, "h = W x + (α/r) · B A x   (10.3)", 14, anchor="start")
    c.text(20, 488, "Trains r (d_{in} + d_{out}) numbers instead of d_{in} d_{out}   (10.4);  "
           "merged after training: W' = W + (α/r) B A   (10.5)", 12, MUTED, anchor="start")
    targets = ("、" if lang == "zh-CN" else ", ").join(f"`{t}`" for t in DEFAULT_TARGETS)
    c.text(20, 512, c.tr("`LoRALinear` defaults: r = `rank` = {rank}, α = `alpha` = {alpha:g}; "
                         "targets {targets}.  B = 0 at the start: h = Wx.", rank=rank,
                         alpha=alpha, targets=targets), 12, MUTED, anchor="start")
    return c


FIGURES = (soft_lookup, causal_mask, heads_split_merge, sinusoids_rope, block_pre_post_ln,
           gpt_stack, training_loop, kv_cache, lora)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE,
                        help="folder for the SVG files (the Chinese ones go to its zh-CN/)")
    out = parser.parse_args(argv).out
    written = []
    for lang, (folder, _, _) in LANGUAGES.items():
        (out / folder).mkdir(parents=True, exist_ok=True)
        for figure in FIGURES:
            path = out / folder / f"{figure.__name__}.svg"
            path.write_bytes(figure(lang).svg().encode("utf-8"))
            written.append(path)
    return written


if __name__ == "__main__":
    for path in main():
        print(path.name if path.parent.name != "zh-CN" else f"zh-CN/{path.name}")
