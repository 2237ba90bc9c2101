"""`tpn bench data`: how fast one loader worker produces training clips and 30-view test samples.

Videos are generated Kinetics-like: 340x256 and 456x256 (short side 256), 30 fps, 10 s,
H.264 with B-frames (libx264 `veryfast`), once with x264's default keyframe interval (250,
as most Kinetics downloads) and once with a short GOP of 12 (a re-encode for fast seeking).
Each (size, GOP, strategy) is timed in one process with one thread, as one DataLoader
worker runs it: opening, demuxing, decoding, colour conversion and the transforms of the
seed's protocol (train: 8x8 clip, resize short side 256, random crop 224, flip; test: 10
clips x 8 frames, 3 crops of 256). Rates are given per wall-clock second and per CPU second
of the process; on a shared machine the CPU-second rate is the one to compare.

Strategies: `seek` is the reader's default (keyframe-aware seeking, see tpn.data.video);
`sequential` decodes from the first frame up to the last wanted one.
"""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

from tpn.config import DataConfig
from tpn.data import sampling, transforms as T
from tpn.data.synthetic import render, write_mp4
from tpn.data.video import read_clip

SIZES = ((340, 256), (456, 256))
GOPS = (250, 12)


def make_videos(folder: Path, size: tuple[int, int], gop: int, count: int, seconds: int = 10,
                fps: int = 30) -> list[Path]:
    paths = []
    for i in range(count):
        p = folder / f"{size[0]}x{size[1]}_gop{gop}_{i}.mp4"
        if not p.exists():
            frames = render(["right_slow", "up_fast", "down_left_slow"][i % 3], size, fps * seconds,
                            np.random.default_rng(i))
            write_mp4(p, frames, fps=fps, gop=None if gop == 250 else gop, preset="veryfast")
        paths.append(p)
    return paths


def train_clip(path: Path, cfg: DataConfig, rng: np.random.Generator, seek: bool):
    frames, _ = read_clip(path, lambda n: sampling.train_indices(n, cfg.clip_len, cfg.frame_interval, rng), seek=seek)
    clip = T.random_crop(T.resize_short_side(T.to_clip(frames), cfg.short_side), cfg.crop_size, rng)
    return (clip.flip(-1) if rng.random() < 0.5 else clip).contiguous()


def test_views(path: Path, cfg: DataConfig, seek: bool):
    frames, idx = read_clip(path, lambda n: sampling.test_indices(n, cfg.clip_len, cfg.frame_interval,
                                                                  cfg.test_clips), seek=seek)
    clip = T.resize_short_side(T.to_clip(frames), cfg.short_side)
    views = [c for k in range(cfg.test_clips)
             for c in T.three_crop(clip[:, k * cfg.clip_len:(k + 1) * cfg.clip_len], cfg.test_crop_size)]
    return views


test_views.__test__ = False


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


def machine_info() -> dict:
    import av
    import torch

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return dict(cpu=cpu, cores=os.cpu_count(), load_avg_1min_at_start=load, python=platform.python_version(),
                torch=torch.__version__, av=av.__version__,
                ffmpeg=".".join(map(str, av.library_versions["libavcodec"])),
                platform=platform.platform(), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def run(videos_dir: str | Path, videos: int = 3, clips: int = 30, test_videos: int | None = None,
        log=print) -> dict:
    import torch

    torch.set_num_threads(1)
    folder = Path(videos_dir)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = DataConfig()
    info = machine_info()
    results = []
    for size in SIZES:
        for gop in GOPS:
            paths = make_videos(folder, size, gop, videos)
            rngs = {True: np.random.default_rng(0), False: np.random.default_rng(0)}
            train = _timed_pair({seek: (lambda i, seek=seek: train_clip(paths[i % len(paths)], cfg, rngs[seek], seek))
                                 for seek in (True, False)}, clips)
            test = _timed_pair({seek: (lambda i, seek=seek: test_views(paths[i % len(paths)], cfg, seek))
                                for seek in (True, False)}, test_videos or 3 * len(paths))
            for seek in (True, False):
                (train_wall, train_cpu), (test_wall, test_cpu) = train[seek], test[seek]
                rec = dict(size=f"{size[0]}x{size[1]}", gop=gop, strategy="seek" if seek else "sequential",
                           train_clips_per_s=round(train_wall, 1), train_clips_per_cpu_s=round(train_cpu, 1),
                           test30_videos_per_s=round(test_wall, 2), test30_videos_per_cpu_s=round(test_cpu, 2))
                results.append(rec)
                log(f"{rec['size']} gop {gop:>3} {rec['strategy']:<10} train {train_cpu:6.1f} clips/cpu-s "
                    f"({train_wall:5.1f}/s wall)   test30 {test_cpu:5.2f} videos/cpu-s ({test_wall:5.2f}/s wall)")
    best = {}
    for kind in ("train_clips_per_cpu_s", "test30_videos_per_cpu_s"):
        wins = {}
        for size in SIZES:
            for gop in GOPS:
                cell = [r for r in results if r["size"] == f"{size[0]}x{size[1]}" and r["gop"] == gop]
                top = max(cell, key=lambda r: r[kind])
                other = min(cell, key=lambda r: r[kind])
                wins[f"{size[0]}x{size[1]} gop {gop}"] = f"{top['strategy']} (x{top[kind] / other[kind]:.2f})"
        best[kind] = wins
    return dict(
        machine=info,
        decoder=f"PyAV {info['av']} (FFmpeg libavcodec {info['ffmpeg']}), 1 thread",
        videos="synthetic, libx264 veryfast (B-frames), yuv420p, 30 fps, 10 s (300 frames); "
               f"{videos} per (size, GOP)",
        protocol="train: 8x8 clip (mmaction2 window), short side 256, random crop 224, flip; "
                 "test: 10 clips x 8 frames (x8), short side 256, 3 crops of 256 = 30 views; "
                 "one process, one thread, opening included",
        results=results, winner=best)
