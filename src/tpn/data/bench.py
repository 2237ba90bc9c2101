"""`tpn bench data`: how fast one loader worker produces training clips and 30-view test samples.

Videos are generated Kinetics-like (short side 256, 30 fps, 10 s, libx264 with its default
GOP of 250 and with a short GOP of 12); each strategy is timed in one process, as one
DataLoader worker would run it, including opening, decoding and the transforms.
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from tpn.config import DataConfig
from tpn.data import sampling, transforms as T
from tpn.data.synthetic import render, write_mp4
from tpn.data.video import probe_video, read_video_frames


def _videos(folder: Path, size: tuple[int, int], gop: int | None, count: int, frames: int) -> list[Path]:
    paths = []
    for i in range(count):
        p = folder / f"{size[0]}x{size[1]}_gop{gop or 'default'}_{i}.mp4"
        if not p.exists():
            write_mp4(p, render("right_slow", size, frames, np.random.default_rng(i)), fps=30, gop=gop)
        paths.append(p)
    return paths


def _train_clip(path: Path, cfg: DataConfig, rng, seek: bool):
    n = probe_video(path).num_frames
    idx = sampling.train_indices(n, cfg.clip_len, cfg.frame_interval, rng)
    clip = T.to_clip(read_video_frames(path, idx, seek=seek))
    clip = T.random_crop(T.resize_short_side(clip, cfg.short_side), cfg.crop_size, rng)
    return clip.flip(-1) if rng.random() < 0.5 else clip


def _test_video(path: Path, cfg: DataConfig, seek: bool):
    n = probe_video(path).num_frames
    idx = sampling.test_indices(n, cfg.clip_len, cfg.frame_interval, cfg.test_clips).reshape(-1)
    clip = T.resize_short_side(T.to_clip(read_video_frames(path, idx, seek=seek)), cfg.short_side)
    return [T.three_crop(clip[:, k * cfg.clip_len:(k + 1) * cfg.clip_len], cfg.test_crop_size)
            for k in range(cfg.test_clips)]


def run(out_dir: str | Path, videos: int = 4, clips: int = 40, seconds: int = 10) -> dict:
    import av
    import torch

    torch.set_num_threads(1)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = DataConfig()
    results = []
    for size in ((340, 256), (456, 256)):
        for gop in (None, 12):
            paths = _videos(folder, size, gop, videos, 30 * seconds)
            for seek in (True, False):
                rng = np.random.default_rng(0)
                t0 = time.perf_counter()
                for i in range(clips):
                    _train_clip(paths[i % len(paths)], cfg, rng, seek)
                train_rate = clips / (time.perf_counter() - t0)
                t0 = time.perf_counter()
                for p in paths:
                    _test_video(p, cfg, seek)
                test_rate = len(paths) / (time.perf_counter() - t0)
                rec = dict(size=f"{size[0]}x{size[1]}", gop=gop or 250, strategy="seek" if seek else "sequential",
                           train_clips_per_s_per_worker=round(train_rate, 2),
                           test30_videos_per_s_per_worker=round(test_rate, 2))
                results.append(rec)
                print(json.dumps(rec), flush=True)
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(machine=dict(cpu=cpu, cores=os.cpu_count(), python=platform.python_version(),
                             torch=torch.__version__, av=av.__version__, date=time.strftime("%Y-%m-%d")),
                protocol="train: 8x8 clip, random start, short side 256, random crop 224, flip; "
                         "test: 10 clips x 8 frames, short side 256, 3 crops of 256; one process, 1 decoder thread",
                results=results)
