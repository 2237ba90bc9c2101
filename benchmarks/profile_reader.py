"""Where one loader process spends a training clip's CPU time, and what the levers on it give (JSON).

    python benchmarks/profile_reader.py --out benchmarks/results/cpu_path_profile_cpu_2core_2026-12-06.json

Makes videos as most downloads are (10 s at 30 fps, x264 preset medium: B-frames, keyframe
interval 250) with the project's generator, one set per `--sets` entry (WIDTHxHEIGHT, or
WIDTHxHEIGHT:CRF; x264's default CRF 23 otherwise), and measures in this process, one thread:
  profile  the recipe's training items (tpn_r50_8x8_k400: 8x8 clips, random resized crop 224,
           flip/jitter drawn for the device) under cProfile with a CPU-time clock, grouped into
           stages (GROUPS), without and with the index cache (`VideoReader.index_cache`)
  cache    the same items, index cache off and on, interleaved call by call: clips per CPU second
  threads  FFmpeg's decoder threading per reader (`VideoReader.thread_type`, `thread_count`; 0 is
           FFmpeg's automatic count) and swscale's (`VideoReader.convert_threads`: 1, 0 = one per
           CPU, PyAV's default, and 16 = what 0 gives on a 16-core host), interleaved: clips per CPU
           second and per wall second; and the threads a process runs while a reader is open
  rgb      a clip's 8 frames to RGB at short side 256 (the Paddle recipe's `train_crop: random`, and
           validation/test): full-size rgb24 then OpenCV INTER_LINEAR (the default: mmaction2's
           pixels) against swscale converting straight to that size, with the pixel differences
  decord   decord 0.6.0's VideoReader (when importable) against tpn's on the same frame indices,
           and mmaction2's own TPN training pipeline (DecordInit, DecordDecode, RandomResizedCrop,
           Resize 224, Flip; when mmaction2 is importable) against tpn's dataset item, per CPU second
CPU seconds are the process's (every thread's); on a shared machine they are the rates to compare.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_data import _timed_pair  # noqa: E402
from tpn.bench import machine_info  # noqa: E402
from tpn.config import load_config  # noqa: E402
from tpn.data import sampling  # noqa: E402
from tpn.data.datasets import build_dataset  # noqa: E402
from tpn.data.synthetic import render, write_mp4  # noqa: E402
from tpn.data.video import IndexCache, VideoReader  # noqa: E402

# (stage, test on a profiled function's file and name, as cProfile keys them); the first that matches
GROUPS = (("seek_and_decode", lambda f, n: "'decode' of 'av.video.stream" in n or "'seek' of 'av.container" in n),
          ("rgb_conversion", lambda f, n: "reformat" in n),
          ("open", lambda f, n: n == "<av.container.core.open>"),
          ("index", lambda f, n: f.endswith("video.py") and n in ("_index", "_demux", "_set_index", "_index_from_tag")),
          ("upright", lambda f, n: f.endswith("video.py") and n in ("upright", "display_matrix")),
          ("resize", lambda f, n: n == "<resize>"),
          ("array_copies", lambda f, n: n in ("stack", "<built-in method torch.stack>") or "to_ndarray" in n),
          ("nonref_tests", lambda f, n: f.endswith("nal.py")),
          ("reader_python", lambda f, n: f.endswith("video.py")),  # the packet loop (demuxing) included
          ("plan_and_transforms_python", lambda f, n: f.endswith(("transforms.py", "plan.py", "decoders.py"))))
THREADS = (("SLICE", 1), ("SLICE", 2), ("SLICE", 0), ("FRAME", 1), ("FRAME", 2), ("FRAME", 0))
CONVERT_THREADS = (1, 0, 16)
SWSCALE = ("BILINEAR", "FAST_BILINEAR", "AREA", "BICUBIC")


def make_videos(folder: Path, size: tuple[int, int], crf: int = 23, count: int = 3, seconds: int = 10) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        p = folder / f"{size[0]}x{size[1]}_crf{crf}_{seconds}s_{i}.mp4"
        if not p.exists():
            frames = render(["right_slow", "up_fast", "down_left_slow"][i % 3], size, 30 * seconds,
                            np.random.default_rng(i))
            write_mp4(p, frames, preset="medium", crf=crf)
        paths.append(p)
    return paths


def recipe_dataset(folder: Path, paths: list[Path], train_crop: str = "random_resized"):
    """The shipped recipe's training dataset over `paths` (64 items a video)."""
    name = paths[0].stem.rsplit("_", 1)[0]
    (folder / f"{name}.txt").write_text("".join(f"{p.name} 0\n" for p in paths) * 64)
    (folder / "labels.txt").write_text("a\nb\n")
    cfg = load_config("tpn_r50_8x8_k400", [
        f"data.root={folder}", f"data.train_list={folder}/{name}.txt", f"data.label_map={folder}/labels.txt",
        "model.head.num_classes=2", f"data.train_crop={train_crop}", "data.color_jitter=true",
        "data.augment_on_device=true", "data.decoder=pyav"])
    return build_dataset(cfg.data, "train")


