"""Summarise the tempo experiment: accuracy, and which confusions each model makes.

    python benchmarks/tempo_summary.py WORK_DIR CONFIG [CONFIG ...] > summary.json

A "tempo confusion" is a test video predicted as the right direction at the wrong tempo;
a "direction confusion" the right tempo in the wrong direction.
"""
import json
import sys
from pathlib import Path


def summarise(work: Path, name: str) -> dict:
    run = work / name
    test = json.loads((run / "test" / "metrics.json").read_text())
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    val = [r for r in recs if r.get("kind") == "val"]
    epochs = [r for r in recs if r.get("kind") == "epoch"]
    rows = (run / "test" / "predictions.csv").read_text().splitlines()[1:]
    tempo = direction = both = correct = 0
    for row in rows:
        _, _, label, pred, _, ok = row.split(",")
        if ok != "1":
            continue
        (ld, lt), (pd, pt) = label.rsplit("_", 1), pred.rsplit("_", 1)
        if label == pred:
            correct += 1
        elif ld == pd:
            tempo += 1
        elif lt == pt:
            direction += 1
        else:
            both += 1
    n = max(1, correct + tempo + direction + both)
    per_tempo = {}
    for cls, acc in test["per_class_accuracy"].items():
        per_tempo.setdefault(cls.rsplit("_", 1)[1], []).append(acc)
    return {
        "config": name,
        "test_30view": {k: test[k] for k in ("top1", "top5", "mean_class_accuracy", "videos")},
        "val_1clip_last": {k: val[-1][k] for k in ("top1", "top5", "mean_class_accuracy")} if val else None,
        "val_1clip_best_top1": max((r["top1"] for r in val), default=None),
        "test_error_breakdown": {"tempo_confusions": tempo / n, "direction_confusions": direction / n,
                                 "both_wrong": both / n},
        "test_accuracy_by_tempo": {t: sum(v) / len(v) for t, v in per_tempo.items()},
        "epochs": len(epochs),
        "train_clips_per_s": sum(r["clips_per_s"] for r in epochs) / max(1, len(epochs)),
    }


if __name__ == "__main__":
    work = Path(sys.argv[1])
    print(json.dumps([summarise(work, n) for n in sys.argv[2:]], indent=1))
