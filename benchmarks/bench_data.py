"""How fast one loader worker produces training clips and 30-view test samples, as JSON.

    python benchmarks/bench_data.py --out benchmarks/results/data_cpu_2core.json

Videos are generated Kinetics-like: 340x256 and 456x256 (short side 256), 30 fps, 10 s,
H.264 with x264's default settings (preset medium: 3 B-frames, b-pyramid, keyframe interval
250, as most Kinetics downloads) -- the "original" -- and the same videos rewritten by
`tpn data prepare` (default GOP, no B-frames, fastdecode) -- the "prepared". Each is timed in one
process with one thread, as one DataLoader worker runs it, through the project's dataset
(`VideoDataset.__getitem__`: opening, demuxing, decoding, colour conversion, transforms):
  train_crop       random crop 224 of short side 256 + flip (the Paddle recipe's crop)
  train_recipe     mmaction2's TPN recipe: random resized crop + flip + colour jitter
  train_recipe_dev the recipe with data.augment_on_device (flip/jitter drawn, applied on the GPU)
  test30           10 clips x 8 frames, 3 crops of 256 = 30 views
Rates are given per wall-clock second and per CPU second of the process; on a shared
machine the CPU-second rate is the one to compare. Every mode is also timed with the reader
decoding every packet (`VideoReader.drop_unneeded = False`, keys ending `_decode_all`),
interleaved call by call with the default reader, which skips frames nobody needs.
`train_recipe_dev_clips_per_decode`: the recipe with `data.clips_per_decode` 1, 2, 4 (k
clips per decoded video, a recipe change), in clips per CPU second.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tpn.bench import machine_info  # noqa: E402
from tpn.config import DataConfig  # noqa: E402
from tpn.data import sampling  # noqa: E402
from tpn.data.datasets import VideoDataset  # noqa: E402
from tpn.data.prepare import DEFAULT_GOP, reencode  # noqa: E402
from tpn.data.synthetic import render, write_mp4  # noqa: E402
from tpn.data.video import VideoReader  # noqa: E402

SIZES = ((340, 256), (456, 256))
ORIGINAL_PRESET = "medium"  # x264's default
TRAIN_MODES = {
    "train_crop": dict(train_crop="random", color_jitter=False, flip=0.5),
    "train_recipe": dict(train_crop="random_resized", color_jitter=True, flip=0.5),
    "train_recipe_dev": dict(train_crop="random_resized", color_jitter=True, flip=0.5, augment_on_device=True),
}


def make_videos(folder: Path, size: tuple[int, int], count: int, seconds: int = 10, fps: int = 30) -> dict:
    """{"original": paths, "prepared": paths} of `count` generated videos of `size`."""
    out: dict[str, list[Path]] = {"original": [], "prepared": []}
    for i in range(count):
        p = folder / f"x264_{ORIGINAL_PRESET}" / f"{size[0]}x{size[1]}_{i}.mp4"
        q = p.parent / f"prepared_gop{DEFAULT_GOP}" / p.name
        if not p.exists():
            frames = render(["right_slow", "up_fast", "down_left_slow"][i % 3], size, fps * seconds,
                            np.random.default_rng(i))
            write_mp4(p, frames, fps=fps, preset=ORIGINAL_PRESET)
        if not q.exists():
            reencode(p, q, short_side=min(size))
        out["original"].append(p)
        out["prepared"].append(q)
    return out


CLIPS_PER_DECODE = (1, 2, 4)


def clips_per_decode_rates(samples: list, calls: int) -> dict:
    """Training clips per CPU second of `train_recipe_dev` with `data.clips_per_decode` k
    (each call yields k clips of one video), the settings interleaved call by call."""
    fns = {}
    for k in CLIPS_PER_DECODE:
        cfg = replace(DataConfig(), clips_per_decode=k, **TRAIN_MODES["train_recipe_dev"])
        fns[k] = (lambda i, f=VideoDataset(cfg, "train", samples, None).__getitem__: f(i % len(samples)))
    rates = _timed_pair(fns, calls)
    return {f"k{k}_clips_per_cpu_s": round(k * cpu, 1) for k, (_, cpu) in rates.items()}


def _decode_all(fn):
    """`fn` run with a reader that sends every packet to the decoder."""
    def call(i):
        VideoReader.drop_unneeded = False
        try:
            return fn(i)
        finally:
            VideoReader.drop_unneeded = True
    return call


def _timed_pair(fns: dict, repeats: int) -> dict:
    """{name: (per wall second, per CPU second)}, the strategies interleaved call by call so
    that load from other processes on a shared machine falls on both alike."""
    wall = {k: 0.0 for k in fns}
    cpu = {k: 0.0 for k in fns}
    for i in range(repeats):
        for k, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn(i)
            wall[k] += time.perf_counter() - w0
            cpu[k] += time.process_time() - c0
    return {k: (repeats / wall[k], repeats / max(cpu[k], 1e-9)) for k in fns}


def frames_decoded(paths: list, clips: int = 20) -> dict:
    """Mean frames sent to the decoder per 8x8 training clip, skipping unneeded frames or not."""
    out = {}
    for key, drop in (("skip", True), ("decode_all", False)):
        rng, total = np.random.default_rng(0), 0
        for i in range(clips):
            with VideoReader(paths[i % len(paths)]) as r:
                r.drop_unneeded = drop
                r.get_frames(sampling.train_indices(r.num_frames, 8, 8, rng))
                total += r.frames_decoded
        out[key] = round(total / clips, 1)
    return out


def run(videos_dir: str | Path, videos: int = 3, clips: int = 30, test_videos: int | None = None,
        log=print, sizes=SIZES, seconds: int = 10) -> dict:
    import torch

    torch.set_num_threads(1)
    folder = Path(videos_dir)
    folder.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    results = []
    for size in sizes:
        sets = make_videos(folder, size, videos, seconds=seconds)
        for encoding, paths in sets.items():
            samples = [(str(p), 0, 0) for p in paths]
            fns = {mode: VideoDataset(replace(DataConfig(), **kw), "train", samples, None).__getitem__
                   for mode, kw in TRAIN_MODES.items()}
            fns = {m: (lambda i, f=f: f(i % len(paths))) for m, f in fns.items()}
            rates = _timed_pair({**fns, **{f"{m}_decode_all": _decode_all(f) for m, f in fns.items()}}, clips)
            test = VideoDataset(DataConfig(), "test", samples, None)
            test_fn = lambda i: test[i % len(paths)]  # noqa: E731
            rates.update(_timed_pair({"test30": test_fn, "test30_decode_all": _decode_all(test_fn)},
                                     test_videos or len(paths)))
            mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
            rec = dict(size=f"{size[0]}x{size[1]}", encoding=encoding, mb_per_video=round(mb, 2),
                       frames_decoded_per_train_clip=frames_decoded(paths))
            for m, (wall, cpu) in rates.items():
                mode, suffix, _ = m.partition("_decode_all")
                unit = "videos" if mode == "test30" else "clips"
                rec[f"{mode}_{unit}_per_cpu_s{suffix}"] = round(cpu, 1)
                rec[f"{mode}_{unit}_per_s{suffix}"] = round(wall, 1)
            rec["skip_over_decode_all"] = {m: round(rates[m][1] / rates[f"{m}_decode_all"][1], 2)
                                           for m in rates if not m.endswith("_decode_all")}
            rec["train_recipe_dev_clips_per_decode"] = clips_per_decode_rates(samples, clips)
            results.append(rec)
            log(f"{rec['size']} {encoding:<9} " + "  ".join(f"{m} {c:5.1f}/cpu-s" for m, (_, c) in rates.items()))
    gains = {}
    for size in sizes:
        o, p = (next(r for r in results if r["size"] == f"{size[0]}x{size[1]}" and r["encoding"] == e)
                for e in ("original", "prepared"))
        gains[f"{size[0]}x{size[1]}"] = {k: round(p[k] / o[k], 2) for k in o if k.endswith("per_cpu_s")}
    return dict(
        machine=info,
        decoder=f"PyAV {info['av']} (FFmpeg libavcodec {info['ffmpeg']}), 1 thread",
        videos=f"synthetic, 30 fps, {seconds} s ({30 * seconds} frames); original: libx264 {ORIGINAL_PRESET} "
               f"(x264 default: 3 B-frames, b-pyramid), GOP 250; prepared: tpn data prepare (GOP {DEFAULT_GOP}); {videos} per (size, encoding)",
        protocol="one process, one thread, through VideoDataset.__getitem__, opening included; "
                 "*_decode_all: the same with VideoReader.drop_unneeded=False (every packet decoded), "
                 "interleaved call by call; modes: " + "; ".join(f"{m}: {kw}" for m, kw in TRAIN_MODES.items()),
        results=results, prepared_over_original=gains)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="loader throughput per worker on generated Kinetics-like videos")
    ap.add_argument("--videos-dir", default="work_dirs/bench_videos", help="where the test videos are generated (kept)")
    ap.add_argument("--videos", type=int, default=3, help="videos per (size, encoding) (default 3)")
    ap.add_argument("--clips", type=int, default=30, help="training clips timed per cell (default 30)")
    ap.add_argument("--test-videos", type=int, default=None,
                    help="30-view test samples timed per cell (default: --videos)")
    ap.add_argument("--out", default="benchmarks/results/data_cpu.json", help="JSON results file")
    args = ap.parse_args(argv)
    if args.videos < 1 or args.clips < 1 or (args.test_videos is not None and args.test_videos < 1):
        ap.error("--videos, --clips and --test-videos must be at least 1")
    result = run(args.videos_dir, videos=args.videos, clips=args.clips, test_videos=args.test_videos)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for size, gains in result["prepared_over_original"].items():
        print(f"{size}: prepared / original per CPU second: " + ", ".join(f"{k} x{v}" for k, v in gains.items()))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
