"""Decoders: one small interface that turns a clip plan (`tpn.data.plan`) into uint8 clips.

    plan, out = decoder.read(request)

`request` names the source, the item's routing key and how to draft its plan from the frame
count (`Request.draft`); the decoder opens the source once, drafts the plan, places it on the
frame size it finds, and returns the plan with its views, uint8 (V, 3, T, out, out) frames-last:

- `PyAVDecoder`: video files, FFmpeg through PyAV, in the loader's worker processes.
- `RawFramesDecoder`: folders of JPEG frames (`data.format: mmaction_rawframes`).
- `tpn.data.nvdec.PacketReader` (the worker's half of GPU decoding): returns, in place of the
  views, a `PacketJob` (the packets NVDEC needs and the plan) that the GPU decode process turns
  into the same views; None for a video it does not take (the CPU decoder reads it).
- `Routed`: a share of the items (a shared-memory value the engine's decoding policy sets, read
  by every worker) to one decoder, the rest to another; each item's side is a pure function of
  its key (seed, epoch, index), so a run's clips do not depend on the number of workers.

Which decoders a run uses is `data.decoder` (`tpn.data.nvdec.build_decoding`); the dataset only
holds one `Decoder` and calls `read`.
"""
from __future__ import annotations

import zlib
from typing import Callable, NamedTuple, Protocol

import numpy as np
import torch

from tpn.data import transforms as T
from tpn.data.plan import ClipPlan, Draft
from tpn.data.video import VideoError, VideoReader, check_frame_size, count_rawframes, read_rawframes


class Request(NamedTuple):
    source: str                          # video file or frame folder
    key: str                             # the item's identity for routing: "seed:epoch:index"
    draft: Callable[[int], Draft]        # num_frames -> the plan's frames
    num_frames: int = -1                 # known from the list (raw frames), else -1


class Decoder(Protocol):
    name: str

    def read(self, request: Request) -> tuple[ClipPlan, object] | None: ...


class PyAVDecoder:
    """Video files decoded with PyAV (frame-exact, seeking and skipping what no wanted frame needs,
    `tpn.data.video.VideoReader`); frames larger than `max_pixels` (also after the short-side
    resize to `short_side`) are refused before decoding."""
    name = "pyav"

    def __init__(self, max_pixels: int, short_side: int | None = None):
        self.max_pixels, self.short_side = max_pixels, short_side

    def read(self, request: Request) -> tuple[ClipPlan, torch.Tensor]:
        with VideoReader(request.source) as reader:
            cc = reader.stream.codec_context
            check_frame_size(request.source, cc.width, cc.height, self.max_pixels, self.short_side)
            draft = request.draft(reader.num_frames)
            indices = np.unique(draft.frames)
            frames = reader.get_frames(indices)
        plan = draft.place(frames.shape[1], frames.shape[2])  # upright: a display matrix may turn them
        return plan, T.make_views(frames, indices, plan)


class RawFramesDecoder:
    """Folders of frames `template.format(i + 1)` (JPEG), counted when the list does not say."""
    name = "rawframes"

    def __init__(self, template: str, max_pixels: int, short_side: int | None = None):
        self.template, self.max_pixels, self.short_side = template, max_pixels, short_side

    def read(self, request: Request) -> tuple[ClipPlan, torch.Tensor]:
        n = request.num_frames if request.num_frames > 0 else count_rawframes(request.source, self.template)
        draft = request.draft(n)
        indices = np.unique(draft.frames)
        frames = read_rawframes(request.source, indices, self.template)
        check_frame_size(request.source, frames.shape[2], frames.shape[1], self.max_pixels, self.short_side)
        plan = draft.place(frames.shape[1], frames.shape[2])
        return plan, T.make_views(frames, indices, plan)


class Routed:
    """Items whose key draws below `share[0]` go to `first` (falling back to `rest` when it
    declines a video), the others to `rest`. `share` is a shared-memory float64 tensor."""

    def __init__(self, first: Decoder, rest: Decoder, share: torch.Tensor):
        self.first, self.rest, self.share = first, rest, share
        self.name = f"{first.name}+{rest.name}"

    def takes(self, key: str) -> bool:
        share = float(self.share[0])
        return share > 0 and zlib.crc32(key.encode()) / 2**32 < share

    def read(self, request: Request):
        if self.takes(request.key):
            got = self.first.read(request)
            if got is not None:
                return got
        return self.rest.read(request)


def share_value(value: float = 0.0) -> torch.Tensor:
    """A float the engine sets and the loader's workers (persistent, forked or spawned) read."""
    return torch.full((1,), float(value), dtype=torch.float64).share_memory_()


def cpu_decoder(cfg) -> PyAVDecoder | RawFramesDecoder:
    """The CPU decoder of a `DataConfig`: raw frames or PyAV."""
    if cfg.format == "mmaction_rawframes":
        return RawFramesDecoder(cfg.filename_tmpl, cfg.max_frame_pixels, cfg.short_side)
    return PyAVDecoder(cfg.max_frame_pixels, cfg.short_side)


__all__ = ["Request", "Decoder", "PyAVDecoder", "RawFramesDecoder", "Routed", "share_value", "cpu_decoder",
           "VideoError"]
