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
    cache = attention.KVCache(1, 1, 2, 2)
    names |= set(vars(cache))
    for dataclass in (model.GPTConfig, train.TrainConfig):
        names |= {f.name for f in dataclasses.fields(dataclass)}
    for owner in (attention, generate, layers, lora, model, positional, train, attention.KVCache,
                  attention.MultiHeadAttention, model.GPT, train.Trainer, torch.Tensor):
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


FIGURES = (soft_lookup, causal_mask)


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
