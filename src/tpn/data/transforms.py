"""Clip transforms in torch (no torchvision; the resize is OpenCV's, as mmaction2's). Clips are
uint8 (3, T, H, W) until the device.

Every random transform draws once per clip (from the `rng` it is given) and applies the
same crop/flip/jitter to all of its frames. Everything stays uint8 on the host; `normalize`
runs on the device, so a batch crosses to the GPU at one byte per value.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch

# OpenCV runs sequentially in every process that loads data, set before it can start its thread
# pool: the loader's workers are the parallelism (torch runs one thread in each), and a pool
# that exists when the workers fork hangs them. mmaction2's runner (mmengine) does the same.
cv2.setNumThreads(0)


def to_clip(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 numpy -> (3, T, H, W) uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)


def frames_last_perms(dim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(perm, inverse): from (..., 3, T, H, W) to the memory order (..., T, H, W, 3), and back."""
    perm = (*range(dim - 4), dim - 3, dim - 2, dim - 1, dim - 4)
    return perm, tuple(sorted(range(dim), key=perm.__getitem__))


def frames_last(clip: torch.Tensor) -> torch.Tensor:
    """The same (..., 3, T, H, W) uint8 values, laid out in memory as (..., T, H, W, 3).

    Decoded frames come in that order and the GPU model runs in it (channels_last_3d), so
    clips stay frames-last from decoding to the device: crops and batches are row copies,
    not channel transposes (docs/data.md, "Batch layouts").
    """
    perm, inv = frames_last_perms(clip.dim())
    return clip.permute(perm).contiguous().permute(inv)


def stack_frames_last(items: list[torch.Tensor], stack=torch.stack) -> torch.Tensor:
    """`torch.stack(items)` (each (..., 3, T, H, W)) with a frames-last result: one row copy per
    item. `stack` stacks the frames-last views (the collate passes `default_collate`)."""
    perm, inv = frames_last_perms(items[0].dim())
    stacked = stack([t.permute(perm) for t in items])
    return stacked.permute(0, *(i + 1 for i in inv))


