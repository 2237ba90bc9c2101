"""What runs write besides checkpoints: log set-up, metrics.jsonl (+ TensorBoard scalars when
`tensorboard` is installed), the training curves and the test's confusion matrix."""
from __future__ import annotations

import json
import logging
import os
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
    """One JSON line per record in `metrics.jsonl`; numbers also go to TensorBoard. Rank 0 only.

    `start_iter`: the iteration the run starts from (its checkpoint's, 0 afresh). Rows past it
    come from a run that died after that checkpoint and will be written again: they are
    dropped, so the file and the curves drawn from it go forward only.
    """

    def __init__(self, work_dir: Path, enabled: bool, start_iter: int = 0):
        self.enabled = enabled
        self.path = work_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            drop_rows_after(self.path, start_iter)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(work_dir / "tensorboard"), purge_step=start_iter + 1)
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


def drop_rows_after(path: Path, it: int) -> int:
    """Rewrite the JSON-lines file `path` without the rows whose "iter" is past `it` (and without
    a line cut short by a kill); returns how many were dropped."""
    if not path.exists():
        return 0
    lines = [x for x in path.read_text().splitlines() if x.strip()]

    def keep(line: str) -> bool:
        try:
            return json.loads(line).get("iter", 0) <= it
        except (ValueError, AttributeError):
            return False

    kept = [x for x in lines if keep(x)]
    if len(kept) < len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(x + "\n" for x in kept))
        os.replace(tmp, path)
        log.info("%s: dropped %d rows past iteration %d (written by a run after the checkpoint it starts from)",
                 path, len(lines) - len(kept), it)
    return len(lines) - len(kept)


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


def most_confused(conf: np.ndarray, names: list[str], top: int = 20) -> list[dict]:
    """The `top` largest off-diagonal cells: true class, predicted class, videos, share of the true class."""
    off = conf.copy()
    np.fill_diagonal(off, 0)
    rows = np.maximum(conf.sum(1), 1)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    pairs = []
    for flat in order:
        t, p = divmod(int(flat), conf.shape[1])
        if off[t, p] == 0:
            break
        pairs.append({"true": names[t], "predicted": names[p], "videos": int(off[t, p]),
                      "rate": float(off[t, p] / rows[t])})
    return pairs


def confusion_figure(conf: np.ndarray, names: list[str]):
    """Rates (each true class's row sums to 1) as a heat map with a colour bar; the videos in
    each cell written in it up to 30 classes, class names up to 60. Beyond 60 classes single
    cells cannot be read: the colour scale is a square root (small confusions stay visible) and
    a side panel lists the most confused pairs."""
    from matplotlib.colors import Normalize, PowerNorm

    plt = pyplot()
    k = len(names)
    rates = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    big = k > 60
    size = 20 if big else 5 + 0.35 * k
    fig, axes = plt.subplots(1, 2 if big else 1, figsize=(size * 1.5 if big else size, size),
                             gridspec_kw={"width_ratios": [2, 1]} if big else None, squeeze=False)
    ax = axes[0, 0]
    norm = PowerNorm(0.5, vmin=0, vmax=1) if big else Normalize(vmin=0, vmax=1)
    im = ax.imshow(rates, cmap="Blues", norm=norm)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04,
                 label="share of the true class's videos" + (" (square-root scale)" if big else ""))
    if k <= 60:
        ax.set_xticks(range(k), names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
    if k <= 30:
        for t, p in zip(*np.nonzero(conf)):
            ax.text(p, t, str(conf[t, p]), ha="center", va="center", fontsize=7,
                    color="white" if rates[t, p] > 0.5 else "black")
    ax.set_xlabel("predicted class" + ("" if k <= 60 else " (index)"))
    ax.set_ylabel("true class" + ("" if k <= 60 else " (index)"))
    ax.set_title(f"confusion matrix: {int(conf.sum())} videos" + (", numbers are videos" if k <= 30 else ""))
    if big:
        side = axes[0, 1]
        side.axis("off")
        lines = [f"{p['true']} -> {p['predicted']}: {p['videos']} ({100 * p['rate']:.0f}%)"
                 for p in most_confused(conf, names, 40)]
        side.text(0, 1, "most confused (true -> predicted: videos, share)\n\n" + "\n".join(lines),
                  va="top", ha="left", fontsize=12, family="monospace", transform=side.transAxes)
    return fig


def plot_confusion(conf: np.ndarray, names: list[str], path: Path) -> Path:
    return save_figure(confusion_figure(conf, names), path)


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


def rate_text(count: int, seconds: float, unit: str) -> str:
    """"8 videos in 41.3 s, 0.194 videos/s": three significant digits, so slow CPU runs read too."""
    rate = count / max(seconds, 1e-9)
    return f"{count} {unit} in {seconds:.1f} s, {rate:.3g} {unit}/s" if rate < 1000 else \
        f"{count} {unit} in {seconds:.1f} s, {rate:.0f} {unit}/s"
