"""What a GPU decoder (`data.decoder: nvdec`, not built yet) would give, measured in one run, as JSON.

    python benchmarks/nvdec_probe.py --out benchmarks/results/nvdec_probe_h100.json

Needs a CUDA GPU, torch with CUDA, PyAV and PyNvVideoCodec (NVIDIA's NVDEC bindings). It makes
its own videos (`tpn.data.synthetic`): 340x256 and 456x256, 10 s, 30 fps, H.264 (x264 preset
medium: B-frames, b-pyramid, keyframe interval 250, as most Kinetics downloads) and HEVC (x265
medium). Packets are demuxed by PyAV and turned to Annex B (`h264_mp4toannexb` /
`hevc_mp4toannexb`), the framing NVDEC's parser reads; that is the loader's intended split, CPU
demux and GPU decode. Parts, each guarded (a failing part records its error, the rest runs):

  api        what PyNvVideoCodec exposes: decoder and frame attributes, the DLPack shape of a
             frame, the decoder caps, whether its own demuxer gives the same bytes as PyAV's
  whole      (a) frames/s of one decoder decoding whole files (reused across the files of one
             codec+size), decode only and with NV12->RGB on the GPU; PyAV demux cost per file
  parallel   (b) 2, 4, 8 decoders in threads and in processes, frames/s in all
  clips      (c) a training clip (8x8): from the keyframe before the clip to the last sampled
             frame, with and without dropping non-reference packets (`tpn.data.nal`); 1 and 8 threads
  exact      (d) NVDEC's planes vs PyAV's at the same indices, frame count and timestamps; RGB from
             NV12 with BT.601/BT.709, limited/full range, nearest/bilinear chroma vs PyAV's rgb24
  pyav       (e) PyAV in this process on the same files: whole-file frames/s, training clips/s
             per wall and per CPU second (the project's reader, one thread)

The parts that need no GPU (Annex B demux, packet selection, decoding a clip through any decoder,
NV12->RGB) are tested on the CPU with PyAV's own decoder as the stand-in (tests/test_benchmarks.py).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import sys
import threading
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tpn.data import sampling  # noqa: E402
from tpn.data.nal import nonref_test  # noqa: E402
from tpn.data.nvdec import plan  # noqa: E402
from tpn.data.pool import map_in_processes  # noqa: E402
from tpn.data.synthetic import render, write_mp4  # noqa: E402
from tpn.data.video import VideoError, VideoReader  # noqa: E402

SIZES = ((340, 256), (456, 256))
CODECS = ("h264", "hevc")
THREADS = (2, 4, 8)
# colour conversions tried against PyAV's rgb24: (Kr, Kb) of each matrix
MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}


# ---------------------------------------------------------------- CPU side: demux, plan, decode
@dataclass
class AnnexB:
    """One video's packets in decode order, Annex B framed, with what a loader needs to plan a clip."""
    codec: str
    data: list          # bytes of each access unit
    pts: np.ndarray     # timestamp of each packet
    key: np.ndarray     # keyframe flag of each packet
    nonref: np.ndarray  # no other frame refers to it (judged on the mp4 framing, before the filter)
    index: np.ndarray   # display index of each packet's frame (rank of its timestamp)
    width: int
    height: int

    def pts_to_index(self) -> dict:
        return dict(zip(self.pts.tolist(), self.index.tolist()))


