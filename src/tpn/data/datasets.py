"""Annotation lists and the video dataset.

Formats (`data.format`):
- `list` / `mmaction_video`: `relative/path.mp4 LABEL` per line (the Paddle reproduction's and
  mmaction2's video lists); LABEL is an integer or, with a label map, a class name.
- `mmaction_rawframes`: `relative/frame_dir TOTAL_FRAMES LABEL` (frames `img_00001.jpg`, ...).
- `kinetics_csv`: the Kinetics CSV (`label,youtube_id,time_start,time_end,split`); videos are
  `ROOT/LABEL/YOUTUBEID_START_END.mp4` with 6-digit zero-padded times, labels by name.
A bad line is a one-line error naming the file and line number.

Items are `Batch`es of one video (uint8, channels first; see docs/data.md, "Batch layouts"),
the same six fields in every split; `tpn.data.loader.collate` stacks them into a `Batch`:
- clip: train/val `[3, T, crop, crop]`; test `[V, 3, T, S, S]`, V = test_clips x test_crops,
  clip-major.
- label, index (train: the video actually read), ok (False: unreadable, zeros in its place).
- aug: with `data.augment_on_device`, the flip/jitter draw (`transforms.draw_augment`) the
  device applies; None otherwise.
- job: with GPU decoding (`data.decoder`, `tpn.data.nvdec`), a training item the GPU decodes
  holds its packets and draws here (`nvdec.ClipJob`) and zeros in `clip`; None otherwise.
Train: a broken video is replaced by another sample chosen from (index, attempt), logged,
and appended to the report file. With `data.clips_per_decode: k > 1` a train item holds k
clips of one video decoded together: clip `[k, 3, T, crop, crop]`, and label, index, ok
(aug `[k, 7]`) one per clip (`tpn.data.loader.collate_clips` flattens them into the batch).
Val: one centred clip, centre crop. val/test never replace a broken video: it comes back
with ok=False (zeros) and is reported.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from tpn.config import DataConfig
from tpn.data import sampling, transforms as T
from tpn.data.video import VideoError, check_frame_size, count_rawframes, read_clip, read_rawframes
from tpn.errors import TpnError, read_text

log = logging.getLogger("tpn.data")


class AnnotationError(TpnError):
    pass


class NoReadableVideo(TpnError):
    """A training item found no readable video in `REPLACEMENTS` tries (a list of broken files)."""


REPLACEMENTS = 10


class Batch(NamedTuple):
    """One video's item, or (collated, N first) a batch of them."""
    clip: torch.Tensor  # uint8 (3, T, H, W) or (V, 3, T, S, S) test views
    label: int | torch.Tensor
    index: int | torch.Tensor  # position in the dataset's list
    ok: bool | torch.Tensor  # False: unreadable video, zeros in its place (val/test)
    aug: torch.Tensor | None = None  # data.augment_on_device: the draw the device applies
    job: object = None  # data.decoder nvdec/hybrid: the `nvdec.ClipJob` the device decodes into `clip`


def read_label_names(path: str | Path) -> list[str]:
    """Class names, one per line (a label map, or `tpn convert --labels`)."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: label file not found (one class name per line)")
    names = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    if not names:
        raise AnnotationError(f"{path}: label file is empty (one class name per line)")
    if len(set(names)) != len(names):
        raise AnnotationError(f"{path}: duplicate class names in the label map")
    return names


def _is_integer(token: str) -> bool:
    """ASCII digits (a leading minus allowed): `str.isdigit` also takes '²' and '١', which int()
    refuses or reads as another script's digit."""
    digits = token.removeprefix("-")
    return digits.isascii() and digits.isdigit()


def _label(token: str, names: dict[str, int] | None, where: str) -> int:
    if _is_integer(token):
        value = int(token)
        if value < 0 or (names is not None and value >= len(names)):
            raise AnnotationError(f"{where}: label {value} out of range")
        return value
    if names is None:
        raise AnnotationError(f"{where}: label {token!r} is not an integer and no label map is set (data.label_map)")
    if token not in names:
        raise AnnotationError(f"{where}: unknown label name {token!r} (not in the label map)")
    return names[token]


