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
from functools import partial
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from tpn.config import DataConfig
from tpn.data import transforms as T
from tpn.data.decoders import Decoder, Request, cpu_decoder
from tpn.data.plan import ClipPlan, Planner
from tpn.data.video import VideoError
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
    lines = [line.strip() for line in read_text(path).splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:  # a blank line would shift every class after it by one
        raise AnnotationError(f"{path}:{lines.index('') + 1}: blank line inside the label map (line N names class "
                              "N - 1): remove it")
    names = lines
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
            classes = f" (the label map has {len(names)} classes: 0-{len(names) - 1})" if names else " (negative)"
            raise AnnotationError(f"{where}: label {value} out of range{classes}")
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
                except (TypeError, ValueError, OverflowError):
                    raise AnnotationError(f"{where}: time_start/time_end must be numbers (finite)") from None
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
    """The fewest frames a video of `split` may have (`tpn.data.plan.Planner.fewest_frames`)."""
    return Planner(cfg, split).fewest_frames()


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
    """The items of one split: each is planned (`tpn.data.plan.Planner`, seeded from (seed, epoch,
    index, attempt)) and read by the dataset's decoder (`tpn.data.decoders`: PyAV or raw frames on
    the CPU, or a router that hands a share of training items to GPU decoding as `PacketJob`s)."""

    def __init__(self, cfg: DataConfig, split: str, samples: list[tuple[str, int, int]],
                 label_names: list[str] | None, report_path=None, seed: int = 0, decoder: Decoder | None = None):
        self.cfg, self.split, self.seed = cfg, split, seed
        self.planner = Planner(cfg, split, flip_label_map(cfg.flip_label_pairs))
        self.decoder = decoder or cpu_decoder(cfg)
        root = Path(cfg.root)
        if not root.is_dir() and any(not Path(p).is_absolute() for p, _, _ in samples):
            raise AnnotationError(f"data.root {cfg.root}: not a folder (the {split} list's paths are read under it)")
        # (path under data.root, label, total frames or -1) per list entry
        self.samples = [(str(root / p), label, n) for p, label, n in samples]
        self.label_names = label_names
        self.report_path = report_path
        self._reported: set[str] = set()
        # Shared memory, so `set_epoch` in the main process reaches persistent workers too.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

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
        """Clips in one item (`data.clips_per_decode` in training; 1 for val and test)."""
        return self.planner.clips_per_item

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Random draws depend only on (seed, epoch, index, attempt): the same clips for any
        number of workers, any batch size and after a resume. Call before iterating."""
        self._epoch[0] = epoch

    # -- reading -----------------------------------------------------------------
    def request(self, index: int, attempt: int = 0, rng: np.random.Generator | None = None) -> Request:
        """What a decoder needs to read item `index` (its plan drawn from `rng`, by default the
        item's own generator)."""
        path, label, total = self.samples[index]
        if rng is None and self.split == "train":
            rng = np.random.default_rng([self.seed, self.epoch, index, attempt])
        draft = partial(self.planner.draft, index, path, label, rng=rng)
        return Request(path, f"{self.seed}:{self.epoch}:{index}", draft, total)

    def read(self, index: int, attempt: int = 0, decoder: Decoder | None = None, rng=None):
        """(plan, views or a `PacketJob`) of item `index`; an unreadable video raises `VideoError`."""
        return (decoder or self.decoder).read(self.request(index, attempt, rng))

    def report(self, index: int, err: Exception) -> None:
        """Log and record (`report_path`) an unreadable video, once per process."""
        path = self.samples[index][0]
        if path in self._reported:  # a long run meets a broken video every epoch
            return
        self._reported.add(path)
        what = "replaced by another sample" if self.split == "train" else "scored as missing"
        log.warning("%s: %s (%s)", self.split, err, what)
        write_report_line(self.report_path, {"path": path, "error": str(err), "split": self.split})

    # -- items -------------------------------------------------------------------
    def __getitem__(self, index: int):
        if self.split == "train":
            for attempt in range(REPLACEMENTS):
                try:
                    return self.train_item(*self.read(index, attempt))
                except VideoError as e:
                    self.report(index, e)
                    # a deterministic replacement: same choice for the same (index, attempt)
                    index = zlib.crc32(f"{index}:{attempt}".encode()) % len(self.samples)
            raise NoReadableVideo(f"{REPLACEMENTS} unreadable videos in a row (last {self.samples[index][0]}); "
                                  f"see {self.report_path}")
        label = self.samples[index][1]
        try:
            return Batch(self.eval_clip(index), label, index, True)
        except VideoError as e:
            self.report(index, e)
            c = self.cfg
            if self.split == "val":
                shape = (3, c.clip_len, c.crop_size, c.crop_size)
            else:
                shape = (c.test_clips * c.test_crops, 3, c.clip_len, c.test_crop_size, c.test_crop_size)
            return Batch(torch.zeros(shape, dtype=torch.uint8), label, index, False)

    def eval_clip(self, index: int) -> torch.Tensor:
        """The val clip or the test views of video `index`; an unreadable video raises `VideoError`."""
        _, views = self.read(index)
        return views[0] if self.split == "val" else views

    def train_item(self, plan: ClipPlan, out) -> Batch:
        """A training item of a plan's k clips: `out` is their views, or a `PacketJob` the GPU
        decodes (zeros in `clip` until then). Flip/jitter is applied here unless
        `data.augment_on_device` leaves it to the device (or the GPU decoding stage)."""
        c, k = self.cfg, plan.views
        aug = torch.from_numpy(plan.aug)
        job = None
        if isinstance(out, torch.Tensor):
            clips = out if c.augment_on_device else T.apply_augment(out, aug)
        else:
            job = out
            clips = T.frames_last(torch.zeros((k, 3, plan.frames.shape[1], plan.out, plan.out), dtype=torch.uint8))
        on_device = aug if c.augment_on_device else None
        if k == 1:
            return Batch(clips[0], int(plan.labels[0]), plan.index, True, None if on_device is None else aug[0], job)
        return Batch(clips, torch.from_numpy(plan.labels), torch.full((k,), plan.index, dtype=torch.int64),
                     torch.ones(k, dtype=torch.bool), on_device, job)


def build_dataset(data_cfg: DataConfig, split: str, report_path=None, seed: int = 0,
                  decoder: Decoder | None = None) -> VideoDataset:
    list_file = {"train": data_cfg.train_list, "val": data_cfg.val_list, "test": data_cfg.test_list}[split]
    if not list_file:
        raise AnnotationError(f"data.{split}_list is not set in the config")
    names = read_label_names(data_cfg.label_map) if data_cfg.label_map else None
    samples = read_annotations(list_file, data_cfg.format, names)
    if not samples:
        raise AnnotationError(f"{list_file}: no samples")
    return VideoDataset(data_cfg, split, samples, names, report_path, seed, decoder)
