"""Training-clip rates of the decoding paths (`data.decoder`), loader alone and feeding the train step.

    python benchmarks/bench_nvdec.py --workers 15 --out nvdec.json

Needs a CUDA GPU, PyAV and PyNvVideoCodec. Makes Kinetics-like originals with the project's
generator (default 340x256, 10 s at 30 fps, x264 preset medium: B-pyramid, keyframe every 250;
`--codec hevc` for x265 medium), then for the recipe's augmentation (random resized crop 224,
flip, colour jitter; flip/jitter on the device) at batch 32:
  gpu_only   clips/s of the GPU decoder pool alone on ready jobs (1, 2, 4, 8 threads)
  calibrate  what `data.decoder: auto` measures at the start of a run, and its choice
  loader     for pyav, nvdec, hybrid (calibrated share): clips/s of the training loader with its
             workers (+ the GPU decoding stage), each batch on the GPU, after the prefetch queue
             was drained: the production rate
  e2e        the same, each batch fed to the bf16 compiled train step (benchmarks/train_step.py),
             and the step alone on clips already on the GPU
One JSON object (machine, settings, results) to --out, lines on stdout as they come.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tpn.accel import Execution  # noqa: E402
from tpn.bench import machine_info, timed  # noqa: E402
from tpn.config import load_config  # noqa: E402
from tpn.data import nvdec  # noqa: E402
from tpn.data.datasets import build_dataset  # noqa: E402
from tpn.data.loader import build_loader  # noqa: E402
from tpn.data.synthetic import generate_dataset  # noqa: E402
from tpn.data.transforms import apply_augment  # noqa: E402
from tpn.engine import decoding  # noqa: E402


def make_videos(root: Path, videos: int, size, codec: str, workers: int) -> None:
    if (root / "train.txt").exists():
        return
    generate_dataset(root, classes=10, videos_per_class=max(1, videos // 10), size=size, frames=300,
                     workers=workers, val_fraction=0.1, preset="medium")
    if codec == "hevc":  # the same pictures through x265
        from tpn.data.synthetic import write_mp4
        from tpn.data.video import read_all_frames

        for line in (root / "train.txt").read_text().splitlines():
            path = root / line.rsplit(" ", 1)[0]
            write_mp4(path, read_all_frames(path), preset="medium", codec="hevc")
    lines = (root / "train.txt").read_text().splitlines()
    (root / "big.txt").write_text("\n".join(lines * 200) + "\n")


def recipe(root: Path, decoder: str, share=None):
    sets = [f"data.root={root}", f"data.train_list={root}/big.txt", f"data.label_map={root}/labels.txt",
            "model.head.num_classes=10", "data.train_crop=random_resized", "data.color_jitter=true",
            "data.augment_on_device=true", f"data.decoder={decoder}"]
    if share is not None:
        sets.append(f"data.nvdec_share={share}")
    return load_config("tpn_r50_8x8_k400", sets)


def emit(res: dict, key: str, value, out: Path) -> None:
    res[key] = value
    print(json.dumps({key: value}), flush=True)
    out.write_text(json.dumps(res, indent=1))


def gpu_only(root: Path, threads_list, clips: int) -> dict:
    """Clips/s of one decode process alone on ready jobs (finished clips on the GPU), per thread count."""
    import numpy as np

    cfg = recipe(root, "nvdec").data
    ds = build_dataset(cfg, "train")
    reader = nvdec.PacketReader(cfg.max_frame_pixels, cfg.short_side)
    jobs = [(s, ds.read(s, decoder=reader, rng=np.random.default_rng(s))[1]) for s in range(clips)]
    out = dict(packets_per_clip=round(float(np.mean([len(j.frames) for _, j in jobs])), 1))
    for n in threads_list:
        process = nvdec.DecodeProcess(torch.device("cuda"), "nvdec", n)
        dt = timed(lambda: process.decode(jobs), 3, warmup=1, device="cuda")
        out[f"threads_{n}_clips_per_s"] = round(3 * len(jobs) / dt, 1)
        process.close()
    return out


def run_loader(root: Path, decoder: str, args, step=None, share=None) -> dict:
    cfg = recipe(root, decoder, share)
    dev = torch.device("cuda")
    notes = []
    note = lambda fmt, *a: notes.append(fmt % a)  # noqa: E731
    setup = decoding.plan_decoding(cfg.data, dev, note)
    ds = build_dataset(cfg.data, "train", decoder=setup.decoder)
    stage = decoding.build_stage(setup, ds, replace(cfg.data, nvdec_threads=args.threads), dev, args.workers,
                                 args.batch, in_flight=args.workers * 4 + 4, log_choice=note)
    loader = build_loader(ds, args.batch, args.workers, shuffle=True, drop_last=True, seed=0, prefetch_factor=4)
    batches = stage.epoch(loader) if stage is not None else iter(loader)

    def take(feed: bool):
        b = next(batches)
        x = b.clip.to(dev, non_blocking=True)
        if b.aug is not None:
            x = apply_augment(x, b.aug)
        if feed:
            step(x, b.label.to(dev, non_blocking=True))
        return x

    for _ in range(args.workers + 2):  # every worker has delivered
        take(step is not None)
    rec = dict(decoder=decoder, share=round(float(setup.share[0]), 3) if setup.share is not None else 0.0,
               choice=notes)
    if step is not None:
        rec["e2e_clips_per_s"] = round(args.batch * args.steps / timed(lambda: take(True), args.steps, device=dev), 1)
    # after draining the prefetched batches
    dt = timed(lambda: take(False), args.steps, warmup=args.workers * 4 + 2, device=dev)
    rec["loader_clips_per_s"] = round(args.batch * args.steps / dt, 1)
    if stage is not None:
        rec["stage"] = stage.stats()
        stage.close()
    del batches, loader
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="work_dirs/bench_nvdec")
    ap.add_argument("--size", default="340x256")
    ap.add_argument("--codec", default="h264", choices=("h264", "hevc"))
    ap.add_argument("--videos", type=int, default=60)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--decoders", default="pyav,nvdec,hybrid")
    ap.add_argument("--e2e", action="store_true", help="also feed the bf16 compiled train step")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    root = Path(args.root) / f"{args.codec}_{args.size}"
    res = dict(machine=machine_info(packages=("PyNvVideoCodec",)), workers=args.workers, threads=args.threads,
               batch=args.batch,
               video=f"{args.size} 30 fps 300 frames, {args.codec} preset medium (B-frames, keyframe every 250)",
               augmentation="random resized crop 224, flip 0.5, colour jitter (flip/jitter on the GPU)")
    t0 = time.time()
    make_videos(root, args.videos, (w, h), args.codec, args.workers + 1)
    emit(res, "make_s", round(time.time() - t0, 1), args.out)
    emit(res, "gpu_only", gpu_only(root, (1, 2, 4, 8), 64), args.out)
    step = None
    if args.e2e:
        from train_step import in_gpu_rate, make_train_step

        from tpn.models.build import build_model
        cfg = recipe(root, "pyav")
        torch.backends.cudnn.benchmark = True
        model = build_model(cfg).cuda().train()
        step = make_train_step(model, cfg.data.mean, cfg.data.std, Execution(torch.bfloat16, True, True), cfg.train)
        emit(res, "step_clips_per_s", round(in_gpu_rate(step, args.batch, args.steps), 1), args.out)
    for dec in args.decoders.split(","):
        try:
            emit(res, f"path_{dec}", run_loader(root, dec, args, step), args.out)
        except Exception as e:  # one path failing keeps the others' numbers
            emit(res, f"path_{dec}", dict(error=f"{type(e).__name__}: {e}"), args.out)


if __name__ == "__main__":
    main()
