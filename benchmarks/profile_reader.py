"""Where one loader process spends a training clip's time, from the original files (JSON).

    python benchmarks/profile_reader.py --out benchmarks/results/reader_profile_cpu_2core.json

Makes 4 videos as most downloads are (340x256, 10 s at 30 fps, x264 preset medium: B-frames,
keyframe interval 250) with the project's generator, then builds the recipe's training items
(tpn_r50_8x8_k400: 8x8 clips, random resized crop 224, flip/jitter drawn for the device) in this
process under cProfile and groups the time: decoding (FFmpeg), colour conversion to RGB
(swscale), opening and indexing the file, resize (OpenCV), array copies, the rest.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from tpn.bench import machine_info  # noqa: E402
from tpn.config import load_config  # noqa: E402
from tpn.data.datasets import build_dataset  # noqa: E402
from tpn.data.synthetic import render, write_mp4  # noqa: E402

# (group, test on a profiled function's file and name, as cProfile keys them)
GROUPS = (("decode", lambda f, n: "'decode' of 'av.video.stream" in n),
          ("rgb_conversion", lambda f, n: "reformat" in n),
          ("open_and_index", lambda f, n: n == "<av.container.core.open>" or (f.endswith("video.py") and n == "_index")),
          ("resize", lambda f, n: n == "<resize>"),
          ("array_copies", lambda f, n: n == "stack" or "to_ndarray" in n),
          ("reader_python", lambda f, n: f.endswith(("video.py", "nal.py"))))


def make_videos(folder: Path, count: int = 4, seconds: int = 10) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        p = folder / f"v{i}.mp4"
        if not p.exists():
            frames = render(["right_slow", "up_fast", "down_left_slow"][i % 3], (340, 256), 30 * seconds,
                            np.random.default_rng(i))
            write_mp4(p, frames, preset="medium")
        paths.append(p)
    return paths


def group_of(key: tuple) -> str:
    file, _, name = key
    return next((group for group, test in GROUPS if test(file, name)), "rest")


def profile(ds, clips: int) -> dict:
    pr = cProfile.Profile()
    t0 = time.perf_counter()
    pr.enable()
    for i in range(clips):
        ds[i]
    pr.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(pr).stats  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}
    groups: dict[str, float] = {}
    for key, (_, _, tottime, _, _) in stats.items():
        groups[group_of(key)] = groups.get(group_of(key), 0.0) + tottime
    total = sum(groups.values())
    return dict(ms_per_clip=round(1000 * wall / clips, 2), profiled_ms_per_clip=round(1000 * total / clips, 2),
                share={k: round(v / total, 3) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("work_dirs/profile_reader"))
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    paths = make_videos(args.dir, seconds=args.seconds)
    (args.dir / "list.txt").write_text("".join(f"{p.name} 0\n" for p in paths) * 64)
    (args.dir / "labels.txt").write_text("a\nb\n")
    cfg = load_config("tpn_r50_8x8_k400", [
        f"data.root={args.dir}", f"data.train_list={args.dir}/list.txt", f"data.label_map={args.dir}/labels.txt",
        "model.head.num_classes=2", "data.train_crop=random_resized", "data.color_jitter=true",
        "data.augment_on_device=true", "data.decoder=pyav"])
    ds = build_dataset(cfg.data, "train")
    for i in range(4):  # first opens: imports, caches
        ds[i]
    res = dict(machine=machine_info(), video="340x256, 30 fps, x264 preset medium (B-frames, keyframe every 250)",
               clip="8x8, random resized crop 224, flip/jitter drawn for the device", clips=args.clips,
               **profile(ds, args.clips))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
