"""Decoding frames from video files (PyAV) and raw-frame folders.

`read_video_frames(path, indices)` returns exactly the requested frames (0-based, in
decode order), as uint8 RGB (len(indices), H, W, 3). When the first wanted frame lies
past the first keyframe interval it seeks to the nearest keyframe before it and decodes
forward; frames are identified by their timestamps, so seeking never shifts indices.
Only the wanted frames are converted to RGB. One decoder thread per call: data-loader
workers give the parallelism (measured faster than decoder threads, see
benchmarks/results/data_*.json).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from tpn.errors import TpnError


class VideoError(TpnError):
    """A video that cannot be read (missing, empty, corrupt, or too short)."""


@dataclass
class VideoInfo:
    num_frames: int
    fps: float
    width: int
    height: int


def _open(path: str | Path):
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: zero-byte file")
    try:
        container = av.open(str(path))
    except Exception as e:  # av raises many subclasses (InvalidDataError, ...)
        raise VideoError(f"{path}: cannot open video ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "SLICE"
    stream.codec_context.thread_count = 1
    return container, stream


def _frame_step(stream) -> Fraction | None:
    """Timestamp units per frame, from the stream's average rate."""
    rate = stream.average_rate or stream.guessed_rate
    if not rate or not stream.time_base:
        return None
    return 1 / (Fraction(rate) * stream.time_base)


def probe_video(path: str | Path) -> VideoInfo:
    """Frame count (counted by demuxing when the container does not say), fps and size."""
    container, stream = _open(path)
    try:
        n = stream.frames
        if not n:
            n = sum(1 for p in container.demux(stream) if p.size > 0)
        rate = stream.average_rate or stream.guessed_rate or 30
        return VideoInfo(int(n), float(rate), stream.codec_context.width, stream.codec_context.height)
    finally:
        container.close()


def read_video_frames(path: str | Path, indices, seek: bool = True) -> np.ndarray:
    """Decode exactly the frames `indices` of `path` as uint8 (len, H, W, 3) RGB."""
    indices = np.asarray(indices, dtype=np.int64)
    wanted = sorted(set(int(i) for i in indices))
    if wanted and wanted[0] < 0:
        raise VideoError(f"{path}: negative frame index {wanted[0]}")
    container, stream = _open(path)
    got: dict[int, np.ndarray] = {}
    try:
        start = stream.start_time or 0
        step = _frame_step(stream)
        position = None  # index of the next decoded frame when counting sequentially
        if seek and step is not None and wanted and wanted[0] > 0:
            container.seek(int(start + wanted[0] * step), stream=stream, backward=True, any_frame=False)
        else:
            position = 0
        last = wanted[-1] if wanted else -1
        todo = set(wanted)
        for frame in container.decode(stream):
            if position is not None:
                idx = position
                position += 1
            elif frame.pts is None or step is None:
                raise VideoError(f"{path}: frames carry no timestamps; cannot seek")
            else:
                idx = int(round(float((frame.pts - start) / step)))
            if idx in todo:
                got[idx] = frame.to_ndarray(format="rgb24")
                todo.discard(idx)
                if not todo:
                    break
            if idx > last:
                break
    except VideoError:
        raise
    except Exception as e:
        raise VideoError(f"{path}: decoding failed ({type(e).__name__}: {e})") from None
    finally:
        container.close()
    missing = [i for i in wanted if i not in got]
    if missing:
        raise VideoError(f"{path}: frames {missing[:3]}{'...' if len(missing) > 3 else ''} not in the video "
                         f"(decoded {len(got)} of {len(wanted)} wanted)")
    return np.stack([got[int(i)] for i in indices]) if len(indices) else np.zeros((0, 0, 0, 3), np.uint8)


def read_all_frames(path: str | Path) -> np.ndarray:
    """Sequential decode of every frame (the reference the seeking reader is tested against)."""
    container, stream = _open(path)
    try:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(stream)])
    except Exception as e:
        raise VideoError(f"{path}: decoding failed ({type(e).__name__}: {e})") from None
    finally:
        container.close()


def count_rawframes(folder: str | Path, template: str = "img_{:05d}.jpg") -> int:
    folder = Path(folder)
    if not folder.is_dir():
        raise VideoError(f"{folder}: frame folder not found")
    n = 0
    while (folder / template.format(n + 1)).is_file():
        n += 1
    return n


def read_rawframes(folder: str | Path, indices, template: str = "img_{:05d}.jpg") -> np.ndarray:
    """Frames `indices` (0-based) of a folder of images named `template` (1-based numbers)."""
    from PIL import Image

    folder = Path(folder)
    out = []
    for i in indices:
        p = folder / template.format(int(i) + 1)
        try:
            with Image.open(p) as im:
                out.append(np.asarray(im.convert("RGB")))
        except FileNotFoundError:
            raise VideoError(f"{p}: frame file not found") from None
        except Exception as e:
            raise VideoError(f"{p}: cannot read frame ({type(e).__name__})") from None
    return np.stack(out)
