"""A synthetic tempo dataset of real H.264 mp4 files, made to need temporal modelling.

Each video shows a textured object moving over a noisy, drifting background. A class is a
(direction, tempo) pair, e.g. `right_slow` and `right_fast`: pairs that differ only in tempo
(the same motion at different speeds) or only in direction. Every single frame of every
class looks alike (random colours, sizes, shapes, start positions), so a model that sees
one frame cannot do better than chance; it must compare frames over time.

Per-video jitter: speed +-15% inside a class (tempos are 1.6x apart), object size, shape,
colours, texture, background, start position, and a small random phase in time.
"""
from __future__ import annotations

import json
import math
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

DIRECTIONS = {  # unit vectors (dx, dy) in image coordinates
    "right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1),
    "down_right": (0.7071, 0.7071), "up_left": (-0.7071, -0.7071),
    "up_right": (0.7071, -0.7071), "down_left": (-0.7071, 0.7071),
}
TEMPOS = {"slow": 1.0, "medium": 1.6, "fast": 2.56}  # pixels per frame at 128 px height, before jitter


def class_names(num_classes: int) -> list[str]:
    """K classes: 2 tempos (slow, fast) up to 16 classes, 3 tempos up to 24."""
    if not 2 <= num_classes <= 24:
        raise ValueError("--classes must be between 2 and 24")
    tempos = ["slow", "fast"] if num_classes <= 16 else ["slow", "medium", "fast"]
    dirs = list(DIRECTIONS)[: math.ceil(num_classes / len(tempos))]
    return [f"{d}_{t}" for d in dirs for t in tempos][:num_classes]


def render(name: str, size: tuple[int, int], frames: int, rng: np.random.Generator) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of one video of class `name`."""
    w, h = size
    direction, tempo = name.rsplit("_", 1)
    dx, dy = DIRECTIONS[direction]
    speed = TEMPOS[tempo] * (h / 128) * rng.uniform(0.85, 1.15)
    bg = rng.uniform(30, 200, 3)
    noise = rng.normal(0, 12, (h + 16, w + 16, 1)) + rng.normal(0, 6, (h + 16, w + 16, 3))
    drift = rng.uniform(-0.3, 0.3, 2)  # slow background drift: motion is not only the object's
    obj = rng.uniform(0, 255, 3)
    while np.abs(obj - bg).sum() < 150:  # keep the object visible
        obj = rng.uniform(0, 255, 3)
    r = rng.uniform(0.1, 0.18) * h
    disk = rng.random() < 0.5
    stripes = rng.uniform(0.2, 0.6)
    x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
    phase = rng.uniform(0, 4)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((frames, h, w, 3), np.uint8)
    for t in range(frames):
        ox, oy = int(8 + drift[0] * t) % 16, int(8 + drift[1] * t) % 16
        img = bg + noise[oy:oy + h, ox:ox + w]
        cx = (x0 + dx * speed * (t + phase)) % w
        cy = (y0 + dy * speed * (t + phase)) % h
        ddx = np.minimum(np.abs(xx - cx), w - np.abs(xx - cx))  # wrap around the borders
        ddy = np.minimum(np.abs(yy - cy), h - np.abs(yy - cy))
        mask = (ddx**2 + ddy**2 <= r * r) if disk else ((ddx <= r) & (ddy <= r))
        tex = 0.75 + 0.25 * np.sign(np.sin((xx - cx) * stripes))[..., None]
        img = np.where(mask[..., None], obj * tex, img)
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def write_mp4(path: Path, frames: np.ndarray, fps: int = 30, gop: int | None = None, crf: int = 23,
              preset: str = "ultrafast", faststart: bool = False) -> None:
    """H.264 (libx264, yuv420p) when available, else MPEG-4 Part 2.

    `preset="ultrafast"` has no B-frames; "veryfast" and slower use them (as Kinetics files
    do). `gop=None` keeps x264's default keyframe interval (250); `faststart` puts the index
    (moov atom) first, as web videos have it.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        opts = {"preset": preset, "crf": str(crf)} if codec == "libx264" else {}
        if gop:
            opts["g"] = str(gop)
            stream.codec_context.gop_size = gop
        stream.options = opts
        stream.codec_context.thread_count = 1
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _make_one(job: tuple) -> None:
    path, name, size, frames, fps, seed, gop = job
    rng = np.random.default_rng(seed)
    write_mp4(Path(path), render(name, size, frames, rng), fps, gop)


def generate_dataset(out_dir, classes: int = 10, videos_per_class: int = 50, size: tuple[int, int] = (160, 128),
                     seed: int = 0, frames: int = 48, fps: int = 30, val_fraction: float = 0.2,
                     workers: int = 2, gop: int | None = None, progress: bool = False) -> dict:
    """Write `classes` x `videos_per_class` mp4s plus train.txt, val.txt, labels.txt under out_dir.

    Lists use the seed's format (`relative/path.mp4 label_index`). Validation videos are
    drawn from their own seeds, so their jitter is unseen in training. Returns a summary.
    """
    out = Path(out_dir)
    names = class_names(classes)
    n_val = max(1, int(round(videos_per_class * val_fraction)))
    jobs, train, val = [], [], []
    for c, name in enumerate(names):
        for v in range(videos_per_class):
            split = "val" if v < n_val else "train"
            rel = f"videos/{name}/{name}_{v:04d}.mp4"
            video_seed = [seed, c, v]
            jobs.append((str(out / rel), name, tuple(size), frames, fps,
                         int(np.random.default_rng(video_seed).integers(2**31)), gop))
            (val if split == "val" else train).append(f"{rel} {c}")
    out.mkdir(parents=True, exist_ok=True)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            it = pool.map(_make_one, jobs, chunksize=8)
            if progress:
                from tqdm import tqdm

                it = tqdm(it, total=len(jobs), desc="synth", unit="video")
            for _ in it:
                pass
    else:
        for job in jobs:
            _make_one(job)
    (out / "train.txt").write_text("\n".join(train) + "\n")
    (out / "val.txt").write_text("\n".join(val) + "\n")
    (out / "labels.txt").write_text("\n".join(names) + "\n")
    summary = dict(root=str(out), classes=names, train=len(train), val=len(val), size=list(size),
                   frames=frames, fps=fps, seed=seed)
    (out / "synth.json").write_text(json.dumps(summary, indent=1))
    return summary
