"""What runs write besides checkpoints: log set-up, metrics.jsonl (+ TensorBoard scalars when
`tensorboard` is installed), the training curves and the test's confusion matrix."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger("tpn.train")


def setup_logging(work_dir: Path | None, main: bool) -> None:
    root = logging.getLogger("tpn")
    root.setLevel(logging.INFO if main else logging.WARNING)
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        root.addHandler(h)
    if work_dir is not None and main:
        fh = logging.FileHandler(work_dir / "train.log")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(fh)


class MetricsLog:
    """One JSON line per record in `metrics.jsonl`; numbers also go to TensorBoard. Rank 0 only."""

    def __init__(self, work_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = work_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(work_dir / "tensorboard"))
            except Exception:  # tensorboard is optional
                log.info("tensorboard not installed: scalars go to metrics.jsonl only")

    def write(self, rec: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            step = rec.get("iter", 0)
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("iter", "epoch"):
                    self.tb.add_scalar(f"{rec.get('kind', 'train')}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_curves(metrics_path: Path, out: Path) -> Path | None:
    """Training loss, validation accuracy and learning rate against epochs, from metrics.jsonl."""
    if not metrics_path.exists():
        return None
    plt = pyplot()
    recs = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    tr = [r for r in recs if r.get("kind") == "train"]
    va = [r for r in recs if r.get("kind") == "val"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    if tr:
        axes[0].plot([r["epoch_float"] for r in tr], [r["loss"] for r in tr], lw=1)
        axes[2].plot([r["epoch_float"] for r in tr], [r["lr"] for r in tr], lw=1)
    if va:
        axes[1].plot([r["epoch"] for r in va], [100 * r["top1"] for r in va], "o-", label="val top-1")
        axes[1].plot([r["epoch"] for r in va], [100 * r["top5"] for r in va], "s--", label="val top-5")
        axes[1].legend()
    for ax, title in zip(axes, ["train loss", "validation accuracy (%)", "learning rate"]):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    return save_figure(fig, out)


def plot_confusion(conf: np.ndarray, names: list[str], path: Path) -> Path:
    """Rows normalised to 1 (recall per class); class names on the axes up to 60 classes."""
    plt = pyplot()
    k = len(names)
    size = min(4 + 0.35 * k, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 60:
        ax.set_xticks(range(k), names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (rows normalised)")
    return save_figure(fig, path)


def pyplot():
    """matplotlib.pyplot on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