def demux_annexb(path) -> AnnexB:
    """Every packet of `path`'s video stream through `<codec>_mp4toannexb` (PyAV's bitstream filter)."""
    import av
    from av.bitstream import BitStreamFilterContext

    try:
        container = av.open(str(path))
    except Exception as e:
        raise VideoError(f"{path}: cannot open video ({type(e).__name__}: {e})") from None
    with container:
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        if codec not in CODECS:
            raise VideoError(f"{path}: codec {codec} (the GPU path reads h264 and hevc)")
        judge = nonref_test(codec, stream.codec_context.extradata)
        bsf = BitStreamFilterContext(f"{codec}_mp4toannexb", stream)
        data, pts, key, nonref = [], [], [], []
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:
                continue
            if packet.pts is None:
                raise VideoError(f"{path}: a packet without timestamp")
            dropable = bool(judge is not None and not packet.is_keyframe and judge(memoryview(packet)))
            p, k = packet.pts, packet.is_keyframe
            out = bsf.filter(packet)
            if len(out) != 1:  # mp4toannexb rewrites one access unit into one
                raise VideoError(f"{path}: bitstream filter gave {len(out)} packets for one")
            data.append(bytes(out[0]))
            pts.append(p), key.append(k), nonref.append(dropable)
        pts_a = np.asarray(pts, dtype=np.int64)
        index = np.empty(len(pts_a), dtype=np.int64)
        index[np.argsort(pts_a, kind="stable")] = np.arange(len(pts_a))
        cc = stream.codec_context
        return AnnexB(codec, data, pts_a, np.asarray(key, bool), np.asarray(nonref, bool), index, cc.width, cc.height)


def clip_plan(video: AnnexB, wanted, drop: bool) -> list[int]:
    """Decode-order positions of the packets to send for frames `wanted` (`tpn.data.nvdec.plan`:
    from the keyframe at or before the first wanted frame to the packet of the wanted frame last in
    decode order, without the non-reference packets of unwanted frames); every packet of that
    span when not `drop`."""
    wanted = sorted(int(w) for w in wanted)
    if drop:
        return plan(video, wanted)
    span = plan(replace(video, nonref=np.zeros_like(video.nonref)), wanted)
    return list(range(span[0], span[-1] + 1))


def decode_clip(video: AnnexB, wanted, decoder, drop: bool = True, pts_index: dict | None = None):
    """({frame index: frame} for every wanted frame, packets sent) through `decoder`, any object with
    `decode(bytes, pts) -> [(pts, frame)]` and `flush() -> [(pts, frame)]` (drains, ready for reuse)."""
    pts_index = pts_index if pts_index is not None else video.pts_to_index()
    want = set(int(w) for w in wanted)
    got = {}
    plan = clip_plan(video, want, drop)
    for i in plan:
        for pts, frame in decoder.decode(video.data[i], int(video.pts[i])):
            if pts_index.get(pts) in want:
                got[pts_index[pts]] = frame
    for pts, frame in decoder.flush():
        if pts_index.get(pts) in want:
            got[pts_index[pts]] = frame
    missing = sorted(want - set(got))
    if missing:
        raise VideoError(f"frames {missing[:5]} did not come out of the decoder")
    return got, len(plan)


class PyAVAnnexBDecoder:
    """The CPU stand-in for NVDEC: FFmpeg's decoder fed the same Annex B packets, frames as RGB."""

    def __init__(self, codec: str):
        import av

        self.ctx = av.CodecContext.create(codec, "r")
        self.ctx.thread_count = 1

    def decode(self, data: bytes, pts: int) -> list:
        import av

        packet = av.Packet(data)
        packet.pts = pts
        return [(f.pts, f.to_ndarray(format="rgb24")) for f in self.ctx.decode(packet)]

    def flush(self) -> list:
        out = [(f.pts, f.to_ndarray(format="rgb24")) for f in self.ctx.decode(None)]
        self.ctx.flush_buffers()
        return out


