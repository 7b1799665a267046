"""Measuring a training run: MFU, the metrics log, and the loss curve (notebooks/08, 13)."""

from __future__ import annotations

import json
from pathlib import Path

from minigpt.checkpoint import atomic_write_bytes


def mfu(flops_per_token: float, tokens_per_second: float, peak: float | None) -> float | None:
    """Model FLOP utilisation (eq. 8.5): the share of the accelerator's peak that trains the
    model. None when the peak of the device is unknown."""
    if peak is None:
        return None
    return flops_per_token * tokens_per_second / peak


class MetricsLog:
    """metrics.jsonl: one JSON object per logged step, appended and flushed as it happens."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(path) -> list[dict]:
    """The records of metrics.jsonl. A last line cut short (the process died while writing it)
    is skipped; a damaged line anywhere else is an error."""
    path = Path(path)
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise ValueError(f"{path}, line {number}: not a JSON record ({exc})") from None
    return records


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records logged after the checkpoint: that work is being redone."""
    records = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    if path.exists():
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def plot_loss_curve(metrics_path, png_path) -> None:
    """Train and validation loss against step, from metrics.jsonl; beside it HellaSwag accuracy
    when the run measured it, with chance (1 in 4) marked."""
    from matplotlib.figure import Figure

    records = read_metrics(metrics_path)
    hellaswag = [(r["step"], r["hellaswag_acc_norm"]) for r in records
                 if "hellaswag_acc_norm" in r]
    fig = Figure(figsize=(11 if hellaswag else 6, 4))
    ax = fig.add_subplot(1, 2 if hellaswag else 1, 1)
    for key, style in (("loss", "-"), ("val_loss", "o-")):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            label = "train (batch)" if key == "loss" else "validation"
            ax.plot(*zip(*points, strict=True), style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    if hellaswag:
        right = fig.add_subplot(1, 2, 2)
        right.plot(*zip(*hellaswag, strict=True), "o-", label="acc_norm")
        right.axhline(0.25, color="grey", linestyle=":", label="chance")
        right.set_xlabel("step")
        right.set_ylabel("HellaSwag accuracy")
        right.legend()
        right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
