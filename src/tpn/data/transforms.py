"""Clip transforms in torch (no torchvision). Clips are uint8 (3, T, H, W) until the device.

Every random transform draws once per clip (from the `rng` it is given) and applies the
same crop/flip/jitter to all of its frames. Everything stays uint8 on the host; `normalize`
runs on the device, so a batch crosses to the GPU at one byte per value.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def to_clip(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 numpy -> (3, T, H, W) uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)


def resize(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a uint8 (3, T, H, W) clip to (h, w): bilinear, no antialiasing, on uint8.

    This is mmaction2's resize (OpenCV `INTER_LINEAR`; equal within one grey level) and
    torch's fast uint8 channels-last kernel: ~5x faster than going through float.
    """
    h, w = size
    if tuple(clip.shape[-2:]) == (h, w):
        return clip
    x = clip.permute(1, 0, 2, 3).contiguous(memory_format=torch.channels_last)  # frames as the batch
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=False)
    return x.permute(1, 0, 2, 3)


def short_side_size(h: int, w: int, short: int) -> tuple[int, int]:
    """(h, w) with the short side `short`, the long one scaled and rounded half up (as mmcv)."""
    if h <= w:
        return short, max(1, int(w * short / h + 0.5))
    return max(1, int(h * short / w + 0.5)), short


def resize_short_side(clip: torch.Tensor, short: int) -> torch.Tensor:
    return resize(clip, short_side_size(clip.shape[-2], clip.shape[-1], short))


def crop(clip: torch.Tensor, top: int, left: int, h: int, w: int) -> torch.Tensor:
    return clip[..., top:top + h, left:left + w]


def random_crop(clip: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    h, w = clip.shape[-2:]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return crop(clip, top, left, size, size)


def center_crop(clip: torch.Tensor, size: int) -> torch.Tensor:
    h, w = clip.shape[-2:]
    return crop(clip, (h - size) // 2, (w - size) // 2, size, size)


def three_crop(clip: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Three size x size crops covering the long side: start, centre, end (mmaction2's offsets:
    0, (L - size) // 2 and twice that); the short side is centre-cropped if it exceeds `size`."""
    h, w = clip.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"three_crop: clip {h}x{w} smaller than crop {size}")
    if w >= h:
        step = (w - size) // 2
        tops, lefts = [(h - size) // 2] * 3, [0, step, 2 * step]
    else:
        step = (h - size) // 2
        tops, lefts = [0, step, 2 * step], [(w - size) // 2] * 3
    return [crop(clip, t, l, size, size) for t, l in zip(tops, lefts)]


def random_resized_crop_box(h: int, w: int, rng: np.random.Generator, area=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """Inception-style box: area fraction and aspect ratio drawn at random (10 tries, then centre)."""
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = h * w * rng.uniform(*area)
        aspect = math.exp(rng.uniform(*log_r))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    s = min(h, w)
    return (h - s) // 2, (w - s) // 2, s, s


def random_resized_crop(clip: torch.Tensor, size: int, rng: np.random.Generator) -> torch.Tensor:
    top, left, ch, cw = random_resized_crop_box(clip.shape[-2], clip.shape[-1], rng)
    return resize(crop(clip, top, left, ch, cw), (size, size))


def color_jitter(clip: torch.Tensor, rng: np.random.Generator, brightness=0.4, contrast=0.4,
                 saturation=0.4) -> torch.Tensor:
    """Brightness, contrast and saturation factors drawn once per clip, in random order."""
    x = clip.float()
    ops = ["b", "c", "s"]
    rng.shuffle(ops)
    for op in ops:
        if op == "b":
            x = x * rng.uniform(1 - brightness, 1 + brightness)
        elif op == "c":
            gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).mean()
            x = (x - gray) * rng.uniform(1 - contrast, 1 + contrast) + gray
        else:
            gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)
            x = (x - gray) * rng.uniform(1 - saturation, 1 + saturation) + gray
        x = x.clamp(0, 255)
    return x.round().to(torch.uint8)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [..., 3, T, H, W] (any device) -> float32, (x - mean) / std per channel."""
    shape = (3, 1, 1, 1)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(shape)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(shape)
    return (x.float() - m) / s