def nv12_to_rgb(y, uv, matrix: str = "bt601", full_range: bool = False, chroma: str = "nearest"):
    """uint8 (H, W, 3) RGB from an NV12 picture: `y` (H, W) and `uv` (H/2, W/2, 2) uint8 tensors on
    any device; `chroma` "nearest" repeats each chroma sample 2x2, "bilinear" interpolates (centre-sited)."""
    import torch
    import torch.nn.functional as F

    kr, kb = MATRICES[matrix]
    h, w = y.shape
    c = uv.permute(2, 0, 1).float()[None]
    if chroma == "nearest":
        c = c.repeat_interleave(2, 2).repeat_interleave(2, 3)
    else:
        c = F.interpolate(c, scale_factor=2, mode="bilinear", align_corners=False)
    u, v = c[0, 0, :h, :w] - 128, c[0, 1, :h, :w] - 128
    yf = y.float()
    if not full_range:
        yf, u, v = (yf - 16) * (255 / 219), u * (255 / 224), v * (255 / 224)
    r = yf + 2 * (1 - kr) * v
    b = yf + 2 * (1 - kb) * u
    g = (yf - kr * r - kb * b) / (1 - kr - kb)
    return torch.stack([r, g, b], -1).round_().clamp_(0, 255).to(torch.uint8)


def yuv_planes(frame) -> tuple:
    """(Y (H, W), U (H/2, W/2), V) uint8 numpy arrays of a PyAV yuv420p frame."""
    out = []
    for plane in frame.planes:
        a = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        out.append(a[:, :plane.width])
    return tuple(out)


# ---------------------------------------------------------------- GPU side
class NvdecDecoder:
    """PyNvVideoCodec's decoder behind the `decode_clip` interface; frames are the library's
    DecodedFrame objects (valid until the next call), `keep` turns one into a torch tensor copy."""

    def __init__(self, nvc, codec: str, gpu: int = 0, rgb: bool = False):
        self.nvc = nvc
        kwargs = dict(gpuid=gpu, codec={"h264": nvc.cudaVideoCodec.H264, "hevc": nvc.cudaVideoCodec.HEVC}[codec],
                      cudacontext=0, cudastream=0, usedevicememory=True)
        if rgb:
            kwargs["outputColorType"] = nvc.OutputColorType.RGB
        self.dec = nvc.CreateDecoder(**kwargs)

    def decode(self, data: bytes, pts: int) -> list:
        buf = np.frombuffer(data, np.uint8)  # no copy; alive until Decode returns
        packet = self.nvc.PacketData()
        packet.bsl_data, packet.bsl, packet.pts = buf.ctypes.data, len(data), pts
        return [(f.timestamp, f) for f in self.dec.Decode(packet)]

    def flush(self) -> list:
        return [(f.timestamp, f) for f in self.dec.Decode(self.nvc.PacketData())]


def frame_tensor(frame):
    """A decoded frame as a CUDA uint8 tensor (no copy): NV12 (H*3/2, W) or RGB (H, W, 3)."""
    import torch

    t = torch.from_dlpack(frame)
    return t[..., 0] if t.dim() == 3 and t.shape[-1] == 1 else t


