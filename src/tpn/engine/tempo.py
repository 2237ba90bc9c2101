"""`tpn test --tempo 0.5,1,2`: accuracy against playback speed.

Each speed s re-samples every test video as if played at s x speed (`tpn.data.sampling.at_tempo`:
the clip's frame interval scaled by s, frames repeated where slower than the source); the test runs
once per speed. The rows go to metrics.json (`tempo`), the summary and accuracy_vs_tempo.png.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from tpn.errors import TpnError


def parse_tempos(text: str) -> list[Fraction]:
    """"0.5,1,2" -> the speeds as exact fractions, in the order given; an empty entry, a non-number,
    a speed <= 0 or one listed twice is a one-line error naming --tempo."""
    speeds = []
    for part in str(text).split(","):
        try:
            s = Fraction(part.strip())
        except (ValueError, ZeroDivisionError):
            raise TpnError(f"--tempo {text!r}: {part.strip()!r} is not a number (expected speeds such as "
                           "0.5,1,2)") from None
        if s <= 0:
            raise TpnError(f"--tempo {text!r}: speed {part.strip()} must be > 0 (1 is the recorded speed)")
        if s in speeds:
            raise TpnError(f"--tempo {text!r}: speed {part.strip()} is listed twice")
        speeds.append(s)
    return speeds


def speed_text(s: Fraction) -> str:
    return f"{float(s):g}x"


def report_speed(speeds: list[Fraction]) -> Fraction:
    """The speed whose predictions, confusion matrix and top-level numbers the report holds: 1 when
    listed (the plain `tpn test`), else the first listed."""
    return Fraction(1) if 1 in speeds else speeds[0]


def tempo_row(s: Fraction, m: dict, seconds: float) -> dict:
    """One speed's line of metrics.json's `tempo.speeds`."""
    return {"speed": float(s), "videos": m["videos"], "skipped": m["skipped"], "top1": m["top1"],
            "top5": m["top5"], "mean_class_accuracy": m["mean_class_accuracy"], "seconds": round(seconds, 3)}


def summary_lines(rows: list[dict]) -> list[str]:
    return [f"tempo {speed_text(Fraction(r['speed']))}: top-1 {100 * r['top1']:.2f}% top-5 {100 * r['top5']:.2f}% "
            f"({r['videos']} videos, {r['skipped']} unreadable)" for r in rows]


def plot_tempo(rows: list[dict], path: Path) -> Path:
    """Top-1 and top-5 (%) against playback speed, speeds on a log-2 axis."""
    from tpn.engine.report import pyplot, save_figure

    plt = pyplot()
    rows = sorted(rows, key=lambda r: r["speed"])
    x = [r["speed"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, name in (("top1", "top-1"), ("top5", "top-5")):
        ax.plot(x, [100 * r[key] for r in rows], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.minorticks_off()
    ax.set_xticks(x, [speed_text(Fraction(v)) for v in x])
    ax.set_xlabel("playback speed")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)  # a line at 100% stays visible
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
