"""Draw the course's diagrams: `python notebooks/figures/draw.py [--out DIR]`.

Each figure is one function below that draws on a `Canvas` (canvas.py) and is listed once, in
FIGURES; the SVG files are written next to this script unless --out names another folder. The
output is plain SVG 1.1 and byte-identical on every run. Names set as `code` in a label are
checked against minigpt, and the example sizes (GPT-2 small) come from GPTConfig's defaults, so
a renamed module or a changed default shows up here instead of drifting silently.
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
sys.path.insert(0, str(HERE))  # canvas.py sits beside this script

from canvas import PALETTE, Canvas, tint  # noqa: E402

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


def new_canvas(name: str, width: int, height: int) -> Canvas:
    return Canvas(name, width, height, known_names=code_names())


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


def soft_lookup() -> Canvas:
    """A query scored against four keys, softmax weights, and the weighted sum of values."""
    c = new_canvas("soft_lookup", 780, 400)
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
           "gets some, smoothly in q and k_{j}.", 13, MUTED, anchor="start")
    return c


def causal_mask() -> Canvas:
    """Scores, the same scores with the future masked to −∞, and the lower-triangular weights."""
    T, cell = 5, 32
    c = new_canvas("causal_mask", 760, 390)
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


def heads_split_merge() -> Canvas:
    """(B, T, C) -> qkv_proj -> heads -> attention per head -> concatenate -> out_proj."""
    h, band, tall = 4, 26, 40
    c = new_canvas("heads_split_merge", 760, 700)
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
    c.text(20, 684, f"Drawn with h = {h}; GPT-2 small has n_embd = {size.n_embd}, n_head = "
           f"{size.n_head}, head_dim = {size.head_dim} (GPTConfig defaults).", 12, MUTED,
           anchor="start")
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


def sinusoids_rope() -> Canvas:
    """Sinusoidal pairs as clock hands at different speeds; RoPE rotating a query and a key."""
    c = new_canvas("sinusoids_rope", 760, 430)
    c.text(20, 28, "Sinusoidal encoding   (5.2)", 15, anchor="start", bold=True)
    c.text(20, 48, "each pair of features is a clock hand", 13, MUTED, anchor="start")
    dim, base, radius = 6, 10.0, 17
    omegas = [base ** (-2 * i / dim) for i in range(dim // 2)]
    for p in range(6):
        c.text(118 + 48 * p, 74, f"p = {p}", 12, MUTED)
    for i, omega in enumerate(omegas):
        cy = 108 + 60 * i
        c.text(20, cy - 2, f"pair i = {i}", 13, anchor="start")
        c.text(20, cy + 16, f"ω_{{{i}}} = {omega:.2f}", 12, MUTED, anchor="start")
        for p in range(6):
            cx = 118 + 48 * p
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
    c.text(20, 410, f"drawn with d = {dim}, base = {base:g}; minigpt: base = "
           f"{sinusoid_base():g}", 12, MUTED, anchor="start")

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


def block_pre_post_ln() -> Canvas:
    """The transformer block with a straight residual stream, pre-LN beside post-LN."""
    c = new_canvas("block_pre_post_ln", 760, 620)
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
    c.text(60, 182, "residual", 12, RESIDUAL, anchor="end")
    c.text(60, 198, "stream", 12, RESIDUAL, anchor="end")

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


FIGURES = (soft_lookup, causal_mask, heads_split_merge, sinusoids_rope, block_pre_post_ln)


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the SVG files")
    out = parser.parse_args(argv).out
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for figure in FIGURES:
        path = out / f"{figure.__name__}.svg"
        path.write_bytes(figure().svg().encode("utf-8"))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in main():
        print(path.name)
