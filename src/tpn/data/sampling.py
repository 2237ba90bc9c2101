"""Which frames a clip uses (mmaction2's SampleFrames protocols), as exact index arrays.

A clip is `clip_len` frames spaced `frame_interval` apart, spanning
`(clip_len - 1) * frame_interval + 1` frames. A video shorter than that loops: indices
wrap modulo the frame count (mmaction2's `out_of_bound_opt='loop'`).
"""
from __future__ import annotations

import numpy as np


def span(clip_len: int, frame_interval: int) -> int:
    return (clip_len - 1) * frame_interval + 1


def _clip(start: int, num_frames: int, clip_len: int, frame_interval: int) -> np.ndarray:
    return (start + np.arange(clip_len) * frame_interval) % num_frames


def train_indices(num_frames: int, clip_len: int, frame_interval: int, rng: np.random.Generator) -> np.ndarray:
    """One clip at a uniformly random start."""
    room = num_frames - span(clip_len, frame_interval) + 1
    start = int(rng.integers(0, room)) if room > 0 else 0
    return _clip(start, num_frames, clip_len, frame_interval)


def val_indices(num_frames: int, clip_len: int, frame_interval: int) -> np.ndarray:
    """One clip in the middle of the video."""
    start = max(0, (num_frames - span(clip_len, frame_interval)) // 2)
    return _clip(start, num_frames, clip_len, frame_interval)


def test_indices(num_frames: int, clip_len: int, frame_interval: int, num_clips: int) -> np.ndarray:
    """`num_clips` clips spread uniformly: the video (less one span) is cut into equal
    segments and each clip starts in the middle of its segment. Shape (num_clips, clip_len)."""
    room = num_frames - span(clip_len, frame_interval) + 1
    if room > 0:
        seg = room / num_clips
        starts = (np.arange(num_clips) * seg + seg / 2).astype(np.int64)
    else:
        starts = np.zeros(num_clips, dtype=np.int64)
    return np.stack([_clip(int(s), num_frames, clip_len, frame_interval) for s in starts])
