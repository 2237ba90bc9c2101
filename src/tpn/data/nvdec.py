"""GPU decoding of training clips (`data.decoder: nvdec | hybrid | auto`).

The work is split where each side is good:
- a loader worker (CPU, `PacketReader`) demuxes the video with PyAV, frames each packet as Annex B
  (FFmpeg's `h264_mp4toannexb` / `hevc_mp4toannexb`, the framing NVDEC's parser reads), plans the
  item as the CPU path does (`tpn.data.plan`: the same frames, crops and flip/jitter draws) and
  keeps only the packets the decoder needs: from the keyframe at or before the first wanted frame
  to the packet of the wanted frame last in decode order, without the non-reference packets of
  unwanted frames (`tpn.data.nal`). That is a `ClipJob`: bytes, no pixels.
- the decode process (`DecodeProcess`, spawned once per training process, so under torchrun each
  rank decodes on its own GPU in its own interpreter) hands each batch's jobs to `threads` decoder
  threads. Each thread keeps one long-lived decoder per (codec, width, height) and streams the jobs
  it gets into it one after another, each job closed by an end-of-sequence NAL unit (so the next
  job's keyframe starts afresh, as after a seek), then drains it once per batch. Frames are
  recognised by the timestamp each packet carries (job slot and frame index), the wanted ones
  copied out of the decoder, converted NV12 -> RGB (the matrix and range PyAV's `rgb24` uses:
  BT.601 unless the stream says BT.709, limited unless full), cropped and resized (OpenCV's
  INTER_LINEAR) on the GPU, and the finished clips go back to the trainer through CUDA IPC.
- the trainer's `DecodeStage` (one thread) moves each batch to the GPU, sends its jobs and writes
  the clips that come back into their rows.

Frames are the ones PyAV decodes at the same indices: the Y and UV planes are equal byte for
byte, and so are the RGB frames and the finished clips: the conversion and the resize are
swscale's and OpenCV's integer arithmetic in torch (`tpn.data.pixels`).

What NVDEC is not given stays on the CPU path of the worker: codecs other than H.264/HEVC, other
pixel formats than 8-bit 4:2:0, odd sizes, sizes outside NVDEC's (`MIN_SIZE`, `MAX_SIDE`), colour
matrices other than BT.601/BT.709, rotated videos, videos without usable timestamps, raw frames.
A clip that does not come out of the GPU decoder is read again with PyAV in the stage; a video
that PyAV cannot read either is reported and its rows take another clip of the batch; a decode
process that dies is one warning, and the workers decode everything from then on.

`TPN_DECODER_STANDIN=pyav` in the environment puts FFmpeg's decoder (`PyAVStream`, the same
packets and calls) in NVDEC's place on any device: the tests run the whole path, torchrun
included, on CPUs with it.
"""
from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Callable, NamedTuple

import numpy as np
import torch

from tpn.data.nal import nonref_test
from tpn.data.pixels import nv12_to_rgb24, resize_linear_u8
from tpn.data.plan import ClipPlan
from tpn.data.transforms import apply_augment
from tpn.data.video import VideoError, _why, check_frame_size

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


def packets_for(video: Packets, wanted) -> list[int]:
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


def make_job(plan: ClipPlan, video: Packets) -> ClipJob:
    """The packets and geometry NVDEC needs for `plan`'s views (its frames, resize, box, draws)."""
    order = packets_for(video, plan.frames)
    parts = [video.data[i] for i in order]
    parts[-1] = parts[-1] + END_OF_SEQUENCE[video.codec]
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    aug = torch.from_numpy(plan.aug) if plan.aug is not None else torch.zeros((plan.views, 7))
    return ClipJob(plan.source, video.codec, video.width, video.height, video.bt709, video.full_range,
                   np.frombuffer(b"".join(parts), np.uint8), offsets, video.index[order].astype(np.int64),
                   plan.frames.reshape(-1), plan.resize, plan.box, int(plan.out), aug.reshape(-1, 7))


class PacketReader:
    """The loader worker's half of GPU decoding, a `tpn.data.decoders.Decoder`: demuxes the video,
    plans the item on the frame count and size in its header, and returns (plan, `ClipJob`); None
    for a video NVDEC is not given (the CPU decoder reads it, from the same untouched draws)."""
    name = "nvdec"

    def __init__(self, max_pixels: int, short_side: int | None = None):
        self.max_pixels, self.short_side = max_pixels, short_side

    def read(self, request) -> tuple[ClipPlan, ClipJob] | None:
        video = demux(request.source)
        if video is None:
            return None
        check_frame_size(request.source, video.width, video.height, self.max_pixels, self.short_side)
        plan = request.draft(len(video.index)).place(video.height, video.width)
        return plan, make_job(plan, video)


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