def group_of(key: tuple) -> str:
    file, _, name = key
    return next((group for group, test in GROUPS if test(file, name)), "rest")


def profile(ds, clips: int) -> dict:
    """Items 0..clips-1 under cProfile, timed by the process's CPU clock: ms a clip per stage."""
    import pstats

    pr = cProfile.Profile(time.process_time)
    c0 = time.process_time()
    pr.enable()
    for i in range(clips):
        ds[i]
    pr.disable()
    cpu = time.process_time() - c0
    groups: dict[str, float] = {}
    for key, (_, _, tottime, _, _) in pstats.Stats(pr).stats.items():
        groups[group_of(key)] = groups.get(group_of(key), 0.0) + tottime
    total, ranked = sum(groups.values()), sorted(groups.items(), key=lambda kv: -kv[1])
    return dict(cpu_ms_per_clip=round(1000 * cpu / clips, 2),
                stage_cpu_ms_per_clip={k: round(1000 * v / clips, 2) for k, v in ranked},
                share={k: round(v / total, 3) for k, v in ranked})


def with_reader(fn, **settings):
    """`fn` run with VideoReader's class attributes `settings` (restored after)."""
    def call(i):
        old = {k: getattr(VideoReader, k) for k in settings}
        for k, v in settings.items():
            setattr(VideoReader, k, v)
        try:
            return fn(i)
        finally:
            for k, v in old.items():
                setattr(VideoReader, k, v)
    return call


def rates(fns: dict, clips: int, warm: int = 3) -> dict:
    """{name: {clips_per_cpu_s, clips_per_s}}, the strategies interleaved call by call after `warm`
    untimed calls each (first opens, converters, every video in the cache)."""
    for fn in fns.values():
        for i in range(warm):
            fn(i)
    return {k: dict(clips_per_cpu_s=round(cpu, 2), clips_per_s=round(wall, 2))
            for k, (wall, cpu) in _timed_pair(fns, clips).items()}


def cache_and_threads(ds, clips: int) -> tuple[dict, dict]:
    item = ds.__getitem__
    cache = rates({"off": with_reader(item, index_cache=None), "on": with_reader(item, index_cache=IndexCache())},
                  clips)
    cache["on_over_off_per_cpu_s"] = round(cache["on"]["clips_per_cpu_s"] / cache["off"]["clips_per_cpu_s"], 3)
    fns = {f"{kind}_{count}": with_reader(item, thread_type=kind, thread_count=count) for kind, count in THREADS}
    fns.update({f"convert_{n}": with_reader(item, convert_threads=n) for n in CONVERT_THREADS})
    return cache, rates(fns, clips)