def nv12_split(t, height: int, width: int):
    """(Y, UV) views of an NV12 tensor (H*3/2, W or more)."""
    return t[:height, :width], t[height:height + height // 2, :width].reshape(height // 2, width // 2, 2)


class Keep:
    """Wraps a decoder so each returned frame is copied out of the decoder's surface at once."""

    def __init__(self, decoder, fn):
        self.decoder, self.fn = decoder, fn

    def decode(self, data, pts):
        return [(p, self.fn(f)) for p, f in self.decoder.decode(data, pts)]

    def flush(self):
        return [(p, self.fn(f)) for p, f in self.decoder.flush()]


def _sync():
    import torch

    torch.cuda.synchronize()


def _decode_files(nvc, videos: list, decoder=None, convert: bool = False) -> tuple:
    """(frames, seconds) of one decoder decoding every packet of `videos` in turn, flushed after each."""
    h, w = videos[0].height, videos[0].width
    decoder = decoder or NvdecDecoder(nvc, videos[0].codec)
    frames = 0
    _sync()
    t0 = time.perf_counter()
    for v in videos:
        for i in range(len(v.data) + 1):
            out = decoder.decode(v.data[i], int(v.pts[i])) if i < len(v.data) else decoder.flush()
            for _, f in out:
                if convert:
                    nv12_to_rgb(*nv12_split(frame_tensor(f), h, w))
            frames += len(out)
    _sync()
    return frames, time.perf_counter() - t0


def part_api(nvc, sets: dict) -> dict:
    """Facts about the library's objects, for writing the loader."""
    import torch

    path, video = next(iter(sets.values()))[0]
    dmx = nvc.CreateDemuxer(filename=str(path))
    res = dict(module=sorted(n for n in dir(nvc) if not n.startswith("_")),
               demuxer=sorted(n for n in dir(dmx) if not n.startswith("_")),
               packet=sorted(n for n in dir(nvc.PacketData()) if not n.startswith("_")))
    try:
        res["caps"] = {k: v for k, v in nvc.GetDecoderCaps(gpuid=0, codec=dmx.GetNvCodecId(), chromaformat=dmx.ChromaFormat(),
                                                            bitdepth=dmx.BitDepth()).items()}
    except Exception as e:
        res["caps_error"] = repr(e)
    same, n = [], 0
    for packet, ours in zip(dmx, video.data):
        same.append(ctypes.string_at(packet.bsl_data, packet.bsl) == ours)
        n += 1
        if n == 30:
            break
    res["own_demuxer_bytes_equal_pyav_annexb_first30"] = f"{sum(same)}/{len(same)}"
    dec = NvdecDecoder(nvc, video.codec)
    res["decoder"] = sorted(n for n in dir(dec.dec) if not n.startswith("_"))
    out = []
    for i in range(len(video.data)):
        out = dec.decode(video.data[i], int(video.pts[i]))
        if out:
            res["first_output_after_packets"] = i + 1
            break
    pts, f = out[0]
    res["frame"] = sorted(n for n in dir(f) if not n.startswith("_"))
    res["frame_repr"] = repr(f)[:300]
    res["frame_timestamp_type"] = type(pts).__name__
    t = torch.from_dlpack(f)
    res["dlpack"] = dict(shape=list(t.shape), dtype=str(t.dtype), device=str(t.device), stride=list(t.stride()))
    try:
        res["cuda_planes"] = [dict(v.__cuda_array_interface__) for v in f.cuda()]
    except Exception as e:
        res["cuda_planes_error"] = repr(e)
    for name in ("GetPixelFormat", "GetWidth", "GetHeight", "GetFrameSize"):
        try:
            res[name] = str(getattr(dec.dec, name)())
        except Exception as e:
            res[name] = f"error: {e!r}"
    res["video_size"] = [video.width, video.height]
    return res


def part_whole(nvc, sets: dict, log) -> dict:
    """(a): one decoder per codec+size, reused across the files; create cost; PyAV demux cost."""
    res = {}
    for name, items in sets.items():
        videos = [v for _, v in items]
        r = {}
        _sync()
        t0 = time.perf_counter()
        dec = NvdecDecoder(nvc, videos[0].codec)
        r["create_decoder_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        _decode_files(nvc, videos[:1], dec)  # warm-up
        frames, sec = _decode_files(nvc, videos, dec)
        r["frames"], r["expected_frames"] = frames, sum(len(v.data) for v in videos)
        r["decode_fps"] = round(frames / sec, 1)
        frames, sec = _decode_files(nvc, videos, dec, convert=True)
        r["decode_rgb_fps"] = round(frames / sec, 1)
        t0 = time.perf_counter()
        for p, _ in items:
            demux_annexb(p)
        r["pyav_demux_annexb_ms_per_file"] = round(1000 * (time.perf_counter() - t0) / len(items), 2)
        dmx_frames, t0 = 0, time.perf_counter()
        for p, _ in items:  # the library's own demuxer, file to frames
            dmx = nvc.CreateDemuxer(filename=str(p))
            for packet in dmx:
                dmx_frames += len(dec.dec.Decode(packet))
            dmx_frames += len(dec.flush())
        _sync()
        r["own_demuxer_decode_fps"] = round(dmx_frames / (time.perf_counter() - t0), 1)
        res[name] = r
        log(f"whole {name}: {r}")
    return res


def _thread_rates(nvc, videos: list, n: int, job) -> dict:
    """`n` threads, each with its own decoder, running `job(decoder) -> count`; counts per second in all."""
    decoders = [NvdecDecoder(nvc, videos[0].codec) for _ in range(n)]
    counts, errors = [0] * n, []
    barrier = threading.Barrier(n + 1)

    def work(k):
        barrier.wait()
        try:
            counts[k] = job(decoders[k])
        except Exception as e:
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    _sync()
    sec = time.perf_counter() - t0
    return dict(per_s=round(sum(counts) / sec, 1), errors=errors[:3])


def _process_worker(paths, barrier, queue):
    try:
        import PyNvVideoCodec as nvc

        videos = [demux_annexb(p) for p in paths]
        dec = NvdecDecoder(nvc, videos[0].codec)
        _decode_files(nvc, videos[:1], dec)
        barrier.wait()
        t0 = time.time()
        frames, _ = _decode_files(nvc, videos, dec)
        queue.put((frames, t0, time.time(), None))
    except Exception as e:
        try:
            barrier.abort()
        except Exception:
            pass
        queue.put((0, 0.0, 0.0, repr(e)))


def _process_rate(paths: list, n: int) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(paths, barrier, queue)) for _ in range(n)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [r[3] for r in results if r[3]]
    if errors:
        return dict(errors=errors[:3])
    frames = sum(r[0] for r in results)
    return dict(per_s=round(frames / (max(r[2] for r in results) - min(r[1] for r in results)), 1))


def part_parallel(nvc, sets: dict, log) -> dict:
    """(b): frames/s of 1, 2, 4, 8 decoders in threads, and 2, 4, 8 in processes (spawned)."""
    res = {}
    for name, items in sets.items():
        videos, paths = [v for _, v in items], [str(p) for p, _ in items]
        r = {}
        for n in (1, *THREADS):
            r[f"threads_{n}_fps"] = _thread_rates(nvc, videos, n, lambda d: _decode_files(nvc, videos, d)[0])
        for n in THREADS:
            r[f"processes_{n}_fps"] = _process_rate(paths, n)
        res[name] = r
        log(f"parallel {name}: {r}")
    return res


def _train_clips(videos: list, count: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [(k % len(videos), sampling.train_indices(len(videos[k % len(videos)].data), 8, 8, rng))
            for k in range(count)]


def _clip_job(nvc, videos, clips, drop, fresh, sent=None):
    """A function decoder -> clips done: each clip decoded, its 8 frames as RGB on the GPU."""
    h, w = videos[0].height, videos[0].width
    maps = [v.pts_to_index() for v in videos]
    rgb = (lambda f: nv12_to_rgb(*nv12_split(frame_tensor(f), h, w)))

    def job(decoder):
        for k, idx in clips:
            d = NvdecDecoder(nvc, videos[k].codec) if fresh else decoder
            _, n = decode_clip(videos[k], idx, Keep(d, rgb), drop, maps[k])
            if sent is not None:
                sent.append(n)
        return len(clips)
    return job


def part_clips(nvc, sets: dict, log, count: int = 60) -> dict:
    """(c): training clips (8x8) per second, skipping non-reference packets or not, 1 and 8 threads."""
    res = {}
    for name, items in sets.items():
        videos = [v for _, v in items]
        dec = NvdecDecoder(nvc, videos[0].codec)
        again = [_decode_files(nvc, videos[:1], dec)[0] for _ in range(2)]
        fresh = again != [len(videos[0].data)] * 2  # a flushed decoder that cannot restart: one per clip
        r = dict(reuse_after_flush_frames=again, expected=len(videos[0].data), new_decoder_per_clip=fresh)
        clips = _train_clips(videos, count)
        for drop in (True, False):
            key = "skip" if drop else "decode_all"
            sent = []
            r[f"{key}_1_thread_clips_per_s"] = _thread_rates(nvc, videos, 1, _clip_job(nvc, videos, clips, drop, fresh, sent))
            r[f"{key}_packets_per_clip"] = round(float(np.mean(sent)), 1)
            r[f"{key}_8_threads_clips_per_s"] = _thread_rates(nvc, videos, 8, _clip_job(nvc, videos, clips, drop, fresh))
        res[name] = r
        log(f"clips {name}: {r}")
    return res


def _diff(a, b) -> dict:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    axes = tuple(range(d.ndim - 1))
    return dict(max=d.max(axis=axes).tolist(), mean=d.mean(axis=axes).round(3).tolist())


def _pyav_reference(path) -> tuple:
    """PyAV's frames of `path` in presentation order: (pts, Y, UV interleaved, rgb24)."""
    import av

    out = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            y, u, v = yuv_planes(f)
            out.append((f.pts, y.copy(), np.stack([u, v], -1), f.to_ndarray(format="rgb24")))
    return out


def part_exact(nvc, sets: dict, log, frames: int = 60) -> dict:
    """(d): NVDEC vs PyAV on the first file of each set: planes, count, timestamps, RGB conversions."""
    import torch

    res = {}
    for name, items in sets.items():
        path, video = items[0]
        ref = _pyav_reference(path)
        h, w = video.height, video.width
        dec = NvdecDecoder(nvc, video.codec)
        got = []
        for i in range(len(video.data) + 1):
            out = dec.decode(video.data[i], int(video.pts[i])) if i < len(video.data) else dec.flush()
            got += [(p, frame_tensor(f).clone()) for p, f in out]
        _sync()
        r = dict(frames_nvdec=len(got), frames_pyav=len(ref),
                 pts_equal=[int(p) for p, _ in got] == [p for p, *_ in ref],
                 pts_in_display_order=bool(np.all(np.diff([int(p) for p, _ in got]) > 0)))
        step = max(1, len(ref) // frames)
        pick = list(range(0, min(len(got), len(ref)), step))
        ys = [(nv12_split(got[i][1], h, w), ref[i]) for i in pick]
        r["y"] = _diff(np.stack([a[0].cpu().numpy()[..., None] for a, _ in ys]), np.stack([b[1][..., None] for _, b in ys]))
        r["uv"] = _diff(np.stack([a[1].cpu().numpy() for a, _ in ys]), np.stack([b[2] for _, b in ys]))
        rgb_ref = np.stack([b[3] for _, b in ys])
        conv = {}
        for m in MATRICES:
            for full in (False, True):
                for chroma in ("nearest", "bilinear"):
                    ours = torch.stack([nv12_to_rgb(*a, m, full, chroma) for a, _ in ys]).cpu().numpy()
                    conv[f"{m}_{'full' if full else 'limited'}_{chroma}"] = _diff(ours, rgb_ref)
        r["rgb_vs_pyav"] = conv
        r["best_conversion"] = min(conv, key=lambda k: sum(conv[k]["mean"]))
        try:
            rdec = NvdecDecoder(nvc, video.codec, rgb=True)
            rgb = []
            for i in range(len(video.data) + 1):
                out = rdec.decode(video.data[i], int(video.pts[i])) if i < len(video.data) else rdec.flush()
                rgb += [frame_tensor(f).clone() for _, f in out]
            _sync()
            r["decoder_rgb_shape"] = list(rgb[0].shape)
            r["decoder_rgb_vs_pyav"] = _diff(np.stack([rgb[i].cpu().numpy() for i in pick]), rgb_ref)
        except Exception as e:
            r["decoder_rgb_error"] = repr(e)
        res[name] = r
        log(f"exact {name}: {r['frames_nvdec']} frames, pts equal {r['pts_equal']}, y {r['y']}, best {r['best_conversion']}")
    return res


def part_clip_exact(nvc, sets: dict, clips: int = 6) -> dict:
    """(c)+(d): the Y planes of training clips decoded via `decode_clip` (skipping) vs PyAV's."""
    res = {}
    for name, items in sets.items():
        path, video = items[0]
        ref = _pyav_reference(path)
        dec = Keep(NvdecDecoder(nvc, video.codec), lambda f: frame_tensor(f).clone())
        worst = 0
        for _, idx in _train_clips([video], clips, seed=1):
            got, _ = decode_clip(video, idx, dec, drop=True)
            for i in idx:
                y = nv12_split(got[int(i)], video.height, video.width)[0].cpu().numpy()
                worst = max(worst, int(np.abs(y.astype(int) - ref[int(i)][1]).max()))
        res[name] = dict(clips=clips, y_max_abs_diff=worst)
    return res


def part_pyav(sets: dict, log, count: int = 60) -> dict:
    """(e): PyAV in this process, one thread, as a loader worker: whole files and training clips."""
    import av

    res = {}
    for name, items in sets.items():
        r = {}
        frames, c0, t0 = 0, time.process_time(), time.perf_counter()
        for p, _ in items:
            with av.open(str(p)) as c:
                s = c.streams.video[0]
                s.thread_type, s.codec_context.thread_count = "SLICE", 1
                frames += sum(1 for _ in c.decode(s))
        r["decode_fps"] = round(frames / (time.perf_counter() - t0), 1)
        r["decode_fps_per_cpu_s"] = round(frames / (time.process_time() - c0), 1)
        clips = _train_clips([v for _, v in items], count)
        for drop in (True, False):
            c0, t0 = time.process_time(), time.perf_counter()
            for k, idx in clips:
                with VideoReader(items[k][0]) as reader:
                    reader.drop_unneeded = drop
                    reader.get_frames(idx)
            key = "skip" if drop else "decode_all"
            r[f"{key}_clips_per_s"] = round(count / (time.perf_counter() - t0), 1)
            r[f"{key}_clips_per_cpu_s"] = round(count / (time.process_time() - c0), 1)
        res[name] = r
        log(f"pyav {name}: {r}")
    return res


def _make_video(job) -> str:
    path, size, codec, seed, seconds, fps = job
    if not Path(path).exists():
        frames = render(["right_slow", "up_fast", "down_left_slow"][seed % 3], size, fps * seconds,
                        np.random.default_rng(seed))
        write_mp4(Path(path), frames, fps=fps, preset="medium", codec=codec)
    return path


def make_sets(folder: Path, videos: int, sizes=SIZES, codecs=CODECS, seconds: int = 10, fps: int = 30,
              workers: int | None = None) -> dict:
    """{"h264_340x256": [(path, AnnexB)], ...}: `videos` generated files per codec and size."""
    jobs = [(str(folder / f"{c}_{w}x{h}_{i}.mp4"), (w, h), c, i, seconds, fps)
            for c in codecs for w, h in sizes for i in range(videos)]
    map_in_processes(_make_video, jobs, workers or min(len(jobs), os.cpu_count() or 1), chunksize=1)
    sets: dict = {}
    for path, (w, h), c, *_ in jobs:
        sets.setdefault(f"{c}_{w}x{h}", []).append((Path(path), demux_annexb(path)))
    return sets


def machine_info() -> dict:
    import av
    import torch

    info = dict(cores=os.cpu_count(), python=platform.python_version(), torch=torch.__version__, av=av.__version__,
                ffmpeg=".".join(map(str, av.library_versions["libavcodec"])), platform=platform.platform(),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    try:
        import subprocess

        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as e:
        info["driver"] = repr(e)
    return info


def guarded(res: dict, key: str, fn, log) -> None:
    """res[key] = fn(), or the error and its traceback's last lines: one failing part leaves the rest."""
    t0 = time.perf_counter()
    try:
        res[key] = fn()
    except Exception as e:
        res[key] = dict(error=f"{type(e).__name__}: {e}", trace=traceback.format_exc().splitlines()[-8:])
        log(f"{key}: FAILED {type(e).__name__}: {e}")
    res.setdefault("part_seconds", {})[key] = round(time.perf_counter() - t0, 1)


def ratios(res: dict) -> dict:
    """NVDEC over PyAV for each set: whole-file frames/s (one decoder vs one core) and clips/s (one
    decoder thread vs one core's CPU second, and 8 threads vs one core)."""
    out = {}
    for name, p in (res.get("pyav") or {}).items():
        if not isinstance(p, dict) or "decode_fps_per_cpu_s" not in p:
            continue
        r = {}
        whole, clips = res.get("whole", {}).get(name, {}), res.get("clips", {}).get(name, {})
        if "decode_fps" in whole:
            r["whole_file_vs_one_core"] = round(whole["decode_fps"] / p["decode_fps_per_cpu_s"], 2)
        for key in ("skip", "decode_all"):
            for n in ("1_thread", "8_threads"):
                rate = clips.get(f"{key}_{n}_clips_per_s", {}).get("per_s")
                if rate:
                    r[f"clips_{key}_{n}_vs_one_core"] = round(rate / p[f"{key}_clips_per_cpu_s"], 2)
        out[name] = r
    return out


def run(out: Path, folder: Path, videos: int = 3, log=print, parts=None, sizes=SIZES, seconds: int = 10) -> dict:
    parts = set(parts or ("api", "whole", "parallel", "clips", "exact", "pyav"))
    res: dict = dict(machine=machine_info(), settings=dict(sizes=sizes, codecs=CODECS, seconds=seconds, fps=30,
                                                           videos_per_set=videos, preset="medium", clip="8x8"))
    t0 = time.perf_counter()
    sets = make_sets(folder, videos, sizes, seconds=seconds)
    res["make_videos_s"] = round(time.perf_counter() - t0, 1)
    res["videos"] = {k: dict(frames=[len(v.data) for _, v in items], keyframes=[int(v.key.sum()) for _, v in items],
                             nonref_packets=[int(v.nonref.sum()) for _, v in items]) for k, items in sets.items()}
    log(f"videos ready in {res['make_videos_s']} s: {res['videos']}")
    nvc = None
    try:
        import PyNvVideoCodec as nvc

        res["machine"]["pynvvideocodec"] = getattr(nvc, "__version__", "?")
    except Exception as e:
        res["pynvvideocodec_error"] = f"{type(e).__name__}: {e}"
        log(res["pynvvideocodec_error"])
    steps = [("api", lambda: part_api(nvc, sets)), ("exact", lambda: part_exact(nvc, sets, log)),
             ("clip_exact", lambda: part_clip_exact(nvc, sets)), ("whole", lambda: part_whole(nvc, sets, log)),
             ("clips", lambda: part_clips(nvc, sets, log)), ("parallel", lambda: part_parallel(nvc, sets, log))]
    for key, fn in steps:
        if (key in parts or (key == "clip_exact" and "exact" in parts)) and nvc is not None:
            guarded(res, key, fn, log)
            out.write_text(json.dumps(res, indent=1, default=str))  # what is done survives a later crash
    if "pyav" in parts:
        guarded(res, "pyav", lambda: part_pyav(sets, log), log)
    res["nvdec_over_pyav"] = ratios(res)
    res["total_s"] = round(time.perf_counter() - t0, 1)
    out.write_text(json.dumps(res, indent=1, default=str))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--videos-dir", type=Path, default=Path("work_dirs/nvdec_probe_videos"))
    ap.add_argument("--videos", type=int, default=3, help="files per codec and size")
    ap.add_argument("--parts", nargs="*", help="subset of: api whole parallel clips exact pyav")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.videos_dir.mkdir(parents=True, exist_ok=True)
    res = run(args.out, args.videos_dir, args.videos, parts=args.parts)
    print(f"wrote {args.out} in {res['total_s']} s")


if __name__ == "__main__":
    main()
