"""GPU decoding of training clips (`data.decoder: nvdec | hybrid | auto`).

The work is split where each side is good:
- a loader worker (CPU) demuxes the video with PyAV, frames each packet as Annex B (FFmpeg's
  `h264_mp4toannexb` / `hevc_mp4toannexb`, the framing NVDEC's parser reads), draws the clip's
  frames, crop and flip/jitter with the same random calls, in the same order, as the CPU path,
  and keeps only the packets the decoder needs: from the keyframe at or before the first wanted
  frame to the packet of the wanted frame last in decode order, without the non-reference
  packets of unwanted frames (`tpn.data.nal`). That is a `ClipJob`: bytes, no pixels.
- the main process (`DecodeStage`, one background thread per process, so under torchrun each
  process decodes on its own GPU) hands a batch's jobs to `threads` decoder threads. Each thread
  keeps one long-lived decoder per (codec, width, height) and streams the jobs it gets into it
  one after another, each job closed by an end-of-sequence NAL unit (so the next job's keyframe
  starts afresh, as after a seek), then drains it once per batch. Frames are recognised by the
  timestamp each packet carries (job slot and frame index), the wanted ones copied out of the
  decoder, converted NV12 -> RGB (the matrix and range PyAV's `rgb24` uses: BT.601 unless the
  stream says BT.709, limited unless full), cropped and resized (OpenCV's INTER_LINEAR) on the
  GPU and written into the batch.

Frames are the ones PyAV decodes at the same indices: the Y and UV planes are equal byte for
byte, and so are the RGB frames and the finished clips: the conversion and the resize are
swscale's and OpenCV's integer arithmetic in torch (`tpn.data.pixels`).

What NVDEC is not given stays on the CPU path of the worker: codecs other than H.264/HEVC, other
pixel formats than 8-bit 4:2:0, odd sizes, sizes outside NVDEC's (`MIN_SIZE`, `MAX_SIDE`), colour
matrices other than BT.601/BT.709, rotated videos, videos without usable timestamps, raw frames.
A clip that does not come out of the GPU decoder is read again with PyAV in the stage; a video
that PyAV cannot read either is reported and its rows take another clip of the batch.

`TPN_DECODER_STANDIN=pyav` in the environment puts FFmpeg's decoder (`PyAVStream`, the same
packets and calls) in NVDEC's place on any device: the tests run the whole path, torchrun
included, on CPUs with it.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from functools import partial
from typing import Callable, NamedTuple

import numpy as np
import torch

from tpn.data.nal import nonref_test
from tpn.data.pixels import nv12_to_rgb24, resize_linear_u8
from tpn.data.video import VideoError, _why

log = logging.getLogger("tpn.data")

CODECS = ("h264", "hevc")
# NVDEC's smallest pictures (width, height) per codec; larger than 4096 on a side goes to the CPU too
MIN_SIZE = {"h264": (48, 16), "hevc": (144, 144)}
MAX_SIDE = 4096
PIXEL_FORMATS = ("yuv420p", "yuvj420p")
# end-of-sequence NAL units: the decoder outputs what it holds and treats the next keyframe as a
# stream start (an HEVC CRA drops its leading pictures, as after a seek)
END_OF_SEQUENCE = {"h264": b"\x00\x00\x00\x01\x0a", "hevc": b"\x00\x00\x00\x01\x48\x01"}
TAG_BITS = 24  # a packet's timestamp: slot << TAG_BITS | frame index


def nvdec_available(device: torch.device | None = None) -> str | None:
    """None when NVDEC can be used on `device`, else why not (one phrase)."""
    if device is not None and device.type != "cuda":
        return f"device {device} is not a CUDA GPU"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    try:
        import PyNvVideoCodec  # noqa: F401
    except Exception as e:  # ImportError, or a missing libnvcuvid behind it
        return f"PyNvVideoCodec cannot be imported ({_why(e)}; pip install 'tpn[nvdec]')"
    return None


# ------------------------------------------------------------------ CPU side (loader workers)
class Packets(NamedTuple):
    """A video's packets in decode order, Annex B framed."""
    codec: str
    width: int
    height: int
    bt709: bool
    full_range: bool
    data: list          # bytes of each access unit
    key: np.ndarray     # keyframe flag per packet
    nonref: np.ndarray  # no other frame refers to it
    index: np.ndarray   # display index of each packet's frame (rank of its timestamp)