def resize(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a uint8 (3, T, H, W) clip to (h, w), frame by frame, with OpenCV's `INTER_LINEAR`.

    mmaction2 resizes with OpenCV (mmcv.imresize, bilinear), whose uint8 path rounds the weights
    to 11-bit fixed point; released checkpoints were scored through that arithmetic, so this is
    the same call, bit for bit (torch's bilinear is up to one grey level off); per loader item it
    is not slower than torch's uint8 kernel (benchmarks/bench_resize.py). The result is frames-last.
    """
    h, w = size
    if tuple(clip.shape[-2:]) == (h, w):
        return clip
    frames = clip.permute(1, 2, 3, 0)  # (T, H, W, 3): a view of frames-last memory
    if frames.stride(-1) != 1 or frames.stride(-2) != frames.shape[-1]:
        frames = frames.contiguous()  # OpenCV wants each row's pixels packed
    out = torch.empty((frames.shape[0], h, w, frames.shape[-1]), dtype=torch.uint8)
    for src, dst in zip(frames.numpy(), out.numpy()):
        cv2.resize(src, (w, h), dst=dst, interpolation=cv2.INTER_LINEAR)
    return out.permute(3, 0, 1, 2)


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


def three_crop_boxes(h: int, w: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of three size x size crops covering the long side: start, centre, end
    (mmaction2's offsets: 0, (L - size) // 2 and twice that); the short side is centre-cropped."""
    if h < size or w < size:
        raise ValueError(f"three_crop: clip {h}x{w} smaller than crop {size}")
    if w >= h:
        step = (w - size) // 2
        return [((h - size) // 2, left) for left in (0, step, 2 * step)]
    step = (h - size) // 2
    return [(top, (w - size) // 2) for top in (0, step, 2 * step)]


def three_crop(clip: torch.Tensor, size: int) -> list[torch.Tensor]:
    """The three `three_crop_boxes` crops of a (3, T, H, W) clip."""
    return [crop(clip, t, l, size, size) for t, l in three_crop_boxes(*clip.shape[-2:], size)]


def make_views(frames: np.ndarray, indices: np.ndarray, plan) -> torch.Tensor:
    """A `tpn.data.plan.ClipPlan`'s views, uint8 (V, 3, T, out, out) frames-last, from the decoded
    frames (N, H, W, 3) of the sorted frame `indices` it names: each distinct frame is resized
    once per size (OpenCV's INTER_LINEAR, as `resize`), each view gathers its frames' box, which
    is resized to out x out."""
    rows = np.searchsorted(indices, plan.frames)  # (V, T) positions in `frames`
    clip, resized = to_clip(frames), {}
    views = []
    for v in range(plan.views):
        size = (int(plan.resize[v, 0]), int(plan.resize[v, 1]))
        if size not in resized:
            resized[size] = resize(clip, size)
        top, left, h, w = (int(x) for x in plan.box[v])
        view = resized[size][:, torch.from_numpy(rows[v]), top:top + h, left:left + w]
        views.append(resize(view, (plan.out, plan.out)))
    return stack_frames_last(views)


VIEW_ORDERS = ("tpn", "mmaction2")


def view_order(clips: int, crops: int, order: str = "tpn") -> list[int]:
    """Indices that rearrange a test sample's views from tpn's order into `order`:
    `views[view_order(clips, crops, "mmaction2")]`.

    tpn: clip-major, view v = clip v // crops, crop v % crops; crops at the start, centre and end
    of the long side. mmaction2 (ThreeCrop, then FormatShape): crop-major, view m = crop
    m // clips, clip m % clips; crops left, right, middle (top, bottom, middle for tall frames).
    Averaged scores do not depend on the order; per-view comparisons do.
    """
    if order not in VIEW_ORDERS:
        raise ValueError(f"view order must be one of {', '.join(VIEW_ORDERS)}, got {order!r}")
    if order == "tpn":
        return list(range(clips * crops))
    crop_in_tpn = [0, 2, 1] if crops == 3 else [0]  # left/right/middle = start/end/centre
    return [clip * crops + crop_in_tpn[k] for k in range(crops) for clip in range(clips)]


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


def draw_train_geometry(h: int, w: int, mode: str, size: int, short: int,
                        rng: np.random.Generator) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """A training clip's geometry for frames of h x w: ((rh, rw) the frames are resized to first,
    (top, left, ch, cw) the box cropped from those), the crop then resized to size x size.
    "random_resized": box drawn on the frames as they are; "random": short side resized to
    `short`, then a size x size box. The same draws as `random_resized_crop` / `random_crop`."""
    if mode == "random_resized":
        return (h, w), random_resized_crop_box(h, w, rng)
    rh, rw = short_side_size(h, w, short)
    return (rh, rw), (int(rng.integers(0, rh - size + 1)), int(rng.integers(0, rw - size + 1)), size, size)


def apply_geometry(clip: torch.Tensor, geometry, size: int) -> torch.Tensor:
    """`draw_train_geometry`'s result applied to a uint8 (3, T, H, W) clip: resize, crop, resize."""
    (rh, rw), (top, left, ch, cw) = geometry
    return resize(crop(resize(clip, (rh, rw)), top, left, ch, cw), (size, size))


JITTER_OPS = ("brightness", "contrast", "saturation")


def draw_augment(rng: np.random.Generator, flip: float, jitter: bool, brightness=0.4, contrast=0.4,
                 saturation=0.4) -> torch.Tensor:
    """Draw a clip's flip and colour jitter: float32 [flip, op0, op1, op2, f_brightness, f_contrast,
    f_saturation], ops in their random order (indices into JITTER_OPS; -1 when jitter is off)."""
    out = torch.tensor([0.0, -1, -1, -1, 1, 1, 1])
    out[0] = float(rng.random() < flip)
    if jitter:
        order = [0, 1, 2]
        rng.shuffle(order)
        spread = (brightness, contrast, saturation)
        for pos, op in enumerate(order):  # factors drawn in the order they apply
            out[1 + pos] = op
            out[4 + op] = rng.uniform(1 - spread[op], 1 + spread[op])
    return out


def apply_augment(x: torch.Tensor, aug: torch.Tensor) -> torch.Tensor:
    """Apply `draw_augment` results (a CPU tensor [N, 7]) to uint8 clips [N, 3, T, H, W] on any
    device. Control flow reads only the CPU tensor: no device synchronisation."""
    n = x.shape[0]
    col = (n, 1, 1, 1, 1)
    flips = aug[:, 0] > 0
    if flips.any():
        x = torch.where(flips.to(x.device).view(col), x.flip(-1), x)
    if (aug[:, 1] < 0).all():
        return x
    factors = aug[:, 4:].to(x.device, torch.float32)
    y = x.float()
    for pos in range(3):
        ops = aug[:, 1 + pos].long()
        out = y
        for op in sorted(set(ops.tolist()) - {-1}):
            f = factors[:, op].view(col)
            if op == 0:
                z = y * f
            else:
                gray = 0.299 * y[:, 0:1] + 0.587 * y[:, 1:2] + 0.114 * y[:, 2:3]
                if op == 1:
                    gray = gray.mean(dim=(1, 2, 3, 4), keepdim=True)
                z = (y - gray) * f + gray
            out = z if bool((ops == op).all()) else torch.where((ops == op).to(x.device).view(col), z, out)
        y = out.clamp(0, 255)
    return y.round().to(torch.uint8)


def color_jitter(clip: torch.Tensor, rng: np.random.Generator, brightness=0.4, contrast=0.4,
                 saturation=0.4) -> torch.Tensor:
    """Brightness, contrast and saturation factors drawn once per clip, applied in random order."""
    aug = draw_augment(rng, 0.0, True, brightness, contrast, saturation)
    return apply_augment(clip[None], aug[None])[0]


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [..., 3, T, H, W] (any device) -> float32, (x - mean) / std per channel."""
    shape = (3, 1, 1, 1)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(shape)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(shape)
    return (x.float() - m) / s
