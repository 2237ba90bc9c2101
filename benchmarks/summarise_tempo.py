"""Summarise a multi-seed tempo experiment (benchmarks/tempo_hard.sh) into one JSON and a plot.

    python benchmarks/summarise_tempo.py OUT --models CFG [CFG ...] --seeds 0 1 2 [--data ROOT]

Reads OUT/<model>_s<seed>/ (config.yaml, metrics.jsonl, test/metrics.json, test/predictions.csv
and test/view_scores.npy from `tpn test --view-scores tpn`) and writes OUT/summary.json and
OUT/curves.png. Per run: 30-view test top-1/top-5/mean class accuracy, the tempo-pair accuracy,
the share of tempo and direction confusions, the validation curve (1 clip) and the training
time; per model: mean and sample standard deviation (n - 1) over the seeds, and the curve's
mean and standard deviation per epoch.

Tempo-pair accuracy: for every pair of classes that differ only in tempo (`up_slow` and
`up_fast`), the share of that pair's test videos that score their own class above the other
(30-view averaged softmax), averaged over the pairs. It measures telling tempos apart alone,
whatever the model thinks of the direction.
"""
from __future__ import annotations

import argparse
import csv
import itertools
import json
from pathlib import Path

import numpy as np


def _test_scores(run: Path):
    """(class names, labels [N], 30-view averaged probabilities [N, K]) of the readable test videos."""
    import yaml

    label_map = yaml.safe_load((run / "config.yaml").read_text())["data"]["label_map"]
    names = Path(label_map).read_text().split()
    with (run / "test" / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    views = np.load(run / "test" / "view_scores.npy")  # rows in the order of predictions.csv
    ok = np.array([r["readable"] == "1" for r in rows])
    labels = np.array([names.index(r["label"]) for r in rows])
    return names, labels[ok], views[ok].mean(1)


def tempo_pairs(names: list[str]) -> list[tuple[int, int]]:
    """Index pairs of classes with the same direction and different tempos."""
    by_dir: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        by_dir.setdefault(n.rsplit("_", 1)[0], []).append(i)
    return [p for idx in by_dir.values() for p in itertools.combinations(idx, 2)]


def tempo_pair_accuracy(names, labels, probs) -> float:
    accs = []
    for a, b in tempo_pairs(names):
        sel = (labels == a) | (labels == b)
        if sel.any():
            own = np.where(labels[sel] == a, probs[sel, a], probs[sel, b])
            other = np.where(labels[sel] == a, probs[sel, b], probs[sel, a])
            accs.append(float((own > other).mean()))
    return float(np.mean(accs)) if accs else float("nan")


def summarise_run(run: Path) -> dict:
    test = json.loads((run / "test" / "metrics.json").read_text())
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    names, labels, probs = _test_scores(run)
    pred = probs.argmax(1)
    same_dir = np.array([names[p].rsplit("_", 1)[0] == names[t].rsplit("_", 1)[0] for p, t in zip(pred, labels)],
                        dtype=bool)
    same_tempo = np.array([names[p].rsplit("_", 1)[1] == names[t].rsplit("_", 1)[1] for p, t in zip(pred, labels)],
                          dtype=bool)
    wrong = pred != labels
    epochs = [r for r in recs if r.get("kind") == "epoch"]
    return {
        "test_30view": {k: test[k] for k in ("top1", "top5", "mean_class_accuracy", "videos")},
        "tempo_pair_accuracy": tempo_pair_accuracy(names, labels, probs),
        "tempo_confusions": float((wrong & same_dir).mean()),
        "direction_confusions": float((wrong & same_tempo).mean()),
        "val_curve": [{"epoch": r["epoch"], "top1": r["top1"]} for r in recs if r.get("kind") == "val"],
        "train_time_s": round(sum(r["time_s"] for r in epochs), 1),
    }


def _mean_std(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}


def summarise(out: Path, models: list[str], seeds: list[int]) -> dict:
    result = {"seeds": seeds, "runs": {}, "models": {}}
    for model in models:
        runs = {s: summarise_run(out / f"{model}_s{s}") for s in seeds}
        result["runs"][model] = {str(s): r for s, r in runs.items()}
        epochs = sorted({p["epoch"] for r in runs.values() for p in r["val_curve"]})
        curve = []
        for e in epochs:
            vals = [p["top1"] for r in runs.values() for p in r["val_curve"] if p["epoch"] == e]
            curve.append({"epoch": e, **_mean_std(vals)})
        result["models"][model] = {
            "test_top1_30view": _mean_std([r["test_30view"]["top1"] for r in runs.values()]),
            "tempo_pair_accuracy": _mean_std([r["tempo_pair_accuracy"] for r in runs.values()]),
            "tempo_confusions": _mean_std([r["tempo_confusions"] for r in runs.values()]),
            "val_top1_curve": curve,
        }
    return result


def plot_curves(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for model, m in summary["models"].items():
        e = [p["epoch"] for p in m["val_top1_curve"]]
        mu = np.array([p["mean"] for p in m["val_top1_curve"]]) * 100
        sd = np.array([p["std"] for p in m["val_top1_curve"]]) * 100
        ax.plot(e, mu, marker="o", label=f"{model} (n={len(summary['seeds'])})")
        ax.fill_between(e, mu - sd, mu + sd, alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 (1 clip), %: mean +- std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="the experiment's work dir (runs as <model>_s<seed>)")
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--seeds", nargs="+", type=int, required=True)
    ap.add_argument("--data", type=Path, default=None, help="the dataset root (its synth.json is recorded)")
    args = ap.parse_args()
    summary = summarise(args.out, args.models, args.seeds)
    if args.data and (args.data / "synth.json").is_file():
        summary["data"] = json.loads((args.data / "synth.json").read_text())
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot_curves(summary, args.out / "curves.png")
    for model, m in summary["models"].items():
        t, p = m["test_top1_30view"], m["tempo_pair_accuracy"]
        print(f"{model}: 30-view top-1 {100 * t['mean']:.2f} +- {100 * t['std']:.2f}%, "
              f"tempo-pair accuracy {100 * p['mean']:.2f} +- {100 * p['std']:.2f}% (n={t['n']})")
    print(f"wrote {args.out / 'summary.json'} and {args.out / 'curves.png'}")


if __name__ == "__main__":
    main()