# AVColorSpace values PyAV's rgb24 conversion reads from a frame: BT.709 (1); BT.601 for unspecified (2),
# BT.470BG (5) and SMPTE 170M (6). Other matrices (BT.2020, ...) stay on the CPU path.
BT709, BT601 = {1}, {2, 5, 6}


def _colour(frame) -> tuple[bool, bool] | None:
    """(BT.709, full range) as PyAV's rgb24 conversion reads them from a frame; None for other matrices."""
    space = int(frame.colorspace)
    if space not in BT709 | BT601:
        return None
    return space in BT709, frame.format.name == "yuvj420p" or int(frame.color_range) == 2  # AVCOL_RANGE_JPEG


def demux(path) -> Packets | None:
    """`path`'s video packets for NVDEC, or None when the GPU path does not take this video
    (codec, pixel format, rotation, timestamps). Raises `VideoError` for a broken file, with the
    messages of the CPU reader's checks (missing, empty, truncated)."""
    import av
    from av.bitstream import BitStreamFilterContext

    from tpn.data.video import VideoReader, display_matrix

    with VideoReader(path) as reader:  # the CPU reader's checks and index, one open
        stream, cc = reader.stream, reader.stream.codec_context
        if (cc.name not in CODECS or (cc.pix_fmt or "") not in PIXEL_FORMATS or reader.timestamps is None
                or cc.width % 2 or cc.height % 2 or max(cc.width, cc.height) > MAX_SIDE
                or cc.width < MIN_SIZE[cc.name][0] or cc.height < MIN_SIZE[cc.name][1]):
            return None
        judge = nonref_test(cc.name, cc.extradata)
        bsf = BitStreamFilterContext(f"{cc.name}_mp4toannexb", stream)
        data, pts, key, nonref, first, colour = [], [], [], [], None, None
        reader.container.seek(0, stream=stream, backward=True, any_frame=False)
        try:
            for packet in reader.container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue
                if first is None:  # rotation and colour are on frames: decode the first keyframe
                    first = next(iter([*stream.decode(packet), *stream.decode(None)]), None)
                    colour = _colour(first) if first is not None and display_matrix(first) is None else None
                    if colour is None:
                        return None
                k = packet.is_keyframe
                pts.append(packet.pts), key.append(k)
                nonref.append(bool(judge is not None and not k and judge(memoryview(packet))))
                out = bsf.filter(packet)
                if len(out) != 1:
                    return None
                data.append(bytes(out[0]))
        except av.FFmpegError as e:
            raise VideoError(f"{path}: cannot read packets ({_why(e)})") from None
    if colour is None or len(pts) != reader.num_frames:
        return None
    index = np.empty(len(pts), dtype=np.int64)
    index[np.argsort(np.asarray(pts, dtype=np.int64), kind="stable")] = np.arange(len(pts))
    return Packets(cc.name, cc.width, cc.height, *colour, data, np.asarray(key, bool),
                   np.asarray(nonref, bool), index)


def plan(video: Packets, wanted) -> list[int]:
    """Decode-order positions of the packets to send for the frames `wanted`."""
    want = set(int(w) for w in np.asarray(wanted).reshape(-1))
    first = min(want)
    keys = np.flatnonzero(video.key)
    starts = keys[video.index[keys] <= first]
    if len(starts) == 0:
        raise VideoError(f"no keyframe at or before frame {first}")
    start = int(starts[np.argmax(video.index[starts])])
    pos = np.empty(len(video.index), dtype=np.int64)
    pos[video.index] = np.arange(len(video.index))
    end = int(max(pos[w] for w in want))
    return [i for i in range(start, end + 1) if not (video.nonref[i] and int(video.index[i]) not in want)]


class ClipJob(NamedTuple):
    """What the GPU needs to make one item's k clips: packets, frames, geometry, augmentation."""
    path: str
    codec: str
    width: int
    height: int
    bt709: bool
    full_range: bool
    data: np.ndarray     # uint8: the packets to send, concatenated (the last one ends the sequence)
    offsets: np.ndarray  # int64 (n + 1): packet i is data[offsets[i]:offsets[i + 1]]
    frames: np.ndarray   # int64 (n,): display index of each packet's frame
    wanted: np.ndarray   # int64 (k * T,): the clips' frame indices, clip after clip
    resize: np.ndarray   # int64 (k, 2): (h, w) the frame is resized to first ((height, width): none)
    box: np.ndarray      # int64 (k, 4): (top, left, h, w) cropped from that
    out: int             # the crop is resized to out x out
    aug: torch.Tensor    # float32 (k, 7): the flip/jitter draws (`transforms.draw_augment`)


