"""End-to-end training throughput from real mp4 files vs synthetic in-GPU input.

Generates Kinetics-like videos (340x256, 30 fps, 10 s, libx264 veryfast: B-frames and the
default keyframe interval 250), rewrites them with `tpn data prepare` (keyframe every 8
frames, no B-frames, fastdecode), then in one process, for TPN R50 8x8 at batch 32 (bf16 +
channels_last_3d + compile, the step of benchmarks/bench_gpu.py) and mmaction2's training
augmentation (random resized crop, flip, colour jitter), measures:
  - synthetic: clips/s of the training step on uint8 clips already on the GPU;
  - for each (data, augmentation place) setting, with the project's training loader
    (tpn.data.loader.build_loader: WORKERS persistent workers, pinned memory):
      e2e     clips/s of the step fed by the loader (after `workers` warm-up batches);
      loader  clips/s of the loader alone, timed after its prefetch queue was drained,
              so it is the workers' production rate.
Settings: original + augmentation in the workers; original + data.augment_on_device, with and
without the reader's skipping of unneeded non-reference frames (VideoReader.drop_unneeded);
prepared (one rewrite per `--gops` keyframe interval) + data.augment_on_device.
`--scaling 1,4,8,15` instead times the loader alone (prepared data, augment_on_device) at
those worker counts, with the CPU quota of the machine, to show how decoding scales.
    python benchmarks/bench_e2e.py --workers 15 --out e2e.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tpn.accel import Execution  # noqa: E402
from tpn.bench import machine_info, timed  # noqa: E402
from tpn.config import load_config  # noqa: E402
from tpn.data.datasets import build_dataset  # noqa: E402
from tpn.data.loader import build_loader  # noqa: E402
from tpn.data.prepare import prepare_list  # noqa: E402
from tpn.data.synthetic import generate_dataset  # noqa: E402
from tpn.data.transforms import apply_augment  # noqa: E402
from tpn.data.video import VideoReader  # noqa: E402
from tpn.models.build import build_model  # noqa: E402
from train_step import in_gpu_rate, make_train_step  # noqa: E402


def dataset_cfg(root: Path, on_device: bool):
    """The recipe on `root`'s big.txt (its train list repeated: long enough for warm-up + timing)."""
    return load_config("tpn_r50_8x8_k400", [
        f"data.root={root}", f"data.train_list={root}/big.txt", f"data.label_map={root}/labels.txt",
        "model.head.num_classes=10", "data.train_crop=random_resized", "data.color_jitter=true",
        f"data.augment_on_device={str(on_device).lower()}"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/tmp/e2e_videos")
    ap.add_argument("--videos", type=int, default=60)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--gops", default="8,2", help="keyframe intervals of the prepared copies")
    ap.add_argument("--scaling", default="", help="comma-separated worker counts: loader-only scaling run")
    ap.add_argument("--out", default="bench_e2e.json")
    args = ap.parse_args()
    root = Path(args.root)
    gops = [int(g) for g in args.gops.split(",")]
    prepared = {g: root / f"prepared_gop{g}" for g in gops}
    t0 = time.time()
    if not (root / "train.txt").exists():
        generate_dataset(root, classes=10, videos_per_class=args.videos // 10, size=(340, 256), frames=300,
                         workers=args.workers + 1, val_fraction=0.1, preset="veryfast")
    gen_s = time.time() - t0
    t0 = time.time()
    for g, out in prepared.items():
        if not (out / "train.txt").exists():
            prepare_list(root / "train.txt", str(root), out, gop=g, workers=args.workers + 1, progress=False)
            (out / "labels.txt").write_text((root / "labels.txt").read_text())
    prep_s = time.time() - t0
    for d in (root, *prepared.values()):
        lines = (d / "train.txt").read_text().splitlines()
        (d / "big.txt").write_text("\n".join(lines * 100) + "\n")
    size = lambda d: sum(p.stat().st_size for p in (d / "videos").rglob("*.mp4")) / 2**20  # noqa: E731
    if args.scaling:
        return scaling(prepared, args)

    torch.backends.cudnn.benchmark = True
    cfg = dataset_cfg(root, False)
    model = build_model(cfg).cuda().train()
    step = make_train_step(model, cfg.data.mean, cfg.data.std, Execution(torch.bfloat16, True, True), cfg.train)
    n_train = len((root / "train.txt").read_text().splitlines())
    res = dict(machine=machine_info(), cpu_workers=args.workers, batch=args.batch, train_videos=n_train,
               video="340x256 30fps 300 frames, libx264 veryfast (B-frames) GOP 250; prepared: tpn data prepare",
               augmentation="random resized crop 224, flip 0.5, colour jitter 0.4/0.4/0.4",
               generate_s=round(gen_s, 1), prepare_s=round(prep_s, 1), original_mb=round(size(root), 1),
               **{f"prepared_gop{g}_mb": round(size(d), 1) for g, d in prepared.items()})

    res["synthetic_clips_per_s"] = in_gpu_rate(step, args.batch, args.steps)
    print(json.dumps(res), flush=True)

    def feed(batch):
        x, y = batch.clip.cuda(non_blocking=True), batch.label.cuda(non_blocking=True)
        if batch.aug is not None:
            x = apply_augment(x, batch.aug)  # a CPU tensor: no device sync
        return step(x, y)

    res["settings"] = []
    settings = [("original, augmentation in workers", root, False, True),
                ("original, data.augment_on_device, every packet decoded", root, True, False),
                ("original, data.augment_on_device", root, True, True)]
    settings += [(f"prepared gop {g}, data.augment_on_device", d, True, True) for g, d in prepared.items()]
    for name, data_root, on_device, drop in settings:
        VideoReader.drop_unneeded = drop  # before the workers fork: they inherit it
        cfg = dataset_cfg(data_root, on_device)
        loader = build_loader(build_dataset(cfg.data, "train"), args.batch, args.workers, shuffle=True,
                              drop_last=True, seed=0)
        it = iter(loader)
        # warm-up: every worker has delivered its first batch
        e2e = args.batch * args.steps / timed(lambda: feed(next(it)), args.steps, args.workers, device="cuda")
        # after draining what was prefetched while the step ran
        alone = args.batch * args.steps / timed(lambda: next(it), args.steps, args.workers * 2)
        del it, loader
        rec = dict(setting=name, e2e_clips_per_s=round(e2e, 1), loader_clips_per_s=round(alone, 1),
                   e2e_over_synthetic=round(e2e / res["synthetic_clips_per_s"], 3),
                   loader_over_synthetic=round(alone / res["synthetic_clips_per_s"], 3))
        res["settings"].append(rec)
        print(json.dumps(rec), flush=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


def scaling(prepared: dict, args) -> None:
    """Loader-alone clips/s at several worker counts (no GPU work)."""
    res = dict(machine=machine_info(), batch=args.batch, setting="prepared, data.augment_on_device", runs=[])
    for (g, root), w in ((g, int(v)) for g in prepared.items() for v in args.scaling.split(",")):
        cfg = dataset_cfg(root, True)
        loader = build_loader(build_dataset(cfg.data, "train"), args.batch, w, shuffle=True, drop_last=True,
                              seed=0, pin_memory=False)
        it = iter(loader)
        n = max(10, 2 * w)
        rate = args.batch * n / timed(lambda: next(it), n, warmup=max(w, 1) * 2 + 1)
        del it, loader
        res["runs"].append(dict(gop=g, workers=w, loader_clips_per_s=round(rate, 1),
                                per_worker=round(rate / max(w, 1), 1)))
        print(json.dumps(res["runs"][-1]), flush=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
