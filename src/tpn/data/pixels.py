"""The CPU path's pixel arithmetic in torch, so frames decoded on the GPU come out byte for byte
as the CPU path makes them. Integer (int32) tensor ops only: they give the same bytes on any
device, batched over frames, no Python loop over pixels.

`nv12_to_rgb24`: what PyAV's `frame.reformat(format="rgb24")` (`tpn.data.video.VideoReader`)
returns for 8-bit 4:2:0 frames of even height. FFmpeg's swscale converts yuv420p -> rgb24 there
with its unscaled converter, on x86-64 its SIMD one (libswscale/x86/yuv_2_rgb.asm): each chroma sample serves its 2x2 luma block, and
with 16-bit coefficients c rounded from swscale's tables (`ff_yuv2rgb_coeffs`, BT.601 or BT.709,
scaled for limited or full range)

    y = ((8 * Y - y_offset) * c_y) >> 16
    R = y + ((8 * V - 1024) * c_vr >> 16)
    G = y + ((8 * U - 1024) * c_ug >> 16) + ((8 * V - 1024) * c_vg >> 16)
    B = y + ((8 * U - 1024) * c_ub >> 16)

each clamped to 0..255 (`>>` floors, as the SIMD high-half multiply does). swscale's portable C
path (no SIMD) rounds otherwise (not reproduced here); frames of odd height take its general
scaler, also other bytes (the GPU decoder takes neither: `nvdec.demux`).

`resize_linear_u8`: what `cv2.resize(..., interpolation=cv2.INTER_LINEAR)` returns for uint8
images (`tpn.data.transforms.resize`): half-pixel centres; a source coordinate per output
row/column computed in float32 from the double scale, its weights rounded to 11 bits
(INTER_RESIZE_COEF_BITS); a horizontal pass into int32 (left/right edges repeat the border
pixel), then a vertical pass that OpenCV does in 16-bit lanes, scalar tail included:
`(((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16) + 2) >> 2` (rows clamped to the image,
weights kept). Tested against OpenCV with its SIMD dispatch and IPP on and off.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

# swscale's ff_yuv2rgb_coeffs rows: (crv, cbu, cgu, cgv) in 1/65536, for BT.601 and BT.709
_COEFFS = {False: (104597, 132201, 25675, 53279), True: (117489, 138438, 13975, 34925)}


def _div(a: int, b: int) -> int:
    """C integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _round16(f: int) -> int:
    """swscale's roundToInt16, as a signed value."""
    r = (f + (1 << 15)) >> 16
    return -0x8000 if r < -0x7FFF else min(r, 0x7FFF)


@lru_cache(maxsize=None)
def rgb24_coefficients(bt709: bool, full_range: bool) -> tuple[int, int, int, int, int, int]:
    """(c_y, y_offset, c_vr, c_ub, c_vg, c_ug): swscale's 16-bit SIMD coefficients for rgb24
    (default brightness, contrast and saturation)."""
    crv, cbu, cgu, cgv = _COEFFS[bool(bt709)]
    cgu, cgv = -cgu, -cgv
    cy, oy = 1 << 16, 0
    if full_range:
        crv, cbu, cgu, cgv = (_div(c * 224, 255) for c in (crv, cbu, cgu, cgv))
    else:
        cy, oy = _div(cy * 255, 219), 16 << 16
    return (_round16(cy << 13), _round16(oy << 3), _round16(crv << 13), _round16(cbu << 13),
            _round16(cgv << 13), _round16(cgu << 13))


def nv12_to_rgb24(y: torch.Tensor, uv: torch.Tensor, bt709: bool = False, full_range: bool = False) -> torch.Tensor:
    """uint8 luma (..., H, W) and interleaved chroma (..., ceil(H/2), ceil(W/2), 2) (U, V: NV12's
    second plane) -> uint8 (..., H, W, 3) RGB, the bytes of PyAV's `rgb24` for these planes."""
    h, w = y.shape[-2:]
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    if tuple(uv.shape[-3:]) != (h2, w2, 2) or y.dtype != torch.uint8 or uv.dtype != torch.uint8:
        raise ValueError(f"nv12_to_rgb24: luma {tuple(y.shape)} {y.dtype} and chroma {tuple(uv.shape)} "
                         f"{uv.dtype} are not uint8 planes of one 4:2:0 picture")
    c_y, y_off, c_vr, c_ub, c_vg, c_ug = rgb24_coefficients(bt709, full_range)
    luma = ((y.int() << 3) - y_off).mul_(c_y).bitwise_right_shift_(16).short()
    if h % 2:
        luma = F.pad(luma, (0, 0, 0, 1))
    luma = luma.unflatten(-2, (h2, 2))  # (..., h2, 2, W): the two rows of each chroma row
    u = (uv[..., 0].int() << 3) - 1024
    v = (uv[..., 1].int() << 3) - 1024
    terms = ((v * c_vr) >> 16, ((u * c_ug) >> 16) + ((v * c_vg) >> 16), (u * c_ub) >> 16)
    wide = (t.short()[..., None].expand(*t.shape, 2).flatten(-2)[..., None, :w] for t in terms)  # chroma 2x wide
    rgb = torch.stack([(luma + t).clamp_(0, 255).to(torch.uint8) for t in wide], -1)
    return rgb.flatten(-4, -3)[..., :h, :, :]


