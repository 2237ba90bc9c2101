"""A synthetic tempo dataset of real H.264 mp4 files, made to need temporal modelling.

Each video shows a random texture drifting across the whole frame, like a camera panning
over a surface, with a textured object riding on it. A class is a (direction, tempo) pair,
e.g. `right_slow` and `right_fast`: pairs that differ only in tempo (the same motion at a
different speed) or only in direction. Every single frame of every class is a random
texture with random colours, so a model that sees one frame is at chance; the class is in
how frames change over time. The motion covers the whole frame, so even a tiny 3D CNN
picks it up within minutes on a CPU.

Per-video jitter: speed +-15% inside a class (neighbouring tempos are 2.2x apart, so the
ranges never meet), texture scale, colours, contrast, brightness, object size, shape and
position, a random phase in time, and pixel noise in every frame.

A harder variant (the tempo experiment's `tempo_hard` set): tempos closer together
(`tempo_ratio`, e.g. 1.5x apart: still separable, the jittered ranges need more than 1.35x) and
`distractors`: small objects that each move their own way, in a random direction at a random
speed from the slowest to the fastest class tempo, unrelated to the class. The defaults render
exactly the original dataset.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from tpn.data.pool import map_in_processes

DIRECTIONS = {  # unit vectors (dx, dy) in image coordinates
    "right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1),
    "down_right": (0.7071, 0.7071), "up_left": (-0.7071, -0.7071),
    "up_right": (0.7071, -0.7071), "down_left": (-0.7071, 0.7071),
}
TEMPOS = {"slow": 1.0, "medium": 2.2, "fast": 4.84}  # pixels per frame at 128 px height, before jitter
SPEED_JITTER = 0.15
MIN_TEMPO_RATIO = (1 + SPEED_JITTER) / (1 - SPEED_JITTER)  # closer, and jittered speeds of two tempos overlap


def tempo_speeds(tempo_ratio: float | None = None) -> dict[str, float]:
    """Pixels per frame at 128 px height for each tempo: TEMPOS, or slow 1 and each next tempo
    `tempo_ratio` times faster."""
    if tempo_ratio is None:
        return dict(TEMPOS)
    if not tempo_ratio > MIN_TEMPO_RATIO:
        raise ValueError(f"tempo ratio {tempo_ratio}: must be above {MIN_TEMPO_RATIO:.3f}, or the "
                         f"+-{SPEED_JITTER:.0%} speed jitter makes neighbouring tempos overlap")
    return {"slow": 1.0, "medium": tempo_ratio, "fast": tempo_ratio**2}


def class_names(num_classes: int) -> list[str]:
    """K classes: 2 tempos (slow, fast) up to 16 classes, 3 tempos up to 24."""
    if not 2 <= num_classes <= 24:
        raise ValueError("--classes must be between 2 and 24")
    tempos = ["slow", "fast"] if num_classes <= 16 else ["slow", "medium", "fast"]
    dirs = list(DIRECTIONS)[: math.ceil(num_classes / len(tempos))]
    return [f"{d}_{t}" for d in dirs for t in tempos][:num_classes]


def _periodic_noise(h: int, w: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Smooth random texture in [0, 1] that tiles seamlessly (low-pass filtered in Fourier space)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[None, :]
    spectrum = np.fft.fft2(rng.normal(size=(h, w))) * np.exp(-((fx**2 + fy**2) * (scale**2) * 8))
    tex = np.fft.ifft2(spectrum).real
    tex -= tex.min()
    return tex / max(tex.max(), 1e-6)


def _translate(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Periodic image translated by (dx, dy) pixels: integer rolls blended bilinearly."""
    ix, iy = math.floor(dx), math.floor(dy)
    fx, fy = dx - ix, dy - iy
    top = (1 - fx) * np.roll(img, (iy, ix), axis=(0, 1)) + fx * np.roll(img, (iy, ix + 1), axis=(0, 1))
    bottom = (1 - fx) * np.roll(img, (iy + 1, ix), axis=(0, 1)) + fx * np.roll(img, (iy + 1, ix + 1), axis=(0, 1))
    return (1 - fy) * top + fy * bottom


def _shape_mask(xx, yy, cx, cy, r, disk, w, h) -> np.ndarray:
    """A disc or square of radius r at (cx, cy) on the periodic frame."""
    ddx = np.minimum(np.abs(xx - cx), w - np.abs(xx - cx))  # wrap around like the texture
    ddy = np.minimum(np.abs(yy - cy), h - np.abs(yy - cy))
    return (ddx**2 + ddy**2 <= r * r) if disk else ((ddx <= r) & (ddy <= r))


