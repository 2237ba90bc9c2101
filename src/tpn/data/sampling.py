"""Which frames a clip uses, as exact 0-based index arrays (mmaction2 1.x `SampleFrames`).

A clip is `clip_len` frames spaced `frame_interval` apart. The three protocols:

- train: one clip at a uniformly random start in `[0, n - clip_len * frame_interval]`
  (mmaction2 reserves the whole `clip_len * frame_interval` window, one interval more
  than the clip's span).
- val:   one clip centred: start `max(n - span, 0) // 2`, span `(clip_len - 1) * frame_interval + 1`.
- test:  `num_clips` clips whose starts run evenly from 0 to `n - span` (first clip at the
  start, last one ending on the last frame), rounded half-to-even; a single clip is centred.

Segment sampling (`data.sampling: segments`, TSN/TSM, mmaction2's `clip_len=1, num_clips=K`): the
video is cut into K equal segments and a clip is one frame from each:

- train: a uniformly random frame of each segment (segments of `n // K` frames; a video with fewer
  than K frames takes K evenly spaced, rounded indices).
- val:   the centre frame of each segment.
- test:  the centres, and with two samplings also the first frame of each segment (mmaction2's
  `twice_sample`): two clips of K frames.

Short videos loop: an index past the end wraps around modulo the frame count (mmaction2's
`out_of_bound_opt='loop'`), so a 20-frame video gives a full 8x8 clip
`[0, 8, 16, 4, 12, 0, 8, 16]` rather than a clip of repeated last frames. Start 0 is used
when the video is shorter than the window.

Playback speed (`tpn test --tempo`, dense sampling only): a video of n frames played at s x speed
is one of `ceil(n / s)` frames whose frame j shows source frame `floor(j * s)` (s > 1 skips frames,
s < 1 repeats them). A clip is sampled from that played video by the protocols above (its
intervals are `frame_interval * s` source frames; past its end it loops, as above) and mapped back
to source indices (`at_tempo`). Speed 1 is the plain sampling, index for index.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable

import numpy as np


def span(clip_len: int, frame_interval: int) -> int:
    """Frames a clip covers from its first to its last index."""
    return (clip_len - 1) * frame_interval + 1


def clip_indices(start: int, num_frames: int, clip_len: int, frame_interval: int) -> np.ndarray:
    if num_frames < 1:
        raise ValueError("a video with no frames has no clips")
    return (start + np.arange(clip_len, dtype=np.int64) * frame_interval) % num_frames


def played_frames(num_frames: int, tempo: Fraction) -> int:
    """Frames of a `num_frames` video played at `tempo` x speed: ceil(num_frames / tempo)."""
    return math.ceil(num_frames / tempo)


def at_tempo(num_frames: int, tempo: Fraction, pick: Callable[[int], np.ndarray]) -> np.ndarray:
    """Source indices of the frames `pick(m)` chooses from the video played at `tempo` x speed
    (m = `played_frames`; its frame j is source frame floor(j * tempo), exact in integers)."""
    if tempo == 1:
        return pick(num_frames)
    j = pick(played_frames(num_frames, tempo))
    return (j * tempo.numerator) // tempo.denominator


def train_indices(num_frames: int, clip_len: int, frame_interval: int, rng: np.random.Generator) -> np.ndarray:
    """One clip at a uniformly random start (one draw from `rng`)."""
    room = num_frames - clip_len * frame_interval + 1
    start = int(rng.integers(0, room)) if room > 0 else 0
    return clip_indices(start, num_frames, clip_len, frame_interval)


def val_indices(num_frames: int, clip_len: int, frame_interval: int) -> np.ndarray:
    """One clip in the middle of the video."""
    start = max(num_frames - span(clip_len, frame_interval), 0) // 2
    return clip_indices(start, num_frames, clip_len, frame_interval)


def test_indices(num_frames: int, clip_len: int, frame_interval: int, num_clips: int) -> np.ndarray:
    """`num_clips` clips spread uniformly over the video; shape (num_clips, clip_len)."""
    if num_clips == 1:
        return val_indices(num_frames, clip_len, frame_interval)[None]
    max_start = max(num_frames - span(clip_len, frame_interval), 0)
    starts = np.round(np.arange(num_clips) * (max_start / (num_clips - 1))).astype(np.int64)
    return np.stack([clip_indices(int(s), num_frames, clip_len, frame_interval) for s in starts])


test_indices.__test__ = False  # not a pytest test despite the name


def segment_train_indices(num_frames: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """One random frame per segment (one draw of `num_segments` integers from `rng`)."""
    if num_frames < 1:
        raise ValueError("a video with no frames has no clips")
    seg = num_frames // num_segments
    if seg > 0:
        return np.arange(num_segments, dtype=np.int64) * seg + rng.integers(seg, size=num_segments)
    # fewer frames than segments: evenly spaced, rounded half to even, looped past the end
    return np.around(np.arange(num_segments) * (num_frames / num_segments)).astype(np.int64) % num_frames


def segment_test_indices(num_frames: int, num_segments: int, samplings: int = 1) -> np.ndarray:
    """Segment centres (and, for `samplings=2`, segment starts); shape (samplings, num_segments)."""
    if num_frames < 1:
        raise ValueError("a video with no frames has no clips")
    if samplings not in (1, 2):
        raise ValueError(f"segment sampling tests 1 or 2 samplings per video, got {samplings}")
    seg = num_frames / num_segments
    starts = np.arange(num_segments) * seg
    rows = [starts + seg / 2, starts][:samplings]
    return np.stack([np.mod(r, num_frames).astype(np.int64) for r in rows])  # truncation, as mmaction2
