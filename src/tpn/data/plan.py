"""Clip plans: which frames of a video to read and how to make clips of them, as plain data.

A dataset item is planned before anything is decoded, and every decoder (`tpn.data.decoders`:
PyAV in the loader workers, NVDEC in the decode process, raw frames) turns the same plan into
the same uint8 clips. A plan is a pure function of the config, the split, the item's random
generator (seeded from (seed, epoch, index, attempt)) and the video's frame count and upright
frame size, made in two steps because a decoder learns them in that order:

    draft = planner.draft(index, source, label, num_frames, rng)   # frame indices
    plan = draft.place(height, width)                              # geometry, flip/jitter, labels

The draws come in the order mmaction2's pipeline makes them: every clip's frames, then per clip
its crop, then its flip/jitter.

Each view of a plan is `frames[v]` resized to `resize[v]`, the box `box[v]` cropped from that and
resized to `out` x `out` (an identity when the box is already that size): training clips (random
or random-resized crops), the centred validation clip and the test views (clips x crops,
clip-major) are all that one operation. Strategies: the sampling (`Dense`: `clip_len` frames
`frame_interval` apart; `Segments`: one frame per segment, TSN/TSM) times the split (`train`,
`val`, `test` methods of `Planner`).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from tpn.config import DataConfig
from tpn.data import sampling, transforms as T
from tpn.data.video import VideoError
from tpn.errors import TpnError


class ClipPlan(NamedTuple):
    """What one item reads and makes: V views (train: its k clips; val: 1; test: clips x crops)."""
    index: int               # the video's position in the dataset's list
    source: str              # video file or frame folder
    frames: np.ndarray       # int64 (V, T): frame indices of each view
    resize: np.ndarray       # int64 (V, 2): (h, w) the frames are resized to first
    box: np.ndarray          # int64 (V, 4): (top, left, h, w) cropped from the resized frames
    out: int                 # the box is resized to out x out
    labels: np.ndarray       # int64 (k,): one per clip of the item (a flipped left/right clip: its twin's)
    aug: np.ndarray | None   # float32 (V, 7): train: the flip/jitter draws (`transforms.draw_augment`)

    @property
    def views(self) -> int:
        return len(self.frames)


class Dense:
    """`clip_len` frames `frame_interval` apart (mmaction2's SampleFrames), from the video as played
    at `tempo` x speed (`sampling.at_tempo`; 1: as recorded)."""

    def __init__(self, clip_len: int, frame_interval: int, tempo: Fraction = Fraction(1)):
        self.clip_len, self.interval, self.tempo = clip_len, frame_interval, Fraction(tempo)

    def fewest_frames(self) -> int:  # the source frames whose played video holds one clip's span
        return math.floor((sampling.span(self.clip_len, self.interval) - 1) * self.tempo) + 1

    def train(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return sampling.at_tempo(n, self.tempo, lambda m: sampling.train_indices(m, self.clip_len, self.interval, rng))

    def val(self, n: int) -> np.ndarray:
        return sampling.at_tempo(n, self.tempo, lambda m: sampling.val_indices(m, self.clip_len, self.interval))

    def test(self, n: int, clips: int) -> np.ndarray:
        return sampling.at_tempo(n, self.tempo,
                                 lambda m: sampling.test_indices(m, self.clip_len, self.interval, clips))


class Segments:
    """One frame per segment (TSN / TSM), `clip_len` segments."""

    def __init__(self, clip_len: int):
        self.clip_len = clip_len

    def fewest_frames(self) -> int:
        return self.clip_len

    def train(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return sampling.segment_train_indices(n, self.clip_len, rng)

    def val(self, n: int) -> np.ndarray:
        return sampling.segment_test_indices(n, self.clip_len, 1)[0]

    def test(self, n: int, clips: int) -> np.ndarray:
        return sampling.segment_test_indices(n, self.clip_len, clips)


def sampler_of(cfg: DataConfig, tempo: Fraction = Fraction(1)) -> Dense | Segments:
    """The config's sampling; `tempo` != 1 (playback speed) is for dense sampling only: segments
    spread over the whole video, so a video played faster or slower gives the same frames."""
    if cfg.sampling == "segments":
        if tempo != 1:
            raise TpnError("--tempo: data.sampling 'segments' takes one frame per segment of the whole video, "
                           "the same frames at any playback speed: tempo applies to dense sampling only")
        return Segments(cfg.clip_len)
    return Dense(cfg.clip_len, cfg.frame_interval, tempo)


class Draft(NamedTuple):
    """A plan's first step: the frames (from the frame count); `place` adds the rest."""
    planner: "Planner"
    index: int
    source: str
    label: int
    frames: np.ndarray
    rng: np.random.Generator | None

    def place(self, height: int, width: int) -> ClipPlan:
        return getattr(self.planner, f"_place_{self.planner.split}")(self, height, width)


class Planner:
    """The plans of one split of a dataset: `draft(...)` then `Draft.place(h, w)`."""

    def __init__(self, cfg: DataConfig, split: str, flip_labels: dict[int, int] | None = None,
                 tempo: Fraction = Fraction(1)):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {split!r}")
        self.cfg, self.split, self.flip_labels, self.tempo = cfg, split, flip_labels or {}, Fraction(tempo)
        self.sampler = sampler_of(cfg, self.tempo)

    def with_tempo(self, tempo: Fraction) -> "Planner":
        """The same plans from the videos played at `tempo` x speed (dense sampling only)."""
        return Planner(self.cfg, self.split, self.flip_labels, tempo)

    @property
    def clips_per_item(self) -> int:
        """Clips an item holds (the labels of a plan): `data.clips_per_decode` in training, else 1."""
        return self.cfg.clips_per_decode if self.split == "train" else 1

    def fewest_frames(self) -> int:
        """Training with `data.short_videos: skip` needs a clip's span; everything else wraps around."""
        if self.split != "train" or self.cfg.short_videos == "loop":
            return 1
        return self.sampler.fewest_frames()

    def draft(self, index: int, source: str, label: int, num_frames: int,
              rng: np.random.Generator | None = None) -> Draft:
        """The frames of item `index` from a video of `num_frames` (`VideoError` when too short)."""
        need = self.fewest_frames()
        if num_frames < need:
            if need == 1:
                raise VideoError(f"{source}: no frames")
            raise VideoError(f"{source}: too short: {num_frames} frames, one clip spans {need} "
                             "(data.short_videos=loop keeps it)")
        s, c = self.sampler, self.cfg
        if self.split == "train":
            frames = np.stack([s.train(num_frames, rng) for _ in range(self.clips_per_item)])
        elif self.split == "val":
            frames = s.val(num_frames)[None]
        else:  # clip-major views: each temporal clip once per crop
            frames = np.repeat(s.test(num_frames, c.test_clips), c.test_crops, axis=0)
        return Draft(self, index, source, label, frames.astype(np.int64), rng)

    def _place_train(self, d: Draft, h: int, w: int) -> ClipPlan:
        c = self.cfg
        resize, box, aug = [], [], []
        for _ in range(len(d.frames)):  # per clip its crop, then its flip/jitter
            size, crop = T.draw_train_geometry(h, w, c.train_crop, c.crop_size, c.short_side, d.rng)
            resize.append(size), box.append(crop)
            aug.append(T.draw_augment(d.rng, c.flip, c.color_jitter).numpy())
        labels = [self.flip_labels.get(d.label, d.label) if a[0] > 0 else d.label for a in aug]
        return ClipPlan(d.index, d.source, d.frames, _ints(resize, 2), _ints(box, 4), c.crop_size,
                        np.asarray(labels, np.int64), np.stack(aug).astype(np.float32))

    def _place_val(self, d: Draft, h: int, w: int) -> ClipPlan:
        c = self.cfg
        rh, rw = T.short_side_size(h, w, c.short_side)
        box = ((rh - c.crop_size) // 2, (rw - c.crop_size) // 2, c.crop_size, c.crop_size)
        return ClipPlan(d.index, d.source, d.frames, _ints([(rh, rw)], 2), _ints([box], 4), c.crop_size,
                        np.asarray([d.label], np.int64), None)

    def _place_test(self, d: Draft, h: int, w: int) -> ClipPlan:
        c = self.cfg
        rh, rw, size = *T.short_side_size(h, w, c.short_side), c.test_crop_size
        boxes = T.three_crop_boxes(rh, rw, size) if c.test_crops == 3 else [((rh - size) // 2, (rw - size) // 2)]
        views = len(d.frames)
        box = [(*boxes[v % len(boxes)], size, size) for v in range(views)]
        return ClipPlan(d.index, d.source, d.frames, _ints([(rh, rw)] * views, 2), _ints(box, 4), size,
                        np.asarray([d.label], np.int64), None)


def _ints(rows, width: int) -> np.ndarray:
    return np.asarray(rows, dtype=np.int64).reshape(-1, width)

