"""`tpn demo`: the whole workflow on a synthetic tempo dataset, small enough for a CPU."""
from __future__ import annotations

from pathlib import Path

from tpn.config import load_config


def run_demo(out: str | Path, quick: bool = False, device: str = "auto") -> dict:
    from tpn.data.synthetic import generate_dataset
    from tpn.engine.evaluate import run_test
    from tpn.engine.train import train

    out = Path(out)
    data = out / "data"
    classes, per_class = (4, 12) if quick else (10, 40)
    if not (data / "labels.txt").exists() or len((data / "labels.txt").read_text().split()) != classes:
        print(f"[1/3] writing {classes} classes x {per_class} synthetic mp4 videos to {data}")
        generate_dataset(data, classes=classes, videos_per_class=per_class, seed=0, workers=2)
    overrides = [f"data.root={data}", f"data.train_list={data}/train.txt", f"data.val_list={data}/val.txt",
                 f"data.test_list={data}/val.txt", f"data.label_map={data}/labels.txt",
                 f"model.head.num_classes={classes}"]
    if quick:
        overrides += ["train.epochs=2", "data.num_workers=1", "data.test_clips=2"]
    cfg = load_config("tpn_tiny_synth", overrides)
    print(f"[2/3] training {cfg.name} for {cfg.train.epochs} epochs ({'quick' if quick else 'full'} demo)")
    s = train(cfg, out / "train", device=device)
    ckpt = out / "train" / "best.pth"
    if not ckpt.exists():
        ckpt = sorted((out / "train").glob("epoch_*.pth"))[-1]
    print(f"[3/3] {cfg.data.test_clips}x{cfg.data.test_crops}-view test of {ckpt}")
    r = run_test(cfg, ckpt, out / "test", device=device, progress=False)
    m = r["metrics"]
    chance = 1 / classes
    print(f"\ndemo result: top-1 {100 * m['top1']:.1f}% (chance {100 * chance:.0f}%), top-5 {100 * m['top5']:.1f}%, "
          f"mean class accuracy {100 * m['mean_class_accuracy']:.1f}% on {m['videos']} held-out videos")
    print(f"training curves: {s.get('curves')}\nconfusion matrix: {r['paths'].get('confusion_matrix')}\n"
          f"predictions: {r['paths'].get('predictions')}")
    return {"train": s, "test": r}
