"""`tpn demo`: the whole workflow on a synthetic tempo dataset, small enough for a CPU.

Four classes (right/left x slow/fast) whose single frames look alike: a model has to see
motion and its tempo. The full demo trains `tpn_tiny_synth` (or with `--model tsm`
`tpn_tsm_tiny_synth`, on the same videos written as raw jpg frames) for a few CPU minutes;
`--quick` is a smoke run (under a minute) that only shows the workflow. The multi-view test
(10 x 3 views; 2 x 3 for TSM and for `--quick`) runs
on a held-out split written from its own seed, used neither for training nor for picking
`best.pth` (validation does that).
"""
from __future__ import annotations

import time
from pathlib import Path

from tpn.config import load_config


# per demo model: its config, the layout its synthetic data is written in, and what that is
MODELS = {"tpn": ("tpn_tiny_synth", "mp4", "mp4 videos"),
          "tsm": ("tpn_tsm_tiny_synth", "sthv1", "videos as Something-Something V1 jpg frames")}


def write_data(data: Path, classes: int, per_class: int, layout: str = "mp4", what: str = "mp4 videos") -> None:
    """Train and validation videos (`train.txt`, `val.txt`), and a test split (`test.txt`) of a
    fifth as many videos a class from another seed, in `test_set/`: held out from both."""
    from tpn.data.synthetic import generate_dataset

    if (data / "test.txt").exists() and len((data / "labels.txt").read_text().split()) == classes:
        return
    print(f"[1/3] writing {classes} classes x {per_class} synthetic {what} and a held-out test split to {data}",
          flush=True)
    generate_dataset(data, classes=classes, videos_per_class=per_class, size=(96, 72), seed=0, workers=2,
                     layout=layout)
    generate_dataset(data / "test_set", classes=classes, videos_per_class=per_class // 5, size=(96, 72), seed=1,
                     workers=2, layout=layout)
    lines = [x for name in ("train.txt", "val.txt") for x in (data / "test_set" / name).read_text().splitlines()]
    (data / "test.txt").write_text("".join(f"test_set/{x}\n" for x in lines))


def run_demo(out: str | Path, quick: bool = False, device: str = "auto", model: str = "tpn") -> dict:
    from tpn.engine.evaluate import run_test
    from tpn.engine.train import train

    t0 = time.time()
    out = Path(out)
    config, layout, what = MODELS[model]
    classes, per_class = (4, 10) if quick else (4, 50)
    data = out / (("data_quick" if quick else "data") + ("" if layout == "mp4" else f"_{layout}"))
    write_data(data, classes, per_class, layout, what)
    overrides = [f"data.root={data}", f"data.train_list={data}/train.txt", f"data.val_list={data}/val.txt",
                 f"data.test_list={data}/test.txt", f"data.label_map={data}/labels.txt",
                 f"model.head.num_classes={classes}"]
    if quick:
        overrides += ["train.epochs=2", "train.warmup_epochs=0", "data.num_workers=1", "data.test_clips=2",
                      "train.log_interval=2"]
    cfg = load_config(config, overrides)
    suffix = "" if model == "tpn" else f"_{model}"
    run = out / (("train_quick" if quick else "train") + suffix)
    print(f"[2/3] training {cfg.name} for {cfg.train.epochs} epochs ({'quick' if quick else 'full'} demo) "
          f"in {run}", flush=True)
    s = train(cfg, run, device=device, overwrite=True)  # each demo run starts afresh
    ckpt = run / "best.pth"
    if not ckpt.exists():
        ckpt = sorted(run.glob("epoch_*.pth"))[-1]
    print(f"[3/3] {cfg.data.test_clips}x{cfg.data.test_crops}-view test of {ckpt}", flush=True)
    r = run_test(cfg, ckpt, out / (("test_quick" if quick else "test") + suffix), device=device, progress=False)
    m = r["metrics"]
    print(f"\ndemo result: top-1 {100 * m['top1']:.1f}% (chance {100 / classes:.0f}%), top-5 {100 * m['top5']:.1f}%, "
          f"mean class accuracy {100 * m['mean_class_accuracy']:.1f}% on the {m['videos']} videos of the held-out "
          f"test split (used neither for training nor for picking {ckpt.name}) "
          f"({time.time() - t0:.0f} s in all)")
    print(f"training curves:  {s.get('curves')}\nconfusion matrix: {r['paths'].get('confusion_matrix')}\n"
          f"predictions:      {r['paths'].get('predictions')}\nmetrics:          {r['paths'].get('metrics')}, "
          f"{run / 'metrics.jsonl'}")
    return {"train": s, "test": r}