def make_job(path: str, video: Packets, wanted: np.ndarray, resize, box, out: int, aug: torch.Tensor) -> ClipJob:
    order = plan(video, wanted)
    parts = [video.data[i] for i in order]
    parts[-1] = parts[-1] + END_OF_SEQUENCE[video.codec]
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    return ClipJob(str(path), video.codec, video.width, video.height, video.bt709, video.full_range,
                   np.frombuffer(b"".join(parts), np.uint8), offsets, video.index[order].astype(np.int64),
                   np.asarray(wanted, np.int64).reshape(-1), np.asarray(resize, np.int64).reshape(-1, 2),
                   np.asarray(box, np.int64).reshape(-1, 4), int(out), aug.reshape(-1, 7))


# ------------------------------------------------------------------ GPU side (main process)
def nv12_to_rgb(nv12: torch.Tensor, height: int, width: int, bt709: bool = False,
                full_range: bool = False) -> torch.Tensor:
    """uint8 (N, H*3/2, W) NV12 pictures -> uint8 (N, 3, H, W) RGB (frames-last memory): the bytes
    of PyAV's `rgb24` (`pixels.nv12_to_rgb24`)."""
    luma = nv12.shape[1] * 2 // 3  # the decoder's surface may be taller than the picture (1080 in 1088)
    uv = nv12[:, luma:luma + height // 2, :width].unflatten(-1, (width // 2, 2))
    return nv12_to_rgb24(nv12[:, :height, :width], uv, bt709, full_range).permute(0, 3, 1, 2)


def resize_bilinear(x: torch.Tensor, size: tuple[int, int], box=None) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> (N, 3, h, w), or its window `box` (top, left, h, w): the bytes of
    OpenCV's INTER_LINEAR, as `transforms.resize` (`pixels.resize_linear_u8`)."""
    return resize_linear_u8(x.permute(0, 2, 3, 1), tuple(size), box).permute(0, 3, 1, 2)


def clips_from_frames(rgb: torch.Tensor, job: ClipJob) -> torch.Tensor:
    """The job's k clips, uint8 (k, 3, T, out, out), from its wanted frames `rgb` (k*T, 3, H, W)."""
    k = len(job.box)
    t = len(job.wanted) // k
    out = []
    for j in range(k):
        frames = resize_bilinear(rgb[j * t:(j + 1) * t], tuple(job.resize[j]), job.box[j])  # only the box
        frames = resize_bilinear(frames, (job.out, job.out))
        out.append(frames.transpose(0, 1))
    return torch.stack(out)


class PyAVStream:
    """FFmpeg's decoder behind the streaming interface: NVDEC's stand-in on the CPU (tests) and
    the same calls. Frames come out as NV12 uint8 (H*3/2, W) tensors."""

    def __init__(self, codec: str, device=None):
        import av

        self.ctx = av.CodecContext.create(codec, "r")
        self.ctx.thread_count = 1

    @staticmethod
    def _nv12(frame) -> torch.Tensor:
        y, u, v = (np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :p.width] for p in frame.planes)
        return torch.from_numpy(np.concatenate([y, np.stack([u, v], -1).reshape(u.shape[0], -1)]))

    def decode(self, data, pts: int) -> list:
        import av

        packet = av.Packet(bytes(data))
        packet.pts = pts
        return [(f.pts, self._nv12(f)) for f in self.ctx.decode(packet)]

    def flush(self) -> list:
        out = [(f.pts, self._nv12(f)) for f in self.ctx.decode(None)]
        self.ctx.flush_buffers()
        return out