def iter_annotations(path: str | Path, fmt: str, label_names: list[str] | None = None):
    """Yield (line number, line text, (relative path, label, total_frames or -1) or the
    AnnotationError of a bad line) for every entry of an annotation file."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found")
    names = {n: i for i, n in enumerate(label_names)} if label_names is not None else None
    if fmt == "kinetics_csv":
        lines = read_text(path).splitlines()
        reader = csv.DictReader(lines)
        need = {"label", "youtube_id", "time_start", "time_end"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise AnnotationError(f"{path}:1: CSV header must contain {', '.join(sorted(need))}")
        for n, row in enumerate(reader, start=2):
            where = f"{path}:{n}"
            try:
                try:
                    start, end = int(float(row["time_start"])), int(float(row["time_end"]))
                except (TypeError, ValueError):
                    raise AnnotationError(f"{where}: time_start/time_end must be numbers") from None
                if not row["youtube_id"]:
                    raise AnnotationError(f"{where}: empty youtube_id")
                label = _label(row["label"] or "", names, where)
                yield n, lines[n - 1], (f"{row['label']}/{row['youtube_id']}_{start:06d}_{end:06d}.mp4", label, -1)
            except AnnotationError as e:
                yield n, lines[n - 1] if n <= len(lines) else "", e
        return
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            try:
                yield n, line, parse_line(line, fmt, names, f"{path}:{n}")
            except AnnotationError as e:
                yield n, line, e


def read_annotations(path: str | Path, fmt: str, label_names: list[str] | None = None) -> list[tuple[str, int, int]]:
    """[(relative path, label, total_frames or -1)] from an annotation file; a bad line raises."""
    out = []
    for _, _, entry in iter_annotations(path, fmt, label_names):
        if isinstance(entry, AnnotationError):
            raise entry
        out.append(entry)
    return out


def parse_line(line: str, fmt: str, names: dict[str, int] | None, where: str) -> tuple[str, int, int]:
    """One line of a text list -> (relative path, label, total_frames or -1).

    The path is everything before the last field (rawframes: the last two), character for
    character, so a name with repeated spaces still names its file. The whitespace around the
    line and between the fields is not part of it.
    """
    text = line.strip()
    n_fields = 2 if fmt == "mmaction_rawframes" else 1
    head, fields = text, []
    for _ in range(n_fields):
        cut = re.search(r"\s+(\S+)$", head)
        if cut is None:
            break
        fields.insert(0, cut.group(1))
        head = head[:cut.start()]
    if fmt == "mmaction_rawframes":
        if len(fields) != 2 or not (fields[0].isascii() and fields[0].isdigit()):
            raise AnnotationError(f"{where}: expected 'FRAME_DIR TOTAL_FRAMES LABEL', got {text!r}")
        return head, _label(fields[1], names, where), int(fields[0])
    if not fields:
        raise AnnotationError(f"{where}: expected 'PATH LABEL', got {text!r} (missing label?)")
    return head, _label(fields[0], names, where), -1


def frames_needed(cfg: DataConfig, split: str) -> int:
    """The fewest frames a video of `split` may have. Only training with `data.short_videos: skip`
    asks for more than one: a clip's span (segments: one frame per segment); a shorter training
    video is replaced. Val/test, and training with `loop`, wrap a short video's indices around."""
    if split != "train" or cfg.short_videos == "loop":
        return 1
    return cfg.clip_len if cfg.sampling == "segments" else sampling.span(cfg.clip_len, cfg.frame_interval)


