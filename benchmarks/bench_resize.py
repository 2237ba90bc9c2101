"""The loader's uint8 resize (OpenCV INTER_LINEAR, `tpn.data.transforms.resize`) against the two
alternatives: torch's uint8 bilinear kernel (what the loader used before; up to one grey level
off OpenCV) and OpenCV's fixed-point arithmetic reproduced with torch ops (bit-exact, checked here).
CPU time per call, one thread, interleaved call by call (alternating who goes first); then whole loader items
(`VideoDataset.__getitem__`: decoding included) with the resize swapped between OpenCV and
torch's kernel, interleaved item by item:
  train_recipe_dev  mmaction2's recipe (random resized crop to 224) on `tpn data prepare`d 340x256 videos
  test30            the 30-view test sample of 480x360 videos (short side resized to 256)

    python benchmarks/bench_resize.py [--out benchmarks/results/resize_cpu_2core.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "src"), str(Path(__file__).resolve().parent)]

from bench_data import TRAIN_MODES, make_videos  # noqa: E402
from tpn.bench import machine_info  # noqa: E402
from tpn.config import DataConfig  # noqa: E402
from tpn.data import transforms as T  # noqa: E402
from tpn.data.datasets import VideoDataset  # noqa: E402


def torch_bilinear(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    x = clip.permute(1, 0, 2, 3).contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False).permute(1, 0, 2, 3)


def opencv_taps(src: int, dst: int, clamp_weight: bool):
    """OpenCV's INTER_LINEAR taps for one axis: (index 0, index 1, weight 0, weight 1), the source
    coordinate (d + 0.5) * scale - 0.5 in float32, weights rounded to 11 bits; `clamp_weight`: a
    border tap gets weight 0 (OpenCV's x axis; its y axis keeps the weights)."""
    f = ((np.arange(dst) + 0.5) * (1.0 / (dst / src)) - 0.5).astype(np.float32)
    i = np.floor(f).astype(np.int64)
    f = f - i.astype(np.float32)
    if clamp_weight:
        f[(i < 0) | (i >= src - 1)] = 0
    w1 = np.rint(f * np.float32(2048)).astype(np.int64)
    w0 = np.rint((np.float32(1) - f) * np.float32(2048)).astype(np.int64)
    return np.clip(i, 0, src - 1), np.clip(i + 1, 0, src - 1), w0, w1


def torch_fixed_point(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """OpenCV's uint8 INTER_LINEAR in torch ops: rows needed, columns gathered, the horizontal
    sum >> 4 in int16 (a1 split as 16q + m keeps it exact), the vertical pass in int32."""
    h, w = size
    x = clip.permute(1, 2, 3, 0)
    t, hi, wi, c = x.shape
    c0, c1, _, a1 = opencv_taps(wi, w, True)
    r0, r1, b0, b1 = opencv_taps(hi, h, False)
    rows = np.unique(np.concatenate([r0, r1]))
    pos = torch.from_numpy(np.searchsorted(rows, np.concatenate([r0, r1])))
    flat = x.index_select(1, torch.from_numpy(rows)).reshape(t * len(rows), wi * c).to(torch.int16)
    s0 = flat.index_select(1, torch.from_numpy((c0[:, None] * c + np.arange(c)).ravel()))
    d = flat.index_select(1, torch.from_numpy((c1[:, None] * c + np.arange(c)).ravel())) - s0
    s0 *= 128  # 2048 * s0 >> 4
    s0.addcmul_(d, torch.from_numpy(np.repeat(a1 >> 4, c).astype(np.int16)))
    d *= torch.from_numpy(np.repeat(a1 & 15, c).astype(np.int16))
    s0 += d >> 4
    r = s0.view(t, len(rows), w * c)
    top = r.index_select(1, pos[:h]).int() * torch.from_numpy(b0).int().view(h, 1) >> 16
    top += r.index_select(1, pos[h:]).int() * torch.from_numpy(b1).int().view(h, 1) >> 16
    return ((top + 2) >> 2).to(torch.uint8).view(t, h, w, c).permute(3, 0, 1, 2)


CASES = {  # name: (frames, source h, w, crop box or None, output h, w)
    "train crop 180x240 -> 224x224, 8 frames": (8, 256, 340, (10, 20, 180, 240), 224, 224),
    "train crop 100x130 -> 224x224, 8 frames": (8, 256, 340, (0, 0, 100, 130), 224, 224),
    "train crop 256x300 -> 224x224, 8 frames": (8, 256, 340, (0, 0, 256, 300), 224, 224),
    "test short side 360x480 -> 256x341, 80 frames": (80, 360, 480, None, 256, 341),
    "test short side 720x1280 -> 256x455, 20 frames": (20, 720, 1280, None, 256, 455),
}
FNS = {"opencv (loader)": T.resize, "torch bilinear (before)": torch_bilinear, "torch fixed-point": torch_fixed_point}


def loader_items(videos_dir: Path, repeats: int) -> list[dict]:
    """Per-item CPU time of the dataset with the loader's resize and with torch's kernel swapped in."""
    cells = [("train_recipe_dev", (340, 256), "prepared", DataConfig(**TRAIN_MODES["train_recipe_dev"]), "train"),
             ("test30", (480, 360), "original", DataConfig(), "test")]
    rows = []
    for mode, size, encoding, cfg, split in cells:
        paths = make_videos(videos_dir, size, 3)[encoding]
        ds = VideoDataset(cfg, split, [(str(p), 0, 0) for p in paths], None)
        cpu = {"opencv (loader)": 0.0, "torch bilinear (before)": 0.0}
        n = repeats if split == "train" else max(3, repeats // 10)
        for i in range(n):
            pair = [("opencv (loader)", FNS["opencv (loader)"]), ("torch bilinear (before)", torch_bilinear)]
            for name, fn in (pair if i % 2 else pair[::-1]):  # alternate who goes first (warm caches)
                T.resize = fn  # random_resized_crop and resize_short_side look it up at call time
                c0 = time.process_time()
                ds[i % len(paths)]
                cpu[name] += time.process_time() - c0
        T.resize = FNS["opencv (loader)"]
        unit = "clips" if split == "train" else "videos"
        rows.append({"mode": mode, "videos": f"{size[0]}x{size[1]} {encoding}", "items": n,
                     **{f"{k} {unit}/cpu-s": round(n / v, 1) for k, v in cpu.items()}})
        print(rows[-1])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/results/resize_cpu_2core.json")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--videos-dir", default="work_dirs/bench_videos", help="generated test videos (kept)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # and OpenCV runs sequentially (tpn.data.transforms sets it)
    rng = np.random.default_rng(0)
    results = []
    for name, (t, hi, wi, box, h, w) in CASES.items():
        clip = T.to_clip(rng.integers(0, 256, (t, hi, wi, 3), dtype=np.uint8))
        if box:
            clip = T.crop(clip, *box)
        ref = T.resize(clip, (h, w))
        assert torch.equal(torch_fixed_point(clip, (h, w)), ref), name
        cpu = {k: 0.0 for k in FNS}
        repeats = max(3, args.repeats * 8 // t)
        for i in range(repeats):
            for k, fn in (list(FNS.items()) if i % 2 else list(FNS.items())[::-1]):  # alternate who goes first
                c0 = time.process_time()
                fn(clip, (h, w))
                cpu[k] += time.process_time() - c0
        row = {"case": name, "repeats": repeats, **{f"{k} ms": round(v / repeats * 1e3, 3) for k, v in cpu.items()},
               "max grey-level difference, torch bilinear vs opencv":
                   int((torch_bilinear(clip, (h, w)).int() - ref.int()).abs().max())}
        results.append(row)
        print(name, " ".join(f"{k}: {v / repeats * 1e3:.2f} ms" for k, v in cpu.items()))
    items = loader_items(Path(args.videos_dir), args.repeats * 4)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(machine=machine_info(), protocol="CPU time, 1 thread (torch and OpenCV); "
                                   "resize: noise frames, the three interleaved call by call, the torch "
                                   "fixed-point result checked equal to OpenCV's; loader: VideoDataset items, "
                                   "the two resizes interleaved item by item",
                                   resize=results, loader=items), indent=1) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