class NvdecStream:
    """One PyNvVideoCodec decoder, kept for the whole run, on the calling thread's CUDA stream.
    A decoded frame lives in the decoder's memory until a later call: `decode` and `flush` return
    copies of the wanted ones only (`keep` decides), so unwanted frames cost no copy."""

    def __init__(self, codec: str, device: torch.device):
        import PyNvVideoCodec as nvc

        self.nvc = nvc
        self.dec = nvc.CreateDecoder(
            gpuid=device.index or 0, codec={"h264": nvc.cudaVideoCodec.H264, "hevc": nvc.cudaVideoCodec.HEVC}[codec],
            cudacontext=0, cudastream=torch.cuda.current_stream(device).cuda_stream, usedevicememory=True)
        self.keep: Callable[[int], bool] = lambda pts: True

    def _out(self, frames) -> list:
        out = []
        for f in frames:
            pts = int(f.timestamp)
            if self.keep(pts):
                t = torch.from_dlpack(f)
                out.append((pts, (t[..., 0] if t.dim() == 3 else t).clone()))
        return out

    def decode(self, data, pts: int) -> list:
        packet = self.nvc.PacketData()
        packet.bsl_data, packet.bsl, packet.pts = data.ctypes.data, len(data), pts
        return self._out(self.dec.Decode(packet))

    def flush(self) -> list:
        return self._out(self.dec.Decode(self.nvc.PacketData()))


def decode_jobs(jobs: list[tuple[int, ClipJob]], get_decoder) -> dict[int, torch.Tensor | Exception]:
    """{slot: uint8 (len(wanted), 3, H, W) RGB frames, or the exception} for `jobs` [(slot, job)],
    streamed through `get_decoder(codec, width, height)` (drained at the end of each decoder's run)."""
    got: dict[int, dict[int, torch.Tensor]] = {slot: {} for slot, _ in jobs}
    want = {slot: set(job.wanted.tolist()) for slot, job in jobs}
    res: dict[int, torch.Tensor | Exception] = {}
    mask = (1 << TAG_BITS) - 1

    def keep(pts: int) -> bool:
        return (pts & mask) in want.get(pts >> TAG_BITS, ())

    def take(frames) -> None:
        for pts, nv12 in frames:
            if keep(pts):
                got[pts >> TAG_BITS].setdefault(pts & mask, nv12)

    by_key: dict[tuple, list] = {}
    for slot, job in jobs:
        by_key.setdefault((job.codec, job.width, job.height), []).append((slot, job))
    for key, group in by_key.items():
        dec = get_decoder(*key)
        dec.keep = keep
        for slot, job in group:
            try:
                for i, frame in enumerate(job.frames.tolist()):
                    take(dec.decode(job.data[job.offsets[i]:job.offsets[i + 1]], slot << TAG_BITS | frame))
            except Exception as e:  # a broken packet: this job fails, the stream goes on
                res[slot] = VideoError(f"{job.path}: GPU decoding failed ({_why(e)})")
        try:
            take(dec.flush())
        except Exception as e:
            for slot, _ in group:
                res.setdefault(slot, VideoError(f"GPU decoder drain failed ({_why(e)})"))
    for slot, job in jobs:
        if slot in res:
            continue
        missing = want[slot] - set(got[slot])
        if missing:
            res[slot] = VideoError(f"{job.path}: frames {sorted(missing)[:5]} did not come out of the GPU decoder")
            continue
        nv12 = torch.stack([got[slot][int(w)] for w in job.wanted])
        res[slot] = nv12_to_rgb(nv12, job.height, job.width, job.bt709, job.full_range)
    return res