@lru_cache(maxsize=None)
def _taps_np(src: int, dst: int, clamp: bool) -> tuple[np.ndarray, ...]:
    """OpenCV INTER_LINEAR's fixed-point taps along one axis: (i0, i1, w0, w1), output position
    k = (w0 * in[i0] + w1 * in[i1]) / 2048. `clamp`: the horizontal pass (a position outside the
    image takes the border pixel at full weight); otherwise the vertical one (indices clamped to
    the image, weights kept)."""
    scale = 1.0 / (dst / src)
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    f = f - i0.astype(np.float32)
    if clamp:
        left, right = i0 < 0, i0 >= src - 1
        f[left | right] = 0
        i0 = np.where(left, 0, np.where(right, src - 1, i0))
    one = np.float32(1 << 11)
    w0 = np.rint((np.float32(1) - f) * one).astype(np.int32)
    w1 = np.rint(f * one).astype(np.int32)
    i1 = np.clip(i0 + 1, 0, src - 1)
    return np.clip(i0, 0, src - 1), i1, w0, w1


@lru_cache(maxsize=None)
def _taps(src: int, dst: int, clamp: bool, device: torch.device, channels: int = 1) -> tuple[torch.Tensor, ...]:
    """`_taps_np` on `device`; with `channels` > 1 indices and weights per (position, channel) of a
    flattened (position, channel) axis. Kept for the run (a few KB per pair of sizes): never freed,
    so no decoder thread's stream can find its memory reused while it still reads it."""
    i0, i1, w0, w1 = _taps_np(src, dst, clamp)
    c = np.arange(channels)
    i0, i1 = ((i[:, None] * channels + c).reshape(-1) for i in (i0, i1))
    w0, w1 = (np.repeat(w, channels) for w in (w0, w1))
    return tuple(torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (i0, i1, w0, w1))


def _horizontal(x: torch.Tensor, taps) -> torch.Tensor:
    """int32 (..., rows, w * C): OpenCV's horizontal pass over uint8 (..., rows, W, C)."""
    i0, i1, w0, w1 = taps
    x = x.flatten(-2)
    return x.index_select(-1, i0).int().mul_(w0).add_(x.index_select(-1, i1).int().mul_(w1))


def resize_linear_u8(x: torch.Tensor, size: tuple[int, int], box=None) -> torch.Tensor:
    """uint8 images (..., H, W, C) -> (..., h, w, C) with the bytes of `cv2.resize(image, (w, h),
    interpolation=cv2.INTER_LINEAR)` on each. `box` (top, left, bh, bw): only that window of the
    resized images is computed and returned (the same bytes as cropping the full result).
    (h, w) == (H, W) returns `x` (cropped to `box`), as `transforms.resize` does."""
    if x.dtype != torch.uint8 or x.dim() < 3:
        raise ValueError(f"resize_linear_u8: wants uint8 (..., H, W, C) images, got {tuple(x.shape)} {x.dtype}")
    (src_h, src_w), (h, w) = x.shape[-3:-1], (int(size[0]), int(size[1]))
    top, left, bh, bw = (int(v) for v in (box if box is not None else (0, 0, h, w)))
    if not (h > 0 and w > 0 and 0 <= top and top + bh <= h and 0 <= left and left + bw <= w and bh > 0 and bw > 0):
        raise ValueError(f"resize_linear_u8: size {(h, w)} / box {(top, left, bh, bw)} outside the image")
    if (h, w) == (src_h, src_w):
        return x[..., top:top + bh, left:left + bw, :]
    c = x.shape[-1]
    cols = tuple(t[left * c:(left + bw) * c] for t in _taps(src_w, w, True, x.device, c))
    r0, r1, b0, b1 = (t[top:top + bh] for t in _taps(src_h, h, False, x.device))
    lo, hi = _taps_np(src_h, h, False)[0][top], _taps_np(src_h, h, False)[1][top + bh - 1]
    if hi - lo + 1 <= 2 * bh:  # the rows in reach, each through the horizontal pass once
        s = _horizontal(x[..., lo:hi + 1, :, :], cols).bitwise_right_shift_(4)
        s0, s1 = s.index_select(-2, r0 - lo), s.index_select(-2, r1 - lo)
    else:  # a strong downscale: only the two rows of each output row
        s0 = _horizontal(x.index_select(-3, r0), cols).bitwise_right_shift_(4)
        s1 = _horizontal(x.index_select(-3, r1), cols).bitwise_right_shift_(4)
    out = s0.mul_(b0[:, None]).bitwise_right_shift_(16)
    out += s1.mul_(b1[:, None]).bitwise_right_shift_(16)
    return out.add_(2).bitwise_right_shift_(2).clamp_(0, 255).to(torch.uint8).unflatten(-1, (bw, c))
