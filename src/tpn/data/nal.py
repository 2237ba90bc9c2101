"""Which compressed frames no other frame refers to, from the NAL unit headers of a packet.

A decoder can skip such a frame (its packet is simply not sent) without changing any other
frame's pixels. The reader (`tpn.data.video`) drops them when they are not wanted, so a
random clip from a long-GOP video decodes roughly half as many frames.

Only length-prefixed streams are parsed (mp4/mkv: `avcC` / `hvcC` extradata), where a packet
is one access unit made of `[length][NAL unit]` records:
- H.264: a frame is non-reference when every slice NAL (types 1-5) has nal_ref_idc 0
  (bits 5-6 of its first byte); SEI/AUD/other non-slice NALs do not count. Extension
  slices (SVC/MVC, types 14, 20, 21) make a packet non-droppable.
- HEVC: the sub-layer non-reference types (TRAIL_N, TSA_N, STSA_N, RADL_N, RASL_N and the
  reserved RSV_VCL_N10/12/14) are only unused by pictures of their own temporal sub-layer,
  so they are dropped only when their TemporalId is the stream's highest (for example all 0,
  as x265 writes by default).
Any other codec, framing or malformed packet: `None` or False, so nothing is dropped.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

HEVC_SUBLAYER_NONREF = frozenset({0, 2, 4, 6, 8, 10, 12, 14})
HEVC_SPS = 33


def _nal_units(data, length_size: int):
    """Yield (offset, size) of each NAL unit; raise ValueError when the records do not tile the packet."""
    pos, end = 0, len(data)
    while pos < end:
        if pos + length_size > end:
            raise ValueError("truncated NAL length")
        size = int.from_bytes(data[pos:pos + length_size], "big")
        pos += length_size
        if size == 0 or pos + size > end:
            raise ValueError("bad NAL length")
        yield pos, size
        pos += size


def h264_nonref(data, length_size: int) -> bool:
    """True when the access unit `data` (AVCC) is a non-reference picture."""
    slices = 0
    try:
        for pos, _ in _nal_units(data, length_size):
            b = data[pos]
            kind = b & 0x1F
            if b & 0x80 or kind in (14, 20, 21):  # forbidden bit set, or an extension slice
                return False
            if 1 <= kind <= 5:
                if b & 0x60:  # nal_ref_idc != 0
                    return False
                slices += 1
    except ValueError:
        return False
    return slices > 0


def hevc_nonref(data, length_size: int, top_tid: int) -> bool:
    """True when every picture NAL of `data` (hvcC) is sub-layer non-reference at TemporalId `top_tid`."""
    slices = 0
    try:
        for pos, size in _nal_units(data, length_size):
            if size < 2:
                return False
            kind, tid = (data[pos] >> 1) & 0x3F, (data[pos + 1] & 7) - 1
            if data[pos] & 0x80 or kind == HEVC_SPS:
                return False
            if kind < 32:  # a VCL (picture) NAL
                if kind not in HEVC_SUBLAYER_NONREF or tid != top_tid:
                    return False
                slices += 1
    except ValueError:
        return False
    return slices > 0


def _hevc_top_tid(extradata: bytes) -> int | None:
    """Highest TemporalId the stream declares (hvcC numTemporalLayers and the SPSs'
    sps_max_sub_layers_minus1); None when it declares nothing or the record is malformed."""
    if len(extradata) < 23:
        return None
    layers = (extradata[21] >> 3) & 7  # 0: unknown
    top = layers - 1 if layers else -1
    pos = 23
    try:
        for _ in range(extradata[22]):
            kind, count = extradata[pos] & 0x3F, int.from_bytes(extradata[pos + 1:pos + 3], "big")
            pos += 3
            for _ in range(count):
                size = int.from_bytes(extradata[pos:pos + 2], "big")
                if kind == HEVC_SPS and size >= 3:
                    top = max(top, (extradata[pos + 4] >> 1) & 7)  # after the 2-byte NAL header
                pos += 2 + size
    except IndexError:
        return None
    if pos > len(extradata) or top < 0:
        return None
    return top


def nonref_test(codec: str, extradata: bytes | None) -> Callable[[object], bool] | None:
    """A function telling whether a packet's bytes are a frame nothing refers to, or None
    when this stream cannot be judged (other codec, Annex B framing, odd extradata)."""
    ex = bytes(extradata or b"")
    if codec == "h264" and len(ex) >= 7 and ex[0] == 1:
        length_size = (ex[4] & 3) + 1
        return partial(h264_nonref, length_size=length_size) if length_size != 3 else None
    if codec == "hevc" and len(ex) >= 23 and ex[0] == 1:
        top = _hevc_top_tid(ex)
        return None if top is None else partial(hevc_nonref, length_size=(ex[21] & 3) + 1, top_tid=top)
    return None