class DecoderPool:
    """`threads` decoder threads on `device`, each with its own CUDA stream and its own
    long-lived decoders (one per codec and size). `factory(codec, device)` makes a decoder."""

    def __init__(self, device: torch.device, threads: int = 4, factory=NvdecStream):
        self.device, self.threads, self.factory = device, max(1, threads), factory
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tpn-nvdec")
        self.local = threading.local()

    def _run(self, jobs: list[tuple[int, ClipJob]]):
        loc = self.local
        if not hasattr(loc, "decoders"):
            loc.decoders = {}
            loc.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        ctx = torch.cuda.stream(loc.stream) if loc.stream is not None else nullcontext()
        with ctx:
            def get(codec, w, h):
                if (codec, w, h) not in loc.decoders:
                    loc.decoders[(codec, w, h)] = self.factory(codec, self.device)
                return loc.decoders[(codec, w, h)]
            out = decode_jobs(jobs, get)
            event = None
            if loc.stream is not None:
                event = torch.cuda.Event()
                event.record(loc.stream)
        return out, event

    def decode(self, jobs: list[tuple[int, ClipJob]]) -> dict[int, torch.Tensor | Exception]:
        """Jobs spread over the threads (grouped by codec and size); results on `device`, safe to
        use on the calling thread's current stream."""
        jobs = sorted(jobs, key=lambda sj: (sj[1].codec, sj[1].width, sj[1].height))
        n = min(self.threads, len(jobs))
        parts = [jobs[i * len(jobs) // n:(i + 1) * len(jobs) // n] for i in range(n)]
        res: dict = {}
        for out, event in self.pool.map(self._run, parts):
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
                for t in out.values():
                    if isinstance(t, torch.Tensor):
                        t.record_stream(torch.cuda.current_stream(self.device))
            res.update(out)
        return res

    def close(self) -> None:
        self.pool.shutdown(wait=True)


# ------------------------------------------------------------------ the stage between loader and step
class Trial:
    """`auto` in training: the batches the step takes are timed at each candidate GPU share in turn
    (`lag` batches skipped after each switch: those already made at the old share, in the loader's
    queues), `window` batches each; then the share of the faster is kept and logged. `tick()` is
    called each time the training loop asks for a batch; `clock` is a time function."""

    def __init__(self, dataset, candidates: list[tuple[str, float]], lag: int, window: int, batch: int,
                 log_choice=log.info, clock=time.perf_counter):
        self.dataset, self.candidates, self.lag, self.window, self.batch = dataset, candidates, lag, window, batch
        self.log_choice, self.clock = log_choice, clock
        self.rates: dict[str, float] = {}
        self.phase, self.seen, self.t0 = 0, 0, None
        dataset.set_gpu_share(candidates[0][1])

    @property
    def done(self) -> bool:
        return self.phase >= len(self.candidates)

    def tick(self) -> None:
        if self.done:
            return
        self.seen += 1
        if self.seen == self.lag:
            self.t0 = self.clock()
        elif self.seen == self.lag + self.window:
            name, _ = self.candidates[self.phase]
            self.rates[name] = round(self.window * self.batch / max(self.clock() - self.t0, 1e-9), 1)
            self.phase, self.seen = self.phase + 1, 0
            if self.phase < len(self.candidates):
                self.dataset.set_gpu_share(self.candidates[self.phase][1])
            else:
                self._decide()

    def _decide(self) -> None:
        best = max(self.candidates, key=lambda c: self.rates[c[0]])
        self.dataset.set_gpu_share(best[1])
        self.log_choice("decoder auto: %s (measured in training: %s clips/s; GPU share %.2f)", best[0],
                        ", ".join(f"{n} {self.rates[n]}" for n, _ in self.candidates), best[1])


class DecodeStage:
    """Wraps a training loader: a background thread takes each batch, moves its clips to `device`,
    decodes its `ClipJob`s there (`DecoderPool`) and writes them into their rows, `depth` batches
    ahead of the training step. A clip the GPU does not deliver is read with PyAV here; a video
    that cannot be read at all is reported (`dataset._report`) and its rows take another item's.
    Iterate `stage.epoch(iter(loader))` once per epoch; `close()` at the end."""

    def __init__(self, dataset, pool: DecoderPool, device: torch.device, depth: int = 2, choose=None):
        self.dataset, self.pool, self.device, self.depth = dataset, pool, device, depth
        # choose(dataset, pool) -> (measurements, Trial or None): the GPU share, at the first epoch
        self.choose, self.measured, self.trial = choose, None, None
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.clips = self.gpu_clips = self.fallbacks = 0
        self.decode_s = 0.0

    def epoch(self, batches):
        if self.choose is not None:  # the loader's workers exist by now (iter(loader) started them)
            (self.measured, self.trial), self.choose = self.choose(self.dataset, self.pool), None
        q: queue.Queue = queue.Queue(self.depth)
        stop = threading.Event()

        def produce():
            try:
                for batch in batches:
                    item = self._finish(batch)
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(StopIteration())
            except BaseException as e:  # noqa: BLE001 (handed to the consumer, raised there)
                q.put(e)

        thread = threading.Thread(target=produce, name="tpn-decode-stage", daemon=True)
        thread.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, StopIteration):
                    return
                if isinstance(item, BaseException):
                    raise item
                batch, event = item
                if event is not None:
                    torch.cuda.current_stream(self.device).wait_event(event)
                    batch.clip.record_stream(torch.cuda.current_stream(self.device))
                yield batch
                if self.trial is not None:  # the step is done with the batch: the loop asks for the next
                    self.trial.tick()
        finally:
            stop.set()

    def _finish(self, batch):
        """(batch with every clip on the device, the event that marks them ready or None)."""
        ctx = torch.cuda.stream(self.stream) if self.stream is not None else nullcontext()
        with ctx:
            x = batch.clip.to(self.device, non_blocking=True)
            if batch.job is not None:
                t0 = time.perf_counter()
                self._fill(batch, x)
                self.decode_s += time.perf_counter() - t0
            self.clips += x.shape[0]
            event = None
            if self.stream is not None:
                event = torch.cuda.Event()
                event.record(self.stream)
        return batch._replace(clip=x, job=None), event

    def _fill(self, batch, x: torch.Tensor) -> None:
        jobs = [(i, job) for i, job in enumerate(batch.job) if job is not None]
        k = x.shape[0] // len(batch.job)  # clips per item (data.clips_per_decode)
        frames = self.pool.decode(jobs)
        bad = []
        for i, job in jobs:
            rgb = frames[i]
            if isinstance(rgb, Exception):
                rgb = self._read_on_cpu(job, batch.index[i * k])
                if rgb is None:
                    bad.append(i)
                    continue
            clips = clips_from_frames(rgb, job)
            if batch.aug is None:  # without data.augment_on_device the GPU path applies flip/jitter here
                from tpn.data.transforms import apply_augment

                clips = apply_augment(clips, job.aug)
            x[i * k:(i + 1) * k] = clips
            self.gpu_clips += k
        if bad:
            self._replace(batch, x, bad, k)

    def _read_on_cpu(self, job: ClipJob, index) -> torch.Tensor | None:
        from tpn.data.video import VideoReader

        self.fallbacks += 1
        try:
            with VideoReader(job.path) as reader:
                frames = reader.get_frames(job.wanted)
        except VideoError as e:
            self.dataset._report(int(index), e)
            return None
        return torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2)

    @staticmethod
    def _replace(batch, x: torch.Tensor, bad: list[int], k: int) -> None:
        """Rows of unreadable items take the clips, labels and draws of a readable item."""
        good = [i for i in range(len(batch.job)) if i not in set(bad)]
        if not good:
            raise VideoError("no clip of a training batch could be decoded (see the report file)")
        for n, i in enumerate(bad):
            g = good[n % len(good)]
            rows, src = slice(i * k, (i + 1) * k), slice(g * k, (g + 1) * k)
            x[rows] = x[src]
            for field in (batch.label, batch.index, batch.aug):
                if field is not None:
                    field[rows] = field[src]

    def stats(self) -> dict:
        return dict(gpu_clips=self.gpu_clips, cpu_clips=self.clips - self.gpu_clips, fallbacks=self.fallbacks,
                    gpu_decode_s=round(self.decode_s, 2), gpu_share=round(self.dataset.gpu_share, 3))

    def close(self) -> None:
        self.pool.close()