def read_report(report_path: str | Path) -> list[dict]:
    """The records of a `bad_videos.jsonl` report (none when it does not exist)."""
    path = Path(report_path)
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def write_report_line(report_path: str | Path | None, record: dict) -> None:
    """Append one JSON line; a single O_APPEND write, so concurrent workers do not interleave."""
    if report_path is None:
        return
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(str(report_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def flip_label_map(pairs) -> dict[int, int]:
    """{a: b, b: a} for each pair of data.flip_label_pairs; a label in two pairs is an error."""
    out: dict[int, int] = {}
    for a, b in pairs:
        for x in (a, b):
            if x in out or a == b:
                raise AnnotationError(f"data.flip_label_pairs: label {x} appears more than once")
        out[a], out[b] = b, a
    return out


class VideoDataset(Dataset):
    def __init__(self, cfg: DataConfig, split: str, samples: list[tuple[str, int, int]],
                 label_names: list[str] | None, report_path=None, seed: int = 0):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be train, val or test, got {split!r}")
        self.cfg, self.split, self.seed = cfg, split, seed
        self.root = Path(cfg.root)
        self.rawframes = cfg.format == "mmaction_rawframes"
        # (path under data.root, label, total frames or -1) per list entry
        self.samples = [(str(self.root / p), label, n) for p, label, n in samples]
        self.label_names = label_names
        self.report_path = report_path
        self._reported: set[str] = set()
        if cfg.clips_per_decode < 1:
            raise TpnError(f"data.clips_per_decode must be at least 1, got {cfg.clips_per_decode}")
        self.segments = cfg.sampling == "segments"
        self.flip_labels = flip_label_map(cfg.flip_label_pairs)
        if self.segments and cfg.test_clips not in (1, 2):
            raise AnnotationError(f"data.test_clips must be 1 or 2 with data.sampling segments (segment centres, "
                                  f"then also segment starts), got {cfg.test_clips}")
        # Shared memory, so `set_epoch` in the main process reaches persistent workers too.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._gpu_share = torch.zeros(1, dtype=torch.float64).share_memory_()

    def __len__(self) -> int:
        return len(self.samples)

    def path(self, index: int) -> str:
        return self.samples[index][0]

    def relabel(self, names: list[str]) -> None:
        """Number the labels by `names` (a checkpoint's classes: the label map's in another order)
        instead of by the label map."""
        index = {n: i for i, n in enumerate(names)}
        self.samples = [(p, index[self.label_names[label]], n) for p, label, n in self.samples]
        self.label_names = list(names)

    @property
    def clips_per_item(self) -> int:
        """Clips in one training item (`data.clips_per_decode`); 1 for val and test."""
        return self.cfg.clips_per_decode if self.split == "train" else 1

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Random draws depend only on (seed, epoch, index, attempt): the same clips for any
        number of workers, any batch size and after a resume. Call before iterating."""
        self._epoch[0] = epoch

    # -- reading -----------------------------------------------------------------
    def _read(self, index: int, picker) -> torch.Tensor:
        """(3, len(indices), H, W) uint8 for the indices `picker(num_frames)` chooses."""
        path, _, total = self.samples[index]
        if self.rawframes:
            n = total if total > 0 else count_rawframes(path, self.cfg.filename_tmpl)
            if n < 1:
                raise VideoError(f"{path}: no frames")
            frames = read_rawframes(path, np.asarray(picker(n)).reshape(-1), self.cfg.filename_tmpl)
            check_frame_size(path, frames.shape[2], frames.shape[1], self.cfg.max_frame_pixels, self.cfg.short_side)
        else:
            frames, _ = read_clip(path, picker, max_pixels=self.cfg.max_frame_pixels, short_side=self.cfg.short_side)
        return T.to_clip(frames)

    def _train_pick(self, index: int, n: int, rng: np.random.Generator) -> np.ndarray:
        c = self.cfg
        need = frames_needed(c, "train")
        if n < need:
            raise VideoError(f"{self.samples[index][0]}: too short: {n} frames, one clip spans "
                             f"{need} (data.short_videos=loop keeps it)")
        if self.segments:
            return sampling.segment_train_indices(n, c.clip_len, rng)
        return sampling.train_indices(n, c.clip_len, c.frame_interval, rng)

    def _val_pick(self, n: int) -> np.ndarray:
        c = self.cfg
        if self.segments:
            return sampling.segment_test_indices(n, c.clip_len, 1)[0]
        return sampling.val_indices(n, c.clip_len, c.frame_interval)

    def _test_pick(self, n: int) -> np.ndarray:
        c = self.cfg
        if self.segments:
            return sampling.segment_test_indices(n, c.clip_len, c.test_clips)
        return sampling.test_indices(n, c.clip_len, c.frame_interval, c.test_clips)

    def _rng(self, index: int, attempt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index, attempt])

    def _report(self, index: int, err: Exception) -> None:
        path = self.samples[index][0]
        if path in self._reported:  # once per process: a long run meets a broken video every epoch
            return
        self._reported.add(path)
        what = "replaced by another sample" if self.split == "train" else "scored as missing"
        log.warning("%s: %s (%s)", self.split, err, what)
        write_report_line(self.report_path, {"path": path, "error": str(err), "split": self.split})

    # -- items -------------------------------------------------------------------
    def __getitem__(self, index: int):
        c = self.cfg
        if self.split == "train":
            for attempt in range(REPLACEMENTS):
                rng = self._rng(index, attempt)
                try:
                    return self._train_item(index, rng)
                except VideoError as e:
                    self._report(index, e)
                    # a deterministic replacement: same choice for the same (index, attempt)
                    index = zlib.crc32(f"{index}:{attempt}".encode()) % len(self.samples)
            raise NoReadableVideo(f"{REPLACEMENTS} unreadable videos in a row (last {self.samples[index][0]}); "
                                  f"see {self.report_path}")
        label = self.samples[index][1]
        try:
            return Batch(self.eval_clip(index), label, index, True)
        except VideoError as e:
            self._report(index, e)
            if self.split == "val":
                shape = (3, c.clip_len, c.crop_size, c.crop_size)
            else:
                shape = (c.test_clips * c.test_crops, 3, c.clip_len, c.test_crop_size, c.test_crop_size)
            return Batch(torch.zeros(shape, dtype=torch.uint8), label, index, False)

    def eval_clip(self, index: int) -> torch.Tensor:
        """The val clip or the test views of video `index`; an unreadable video raises `VideoError`."""
        if self.split == "val":
            return self._val_transform(self._read(index, self._val_pick))
        return self._test_transform(self._read(index, self._test_pick))

    def _train_item(self, index: int, rng: np.random.Generator) -> Batch:
        """`clips_per_item` clips of one video: their starts drawn independently (each as in
        mmaction2), their frames decoded in one pass, each with its own crop/flip/jitter draw.
        A flipped clip of a left/right class takes its twin's label (data.flip_label_pairs)."""
        if self._on_gpu(index):
            job = self._gpu_job(index, rng)
            if job is not None:
                return job
        return self._cpu_train_item(index, rng)

    def _cpu_train_item(self, index: int, rng: np.random.Generator) -> Batch:
        k = self.clips_per_item
        clips = self._read(index, lambda n: np.stack([self._train_pick(index, n, rng) for _ in range(k)]))
        t = clips.shape[1] // k  # frames per clip (segments: num_clips x clip_len)
        parts = [self._train_transform(clips[:, j * t:(j + 1) * t], rng) for j in range(k)]
        return self._train_batch(index, [clip for clip, _ in parts], [aug for _, aug in parts])

    def _train_batch(self, index: int, clips: list[torch.Tensor], augs: list[torch.Tensor], job=None) -> Batch:
        """A training item of the k clips of video `index` with their flip/jitter draws (a flipped
        clip of a left/right class takes its twin's label); k = 1 is a plain item."""
        label = self.samples[index][1]
        labels = [self.flip_labels.get(label, label) if aug[0] > 0 else label for aug in augs]
        on_device, k = self.cfg.augment_on_device, len(clips)
        if k == 1:
            return Batch(clips[0], labels[0], index, True, augs[0] if on_device else None, job)
        return Batch(T.stack_frames_last(clips), torch.tensor(labels, dtype=torch.int64),
                     torch.full((k,), index, dtype=torch.int64), torch.ones(k, dtype=torch.bool),
                     torch.stack(augs) if on_device else None, job)

    def _train_transform(self, clip: torch.Tensor, rng: np.random.Generator):
        """(clip, flip/jitter draw): applied to the clip, or with data.augment_on_device left for the device."""
        c = self.cfg
        clip = T.apply_geometry(clip, self._draw_geometry(clip.shape[-2], clip.shape[-1], rng), c.crop_size)
        aug = T.draw_augment(rng, c.flip, c.color_jitter)
        if c.augment_on_device:  # flip and jitter are applied by the engine on the device
            return T.frames_last(clip), aug
        return T.frames_last(T.apply_augment(clip[None], aug[None])[0]), aug

    def _draw_geometry(self, h: int, w: int, rng: np.random.Generator):
        c = self.cfg
        return T.draw_train_geometry(h, w, c.train_crop, c.crop_size, c.short_side, rng)

    # -- GPU decoding (data.decoder nvdec / hybrid: tpn.data.nvdec) ---------------
    @property
    def gpu_share(self) -> float:
        """Share of training items whose frames the GPU decodes (0: none, 1: all it can take)."""
        return float(self._gpu_share[0])

    def set_gpu_share(self, share: float) -> None:
        self._gpu_share[0] = float(share)

    def _on_gpu(self, index: int) -> bool:
        share = self.gpu_share
        if share <= 0 or self.rawframes:
            return False
        draw = zlib.crc32(f"{self.seed}:{self.epoch}:{index}".encode()) / 2**32
        return draw < share

    def _gpu_job(self, index: int, rng: np.random.Generator) -> Batch | None:
        """The item as a `ClipJob` for the GPU (zeros in `clip`, filled on the device), with the
        random draws of the CPU path in its order; None when the GPU path does not take this
        video (the caller decodes it here, from the same `rng` state)."""
        from tpn.data import nvdec

        path = self.samples[index][0]
        state = rng.bit_generator.state
        video = nvdec.demux(path)
        if video is None:
            return None
        check_frame_size(path, video.width, video.height, self.cfg.max_frame_pixels, self.cfg.short_side)
        c, k = self.cfg, self.clips_per_item
        n = len(video.index)
        try:
            wanted = np.stack([self._train_pick(index, n, rng) for _ in range(k)])
        except VideoError:
            rng.bit_generator.state = state  # the CPU path raises the same, from the same draws
            return None
        geometry, augs = [], []
        for _ in range(k):  # per clip its crop, then its flip/jitter: the CPU path's order of draws
            geometry.append(self._draw_geometry(video.height, video.width, rng))
            augs.append(T.draw_augment(rng, c.flip, c.color_jitter))
        job = nvdec.make_job(path, video, wanted, [g[0] for g in geometry], [g[1] for g in geometry],
                             c.crop_size, torch.stack(augs))
        zeros = T.frames_last(torch.zeros((3, wanted.shape[1], c.crop_size, c.crop_size), dtype=torch.uint8))
        return self._train_batch(index, [zeros] * k, augs, job)

    def _val_transform(self, clip: torch.Tensor) -> torch.Tensor:
        return T.frames_last(T.center_crop(T.resize_short_side(clip, self.cfg.short_side), self.cfg.crop_size))

    def _test_transform(self, clip: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        clip = T.resize_short_side(clip, c.short_side)
        views = []
        for k in range(c.test_clips):  # clip-major: view v = clip v // crops, crop v % crops
            part = clip[:, k * c.clip_len:(k + 1) * c.clip_len]
            if c.test_crops == 3:
                crops = T.three_crop(part, c.test_crop_size)
            else:
                crops = [T.center_crop(part, c.test_crop_size)]
            views += crops
        return T.stack_frames_last(views)  # row copies of the decoded frames


def build_dataset(data_cfg: DataConfig, split: str, report_path=None, seed: int = 0) -> VideoDataset:
    list_file = {"train": data_cfg.train_list, "val": data_cfg.val_list, "test": data_cfg.test_list}[split]
    if not list_file:
        raise AnnotationError(f"data.{split}_list is not set in the config")
    names = read_label_names(data_cfg.label_map) if data_cfg.label_map else None
    samples = read_annotations(list_file, data_cfg.format, names)
    if not samples:
        raise AnnotationError(f"{list_file}: no samples")
    return VideoDataset(data_cfg, split, samples, names, report_path, seed)