# ------------------------------------------------------------------ the decode process
STREAMS = {"nvdec": NvdecStream, "pyav": PyAVStream}


def _decode_main(device: str, stream: str, threads: int, requests, results) -> None:
    """The decode process: `threads` decoder threads with long-lived decoders on `device`. Each
    request (seq, [(slot, job)], augment) comes back as (seq, slots, clips, {slot: error}): clips
    uint8 (len(slots), k, 3, T, out, out) on the device, one row per decoded slot, in `slots` order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the trainer decides and ends this process
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", dev.index or 0)
        torch.cuda.set_device(dev)
    torch.set_num_threads(1)
    pool = DecoderPool(dev, threads, STREAMS[stream])
    while (req := requests.get()) is not None:
        seq, jobs, augment = req
        t0 = time.perf_counter()
        try:
            frames = pool.decode(jobs)
            slots, clips, bad = [], [], {}
            for slot, job in jobs:
                if isinstance(frames[slot], Exception):
                    bad[slot] = str(frames[slot])
                    continue
                x = clips_from_frames(frames[slot], job)
                slots.append(slot), clips.append(apply_augment(x, job.aug) if augment else x)
            out = torch.stack(clips) if clips else None
        except Exception as e:  # noqa: BLE001 (the whole request fails; the stage reads it on the CPU)
            slots, out, bad = [], None, {slot: f"GPU decoding failed ({_why(e)})" for slot, _ in jobs}
        results.put((seq, slots, out, bad, time.perf_counter() - t0))  # the last: this request's busy time
    pool.close()


class DecoderLost(RuntimeError):
    pass


class DecodeProcess:
    """The trainer's handle on its decode process (spawned: its own interpreter and CUDA context,
    one per training process, so under torchrun each rank decodes on its own GPU). Finished clips
    come back on the same GPU through CUDA IPC (torch.multiprocessing): no host round trip."""

    def __init__(self, device: torch.device, stream: str = "nvdec", threads: int = 4):
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.requests, self.results = ctx.Queue(), ctx.Queue()
        self.requests.cancel_join_thread()  # a dead process reads nothing: exiting must not wait on the pipe
        self.proc = ctx.Process(target=_decode_main, name="tpn-decode", daemon=True,
                                args=(str(device), stream, threads, self.requests, self.results))
        self.proc.start()
        self.device, self.threads, self.seq = device, threads, 0
        self.busy_s = 0.0  # the process's time spent on requests, from their answers

    def submit(self, jobs: list[tuple[int, ClipJob]], augment: bool = False) -> int:
        self.seq += 1
        self.requests.put((self.seq, jobs, augment))
        return self.seq

    def result(self, seq: int):
        """(slots, clips or None, {slot: error}) of request `seq` (requests finish in order);
        `DecoderLost` when the process is gone."""
        while True:
            try:
                got, slots, clips, bad, busy = self.results.get(timeout=0.5)
            except queue.Empty:
                if not self.proc.is_alive():
                    raise DecoderLost(f"the GPU decode process exited (exit code {self.proc.exitcode})") from None
                continue
            self.busy_s += busy
            if got == seq:
                return slots, clips, bad

    def decode(self, jobs: list[tuple[int, ClipJob]]) -> dict:
        """{slot: clips or an error text} for `jobs`, waiting for them (calibration, tests)."""
        slots, clips, bad = self.result(self.submit(jobs))
        return {**bad, **{s: clips[i] for i, s in enumerate(slots)}}

    def close(self) -> None:
        if self.proc.is_alive():
            self.requests.put(None)
            self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
        self.requests.close()
        self.results.close()


# ------------------------------------------------------------------ the stage between loader and step
class DecodeStage:
    """Wraps a training loader: a background thread moves each batch's clips to `device`, sends its
    `ClipJob`s to the decode process (`depth` batches in flight), and writes the clips that come
    back into their rows, ahead of the training step. A clip the GPU does not deliver is read with
    PyAV here; a video that cannot be read at all is reported (`report(index, error)`) and its rows
    take another item's. If the decode process dies, one line says so, `on_lost()` is called (the
    engine stops sending items to it) and what was in flight is read on the CPU.
    Iterate `stage.epoch(loader)` once per epoch; `close()` at the end. `policy`, when
    given, is told when an epoch starts (`start_epoch(stage)`) and each time the step takes a
    batch (`tick()`)."""

    def __init__(self, process: DecodeProcess, device: torch.device, report, depth: int = 2,
                 on_lost=lambda: None, policy=None):
        self.process, self.device, self.report, self.depth = process, device, report, depth
        self.on_lost, self.policy = on_lost, policy
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.clips = self.gpu_clips = self.fallbacks = 0
        self.wait_s = 0.0

    def epoch(self, loader):
        if self.policy is not None:
            # before iter(loader) starts the workers: the first epoch's calibration times PyAV in this
            # process on otherwise idle cores (beside 15 busy workers it measured 11.3 clips/s where a
            # worker makes 26: the GPU share came out too high and `hybrid` trained at 0.6x `pyav`)
            self.policy.start_epoch(self)
        batches = iter(loader)
        q: queue.Queue = queue.Queue(self.depth)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            try:
                pending = []
                for batch in batches:
                    pending.append(self._send(batch))
                    if len(pending) > self.depth and not put(self._finish(*pending.pop(0))):
                        return
                for p in pending:
                    if not put(self._finish(*p)):
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
                if self.policy is not None:  # the step is done with the batch: the loop asks for the next
                    self.policy.tick()
        finally:
            stop.set()

    def _ctx(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else nullcontext()

    def _send(self, batch):
        """(batch, its clips on the device, the request of its jobs or None)."""
        with self._ctx():
            x = batch.clip.to(self.device, non_blocking=True)
        jobs = [(i, job) for i, job in enumerate(batch.job or ()) if job is not None]
        seq = None
        if jobs and self.process is not None:
            seq = self.process.submit(jobs, augment=batch.aug is None)
        return batch, x, jobs, seq

    def _finish(self, batch, x: torch.Tensor, jobs, seq):
        """(batch with every clip on the device, the event that marks them ready or None)."""
        t0 = time.perf_counter()
        with self._ctx():
            k = x.shape[0] // len(batch.job) if batch.job else 1  # clips per item (data.clips_per_decode)
            slots, clips, bad = self._collect(jobs, seq)
            for n, i in enumerate(slots):
                x[i * k:(i + 1) * k] = clips[n]
            unreadable = [i for i, job in jobs if i in bad and not self._read_on_cpu(job, batch, x, k, i)]
            if unreadable:
                self._replace(batch, x, unreadable, k)
            self.gpu_clips += len(slots) * k
            self.clips += x.shape[0]
            event = None
            if self.stream is not None:
                event = torch.cuda.Event()
                event.record(self.stream)
        self.wait_s += time.perf_counter() - t0
        return batch._replace(clip=x, job=None), event

    def _collect(self, jobs, seq):
        if seq is None or self.process is None:
            return [], None, {i: "not decoded on the GPU" for i, _ in jobs}
        try:
            return self.process.result(seq)
        except DecoderLost as e:
            log.warning("%s; training goes on with the CPU decoding every clip", e)
            self.process.close()
            self.process = None
            self.on_lost()
            return [], None, {i: str(e) for i, _ in jobs}

    def _read_on_cpu(self, job: ClipJob, batch, x: torch.Tensor, k: int, i: int) -> bool:
        """The job's clips read with PyAV (then the same GPU arithmetic) into rows i*k...; False
        when the video cannot be read (reported)."""
        from tpn.data.video import VideoReader

        self.fallbacks += 1
        try:
            with VideoReader(job.path) as reader:
                frames = reader.get_frames(job.wanted)
        except VideoError as e:
            self.report(int(batch.index[i * k]), e)
            return False
        clips = clips_from_frames(torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2), job)
        x[i * k:(i + 1) * k] = apply_augment(clips, job.aug) if batch.aug is None else clips
        return True

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
        """Counts since the stage began: clips decoded by the process and on the CPU, fallbacks, the
        stage's time waiting for the process, and the process's own time on requests (its occupancy
        over a stretch is the growth of `process_busy_s` over that stretch's time)."""
        return dict(gpu_clips=self.gpu_clips, cpu_clips=self.clips - self.gpu_clips, fallbacks=self.fallbacks,
                    stage_wait_s=round(self.wait_s, 2), decode_process=self.process is not None,
                    process_busy_s=round(self.process.busy_s, 2) if self.process is not None else 0.0)

    def close(self) -> None:
        if self.process is not None:
            self.process.close()
