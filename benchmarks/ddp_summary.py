"""Summarise benchmarks/bench_ddp.sh: loss-curve agreement and test equality (`correct`), or
clips/s of one GPU against N (`scale`). Writes ddp_correct.json / ddp_scale.json in the out folder."""
from __future__ import annotations

import csv
import json
import re
import statistics
import sys
from pathlib import Path


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def curve_gap(a: list[float], b: list[float]) -> dict:
    rel = [abs(x - y) / abs(x) for x, y in zip(a, b)]
    return {"steps": len(rel), "max_rel": round(max(rel), 4), "mean_rel": round(statistics.mean(rel), 4),
            "final_a": round(a[-1], 4), "final_b": round(b[-1], 4)}


def correct(out: Path) -> dict:
    runs = {k: losses(out / k) for k in ("one_a", "one_b", "two", "two_sync")}
    rows = {k: list(csv.DictReader((out / k / "predictions.csv").open())) for k in ("test_one", "test_two")}
    keys = [c for c in rows["test_one"][0] if c not in ("score",)]
    same_rows = [{c: r[c] for c in keys} for r in rows["test_one"]] == [{c: r[c] for c in keys} for r in rows["test_two"]]
    score_gap = max(abs(float(a["score"] or 0) - float(b["score"] or 0)) for a, b in zip(*rows.values()))
    mets = [json.loads((out / k / "metrics.json").read_text()) for k in ("test_one", "test_two")]
    drop = ("seconds", "videos_per_s", "time_s")
    same_metrics = {k: v for k, v in mets[0].items() if k not in drop} == {k: v for k, v in mets[1].items() if k not in drop}
    return {"loss_curves": {"one_a": runs["one_a"], "one_b": runs["one_b"], "two": runs["two"], "two_sync": runs["two_sync"]},
            "gap_1gpu_rerun": curve_gap(runs["one_a"], runs["one_b"]),
            "gap_2gpu_vs_1gpu": curve_gap(runs["one_a"], runs["two"]),
            "gap_2gpu_syncbn_vs_1gpu": curve_gap(runs["one_a"], runs["two_sync"]),
            "test": {"videos": len(rows["test_one"]), "rows_equal_except_score": same_rows,
                     "max_score_diff": score_gap, "metrics_equal": same_metrics,
                     "top1": [m.get("top1") for m in mets]}}


def windows(log: Path) -> list[float]:
    pat = r"iter \d+/\d+ loss \S+ lr \S+ ([\d.]+) clips/s"
    return [float(m.group(1)) for m in re.finditer(pat, log.read_text())]


def scale(out: Path, n: int, workers: int, batch: int) -> dict:
    step = {k: json.loads((out / f"step_{k}.json").read_text()) for k in (1, n)}
    res = {"machine": step[1]["machine"], "gpus": n, "batch_per_gpu": batch, "loader_workers_per_process": workers,
           "in_gpu_step": {"clips_per_s_1": step[1]["clips_per_s"], f"clips_per_s_{n}": step[n]["clips_per_s"],
                           "scaling": round(step[n]["clips_per_s"] / step[1]["clips_per_s"], 3)}}
    e2e = {}
    for k in (1, n):
        w = windows(out / f"e2e_{k}.log")
        steady = w[3:] if len(w) > 5 else w[1:]  # the first windows hold compilation and warm-up
        e2e[k] = {"windows": w, "steady_mean": round(statistics.mean(steady), 1) if steady else None,
                  "steady_min": min(steady, default=None), "steady_max": max(steady, default=None),
                  "steady_cv": round(statistics.pstdev(steady) / statistics.mean(steady), 3) if len(steady) > 1 else None}
    res["tpn_train_from_prepared_mp4"] = {"1": e2e[1], str(n): e2e[n],
                                          "scaling": round(e2e[n]["steady_mean"] / e2e[1]["steady_mean"], 3)
                                          if e2e[1]["steady_mean"] and e2e[n]["steady_mean"] else None}
    return res


if __name__ == "__main__":
    out = Path(sys.argv[2])
    if sys.argv[1] == "correct":
        res, name = correct(out), "ddp_correct.json"
    else:
        res, name = scale(out, int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])), "ddp_scale.json"
    (out / name).write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "loss_curves"}, indent=1))
