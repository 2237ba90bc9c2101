"""What the robustness checks cost on the CPU, as JSON.

    python benchmarks/bench_check.py --out benchmarks/results/check_cpu_2core.json

On generated Kinetics-like videos (340x256, 30 fps, 10 s, x264 defaults: B-frames, keyframe
interval 250), in one process with one thread, CPU milliseconds per call:
  open_3_frames    open, demux, decode the first, middle and last frame (a check without the
                   full decode)
  check_video      `tpn data check`'s per-video work: the above plus decoding every frame
                   once, counting decoder errors
  train_clip       one 8x8 training clip through the seeking reader, from the video as written
  train_clip_rot90 the same clip from the same pictures with a 90 degree display matrix
                   (the reader turns every frame upright)
Calls of the two modes of a pair are interleaved, so a busy machine slows both alike.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tpn.config import DataConfig  # noqa: E402
from tpn.bench import machine_info  # noqa: E402
from tpn.data.check import check_video  # noqa: E402
from tpn.data.sampling import train_indices  # noqa: E402
from tpn.data.synthetic import render, write_mp4  # noqa: E402
from tpn.data.video import VideoReader, read_clip  # noqa: E402


def _interleaved(fns: dict, calls: int) -> dict:
    """{name: CPU milliseconds per call}, the functions called in turn `calls` times each."""
    cpu = dict.fromkeys(fns, 0.0)
    for i in range(calls):
        for name, fn in fns.items():
            c0 = time.process_time()
            fn(i)
            cpu[name] += time.process_time() - c0
    return {name: round(1000 * t / calls, 2) for name, t in cpu.items()}


def run(videos_dir: str | Path, size=(340, 256), seconds: int = 10, calls: int = 20, log=print) -> dict:
    folder = Path(videos_dir)
    plain, rotated = folder / f"{size[0]}x{size[1]}.mp4", folder / f"{size[0]}x{size[1]}_rot90.mp4"
    if not (plain.exists() and rotated.exists()):
        frames = render("right_slow", size, 30 * seconds, np.random.default_rng(0))
        write_mp4(plain, frames, preset="medium")
        write_mp4(rotated, frames, preset="medium", rotation=90)
    with VideoReader(plain) as r:
        n = r.num_frames

    def open_3(_):
        with VideoReader(plain) as reader:
            reader.get_frames([0, n // 2, n - 1])

    check = _interleaved({"open_3_frames": open_3,
                          "check_video": lambda _: check_video((str(plain), False, "", -1, 1, (DataConfig.max_frame_pixels, None)))}, calls)
    log(f"check: {check}")
    starts = [train_indices(n, 8, 8, np.random.default_rng(i)) for i in range(calls)]
    clips = _interleaved({"train_clip": lambda i: read_clip(plain, lambda _: starts[i]),
                          "train_clip_rot90": lambda i: read_clip(rotated, lambda _: starts[i])}, calls)
    log(f"clips: {clips}")
    return {"machine": machine_info(), "size": list(size),
            "frames": n, "calls": calls, "cpu_ms_per_call": {**check, **clips}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="CPU cost of tpn data check's full decode and of display rotation")
    ap.add_argument("--videos-dir", default="work_dirs/bench_check_videos")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/check_cpu_2core.json")
    args = ap.parse_args(argv)
    result = run(args.videos_dir, calls=args.calls)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
