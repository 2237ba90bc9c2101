"""Compare `tpn test` runs of one checkpoint in different precisions against a reference run.

Each run dir is a `tpn test --view-scores tpn` report folder (predictions.json, view_scores.npy,
metrics.json). For each run against the reference (the first): 30-view top-1, the share of
videos whose top-1 prediction equals the reference's (issue 18's criterion: >= 99.5%), the
videos that differ (with the reference's top-1 minus top-2 probability: how close to a tie they
were), and the max / mean absolute difference of the view-averaged softmax.

    python benchmarks/precision_summary.py fp32=runs/fp32 bf16=runs/bf16 --out summary.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

CRITERION = 0.995  # share of videos whose top-1 must equal the reference's
MIN_VIDEOS = 200  # below this one differing video moves the share by more than the criterion's 0.5%


def load_run(folder: Path) -> dict:
    """predictions.json rows, the view-averaged softmax [videos, classes] and metrics.json's top-1."""
    files = {name: folder / name for name in ("predictions.json", "view_scores.npy", "metrics.json")}
    for path in files.values():
        if not path.is_file():
            raise SystemExit(f"{path}: not found (run `tpn test --view-scores tpn --work-dir {folder}`)")
    rows = json.loads(files["predictions.json"].read_text())
    scores = np.load(files["view_scores.npy"])
    if scores.ndim != 3 or len(scores) != len(rows):
        raise SystemExit(f"{files['view_scores.npy']}: shape {scores.shape} does not match the "
                         f"{len(rows)} videos of {files['predictions.json']}")
    top1 = json.loads(files["metrics.json"].read_text()).get("top1")
    return {"rows": rows, "probs": scores.mean(1), "reported_top1": top1}


def compare(ref: dict, run: dict, ref_name: str, run_dir: Path) -> dict:
    paths = [r["path"] for r in ref["rows"]]
    if [r["path"] for r in run["rows"]] != paths:
        raise SystemExit(f"{run_dir}/predictions.json: not the videos of the {ref_name} run, in its order")
    ok = np.array([a["readable"] and b["readable"] for a, b in zip(ref["rows"], run["rows"])])
    if not ok.any():
        raise SystemExit(f"{run_dir}/predictions.json: no video readable in both runs")
    rows = [r for r, k in zip(run["rows"], ok) if k]
    ref_rows = [r for r, k in zip(ref["rows"], ok) if k]
    same = np.array([a["prediction"] == b["prediction"] for a, b in zip(ref_rows, rows)])
    diff = np.abs(run["probs"][ok] - ref["probs"][ok])
    ranked = np.sort(ref["probs"][ok], axis=1)
    margin = ranked[:, -1] - ranked[:, -2]
    differing = [{"path": b["path"], "label": b["label"], ref_name: a["prediction"], "prediction": b["prediction"],
                  f"{ref_name}_top1_minus_top2": round(float(m), 6)}
                 for a, b, s, m in zip(ref_rows, rows, same, margin) if not s]
    return {
        "videos": int(ok.sum()),
        "top1": float(np.mean([r["correct"] for r in rows])),
        "top1_reported": run["reported_top1"],
        f"top1_equal_to_{ref_name}": float(same.mean()),
        "videos_differing": len(differing),
        f"meets_{CRITERION:.1%}": bool(same.mean() >= CRITERION),
        "max_abs_diff_mean_softmax": float(diff.max()),
        "mean_abs_diff_mean_softmax": float(diff.mean()),
        f"{ref_name}_top1_minus_top2_median": float(np.median(margin)),
        "differing": differing,
    }


def summarise(runs: list[tuple[str, Path]]) -> dict:
    """`runs`: (name, report folder), the reference first."""
    loaded = [(name, folder, load_run(folder)) for name, folder in runs]
    ref_name, _, ref = loaded[0]
    out = {"reference": ref_name, "criterion": f"top-1 equal to {ref_name}'s on >= {CRITERION:.1%} of videos",
           "runs": {name: {"dir": str(folder), **compare(ref, run, ref_name, folder)} for name, folder, run in loaded}}
    videos = out["runs"][ref_name]["videos"]
    if videos < MIN_VIDEOS:
        out["warning"] = (f"{videos} videos: one differing video is {1 / videos:.2%}, more than the criterion's "
                          f"{1 - CRITERION:.1%}; use >= {MIN_VIDEOS} videos")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="NAME=REPORT_DIR, the reference first (e.g. fp32=runs/fp32)")
    ap.add_argument("--out", default=None, help="write the summary JSON here (also printed)")
    args = ap.parse_args(argv)
    runs = []
    for item in args.runs:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise SystemExit(f"{item!r}: expected NAME=REPORT_DIR")
        runs.append((name, Path(folder)))
    if len(runs) < 2:
        raise SystemExit("give a reference run and at least one run to compare")
    summary = summarise(runs)
    text = json.dumps(summary, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    ref = summary["reference"]
    for name, r in summary["runs"].items():
        same = r[f"top1_equal_to_{ref}"]
        print(f"{name}: top-1 {100 * r['top1']:.2f}% on {r['videos']} videos; top-1 equal to {ref}'s "
              f"on {100 * same:.2f}% ({r['videos_differing']} differ); "
              f"mean softmax max |diff| {r['max_abs_diff_mean_softmax']:.2e}", file=sys.stderr)
    if "warning" in summary:
        print("warning: " + summary["warning"], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