def threads_while_reading(path: Path) -> dict:
    """Threads of this process while a reader is open, per `VideoReader.convert_threads` (Linux)."""
    import os

    out = {}
    for n in CONVERT_THREADS:
        with VideoReader(path) as r:
            r.convert_threads = n
            r.get_frames([0, 1])
            out[f"convert_{n}"] = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None
    return out


def rgb_at_short_side(path: Path, frames: int = 8, repeats: int = 20, short: int = 256) -> dict:
    """CPU ms for `frames` decoded frames to RGB at short side `short`: full-size rgb24 + OpenCV
    INTER_LINEAR (the default) against swscale straight to the size, and the pixels' difference."""
    import av
    import cv2
    from av.video.reformatter import VideoReformatter

    from tpn.data.transforms import short_side_size

    with av.open(str(path)) as c:
        decoded = [f for _, f in zip(range(frames), c.decode(video=0))]
    h, w = short_side_size(decoded[0].height, decoded[0].width, short)
    conv = VideoReformatter()

    def default(f):
        return cv2.resize(conv.reformat(f, format="rgb24").to_ndarray(), (w, h), interpolation=cv2.INTER_LINEAR)

    ways = {"full_rgb24_then_cv2_linear": default}
    for interp in SWSCALE:
        ways[f"swscale_{interp.lower()}"] = (lambda f, i=interp: conv.reformat(
            f, format="rgb24", width=w, height=h, interpolation=i).to_ndarray())
    reference = np.stack([default(f) for f in decoded]).astype(np.int16)
    out = dict(frame=f"{decoded[0].width}x{decoded[0].height}", to=f"{w}x{h}", frames=frames)
    for name, way in ways.items():
        for f in decoded:
            way(f)  # warm: the converter's context for this size
        c0 = time.process_time()
        for _ in range(repeats):
            got = [way(f) for f in decoded]
        ms = 1000 * (time.process_time() - c0) / repeats
        diff = np.abs(np.stack(got).astype(np.int16) - reference)
        out[name] = dict(cpu_ms_per_clip=round(ms, 2), max_abs_diff=int(diff.max()),
                         mean_abs_diff=round(float(diff.mean()), 3))
    return out


def decord_side(ds, paths: list[Path], clips: int) -> dict:
    """decord's VideoReader (1 and automatic threads) against tpn's on the same training indices, and
    mmaction2's TPN training pipeline (decord) against tpn's item; a reason where not importable."""
    try:
        import decord
    except ImportError as e:
        return dict(not_measured=f"decord not importable ({e}); pip install decord==0.6.0")
    rng = np.random.default_rng(0)
    with VideoReader(paths[0]) as r:
        n = r.num_frames
    draws = [(str(paths[i % len(paths)]), np.unique(sampling.train_indices(n, 8, 8, rng))) for i in range(clips)]
    decoded = []

    def ours(i):
        with VideoReader(draws[i % clips][0]) as r:
            r.get_frames(draws[i % clips][1])
            decoded.append(r.frames_decoded)

    def dec(i, threads):
        p, idx = draws[i % clips]
        decord.VideoReader(p, num_threads=threads).get_batch(list(idx)).asnumpy()

    out = dict(decord=decord.__version__, readers=rates(
        {"tpn_videoreader": ours, "decord_threads_1": lambda i: dec(i, 1), "decord_threads_auto": lambda i: dec(i, 0)},
        clips))
    out["tpn_frames_decoded_per_clip"] = round(float(np.mean(decoded)), 1)
    mm = mmaction2_pipeline(paths)
    if isinstance(mm, str):
        out["pipelines"] = dict(not_measured=mm)
    else:
        out["pipelines"] = rates({"tpn_item": ds.__getitem__, "mmaction2_decord": lambda i: mm[i % len(paths)]}, clips)
    return out


