"""End-to-end training throughput from real mp4 files vs synthetic in-GPU input.

Generates Kinetics-like videos (340x256, 30 fps, 10 s, libx264 default GOP 250), then in
one process measures, for TPN R50 8x8 at batch 32 (bf16 + channels_last_3d + compile):
  - loader: clips/s of the project's DataLoader alone (train sampling 8x8, short side 256,
    random crop 224, decode in WORKERS processes),
  - synthetic: clips/s of the training step on uint8 clips already on the GPU,
  - e2e: clips/s of the same step fed by the loader (pinned memory, non-blocking copies),
    timed after the loader's prefetch queue has been drained (steady state).
    python benchmarks/bench_e2e.py --workers 15 --out e2e.json
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

from tpn.accel import make_train_step  # noqa: E402
from tpn.config import load_config  # noqa: E402
from tpn.data.datasets import build_dataset  # noqa: E402
from tpn.data.synthetic import generate_dataset  # noqa: E402
from tpn.models.build import build_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/tmp/e2e_videos")
    ap.add_argument("--videos", type=int, default=80)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--out", default="bench_e2e.json")
    args = ap.parse_args()
    root = Path(args.root)
    t0 = time.time()
    if not (root / "train.txt").exists():
        generate_dataset(root, classes=10, videos_per_class=args.videos // 10, size=(340, 256), frames=300,
                         workers=args.workers, val_fraction=0.1)
    gen_s = time.time() - t0
    lines = (root / "train.txt").read_text().splitlines()
    (root / "big.txt").write_text("\n".join(lines * 200) + "\n")  # long enough for warm-up + timing
    cfg = load_config("tpn_r50_8x8_k400", [f"data.root={root}", f"data.train_list={root}/big.txt",
                                           f"data.label_map={root}/labels.txt", "model.head.num_classes=10",
                                           "data.train_crop=random", "data.color_jitter=false"])
    cfg = replace(cfg, data=replace(cfg.data, num_workers=args.workers))
    ds = build_dataset(cfg.data, "train")
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                         pin_memory=True, drop_last=True, persistent_workers=True, prefetch_factor=4)
    torch.backends.cudnn.benchmark = True
    model = build_model(cfg).cuda().train()
    step = make_train_step(model, cfg, amp=True, channels_last=True, compile_model=True)
    res = dict(gpu=torch.cuda.get_device_name(), cpu_workers=args.workers, batch=args.batch,
               videos=len(lines), video="340x256 30fps 300 frames libx264 GOP 250", generate_s=round(gen_s, 1))

    it = iter(loader)
    for _ in range(3):
        next(it)
    t = time.perf_counter()
    n = 0
    for _ in range(args.steps):
        x, _ = next(it)
        n += x.shape[0]
    res["loader_clips_per_s"] = n / (time.perf_counter() - t)

    x8 = torch.randint(0, 255, (args.batch, 3, 8, 224, 224), dtype=torch.uint8, device="cuda")
    y = torch.arange(args.batch, device="cuda") % 10
    for _ in range(4):
        step(x8, y)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        step(x8, y)
    torch.cuda.synchronize()
    res["synthetic_clips_per_s"] = args.batch * args.steps / (time.perf_counter() - t)

    # The workers kept decoding while the synthetic step was timed: their prefetch queue
    # (workers x prefetch_factor batches) is full. Drain it through the step first, so the
    # timed steps wait for fresh decoding as a long run does.
    for _ in range(args.workers * 4 + 3):
        x, y = next(it)
        step(x.cuda(non_blocking=True), y.cuda(non_blocking=True))
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(args.steps):
        x, y = next(it)
        step(x.cuda(non_blocking=True), y.cuda(non_blocking=True))
    torch.cuda.synchronize()
    res["e2e_clips_per_s"] = args.batch * args.steps / (time.perf_counter() - t)
    res["e2e_over_synthetic"] = res["e2e_clips_per_s"] / res["synthetic_clips_per_s"]
    print(json.dumps(res), flush=True)
    Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