def _draw_distractors(count: int, speeds: dict[str, float], w: int, h: int, rng: np.random.Generator) -> list:
    """[(x, y, vx, vy, r, disk, colour)] of objects moving independently of the class, drawn from
    a child of `rng` (spawning leaves rng's own stream, and so the rest of the video, unchanged)."""
    lo, hi = min(speeds.values()) * h / 128, max(speeds.values()) * h / 128
    out = []
    if count:
        rng = rng.spawn(1)[0]
    for _ in range(count):
        angle, speed = rng.uniform(0, 2 * math.pi), math.exp(rng.uniform(math.log(lo), math.log(hi)))
        out.append((rng.uniform(0, w), rng.uniform(0, h), speed * math.cos(angle), speed * math.sin(angle),
                    rng.uniform(0.06, 0.12) * h, rng.random() < 0.5, rng.uniform(0, 255, 3)))
    return out


def render(name: str, size: tuple[int, int], frames: int, rng: np.random.Generator,
           tempo_ratio: float | None = None, distractors: int = 0) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of one video of class `name`; `tempo_ratio` and `distractors`
    as in the module docstring (the defaults: the original dataset)."""
    w, h = size
    direction, tempo = name.rsplit("_", 1)
    dx, dy = DIRECTIONS[direction]
    speeds = tempo_speeds(tempo_ratio)
    speed = speeds[tempo] * (h / 128) * rng.uniform(1 - SPEED_JITTER, 1 + SPEED_JITTER)
    phase = rng.uniform(0, 8)
    # background: a two-colour texture
    tex = _periodic_noise(h, w, rng.uniform(3, 7) * h / 128, rng)
    lo, hi = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    while np.abs(hi - lo).sum() < 120:  # enough contrast to see the motion
        hi = rng.uniform(0, 255, 3)
    contrast = rng.uniform(1.0, 3.0)
    tex = 1 / (1 + np.exp(-contrast * 4 * (tex - tex.mean())))
    background = (lo + (hi - lo) * tex[..., None]).astype(np.float32)
    # an object riding on the texture: a disc or square with stripes, same motion
    yy, xx = np.ogrid[0:h, 0:w]
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)
    r = rng.uniform(0.12, 0.22) * h
    ox, oy = rng.uniform(0, w), rng.uniform(0, h)
    obj = rng.uniform(0, 255, 3)
    disk = rng.random() < 0.5
    stripes = rng.uniform(0.3, 0.8) * 128 / h
    others = _draw_distractors(distractors, speeds, w, h, rng)
    out = np.empty((frames, h, w, 3), np.uint8)
    for t in range(frames):
        d = speed * (t + phase)
        img = _translate(background, dx * d, dy * d)
        cx, cy = (ox + dx * d) % w, (oy + dy * d) % h
        mask = _shape_mask(xx, yy, cx, cy, r, disk, w, h)
        sx = (xx - cx + w / 2) % w - w / 2  # stripes fixed to the object
        tex_obj = 0.7 + 0.3 * np.sign(np.sin(sx * stripes))[..., None]
        img = np.where(mask[..., None], obj * tex_obj, img)
        for x0, y0, vx, vy, rd, dd, colour in others:
            m = _shape_mask(xx, yy, (x0 + vx * t) % w, (y0 + vy * t) % h, rd, dd, w, h)
            img = np.where(m[..., None], colour, img)
        img += 4 * rng.standard_normal(img.shape, dtype=np.float32)
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def write_mp4(path: Path, frames: np.ndarray, fps: int = 30, gop: int | None = None, crf: int = 23,
              preset: str = "ultrafast", faststart: bool = False, codec: str = "h264", rotation: int = 0,
              hflip: bool = False, vflip: bool = False) -> None:
    """H.264 (libx264, yuv420p) when available, else MPEG-4 Part 2; `codec="hevc"`: libx265.

    `preset="ultrafast"` has no B-frames; "veryfast" and slower use them (as Kinetics files
    do); "medium" is x264's default (3 B-frames, b-pyramid normal: some B-frames are
    references). `gop=None` keeps the encoder's default keyframe interval (250); `faststart`
    puts the index (moov atom) first, as web videos have it. `rotation` writes a display matrix,
    as phones do: a player shows the frames turned that many degrees counter-clockwise, then
    mirrored left-right with `hflip`, upside down with `vflip`.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if codec == "hevc":
        if "libx265" not in av.codecs_available:
            raise RuntimeError("this PyAV build has no libx265 encoder")
        codec, opts = "libx265", {"preset": preset, "crf": str(crf), "x265-params": "log-level=error"}
    else:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        opts = {"preset": preset, "crf": str(crf)} if codec == "libx264" else {}
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        if gop:
            opts["g"] = str(gop)
            stream.codec_context.gop_size = gop
        stream.options = opts
        stream.codec_context.thread_count = 1
        if rotation or hflip or vflip:
            stream.set_display_rotation(rotation, hflip=hflip, vflip=vflip)
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_webm(path: Path, frames: np.ndarray, fps: int = 12) -> None:
    """VP9 in WebM (libvpx-vp9), the codec and container of Something-Something V2."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libvpx-vp9", rate=fps)
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}
        stream.codec_context.thread_count = 1
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_jpgs(folder: Path, frames: np.ndarray, template: str = "{:05}.jpg") -> None:
    """One JPEG per frame, numbered from 1 (Something-Something V1's raw frames), by FFmpeg's
    MJPEG encoder through PyAV: no imaging library needed to write them."""
    from fractions import Fraction

    import av

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        codec = av.CodecContext.create("mjpeg", "w")
        codec.width, codec.height, codec.pix_fmt = f.shape[1], f.shape[0], "yuvj444p"
        codec.time_base = Fraction(1, 25)
        codec.qmin = codec.qmax = 2  # high quality (FFmpeg's -q:v 2)
        image = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(format="yuvj444p")
        (folder / template.format(i + 1)).write_bytes(b"".join(bytes(p) for p in codec.encode(image) + codec.encode()))


def mirror_pairs(names: list[str]) -> list[tuple[int, int]]:
    """Label pairs that a horizontal flip swaps (a 'right' class and its 'left' twin): the
    dataset's `data.flip_label_pairs`."""
    index = {n: i for i, n in enumerate(names)}
    pairs = []
    for i, n in enumerate(names):
        twin = n.replace("right", "#").replace("left", "right").replace("#", "left")
        if twin != n and index.get(twin, -1) > i:
            pairs.append((i, index[twin]))
    return pairs


def _make_one(job: tuple) -> None:
    path, name, size, frames, fps, seed, gop, preset, layout, tempo_ratio, distractors = job
    rng = np.random.default_rng(seed)
    video = render(name, size, frames, rng, tempo_ratio, distractors)
    if layout == "sthv1":
        write_jpgs(Path(path), video)
    elif layout == "sthv2":
        write_webm(Path(path), video, fps)
    else:
        write_mp4(Path(path), video, fps, gop, preset=preset)


def generate_dataset(out_dir, classes: int = 10, videos_per_class: int = 50, size: tuple[int, int] = (160, 128),
                     seed: int = 0, frames: int = 48, fps: int = 30, val_fraction: float = 0.2,
                     workers: int = 2, gop: int | None = None, progress: bool = False,
                     preset: str = "ultrafast", layout: str = "mp4", tempo_ratio: float | None = None,
                     distractors: int = 0) -> dict:
    """Write `classes` x `videos_per_class` videos plus train.txt, val.txt, labels.txt under out_dir.

    `layout`: "mp4" (H.264; lists `relative/path.mp4 label_index`), or Something-Something's
    "sthv1" (folders of `00001.jpg`...; lists `folder num_frames label`, data.format
    mmaction_rawframes) or "sthv2" (VP9 webm; lists `relative/path.webm label`).
    Validation videos are drawn from their own seeds, so their jitter is unseen in training.
    `preset` is libx264's ("veryfast" writes B-frames, as real downloads have); `tempo_ratio`
    and `distractors` make the harder variant (module docstring). Returns a summary, with the
    label pairs a horizontal flip swaps (`flip_label_pairs`).
    """
    if layout not in ("mp4", "sthv1", "sthv2"):
        raise ValueError(f"layout must be mp4, sthv1 or sthv2, got {layout!r}")
    out = Path(out_dir)
    names = class_names(classes)
    tempo_speeds(tempo_ratio)  # a bad ratio fails here, not in a worker
    n_val = max(1, int(round(videos_per_class * val_fraction)))
    jobs, train, val = [], [], []
    for c, name in enumerate(names):
        for v in range(videos_per_class):
            split = "val" if v < n_val else "train"
            rel = {"mp4": f"videos/{name}/{name}_{v:04d}.mp4", "sthv1": f"rawframes/{name}_{v:04d}",
                   "sthv2": f"videos/{name}_{v:04d}.webm"}[layout]
            video_seed = [seed, c, v]
            jobs.append((str(out / rel), name, tuple(size), frames, fps,
                         int(np.random.default_rng(video_seed).integers(2**31)), gop, preset, layout,
                         tempo_ratio, distractors))
            (val if split == "val" else train).append(f"{rel} {frames} {c}" if layout == "sthv1" else f"{rel} {c}")
    out.mkdir(parents=True, exist_ok=True)
    if workers > 1:
        map_in_processes(_make_one, jobs, workers, chunksize=8, desc="synth" if progress else None)
    else:
        for job in jobs:
            _make_one(job)
    (out / "train.txt").write_text("\n".join(train) + "\n")
    (out / "val.txt").write_text("\n".join(val) + "\n")
    (out / "labels.txt").write_text("\n".join(names) + "\n")
    summary = dict(root=str(out), classes=names, train=len(train), val=len(val), size=list(size),
                   frames=frames, fps=fps, seed=seed, layout=layout, flip_label_pairs=mirror_pairs(names),
                   tempo_speeds=tempo_speeds(tempo_ratio), distractors=distractors)
    (out / "synth.json").write_text(json.dumps(summary, indent=1))
    return summary