# ------------------------------------------------------------------ choosing the path
def _rate(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn()
    return n / max(time.perf_counter() - t0, 1e-9)


def calibrate(dataset, pool: DecoderPool, workers: int, clips: int = 32, seed: int = 12345) -> dict:
    """Measured here, on this run's own videos: NVDEC clips/s (the pool, a batch of `clips` jobs,
    after one to warm the decoders up), one CPU process's clips/s decoding with PyAV and making
    jobs; the share of items to put on the GPU so both sides finish together, and the predicted
    clips/s of each path (`workers` loader processes)."""
    n = len(dataset)
    picks = np.random.default_rng(seed).choice(n, size=min(clips, n), replace=n < clips)
    rng = lambda i: np.random.default_rng([seed, int(i)])  # noqa: E731
    t0 = time.perf_counter()
    items = [dataset._gpu_job(int(i), rng(i)) for i in picks]
    jobs = [(s, b.job) for s, b in enumerate(items) if b is not None]
    job_s = (time.perf_counter() - t0) / len(picks)
    if not jobs:
        return dict(gpu_clips_per_s=0.0, share=0.0, reason="no video of this list goes to NVDEC")
    pool.decode(jobs)  # decoders created, kernels compiled
    if pool.device.type == "cuda":
        torch.cuda.synchronize(pool.device)
    gpu = _rate(lambda: (pool.decode(jobs), torch.cuda.synchronize(pool.device) if pool.device.type == "cuda"
                         else None), len(jobs))
    few = picks[:max(2, len(picks) // 8)]
    cpu_s = 1 / _rate(lambda: [dataset._cpu_train_item(int(i), rng(i)) for i in few], len(few))
    # per clip: CPU seconds to decode (c) or to make a job (d); W workers, NVDEC at `gpu`
    c, d, w = cpu_s, job_s, max(1, workers)
    share = min(1.0, gpu * c / (w + gpu * (c - d)))
    return dict(gpu_clips_per_s=round(gpu, 1), cpu_clips_per_s_per_process=round(1 / c, 1),
                job_ms=round(d * 1000, 2), workers=w, share=round(share, 3),
                predicted=dict(pyav=round(w / c, 1), nvdec=round(min(gpu, w / d), 1),
                               hybrid=round(gpu / share if share > 0 else w / c, 1)))


def build_stage(dataset, decoder: str, device: torch.device, workers: int, threads: int = 4,
                share: float | None = None, log_choice=log.info, factory=None,
                trial: tuple[int, int, int] | None = None) -> DecodeStage | None:
    """The GPU decoding stage for `data.decoder` (None: the loader's CPU workers decode everything),
    with `dataset`'s share of GPU items set; the choice and its measurements are logged.
    `nvdec`/`hybrid` without a usable NVDEC is an error; `auto` then falls back to PyAV. `trial`
    (lag, window, batch): `auto` decides by timing training itself (`Trial`), not by prediction."""
    from tpn.errors import TpnError

    if decoder == "pyav" or dataset.rawframes:
        dataset.set_gpu_share(0)
        return None
    if factory is None and os.environ.get("TPN_DECODER_STANDIN") == "pyav":
        factory = PyAVStream  # FFmpeg fed the same packets on the CPU: the GPU path's logic without a GPU
    why = nvdec_available(device) if factory is None else None  # another factory: the tests' CPU stand-in
    factory = factory or NvdecStream
    if why is not None:
        if decoder != "auto":
            raise TpnError(f"data.decoder {decoder}: {why}")
        log_choice("decoder auto: pyav (NVDEC not usable: %s)", why)
        dataset.set_gpu_share(0)
        return None
    pool = DecoderPool(device, threads, factory)
    if decoder == "nvdec" or (decoder == "hybrid" and share is not None):
        dataset.set_gpu_share(1.0 if decoder == "nvdec" else share)
        log_choice("decoder %s: %.0f%% of training items decoded on %s (%d decoder threads)", decoder,
                   100 * dataset.gpu_share, device, pool.threads)
        return DecodeStage(dataset, pool, device)
    # measured once the loader's workers run: a worker forked after the decoder threads started
    # (and NVDEC sessions opened) can crash; until then the workers decode everything
    dataset.set_gpu_share(0)
    return DecodeStage(dataset, pool, device, choose=partial(choose, decoder=decoder, workers=workers,
                                                             log_choice=log_choice, trial=trial))


def choose(dataset, pool: DecoderPool, decoder: str, workers: int, log_choice=log.info,
           trial: tuple[int, int, int] | None = None) -> tuple[dict, Trial | None]:
    """`calibrate`, then set `dataset`'s GPU share for `decoder` (hybrid: the balanced share; auto:
    the fastest predicted path, or with `trial` = (lag, window, batch) a `Trial` in training between
    pyav and that path) and log the choice with what was measured."""
    m = calibrate(dataset, pool, workers)
    best = "hybrid" if decoder == "hybrid" else max(m.get("predicted", {"pyav": 1}).items(), key=lambda kv: kv[1])[0]
    if decoder == "auto" and trial is not None and m["share"] > 0:
        other, share = ("nvdec", 1.0) if best == "nvdec" else ("hybrid", m["share"])
        log_choice("decoder auto: timing training at GPU share 0 (pyav) and %.2f (%s); measured alone: %s",
                   share, other, m)
        return m, Trial(dataset, [("pyav", 0.0), (other, share)], *trial, log_choice=log_choice)
    if best == "pyav" or m["share"] <= 0:
        dataset.set_gpu_share(0)
        log_choice("decoder %s: pyav (measured here: %s)", decoder, m)
        return m, None
    dataset.set_gpu_share(1.0 if best == "nvdec" else m["share"])
    log_choice("decoder %s: %s, %.0f%% of training items on NVDEC (measured here: NVDEC %.0f clips/s with %d "
               "threads, PyAV %.1f clips/s per worker x %d workers; predicted clips/s %s)", decoder, best,
               100 * dataset.gpu_share, m["gpu_clips_per_s"], pool.threads,
               m["cpu_clips_per_s_per_process"], m["workers"], m["predicted"])
    return m, None