def mmaction2_pipeline(paths: list[Path]):
    """mmaction2 1.2.0's TPN training pipeline (its ColorJitter fails under numpy 2: left out, as the
    peer benchmark does) over `paths`, or why it cannot run."""
    import types

    for n in ("mmaction.models.localizers.drn", "mmaction.models.localizers.drn.drn", "mmaction.models.multimodal"):
        m = types.ModuleType(n)  # two imports broken in the 1.2.0 wheel that TPN does not use
        m.DRN = type("DRN", (), {})
        sys.modules.setdefault(n, m)
    try:
        from mmaction.datasets import VideoDataset
        from mmaction.utils import register_all_modules
    except ImportError as e:
        return f"mmaction2 not importable ({e})"
    register_all_modules()
    listing = paths[0].parent / "mmaction2_list.txt"
    listing.write_text("".join(f"{p.name} 0\n" for p in paths))
    pipe = [dict(type="DecordInit"), dict(type="SampleFrames", clip_len=8, frame_interval=8, num_clips=1),
            dict(type="DecordDecode"), dict(type="RandomResizedCrop"),
            dict(type="Resize", scale=(224, 224), keep_ratio=False), dict(type="Flip", flip_ratio=0.5),
            dict(type="FormatShape", input_format="NCTHW"), dict(type="PackActionInputs")]
    return VideoDataset(ann_file=str(listing), data_prefix=dict(video=str(paths[0].parent)), pipeline=pipe)


def measure_set(folder: Path, spec: str, args) -> dict:
    size_text, _, crf_text = spec.partition(":")
    size = tuple(int(x) for x in size_text.split("x"))
    crf = int(crf_text or 23)
    paths = make_videos(folder, size, crf, args.videos, args.seconds)
    ds = recipe_dataset(folder, paths)
    mbps = sum(p.stat().st_size for p in paths) * 8 / len(paths) / args.seconds / 1e6
    rec = dict(set=spec, size=size_text, crf=crf, mbit_per_s=round(mbps, 2))
    for name, cache in (("profile_no_cache", None), ("profile", IndexCache())):
        VideoReader.index_cache = cache
        for i in range(len(paths)):
            ds[i]  # first opens: imports, converters, the cache
        rec[name] = profile(ds, args.clips)
    if "cache" in args.parts or "threads" in args.parts:
        rec["index_cache"], threads = cache_and_threads(ds, args.clips)
        if "threads" in args.parts:
            rec["threads"], rec["threads_while_reading"] = threads, threads_while_reading(paths[0])
    if "rgb" in args.parts:
        rec["rgb_at_short_side_256"] = rgb_at_short_side(paths[0])
    if "decord" in args.parts:
        rec["decord"] = decord_side(ds, paths, args.clips)
    print(json.dumps(rec), flush=True)
    return rec


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("work_dirs/profile_reader"))
    ap.add_argument("--sets", nargs="+", default=["1280x720", "1280x720:19", "340x256"],
                    help="WIDTHxHEIGHT[:CRF] per video set (default: %(default)s)")
    ap.add_argument("--parts", nargs="+", default=["cache", "threads", "rgb", "decord"],
                    help="measurements besides the profile: cache threads rgb decord (default: all)")
    ap.add_argument("--videos", type=int, default=3)
    ap.add_argument("--clips", type=int, default=24, help="training clips per measurement")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    results = [measure_set(args.dir, spec, args) for spec in args.sets]
    VideoReader.index_cache = IndexCache()
    res = dict(machine=machine_info(("decord", "mmaction2", "opencv-python-headless")),
               videos=f"synthetic (tpn.data.synthetic), 30 fps, {args.seconds} s, x264 preset medium (B-frames, "
                      f"b-pyramid, keyframe every 250), {args.videos} per set",
               clip="tpn_r50_8x8_k400: 8x8, random resized crop 224, flip/jitter drawn for the device; one process, "
                    "one thread (torch and OpenCV), CPU time of the process",
               clips=args.clips, results=results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
