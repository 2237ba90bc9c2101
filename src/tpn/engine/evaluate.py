"""Validation (1 clip, centre crop) and multi-view testing (softmax averaged over views).

Batches come from `tpn.data.datasets`: val items carry one clip, test items V views
(clips x crops). Each rank evaluates its own shard without padding and rank 0 gathers
exactly one result per video. Broken videos (ok=False) are excluded and listed.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from tpn.accel import execution, make_eval_forward
from tpn.convert.weights import load_weights
from tpn.data.datasets import build_dataset
from tpn.data.labels import resolve_num_classes
from tpn.data.loader import build_loader
from tpn.data.transforms import view_order
from tpn.engine import distributed as D
from tpn.engine.distributed import Dist, ShardedSampler, gather_objects
from tpn.engine.report import most_confused, plot_confusion
from tpn.engine.tempo import parse_tempos, plot_tempo, report_speed, tempo_row
from tpn.errors import TpnError, csv_text, listing, writable_dir, write_text_atomic
from tpn.models.build import build_model
from tpn.options import parse_pair

log = logging.getLogger("tpn.test")


def make_eval_loader(dataset, d: Dist, batch_size: int, workers: int) -> DataLoader:
    """This rank's shard, in order, every video once (no padding).

    The loader takes its one random draw (the workers' base seed) from the global RNG: a run
    that validates between epochs then trains on the same random stream as one built on plain
    DataLoaders, so its numbers stay comparable with earlier runs.
    """
    sampler = ShardedSampler(len(dataset), d.rank, d.world, shuffle=False)
    return build_loader(dataset, batch_size, workers, sampler=sampler, pin_memory=d.device.type == "cuda",
                        persistent_workers=False, seed=None)


# Batches whose scores stay on the device before one read-back: a read-back waits for the GPU, so
# doing it after every batch would leave the GPU idle while the next batch is fetched and copied.
PENDING = 8


@torch.no_grad()
def predict_probs(forward, loader, d: Dist, progress: bool = False, per_view: dict | None = None,
                  stop=None) -> dict[int, tuple[np.ndarray, int, bool]]:
    """{dataset index: (class probabilities averaged over views, label, ok)} on rank 0 (all ranks' shards).
    `per_view`, when given, is filled with {dataset index: probabilities per view [V, classes]}.
    `stop`, when given, is asked before each batch (this rank's own answer, no collective): True
    ends this rank's loop early and the result is partial (the caller decides with every rank)."""
    out, views_out = {}, {}
    it = loader
    if progress and d.main and sys.stderr.isatty():  # a bar on a terminal; nothing in a log file
        from tqdm import tqdm

        it = tqdm(loader, desc="test", unit="batch", dynamic_ncols=True)
    pending = []  # results still on the device: read back every PENDING batches, not after each

    def read_back():
        for view_probs, labels, index, ok in pending:
            vp = view_probs.cpu().numpy()
            for i in range(vp.shape[0]):
                out[int(index[i])] = (vp[i].mean(0), int(labels[i]), bool(ok[i]))
                if per_view is not None:
                    views_out[int(index[i])] = vp[i]
        pending.clear()

    for batch in it:
        if stop is not None and stop():
            break
        x = batch.clip.to(d.device, non_blocking=True)
        views = x.shape[1] if x.dim() == 6 else 1
        flat = x.flatten(0, 1) if x.dim() == 6 else x
        logits = forward(flat).float()
        pending.append((F.softmax(logits, dim=-1).view(x.shape[0], views, -1), batch.label, batch.index, batch.ok))
        if len(pending) >= PENDING:
            read_back()
    read_back()
    merged = {}
    for part, part_views in gather_objects((out, views_out), d):
        merged.update(part)
        if per_view is not None:
            per_view.update(part_views)
    return merged


def metrics(results: dict[int, tuple[np.ndarray, int, bool]], num_classes: int) -> dict:
    valid = sorted(i for i, (_, _, ok) in results.items() if ok)
    if not valid:
        return {"videos": 0, "skipped": len(results), "top1": 0.0, "top5": 0.0, "mean_class_accuracy": 0.0}
    probs = np.stack([results[i][0] for i in valid])
    labels = np.array([results[i][1] for i in valid])
    order = np.argsort(-probs, axis=1)
    top1 = order[:, 0] == labels
    top5 = (order[:, : min(5, num_classes)] == labels[:, None]).any(1)
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(conf, (labels, order[:, 0]), 1)
    per_class = {}
    for c in range(num_classes):
        n = int((labels == c).sum())
        if n:
            per_class[c] = float(conf[c, c] / n)
    return {
        "videos": len(valid),
        "skipped": len(results) - len(valid),
        "top1": float(top1.mean()),
        "top5": float(top5.mean()),
        "mean_class_accuracy": float(np.mean(list(per_class.values()))),
        "per_class_accuracy": per_class,
        "confusion": conf.tolist(),
    }


def unreadable_reasons(report_path: Path) -> dict[str, str]:
    """{video path: why it could not be read} from the dataset's report lines (the last line of a
    path wins: the file is appended to across runs, this run's lines come last)."""
    reasons = {}
    if report_path.is_file():
        for line in report_path.read_text().splitlines():
            try:
                rec = json.loads(line)
                path, error = rec["path"], rec["error"]
            except (ValueError, KeyError, TypeError):
                continue
            reasons[path] = error[len(path) + 2:] if error.startswith(f"{path}: ") else error
    return reasons


def prediction_rows(results: dict, dataset, names: list[str], reasons: dict[str, str]) -> list[dict]:
    """One row per video: `readable` (the video decoded) and, only then, the top-5, the
    prediction and `correct` (top-1 == label); an unreadable video has no prediction, only its error."""
    rows = []
    for i, (p, label, ok) in sorted(results.items()):
        path = dataset.path(i)
        row = {"index": i, "path": path, "label": names[label], "readable": ok}
        if ok:
            top = np.argsort(-p)[:5]
            row.update(prediction=names[int(top[0])], score=round(float(p[top[0]]), 6), correct=bool(top[0] == label),
                       error="", top5=[{"label": names[int(c)], "score": round(float(p[c]), 6)} for c in top])
        else:
            row.update(prediction=None, score=None, correct=None, top5=[],
                       error=reasons.get(path, "unreadable (no reason recorded)"))
        rows.append(row)
    return rows


CSV_COLUMNS = ("index", "path", "label", "readable", "prediction", "score", "correct", "error")
# a spreadsheet reads a cell that starts with one of these as a formula: such text gets a leading '
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A predictions.csv cell: booleans as 1/0, None empty, text that a spreadsheet would run as a
    formula (a path or class name starting with = + - @) prefixed with a single quote."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_test_report(out_dir: Path, results: dict, m: dict, dataset, label_names: list[str] | None,
                      reasons: dict[str, str] | None = None, extra: dict | None = None) -> dict:
    """metrics.json, predictions.csv and .json (top-5 per video), confusion_matrix.png; returns the paths.

    CSV: a real CSV (quoted where a field needs it); booleans as 1/0; the fields an unreadable
    video does not have (prediction, score, correct) are empty and `error` says why; text that
    would start a spreadsheet formula gets a leading ' (`csv_cell`; predictions.json keeps it as is)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = label_names or [str(i) for i in range(len(m.get("confusion", [])))]
    rows = prediction_rows(results, dataset, names, reasons or {})
    summary = {k: v for k, v in m.items() if k != "confusion"}
    summary["per_class_accuracy"] = {names[int(c)]: a for c, a in m.get("per_class_accuracy", {}).items()}
    summary["skipped_videos"] = [{"path": r["path"], "error": r["error"]} for r in rows if not r["readable"]]
    if m.get("confusion"):
        summary["most_confused"] = most_confused(np.array(m["confusion"]), names)
    summary.update(extra or {})
    # each file whole or not at all (a full disk leaves no empty or partial report)
    write_text_atomic(out_dir / "metrics.json", json.dumps(summary, indent=1))
    write_text_atomic(out_dir / "predictions.csv", csv_text([CSV_COLUMNS] + [[csv_cell(r[k]) for k in CSV_COLUMNS]
                                                                            for r in rows]))
    write_text_atomic(out_dir / "predictions.json", json.dumps(rows, indent=1))
    paths = {"metrics": str(out_dir / "metrics.json"), "predictions": str(out_dir / "predictions.csv"),
             "predictions_json": str(out_dir / "predictions.json")}
    if m.get("confusion"):
        paths["confusion_matrix"] = str(plot_confusion(np.array(m["confusion"]), names, out_dir / "confusion_matrix.png"))
    return paths


def parse_views(views: str) -> tuple[int, int]:
    clips, crops = parse_pair(views, "--views", "CLIPSxCROPS", "10x3")
    if not 1 <= clips <= 100 or crops not in (1, 3):
        raise TpnError(f"--views {views!r}: clips must be 1 to 100 and crops 1 or 3")
    return clips, crops


def with_views(cfg, views: str | None):
    """`cfg` with the test views set from a CLIPSxCROPS string such as "10x3" (None: unchanged)."""
    if views is None:
        return cfg
    clips, crops = parse_views(views)
    return replace(cfg, data=replace(cfg.data, test_clips=clips, test_crops=crops))


def inference_forward(cfg, checkpoint, device: torch.device, compile_model: bool = True):
    """(fn(x_uint8 views) -> logits, load info) for `checkpoint` on `device`, with the config's
    GPU execution (`tpn.accel.execution`) in the autocast dtype of `test.precision` and BatchNorm
    folded per `test.fold_bn`."""
    model = build_model(cfg)
    info = load_weights(model, checkpoint)
    model = model.to(device).eval()
    ex = execution(cfg.train, device, compile_model, precision=cfg.test.precision)
    ex = replace(ex, gemm_tuning=cfg.test.gemm_tuning and bool(ex.compile))
    forward = make_eval_forward(model, cfg.data.mean, cfg.data.std, ex, fold_bn=cfg.test.fold_bn)
    return forward, info


def checkpoint_label_order(dataset, checkpoint_names: list[str] | None, label_map: str,
                           checkpoint) -> list[str] | None:
    """The class names to score with. A checkpoint that carries its classes (`label_names`) numbers
    them in its own order: a label map of the same names in another order is renumbered to it
    (scored as trained, not near 0%); other names are a one-line error before any video is read."""
    names = dataset.label_names
    if checkpoint_names is None or names is None or names == checkpoint_names:
        return names or checkpoint_names
    if sorted(names) != sorted(checkpoint_names):
        only_map = [n for n in names if n not in set(checkpoint_names)]
        only_ckpt = [n for n in checkpoint_names if n not in set(names)]
        raise TpnError(f"{label_map}: not the classes the checkpoint {checkpoint} was trained with (only in the "
                       f"label map: {listing(only_map, 3) or 'none'}; only in the checkpoint: "
                       f"{listing(only_ckpt, 3) or 'none'}); test with the label map it was trained with")
    log.warning("%s: the classes of %s in another order: scored in the checkpoint's order", label_map, checkpoint)
    dataset.relabel(checkpoint_names)
    return dataset.label_names


def write_view_scores(path: Path, per_view: dict, results: dict, order: list[int]) -> Path:
    """view_scores.npy: softmax per view [videos, views, classes] (float32), videos in dataset
    order (as predictions.csv), views in `order`; rows of unreadable videos are NaN."""
    rows = [per_view[i][order] if results[i][2] else np.full_like(per_view[i], np.nan) for i in sorted(per_view)]
    np.save(path, np.stack(rows).astype(np.float32))
    return path


def evaluate_at_speeds(forward, dataset, d: Dist, cfg, speeds, progress: bool, per_view: dict | None):
    """(results, seconds) of the report's speed (`tempo.report_speed`), one `tempo_row` per speed and
    {speed: results}: the test once per playback speed, the dataset's plans re-sampled at each
    (`Planner.with_tempo`)."""
    base, keep, rows, by_speed = dataset.planner, report_speed(speeds), [], {}
    planners = [base.with_tempo(s) for s in speeds]  # dense sampling only: a one-line error before any video
    try:
        for s, planner in zip(speeds, planners):
            dataset.planner = planner
            t0 = time.time()
            loader = make_eval_loader(dataset, d, cfg.test.batch_size, cfg.data.num_workers)
            r = predict_probs(forward, loader, d, progress=progress, per_view=per_view if s == keep else None)
            seconds = time.time() - t0
            rows.append(tempo_row(s, metrics(r, cfg.model.head.num_classes), seconds))
            by_speed[s] = r
            if s == keep:
                results, elapsed = r, seconds
    finally:
        dataset.planner = base
    return results, elapsed, rows, by_speed


def write_tempo_predictions(path: Path, by_speed: dict, dataset, names: list[str], reasons: dict) -> Path:
    """predictions_by_tempo.csv: predictions.csv's columns for every video at every speed, `speed` first."""
    write_text_atomic(path, csv_text([["speed", *CSV_COLUMNS]] + [
        [float(s), *(csv_cell(row[k]) for k in CSV_COLUMNS)]
        for s, r in by_speed.items() for row in prediction_rows(r, dataset, names, reasons)]))
    return path


def run_test(cfg, checkpoint, out_dir, views: str | None = None, device: str = "auto", progress: bool = True,
             view_scores: str | None = None, tempo: str | None = None) -> dict:
    """The multi-view test of `checkpoint` on `cfg.data.test_list`; rank 0 writes the report, and with
    `view_scores` ("tpn" or "mmaction2", the view order) the scores of every view. `tempo` ("0.5,1,2"):
    the test at each playback speed (`tpn.engine.tempo`); the report is of speed 1 (else the first)."""
    speeds = parse_tempos(tempo) if tempo is not None else None
    d = D.setup(device)
    cfg = resolve_num_classes(with_views(cfg, views), ("test",))
    out_dir = Path(out_dir)
    if d.main:
        writable_dir(out_dir, "--work-dir")
    forward, info = inference_forward(cfg, checkpoint, d.device)
    report_path = out_dir / "bad_videos.jsonl"
    dataset = build_dataset(cfg.data, "test", report_path=report_path)
    names = checkpoint_label_order(dataset, info.get("label_names"), cfg.data.label_map, checkpoint)
    per_view = {} if view_scores else None
    rows, extra = None, None
    if speeds is None:
        loader = make_eval_loader(dataset, d, cfg.test.batch_size, cfg.data.num_workers)
        t0 = time.time()
        results = predict_probs(forward, loader, d, progress=progress, per_view=per_view)
        elapsed = time.time() - t0
    else:
        results, elapsed, rows, by_speed = evaluate_at_speeds(forward, dataset, d, cfg, speeds, progress, per_view)
        extra = {"tempo": {"report_speed": float(report_speed(speeds)), "speeds": rows}}
    m = metrics(results, cfg.model.head.num_classes)
    paths = {}
    if d.main:
        reasons = unreadable_reasons(report_path)
        paths = write_test_report(out_dir, results, m, dataset, names, reasons, extra)
        if rows:
            paths["tempo_plot"] = str(plot_tempo(rows, out_dir / "accuracy_vs_tempo.png"))
            paths["tempo_predictions"] = str(write_tempo_predictions(out_dir / "predictions_by_tempo.csv", by_speed,
                                                                     dataset, names, reasons))
    if d.main and results and not m["videos"]:
        raise TpnError(f"{cfg.data.test_list}: none of its {len(results)} videos could be read (why: "
                       f"{paths['predictions']}, {report_path})")
    if d.main and view_scores:
        order = view_order(cfg.data.test_clips, cfg.data.test_crops, view_scores)
        paths["view_scores"] = str(write_view_scores(out_dir / "view_scores.npy", per_view, results, order))
    return {"metrics": m, "paths": paths, "videos_per_s": len(results) / max(elapsed, 1e-9), "seconds": elapsed,
            "views": f"{cfg.data.test_clips}x{cfg.data.test_crops}", "tempo": rows}
