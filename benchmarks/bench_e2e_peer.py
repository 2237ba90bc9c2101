"""One-run end-to-end benchmark: tpn against mmaction2 1.2.0 from the same original video files.

Four parts, each its own call (two device calls, because decord and PyNvVideoCodec do not fit
the 64 MiB carry limit together; `work_dirs/` survives between calls on a warm machine, and on a
fresh one `--part make` writes the same files again: each call records a digest of every set):

  make     deterministic video sets under --dir (`tpn.data.synthetic`, 10 classes, --seconds at
           30 fps): x264 preset medium (B-frames, b-pyramid, keyframe interval 250, as most
           Kinetics downloads) at 340x256 and 456x256, x265 medium at 340x256; the
           `tpn data prepare`d copy of the --prepare sets; `videos.txt`, `labels.txt`.
  peer     mmaction2 on each set: its own DataLoader (VideoDataset, decord, its packaged TPN
           train pipeline without ColorJitter, which raises OverflowError under numpy 2) feeding
           its train_step (AMP fp16 through mmengine's AmpOptimWrapper) at each --peer-batches;
           its loader alone; its in-GPU step; its 30-view test end to end (its test pipeline:
           10 clips x 3 crops of 256, decord, test_step under fp16 autocast); and `tpn train`
           (pyav) on the first set as a cross-check of the machine against the tpn call.
  tpn      per set: PyAV single-core frames/s, frames decoded per training clip and per test
           video (tpn's VideoReader counts them), NVDEC frames/s (8 decoders in threads) when
           PyNvVideoCodec imports; per --decoders: the loader alone and `tpn train` itself (a
           subprocess, --config with --set overrides); `tpn test` (30 views) end to end; once:
           tpn's in-GPU training step and 30-view test on uint8 input already on the device.
  summary  merges the JSON lines of the calls into one results file: ratios, and beside each
           target of issue 24 (TARGETS) the bound that decoding puts on it.

Every measurement is one JSON line appended to --jsonl as soon as it ends (a crash keeps what was
measured); the same command run again skips what is already there (--redo measures it again),
so a part cut short by --budget-s continues in the next call. Rates:
  - `tpn train`: `clips_per_s` is the rate of its log windows (metrics.jsonl, every --window
    steps) over the last --tail of the iterations, after compilation and the drain of most of
    what the loader prefetched (4 batches per worker; the summary flags a run faster than its
    loader alone); `steady_clips_per_s` is tpn's own figure (every step after the 5th).
  - `tpn test`: after an uncounted run on 2 videos (it fills inductor's cache), two runs of the
    same command on N and N/4 videos, the larger first, steady videos/s = (N - N/4) / (T_N - T_N/4)
    from the times it prints: start-up and compilation cancel.
  - mmaction2: windows of --window steps (synchronised) over the last --tail of the steps.
  - loaders alone: after draining what the workers prefetched.

    python benchmarks/bench_e2e_peer.py --part make --dir work_dirs/e2e_peer
    python benchmarks/bench_e2e_peer.py --part peer --dir work_dirs/e2e_peer --peer-dir .peer
    python benchmarks/bench_e2e_peer.py --part tpn --dir work_dirs/e2e_peer --decoders pyav,nvdec,hybrid
    python benchmarks/bench_e2e_peer.py --part summary --dir work_dirs/e2e_peer --out e2e_peer.json
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import traceback
from dataclasses import fields
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from tpn.bench import cpu_cores, machine_info, timed  # noqa: E402
from tpn.data import sampling  # noqa: E402
from tpn.data.pool import map_in_processes  # noqa: E402
from tpn.data.synthetic import class_names, render, write_mp4  # noqa: E402
from tpn.data.video import VideoReader  # noqa: E402

DEFAULT_SETS = "h264_340x256,h264_456x256,hevc_340x256,h264_1280x720"
CLASSES = 10
WINDOW = 10  # steps per timed window, as `train.log_interval` below
# versions recorded beside the machine (torch and PyAV are always)
PACKAGES = ("numpy", "opencv-python-headless", "decord", "mmaction2", "mmengine", "mmcv-lite", "PyNvVideoCodec")
# issue 24's targets, per set ("*": any other set; None: no target for that set). The 720p set's
# training target is against its decode bound (CPU + NVDEC capacity at that size), not the step.
TARGETS = {"e2e_over_peer": {"h264_340x256": 1.9, "*": 2.0},
           "e2e_over_gpu_step": {"h264_340x256": 0.92, "h264_456x256": 0.90, "hevc_340x256": 0.85, "*": None},
           "e2e_over_decode_bound": {"h264_1280x720": 0.85, "*": None},
           "prepared_over_gpu_step": {"*": 0.97},
           "test_over_peer": {"*": 2.5}}


def need_for(target: str, s: str):
    """The ratio `target` asks of set `s` (None: no target for it)."""
    t = TARGETS[target]
    return t.get(s, t["*"])


# ------------------------------------------------------------------ records
def read_jsonl(path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def record_key(r: dict) -> tuple:
    return (r.get("part"), r.get("what"), r.get("set", ""), r.get("decoder", ""), r.get("batch"))


class Recorder:
    """Appends one JSON line per measurement to `path`; knows which were measured without error."""

    def __init__(self, path, part: str, budget_s: float, redo: bool = False, only=()):
        self.path, self.part, self.only = Path(path), part, set(only)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done = set() if redo else {record_key(r) for r in read_jsonl(path) if "error" not in r}
        self.t0, self.budget_s, self.left_out = time.time(), budget_s, []

    def emit(self, **rec) -> dict:
        rec = dict(part=self.part, **rec, at=time.strftime("%Y-%m-%d %H:%M:%S"))
        with self.path.open("a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
        print(json.dumps(rec, default=str), flush=True)
        return rec

    def measure(self, what: str, fn, set: str = "", decoder: str = "", batch: int | None = None) -> dict | None:
        """fn() -> dict, emitted with its keys; skipped when already measured or the budget is spent."""
        key = (self.part, what, set, decoder, batch)
        if self.only and what not in self.only:
            return None
        if key in self.done:
            print(f"-- {what} {set} {decoder} {batch or ''}: already measured", flush=True)
            return None
        if time.time() - self.t0 > self.budget_s:
            self.left_out.append(" ".join(str(k) for k in key[1:] if k))
            return None
        print(f"-- {what} {set} {decoder} {batch or ''} ({time.time() - self.t0:.0f} s into the part)", flush=True)
        t0 = time.perf_counter()
        try:
            res = fn()
        except Exception as e:  # noqa: BLE001 - one failing measurement leaves the others
            res = dict(error=f"{type(e).__name__}: {e}".splitlines()[0][:400],
                       trace=traceback.format_exc().splitlines()[-4:])
        _release_gpu()  # a measurement's loader workers and GPU memory go before the next one starts
        rec = self.emit(what=what, set=set, decoder=decoder, batch=batch, seconds=round(time.perf_counter() - t0, 1),
                        **res)
        if "error" not in rec:
            self.done.add(key)
        return rec

    def close(self) -> None:
        if self.left_out:
            print(f"time budget spent; not measured: {'; '.join(self.left_out)}. Run the same command again "
                  f"to continue.", flush=True)


# ------------------------------------------------------------------ video sets
def parse_set(name: str) -> tuple[str, tuple[int, int]]:
    m = re.fullmatch(r"(h264|hevc)_(\d+)x(\d+)", name)
    if not m:
        raise SystemExit(f"bench_e2e_peer: error: --sets: {name!r} is not CODEC_WIDTHxHEIGHT "
                         f"(CODEC h264 or hevc), e.g. h264_340x256")
    return m.group(1), (int(m.group(2)), int(m.group(3)))


def _make_video(job) -> None:
    path, cls, size, codec, seed, frames, fps = job
    if not Path(path).is_file():
        video = render(cls, size, frames, np.random.default_rng(seed))
        write_mp4(Path(path), video, fps=fps, preset="medium", codec=codec)


def make_set(folder: Path, name: str, videos: int, seconds: float, fps: int, workers: int) -> dict:
    """`videos` files of set `name` under folder/name, `videos.txt` (path label) and `labels.txt`.
    Video i has the same content (class i mod 10, seed) in every set: only codec and size differ."""
    codec, size = parse_set(name)
    names = class_names(CLASSES)
    root = folder / name
    rel = [f"videos/{names[i % CLASSES]}/{names[i % CLASSES]}_{i:04d}.mp4" for i in range(videos)]
    jobs = [(str(root / r), names[i % CLASSES], size, codec, int(np.random.default_rng([15, i]).integers(2**31)),
             int(round(seconds * fps)), fps) for i, r in enumerate(rel)]
    t0 = time.perf_counter()
    map_in_processes(_make_video, jobs, workers, chunksize=1)
    (root / "videos.txt").write_text("".join(f"{r} {i % CLASSES}\n" for i, r in enumerate(rel)))
    (root / "labels.txt").write_text("\n".join(names) + "\n")
    with VideoReader(root / rel[0]) as r:
        frames, keys = r.num_frames, len(r.keyframes)
    return dict(codec=codec, size=list(size), videos=videos, frames=frames, keyframes_first_video=keys, fps=fps,
                digest=set_digest(root),
                preset="medium", mb=round(sum((root / p).stat().st_size for p in rel) / 2**20, 1),
                make_s=round(time.perf_counter() - t0, 1))


def prepare_set(folder: Path, name: str, workers: int) -> dict:
    """`tpn data prepare` (the command itself) of set `name` into folder/<name>_prepared."""
    src, out = folder / name, folder / f"{name}_prepared"
    if not (out / "videos.txt").is_file():
        run_tpn(["data", "prepare", str(src / "videos.txt"), "--root", str(src), "--out", str(out),
                 "--workers", str(workers)], out / "prepare.log", timeout=3600)
    (out / "labels.txt").write_text((src / "labels.txt").read_text())
    lines = (out / "videos.txt").read_text().splitlines()
    return dict(source=name, videos=len(lines), digest=set_digest(out), mb=round(sum(p.stat().st_size for p in out.rglob("*.mp4")) / 2**20, 1))


def write_list(set_dir: Path, name: str, lines: int) -> Path:
    """set_dir/name: `videos.txt` repeated to exactly `lines` lines (a run of known length)."""
    base = (set_dir / "videos.txt").read_text().splitlines()
    path = set_dir / name
    path.write_text("".join(base[i % len(base)] + "\n" for i in range(lines)))
    return path


def video_paths(set_dir: Path) -> list[Path]:
    return [set_dir / ln.split()[0] for ln in (set_dir / "videos.txt").read_text().splitlines()]


def set_digest(set_dir: Path) -> str | None:
    """A hash of a set's files (names and bytes): both device calls must read the same videos."""
    import hashlib

    if not (set_dir / "videos.txt").is_file():
        return None
    h = hashlib.sha1()
    for p in sorted(set(video_paths(set_dir))):
        h.update(str(p.relative_to(set_dir)).encode() + hashlib.sha1(p.read_bytes()).digest())
    return h.hexdigest()[:16]


def part_make(args, rec: Recorder) -> None:
    folder = Path(args.dir)
    for name in args.sets:
        rec.measure("make", lambda n=name: make_set(folder, n, args.videos, args.seconds, 30, args.make_workers), set=name)
    for name in args.prepare:
        rec.measure("make", lambda n=name: prepare_set(folder, n, args.make_workers), set=f"{name}_prepared")


# ------------------------------------------------------------------ measurements shared by the parts
def pyav_fps(set_dir: Path, files: int = 6) -> dict:
    """Whole-file decode with PyAV in this process, one thread (as a loader worker): frames/s per core."""
    import av

    frames, c0, t0 = 0, time.process_time(), time.perf_counter()
    for p in video_paths(set_dir)[:files]:
        with av.open(str(p)) as c:
            s = c.streams.video[0]
            s.thread_type, s.codec_context.thread_count = "SLICE", 1
            frames += sum(1 for _ in c.decode(s))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return dict(frames=frames, decode_fps=round(frames / wall, 1), decode_fps_per_cpu_s=round(frames / cpu, 1))


def frames_per_clip(set_dir: Path, cfg, clips: int = 48, test_videos: int = 6) -> dict:
    """Frames tpn's VideoReader decodes per training clip (skipping unneeded non-reference frames, and
    not) and per test video, with tpn's sampling; training clips per CPU second of the reader."""
    d, paths, rng = cfg.data, video_paths(set_dir), np.random.default_rng(0)
    res = {}
    for drop in (True, False):
        frames, c0 = 0, time.process_time()
        for k in range(clips):
            with VideoReader(paths[k % len(paths)]) as r:
                r.drop_unneeded = drop
                r.get_frames(sampling.train_indices(r.num_frames, d.clip_len, d.frame_interval, rng))
                frames += r.frames_decoded
        key = "" if drop else "_decode_all"
        res[f"train_frames_per_clip{key}"] = round(frames / clips, 1)
        res[f"reader_clips_per_cpu_s{key}"] = round(clips / (time.process_time() - c0), 1)
    frames = 0
    for p in paths[:test_videos]:
        with VideoReader(p) as r:
            r.get_frames(sampling.test_indices(r.num_frames, d.clip_len, d.frame_interval, d.test_clips).reshape(-1))
            frames += r.frames_decoded
            res["video_frames"] = r.num_frames
    res["test_frames_per_video"] = round(frames / min(test_videos, len(paths)), 1)
    return res


def _decode_all(stream, videos: list) -> int:
    """Frames out of `stream` (a `tpn.data.nvdec` decoder) fed every packet of `videos`, drained after
    each. NVDEC's frames are counted by its `keep` test and none is copied out; a stand-in that
    returns its frames (PyAVStream) is counted by them."""
    seen = [0]

    def count(pts: int) -> bool:
        seen[0] += 1
        return False

    stream.keep = count
    out = 0
    for v in videos:
        for data, pts in zip(v.data, v.index.tolist()):
            out += len(stream.decode(np.frombuffer(data, np.uint8), pts))
        out += len(stream.flush())
    return seen[0] + out


def nvdec_fps(set_dir: Path, decoders: int = 8, files: int = 4, device: str = "cuda", factory=None) -> dict:
    """Decode-only frames/s of `decoders` NVDEC sessions in threads, each decoding every packet of the
    first `files` videos of the set: `tpn.data.nvdec`'s demux (Annex B packets) and its decoder
    (`factory`, default NvdecStream; the tests pass PyAVStream and the CPU)."""
    import threading

    import torch

    from tpn.data.nvdec import NvdecStream, demux

    dev = torch.device(device)
    videos = [v for v in map(demux, video_paths(set_dir)[:files]) if v is not None]
    if not videos:
        raise RuntimeError(f"no video of {set_dir} goes to NVDEC")
    make = lambda: (factory or NvdecStream)(videos[0].codec, dev)  # noqa: E731
    _decode_all(make(), videos[:1])  # warm-up: context and first decoder
    streams, counts, errors = [make() for _ in range(decoders)], [0] * decoders, []
    barrier = threading.Barrier(decoders + 1)

    def work(k: int) -> None:
        barrier.wait()
        try:
            counts[k] = _decode_all(streams[k], videos)
        except Exception as e:  # noqa: BLE001 - reported beside the rate
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(decoders)]
    for t in threads:
        t.start()
    sec = timed(lambda: (barrier.wait(), [t.join() for t in threads]), 1, device=dev)
    return dict(decoders=decoders, nvdec_fps=round(sum(counts) / sec, 1), frames=sum(counts), errors=errors[:3])


def sig(x: float, digits: int = 4) -> float:
    """`x` to `digits` significant digits: slow CPU trials keep their figures too."""
    return float(f"{x:.{digits}g}")


def window_rates(counts: list[int], seconds: list[float], tail: float) -> dict:
    """Rate over the last `tail` of the windows (by count), and every window's rate."""
    total, keep = sum(counts), []
    acc = 0
    for c, s in zip(reversed(counts), reversed(seconds)):
        if acc >= tail * total:
            break
        keep.append((c, s))
        acc += c
    rate = sum(c for c, _ in keep) / max(1e-9, sum(s for _, s in keep))
    return dict(tail_rate=sig(rate), windows=[sig(c / max(s, 1e-9), 3) for c, s in zip(counts, seconds)])


# ------------------------------------------------------------------ tpn
def run_tpn(argv: list[str], log: Path, timeout: float) -> str:
    """`python -m tpn.cli ARGV` with this checkout's src first; its output to `log`; returns stdout.
    A failure raises with tpn's own last line (its one-line error)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
               PYTHONUNBUFFERED="1")
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        p = subprocess.run([sys.executable, "-m", "tpn.cli", *argv], capture_output=True, text=True, env=env,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"tpn {argv[0]} ran past {timeout:.0f} s (log {log})") from None
    log.write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        last = (p.stderr.strip() or p.stdout.strip() or "no output").splitlines()[-1]
        raise RuntimeError(f"tpn {argv[0]} exit {p.returncode}: {last} (log {log})")
    return p.stdout


def has_decoder_field() -> bool:
    from tpn.config import DataConfig

    return any(f.name == "decoder" for f in fields(DataConfig))


def tpn_sets(args, set_dir: Path, decoder: str) -> list[str]:
    """--set overrides for `set_dir` at the benchmark's batch, workers and classes; `data.decoder`
    when the config has it (without it pyav is the only decoder: nothing to set)."""
    sets = [f"data.root={set_dir}", f"data.label_map={set_dir}/labels.txt", f"model.head.num_classes={CLASSES}",
            *(f"data.{k}_list={set_dir}/videos.txt" for k in ("train", "val", "test")),  # each part sets its own
            f"data.num_workers={args.workers}", f"train.batch_size={args.batch}", "train.epochs=1",
            "train.val_interval=0", f"train.log_interval={args.window}", "train.keep_last=1", "test.batch_size=2"]
    if decoder != "pyav" or has_decoder_field():
        sets.append(f"data.decoder={decoder}")
    return sets + list(args.set)


def tpn_train(args, set_dir: Path, decoder: str, run_dir: Path) -> dict:
    """`tpn train` itself for --train-clips clips; rates from its metrics.jsonl."""
    iters = max(2 * args.window, args.train_clips // args.batch)
    lst = write_list(set_dir, f"train_{iters * args.batch}.txt", iters * args.batch)
    sets = tpn_sets(args, set_dir, decoder) + [f"data.train_list={lst}"]
    t0 = time.perf_counter()
    run_tpn(["train", args.config, "--work-dir", str(run_dir), "--overwrite", "--device", args.device,
             *(a for s in sets for a in ("--set", s))], run_dir / "train_stdout.log", timeout=args.timeout)
    wall = time.perf_counter() - t0
    rows = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in rows if r["kind"] == "train"]
    epoch = next(r for r in rows if r["kind"] == "epoch")
    counts = [(b["iter"] - a) * args.batch for a, b in zip([0] + [r["iter"] for r in train], train)]
    secs = [c / r["clips_per_s"] for c, r in zip(counts, train)]
    w = window_rates(counts, secs, args.tail)
    # the share of time the step waited for batches (tpn train's `data_wait`), over the last windows
    waits = [(r.get("data_wait"), t) for r, t in zip(train, secs)]
    tail = waits[len(waits) - max(1, round(len(waits) * args.tail)):]
    wait = sum(a * t for a, t in tail if a is not None) / max(1e-9, sum(t for a, t in tail if a is not None))
    log = run_dir / "train.log"
    choice = [x.split(" INFO ", 1)[-1] for x in log.read_text().splitlines() if " decoder " in x] if log.is_file() else []
    return dict(clips_per_s=w["tail_rate"], steady_clips_per_s=sig(epoch.get("steady_clips_per_s", 0)),
                epoch_clips_per_s=sig(epoch["clips_per_s"]), warmup_s=round(epoch.get("warmup_s", 0), 1),
                data_wait_tail=round(wait, 3), data_wait_s=epoch.get("data_wait_s"), decode=epoch.get("decode"),
                choice=choice, iters=iters, window_clips_per_s=w["windows"],
                window_data_wait=[a for a, _ in waits], wall_s=round(wall, 1), run_dir=str(run_dir))


def tpn_test(args, set_dir: Path, decoder: str, checkpoint: Path, run_dir: Path) -> dict:
    """`tpn test` (30 views) on --test-videos and a quarter of them, larger first; steady videos/s
    from the difference (start-up cancels). A first run on 2 videos, not counted, fills inductor's
    cache: otherwise the first counted run alone compiles and the difference does not cancel it."""
    runs = []
    for n in (2, args.test_videos, max(2, args.test_videos // 4)):
        lst = write_list(set_dir, f"test_{n}.txt", n)
        sets = tpn_sets(args, set_dir, decoder) + [f"data.test_list={lst}"]
        t0 = time.perf_counter()
        out = run_tpn(["test", args.config, "--checkpoint", str(checkpoint), "--work-dir", str(run_dir / f"test_{n}"),
                       "--device", args.device, *(a for s in sets for a in ("--set", s))],
                      run_dir / f"test_{n}_stdout.log", timeout=args.timeout)
        m = re.search(r"(\d+) videos in ([\d.]+) s", out)
        if not m:
            raise RuntimeError(f"no 'N videos in T s' in tpn test's output ({run_dir})")
        runs.append((int(m.group(1)), float(m.group(2)), time.perf_counter() - t0))
    runs = runs[1:]  # without the warm-up
    (nb, tb, wb), (na, ta, wa) = runs
    return dict(videos_per_s=sig((nb - na) / (tb - ta)) if tb > ta else None, views="10x3",
                wall_videos_per_s=sig((nb - na) / (wb - wa)) if wb > wa else None,  # the command's whole run
                runs=[dict(videos=n, seconds=t, wall_s=round(w, 2), printed_videos_per_s=sig(n / t, 3))
                      for n, t, w in runs])


def loader_alone(args, set_dir: Path, decoder: str, run_dir: Path) -> dict:
    """The training loader `tpn train` builds (`engine.train.build_data`), alone: batches/s after
    draining what its workers prefetched (4 batches each)."""
    from tpn.config import load_config
    from tpn.engine import distributed as D
    from tpn.engine.train import build_data

    drain, count = 4 * args.workers + 2, args.loader_batches
    lst = write_list(set_dir, f"loader_{(drain + count) * args.batch}.txt", (drain + count) * args.batch)
    cfg = load_config(args.config, tpn_sets(args, set_dir, decoder) + [f"data.train_list={lst}"])
    run_dir.mkdir(parents=True, exist_ok=True)
    data = build_data(cfg, D.setup(args.device), run_dir)
    data.train_set.set_epoch(0)
    data.sampler.set_epoch(0)
    it = iter(data.loader)
    rate = count * args.batch / timed(lambda: next(it), count, drain)
    del it, data
    return dict(clips_per_s=sig(rate), workers=args.workers, batches_timed=count)


def gpu_step(args) -> dict:
    """tpn's training step (benchmarks/train_step.py) on uint8 clips already on the device, with the
    config's execution (bf16, channels_last_3d, compile on CUDA), at --batch."""
    import torch

    from tpn.accel import execution, to_channels_last
    from tpn.config import load_config
    from tpn.engine import distributed as D
    from tpn.models.build import build_model
    from train_step import make_train_step

    cfg = load_config(args.config, [f"model.head.num_classes={CLASSES}", *args.set])
    dev = D.setup(args.device).device
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    ex = execution(cfg.train, dev)
    model = build_model(cfg).to(dev).train()
    model = to_channels_last(model) if ex.channels_last else model
    step = make_train_step(model, cfg.data.mean, cfg.data.std, ex, cfg.train)
    c, t = cfg.data.crop_size, cfg.data.clip_len
    x8 = torch.randint(0, 255, (args.batch, 3, t, c, c), dtype=torch.uint8, device=dev)
    y = torch.arange(args.batch, device=dev) % CLASSES
    return dict(clips_per_s=sig(args.batch * args.gpu_steps / timed(lambda: step(x8, y), args.gpu_steps, 5, dev)),
                execution=str(ex), clip=f"{t}x{c}x{c}")


def gpu_test(args) -> dict:
    """tpn's 30-view test forward (as `tpn test` runs it: the config's execution, BN folded) on uint8
    views already on the device, 2 videos a batch: videos/s."""
    import torch
    import torch.nn.functional as F

    from tpn.accel import execution, make_eval_forward
    from tpn.config import load_config
    from tpn.engine import distributed as D
    from tpn.models.build import build_model

    cfg = load_config(args.config, [f"model.head.num_classes={CLASSES}", *args.set])
    dev = D.setup(args.device).device
    model = build_model(cfg).to(dev).eval()
    fwd = make_eval_forward(model, cfg.data.mean, cfg.data.std, execution(cfg.train, dev), fold_bn=cfg.test.fold_bn)
    views, s, t = cfg.data.test_clips * cfg.data.test_crops, cfg.data.test_crop_size, cfg.data.clip_len
    x8 = torch.randint(0, 255, (2 * views, 3, t, s, s), dtype=torch.uint8, device=dev)
    with torch.no_grad():
        steps = args.gpu_steps // 2
        rate = 2 * steps / timed(lambda: F.softmax(fwd(x8).float(), -1).view(2, views, -1).mean(1), steps, 2, dev)
    return dict(videos_per_s=sig(rate), views=views, crop=s)


def part_tpn(args, rec: Recorder) -> None:
    folder, runs = Path(args.dir), Path(args.dir) / "runs"
    rec.measure("gpu_step", lambda: gpu_step(args), batch=args.batch)
    rec.measure("gpu_test", lambda: gpu_test(args))
    for name in args.sets + [f"{p}_prepared" for p in args.prepare]:
        set_dir = folder / name
        if not (set_dir / "videos.txt").is_file():
            raise SystemExit(f"bench_e2e_peer: error: {set_dir}/videos.txt not found: run --part make first")
        prepared = name.endswith("_prepared")
        rec.measure("pyav_fps", lambda d=set_dir: pyav_fps(d), set=name)
        rec.measure("frames", lambda d=set_dir: frames_per_clip(d, _cfg(args)), set=name)
        if not prepared and args.nvdec_fps is None and _imports("PyNvVideoCodec"):
            rec.measure("nvdec_fps", lambda d=set_dir: nvdec_fps(d), set=name)
        decoders = args.prepared_decoders if prepared else args.decoders
        for dec in decoders:
            rec.measure("loader", lambda d=set_dir, k=dec: loader_alone(args, d, k, runs / f"{name}_{k}_loader"),
                        set=name, decoder=dec, batch=args.batch)
            rec.measure("train", lambda d=set_dir, k=dec: tpn_train(args, d, k, runs / f"{name}_{k}"),
                        set=name, decoder=dec, batch=args.batch)
        if prepared:
            continue
        for dec in args.test_decoders:
            # the checkpoint of this set's first training run that wrote one (weights do not change the speed)
            ckpt = next((c for k in decoders if (c := runs / f"{name}_{k}" / "epoch_0001.pth").is_file()),
                        runs / f"{name}_{decoders[0]}" / "epoch_0001.pth")
            rec.measure("test", lambda d=set_dir, k=dec, c=ckpt: tpn_test(args, d, k, c, runs / f"{name}_test_{k}"),
                        set=name, decoder=dec)


def _cfg(args):
    from tpn.config import load_config

    return load_config(args.config, [f"model.head.num_classes={CLASSES}", *args.set])


def _imports(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:  # noqa: BLE001 - a missing library or driver: not measured
        return False


def _release_gpu() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------ mmaction2
class Peer:
    """mmaction2 1.2.0's own TPN R50 8x8 (its packaged config, 10 classes, no pretrained weights),
    its VideoDataset with its pipelines (decord), its DataLoader collate and its train/test steps."""

    def __init__(self, args):
        import torch

        sys.path.insert(0, str(Path(args.peer_dir).resolve()))
        import mmaction2_tpn_bench as harness  # stubs two imports broken in mmaction2 1.2.0's wheel

        harness._patch_packaging()
        from mmaction.registry import MODELS
        from mmaction.utils import register_all_modules
        from mmengine.config import Config

        register_all_modules()
        self.harness, self.args = harness, args
        self.cfg = Config.fromfile(harness.find_config())
        self.cfg.model.backbone.pretrained = None
        self.cfg.model.cls_head.num_classes = CLASSES
        self.cfg.model.neck.aux_head_cfg.out_channels = CLASSES
        cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
        self.dev = torch.device("cuda" if cuda else "cpu")
        torch.backends.cudnn.benchmark = True
        self.model = MODELS.build(self.cfg.model).to(self.dev)
        # its ColorJitter raises OverflowError under numpy 2 (a hue shift on uint8): left out
        self.train_pipeline = [p for p in self.cfg.train_pipeline if p["type"] != "ColorJitter"]
        self.test_pipeline = list(self.cfg.test_pipeline)

    def setup(self) -> dict:
        return dict(config=Path(self.harness.find_config()).name, device=str(self.dev),
                    train_pipeline=[p["type"] for p in self.train_pipeline],
                    test_pipeline=[p["type"] for p in self.test_pipeline],
                    left_out="ColorJitter (raises OverflowError under numpy 2)",
                    train_step="mmengine AmpOptimWrapper fp16, SGD nesterov, clip_grad 40" if self.cuda else "fp32 (CPU)",
                    test_step="test_step under fp16 autocast" if self.cuda else "fp32 (CPU)", test_batch=2,
                    workers=self.args.workers)

    @property
    def cuda(self) -> bool:
        return self.dev.type == "cuda"

    def loader(self, set_dir: Path, lst: Path, batch: int, test: bool):
        import copy

        from mmaction.datasets import VideoDataset
        from mmengine.dataset import pseudo_collate
        from torch.utils.data import DataLoader

        pipe = copy.deepcopy(self.test_pipeline if test else self.train_pipeline)
        ds = VideoDataset(ann_file=str(lst), data_prefix=dict(video=str(set_dir)), pipeline=pipe, test_mode=test)
        w = self.args.workers
        return DataLoader(ds, batch_size=batch, num_workers=w, shuffle=not test, collate_fn=pseudo_collate,
                          persistent_workers=w > 0, pin_memory=self.cuda)

    def optim_wrapper(self):
        import torch
        from mmengine.optim import AmpOptimWrapper, OptimWrapper

        opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, nesterov=True)
        clip = dict(max_norm=40, norm_type=2)
        return AmpOptimWrapper(optimizer=opt, clip_grad=clip, dtype="float16") if self.cuda else \
            OptimWrapper(opt, clip_grad=clip)

    def windows(self, step, batches, per_batch: int, n_windows: int) -> dict:
        """`step(batch)` over `batches`: one warm-up window, then `n_windows` of --window steps."""
        win = self.args.window
        for _ in range(win):
            step(next(batches))
        secs = [timed(lambda: step(next(batches)), win, device=self.dev) for _ in range(n_windows)]
        return window_rates([win * per_batch] * n_windows, secs, self.args.tail)

    def e2e(self, set_dir: Path, batch: int) -> dict:
        """Its DataLoader feeding its train_step: clips/s over the last --tail of the steps."""
        win = self.args.window
        n_windows = max(3, self.args.peer_clips // batch // win)
        n = (n_windows + 1) * win * batch
        it = iter(self.loader(set_dir, write_list(set_dir, f"peer_train_{n}.txt", n), batch, test=False))
        ow = self.optim_wrapper()
        self.model.train()
        w = self.windows(lambda data: self.model.train_step(data, ow), it, batch, n_windows)
        del it
        return dict(clips_per_s=w["tail_rate"], window_clips_per_s=w["windows"], steps=n_windows * win)

    def loader_alone(self, set_dir: Path, batch: int) -> dict:
        drain, count = 2 * self.args.workers + 2, self.args.loader_batches
        n = (drain + count) * batch
        it = iter(self.loader(set_dir, write_list(set_dir, f"peer_loader_{n}.txt", n), batch, test=False))
        return dict(clips_per_s=sig(count * batch / timed(lambda: next(it), count, drain)), batches_timed=count)

    def test(self, set_dir: Path) -> dict:
        """Its test DataLoader (2 videos a batch) feeding its test_step: videos/s."""
        import contextlib

        import torch

        win = self.args.window
        n_windows = max(1, self.args.test_videos // 2 // win - 1)
        n = (n_windows + 1) * win * 2
        it = iter(self.loader(set_dir, write_list(set_dir, f"peer_test_{n}.txt", n), 2, test=True))
        self.model.eval()
        amp = torch.autocast("cuda", dtype=torch.float16) if self.cuda else contextlib.nullcontext()
        with torch.no_grad(), amp:
            w = self.windows(self.model.test_step, it, 2, n_windows)
        return dict(videos_per_s=w["tail_rate"], window_videos_per_s=w["windows"], views="10x3", videos=n)

    def gpu_step(self, batch: int) -> dict:
        """Its train_step on clips already on the device (its data preprocessor's input), no loader."""
        import torch

        x = torch.randint(0, 255, (batch, 1, 3, 8, 224, 224), dtype=torch.uint8, device=self.dev)
        data = dict(inputs=list(x), data_samples=self.harness.samples(batch, CLASSES))
        ow = self.optim_wrapper()
        self.model.train()
        rate = batch * self.args.gpu_steps / timed(lambda: self.model.train_step(data, ow), self.args.gpu_steps, 3,
                                                   self.dev)
        return dict(clips_per_s=sig(rate))


def part_peer(args, rec: Recorder) -> None:
    folder = Path(args.dir)
    peer = Peer(args)
    rec.emit(what="setup", **peer.setup())
    for b in args.peer_batches:
        rec.measure("peer_gpu_step", lambda b=b: peer.gpu_step(b), batch=b)
    for name in args.sets:
        d = folder / name
        rec.measure("peer_loader", lambda: peer.loader_alone(d, args.batch), set=name, batch=args.batch)
        for b in args.peer_batches:
            rec.measure("peer_e2e", lambda b=b: peer.e2e(d, b), set=name, batch=b)
        rec.measure("peer_test", lambda: peer.test(d), set=name)
    del peer
    _release_gpu()  # mmaction2's model leaves the GPU before tpn's run
    if args.cross_check:  # the same `tpn train` as the tpn part's first one: same machine, same speed?
        name = args.sets[0]
        rec.measure("train", lambda: tpn_train(args, folder / name, "pyav", folder / "runs" / f"{name}_pyav_peer_call"),
                    set=name, decoder="pyav", batch=args.batch)


# ------------------------------------------------------------------ summary
def latest_records(records: list[dict]) -> dict:
    """The last record of each measurement; an error never replaces a result."""
    out = {}
    for r in records:
        if r.get("what") in ("machine", "setup"):
            continue
        k = record_key(r)
        if "error" in r and k in out and "error" not in out[k]:
            continue
        out[k] = r
    return out


def _val(rec: dict | None, field: str):
    return None if rec is None or "error" in rec else rec.get(field)


def _ratio(a, b, digits: int = 3):
    return round(a / b, digits) if a is not None and b else None


def _min(*values):
    """The smallest, or None when any is unknown (a bound needs all its terms)."""
    return None if any(v is None for v in values) else min(values)


def decode_bounds(fps_per_core, frames_per_item, cores, nvdec_fps) -> dict:
    """Items/s that decoding alone allows: cores x PyAV frames/s per core / frames decoded per item
    (pyav), NVDEC frames/s / frames per item (nvdec), both at once (hybrid)."""
    cpu = cores * fps_per_core / frames_per_item if fps_per_core and frames_per_item and cores else None
    gpu = nvdec_fps / frames_per_item if nvdec_fps and frames_per_item else None
    both = (cpu or 0) + (gpu or 0) if cpu or gpu else None
    return {k: round(v, 1) if v is not None else None for k, v in (("pyav", cpu), ("nvdec", gpu), ("hybrid", both))}


def _bound_for(bounds: dict, decoder: str):
    return bounds.get(decoder, bounds["hybrid"])  # auto and the like: at most what both together allow


def _target(name: str, s: str, dec: str, measured, bound, terms: str, decode_limited: bool | None) -> dict:
    need = need_for(name, s)
    return dict(target=name, need=need, set=s, decoder=dec, measured=measured,
                met=None if measured is None or need is None else measured >= need, bound=bound, bound_terms=terms,
                bound_limited_by=None if decode_limited is None else ("decoding" if decode_limited else "GPU"),
                measured_over_bound=_ratio(measured, bound))


def _by(latest: dict, part: str, what: str, s: str, field: str, batch=None) -> dict:
    """{decoder: field} of every record of (part, what, set[, batch])."""
    return {k[3]: _val(r, field) for k, r in latest.items()
            if k[:3] == (part, what, s) and (batch is None or k[4] == batch)}


def summarise_set(latest: dict, s: str, ctx: dict) -> tuple[dict, list]:
    """One set's rates, decode figures, bounds, ratios, and its rows of the targets table."""
    get = lambda part, what, dec="", batch=None, name=s: latest.get((part, what, name, dec, batch))  # noqa: E731
    b, cores, gpu, gpu_test = ctx["batch"], ctx["cores"], ctx["gpu_step"], ctx["gpu_test"]
    prep = f"{s}_prepared"
    fr, fr_prep = get("tpn", "frames"), get("tpn", "frames", name=prep)
    fps, fps_prep = _val(get("tpn", "pyav_fps"), "decode_fps"), _val(get("tpn", "pyav_fps", name=prep), "decode_fps")
    nvdec = ctx["nvdec_fps"] or _val(get("tpn", "nvdec_fps"), "nvdec_fps")
    bounds = dict(train_clips_per_s=decode_bounds(fps, _val(fr, "train_frames_per_clip"), cores, nvdec),
                  test_videos_per_s=decode_bounds(fps, _val(fr, "test_frames_per_video"), cores, nvdec),
                  prepared_train_clips_per_s=decode_bounds(fps_prep, _val(fr_prep, "train_frames_per_clip"), cores, nvdec))
    peer = {k[4]: _val(r, "clips_per_s") for k, r in latest.items() if k[:3] == ("peer", "peer_e2e", s)}
    best_peer = max((v for v in peer.values() if v), default=None)
    peer_test = _val(get("peer", "peer_test"), "videos_per_s")
    out = dict(
        tpn_train_clips_per_s=_by(latest, "tpn", "train", s, "clips_per_s", b),
        tpn_train_own_steady_clips_per_s=_by(latest, "tpn", "train", s, "steady_clips_per_s", b),
        tpn_train_data_wait=_by(latest, "tpn", "train", s, "data_wait_tail", b),  # share of the step's time
        tpn_loader_clips_per_s=_by(latest, "tpn", "loader", s, "clips_per_s", b),
        tpn_test_videos_per_s=_by(latest, "tpn", "test", s, "videos_per_s"),
        tpn_prepared_train_clips_per_s=_by(latest, "tpn", "train", prep, "clips_per_s", b),
        tpn_prepared_loader_clips_per_s=_by(latest, "tpn", "loader", prep, "clips_per_s", b),
        peer_e2e_clips_per_s=peer, peer_best_e2e_clips_per_s=best_peer,
        peer_loader_clips_per_s=_val(get("peer", "peer_loader", batch=b), "clips_per_s"),
        peer_test_videos_per_s=peer_test,
        tpn_train_pyav_in_peer_call=_val(get("peer", "train", "pyav", b), "clips_per_s"),
        decode=dict(cores=cores, pyav_fps_per_core=fps, prepared_pyav_fps_per_core=fps_prep, nvdec_fps=nvdec,
                    **{k: _val(fr, k) for k in ("train_frames_per_clip", "train_frames_per_clip_decode_all",
                                                "test_frames_per_video", "reader_clips_per_cpu_s", "video_frames")},
                    prepared_train_frames_per_clip=_val(fr_prep, "train_frames_per_clip")),
        bounds=bounds)
    rows = []
    for dec, rate in out["tpn_train_clips_per_s"].items():
        dec_bound = _bound_for(bounds["train_clips_per_s"], dec)
        e2e_bound = _min(gpu, dec_bound)
        terms = (f"min(in-GPU step {gpu}, {dec} decoding {dec_bound} clips/s = {_terms(dec, cores, fps, nvdec, fr, 'train_frames_per_clip')})")
        limited = None if gpu is None or dec_bound is None else dec_bound < gpu
        rows.append(_target("e2e_over_peer", s, dec, _ratio(rate, best_peer), _ratio(e2e_bound, best_peer),
                            f"{terms} / mmaction2 e2e {best_peer}", limited))
        rows.append(_target("e2e_over_gpu_step", s, dec, _ratio(rate, gpu), _ratio(e2e_bound, gpu),
                            f"{terms} / in-GPU step {gpu}", limited))
        if need_for("e2e_over_decode_bound", s) is not None:  # against CPU + NVDEC together, whatever the path
            both = _min(gpu, bounds["train_clips_per_s"]["hybrid"])
            rows.append(_target("e2e_over_decode_bound", s, dec, _ratio(rate, both), 1.0,
                                f"min(in-GPU step {gpu}, CPU + NVDEC decoding {bounds['train_clips_per_s']['hybrid']} "
                                f"clips/s = {_terms('hybrid', cores, fps, nvdec, fr, 'train_frames_per_clip')})", limited))
    for dec, rate in out["tpn_prepared_train_clips_per_s"].items():
        dec_bound = _bound_for(bounds["prepared_train_clips_per_s"], dec)
        terms = f"min(in-GPU step {gpu}, {dec} decoding {dec_bound} clips/s = {_terms(dec, cores, fps_prep, nvdec, fr_prep, 'train_frames_per_clip')})"
        rows.append(_target("prepared_over_gpu_step", s, dec, _ratio(rate, gpu), _ratio(_min(gpu, dec_bound), gpu),
                            f"{terms} / in-GPU step {gpu}", None if gpu is None or dec_bound is None else dec_bound < gpu))
    for dec, rate in out["tpn_test_videos_per_s"].items():
        dec_bound = _bound_for(bounds["test_videos_per_s"], dec)
        terms = f"min(in-GPU 30-view test {gpu_test}, {dec} decoding {dec_bound} videos/s = {_terms(dec, cores, fps, nvdec, fr, 'test_frames_per_video')})"
        rows.append(_target("test_over_peer", s, dec, _ratio(rate, peer_test), _ratio(_min(gpu_test, dec_bound), peer_test),
                            f"{terms} / mmaction2 test e2e {peer_test}",
                            None if gpu_test is None or dec_bound is None else dec_bound < gpu_test))
    out["ratios"] = _set_ratios(out, gpu)
    return out, rows


def _terms(dec: str, cores, fps, nvdec, frames_rec, field: str) -> str:
    frames = _val(frames_rec, field)
    cpu = f"{cores} cores x {fps} frames/s / {frames} frames"
    gpu = f"NVDEC {nvdec} frames/s / {frames} frames"
    return cpu if dec == "pyav" else gpu if dec == "nvdec" else f"{cpu} + {gpu}"


def _set_ratios(out: dict, gpu) -> dict:
    best, test = out["peer_best_e2e_clips_per_s"], out["peer_test_videos_per_s"]
    trains = out["tpn_train_clips_per_s"]
    return dict(e2e_over_peer={d: _ratio(r, best) for d, r in trains.items()},
                e2e_over_gpu_step={d: _ratio(r, gpu) for d, r in trains.items()},
                prepared_over_gpu_step={d: _ratio(r, gpu) for d, r in out["tpn_prepared_train_clips_per_s"].items()},
                test_over_peer={d: _ratio(r, test) for d, r in out["tpn_test_videos_per_s"].items()},
                loader_over_gpu_step={d: _ratio(r, gpu) for d, r in out["tpn_loader_clips_per_s"].items()},
                e2e_over_loader={d: _ratio(r, out["tpn_loader_clips_per_s"].get(d)) for d, r in trains.items()},
                pyav_peer_call_over_tpn_call=_ratio(out["tpn_train_pyav_in_peer_call"], trains.get("pyav")))


def summarise(records: list[dict], batch: int = 32, nvdec_fps: float | None = None) -> dict:
    """The results file: machines, rates, ratios and the targets with their bounds. Records are
    taken in time order, so the JSON lines of several calls can be given in any order."""
    records = sorted(records, key=lambda r: r.get("at", ""))
    latest = latest_records(records)
    machines = {r["part"]: {k: v for k, v in r.items() if k not in ("what", "part")}
                for r in records if r.get("what") == "machine"}  # the last of each part's
    # the sets may be made on another machine (docs/benchmarks.md): the GPU check takes the measuring parts
    gpus = {v.get("gpu") for p, v in machines.items() if p != "make"}
    setup = next((r for r in reversed(records) if r.get("what") == "setup"), {})
    m = machines.get("tpn") or machines.get("peer") or {}
    ctx = dict(batch=batch, cores=m.get("cores"), nvdec_fps=nvdec_fps,
               gpu_step=_val(latest.get(("tpn", "gpu_step", "", "", batch)), "clips_per_s"),
               gpu_test=_val(latest.get(("tpn", "gpu_test", "", "", None)), "videos_per_s"))
    names = sorted({k[2] for k in latest if k[2] and not k[2].endswith("_prepared") and k[1] != "make"})
    res = dict(machine=machines, same_gpu_in_all_parts=len(gpus) <= 1,
               batch=batch, tpn_gpu_step_clips_per_s=ctx["gpu_step"], tpn_gpu_test_videos_per_s=ctx["gpu_test"],
               peer_gpu_step_clips_per_s={k[4]: _val(r, "clips_per_s") for k, r in latest.items()
                                          if k[:2] == ("peer", "peer_gpu_step")},
               peer_setup={k: v for k, v in setup.items() if k not in ("what", "part", "at")},
               made={k[2]: {f: r[f] for f in ("codec", "size", "source", "videos", "frames", "keyframes_first_video", "mb")
                            if f in r} for k, r in latest.items() if k[1] == "make" and "error" not in r},
               sets={}, targets=[])
    for s in names:
        res["sets"][s], rows = summarise_set(latest, s, ctx)
        res["targets"] += rows
    digests = [r.get("files") or {} for r in records if r.get("what") == "machine" and r.get("part") in ("peer", "tpn")]
    seen = {s: {d[s] for d in digests if d.get(s)} for s in names}
    res["same_files_in_all_calls"] = {s: len(v) == 1 if v else None for s, v in seen.items()}  # None: no digest
    res["notes"] = _notes(res)
    res["errors"] = [{k: r.get(k) for k in ("part", "what", "set", "decoder", "batch", "error")}
                     for r in latest.values() if "error" in r]
    return res


def _notes(res: dict) -> list[str]:
    """Consistency checks a reader should see next to the numbers."""
    notes = []
    for s, same in res["same_files_in_all_calls"].items():
        if same is False:
            notes.append(f"{s}: the peer and tpn calls read different files (set digests differ)")
    if not res["same_gpu_in_all_parts"]:
        notes.append("the parts ran on different GPUs: ratios across parts compare different machines")
    for s, r in res["sets"].items():
        for d, ratio in r["ratios"]["e2e_over_loader"].items():
            if ratio is not None and ratio > 1.05:
                notes.append(f"{s} {d}: tpn train {ratio}x its loader alone: prefetched batches still in the "
                             f"timed windows; raise --train-clips")
    return notes


# ------------------------------------------------------------------ command line
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", required=True, choices=["make", "peer", "tpn", "summary"])
    ap.add_argument("--dir", default="work_dirs/e2e_peer", help="video sets, runs and the parts' JSON lines")
    ap.add_argument("--jsonl", default=None, help="this part's JSON lines (default DIR/PART.jsonl)")
    ap.add_argument("--sets", default=DEFAULT_SETS, help="CODEC_WxH names (default %(default)s)")
    ap.add_argument("--prepare", default="h264_340x256", help="sets with a `tpn data prepare`d copy ('' none)")
    ap.add_argument("--videos", type=int, default=64, help="files per set (make)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each video at 30 fps (make)")
    ap.add_argument("--make-workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--config", default="tpn_r50_8x8_k400", help="tpn config (tpn_tiny_synth for a CPU trial)")
    ap.add_argument("--set", action="append", default=[], help="extra tpn config override, repeatable")
    ap.add_argument("--device", default="cuda", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=max(1, cpu_cores()["cores"] - 1), help="loader workers, both sides")
    ap.add_argument("--decoders", default="pyav,nvdec,hybrid", help="tpn's data.decoder values to train with")
    ap.add_argument("--test-decoders", default="pyav", help="data.decoder values for `tpn test`")
    ap.add_argument("--prepared-decoders", default="pyav", help="data.decoder values on the prepared copy")
    ap.add_argument("--train-clips", type=int, default=9600, help="clips per `tpn train` run")
    ap.add_argument("--peer-clips", type=int, default=6400, help="timed clips per mmaction2 end-to-end run")
    ap.add_argument("--peer-batches", default="32,64", help="mmaction2 train batches")
    ap.add_argument("--test-videos", type=int, default=512, help="videos per test run (tpn also runs a quarter)")
    ap.add_argument("--loader-batches", type=int, default=40, help="timed batches of a loader alone")
    ap.add_argument("--gpu-steps", type=int, default=30, help="timed steps on in-GPU input")
    ap.add_argument("--window", type=int, default=WINDOW, help="steps per timed window (and train.log_interval)")
    ap.add_argument("--tail", type=float, default=0.5, help="share of the last windows a rate is taken over")
    ap.add_argument("--peer-dir", default=str(REPO / ".peer"), help="folder of mmaction2_tpn_bench.py")
    ap.add_argument("--no-cross-check", dest="cross_check", action="store_false",
                    help="peer part: skip its `tpn train` (pyav) run")
    ap.add_argument("--nvdec-fps", type=float, default=None,
                    help="NVDEC frames/s of the whole GPU for the bounds (default: measured when PyNvVideoCodec imports)")
    ap.add_argument("--budget-s", type=float, default=420,
                    help="start no measurement after this many seconds (one may take 2 minutes more)")
    ap.add_argument("--timeout", type=float, default=900, help="limit of one tpn subprocess (s)")
    ap.add_argument("--redo", action="store_true", help="measure again what the JSON lines already hold")
    ap.add_argument("--only", default="", help="measure only these (comma-separated: make, gpu_step, gpu_test, "
                                               "pyav_fps, frames, nvdec_fps, loader, train, test, peer_gpu_step, "
                                               "peer_loader, peer_e2e, peer_test)")
    ap.add_argument("--inputs", nargs="*", default=None, help="summary: JSON lines files (default DIR/*.jsonl parts)")
    ap.add_argument("--out", default=None, help="summary: results file (default DIR/summary.json)")
    args = ap.parse_args(argv)
    split = lambda text: [v for v in text.split(",") if v]  # noqa: E731
    args.sets, args.prepare = split(args.sets), split(args.prepare)
    for name in args.sets + args.prepare:
        parse_set(name)
    missing = [p for p in args.prepare if p not in args.sets]
    if missing and args.part != "make":
        raise SystemExit(f"bench_e2e_peer: error: --prepare {','.join(missing)}: not among --sets")
    args.decoders, args.test_decoders = split(args.decoders), split(args.test_decoders)
    args.prepared_decoders = split(args.prepared_decoders)
    try:
        args.peer_batches = [int(b) for b in split(args.peer_batches)]
    except ValueError:
        raise SystemExit(f"bench_e2e_peer: error: --peer-batches {args.peer_batches!r}: integers, e.g. 32,64") from None
    args.only = split(args.only)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    folder = Path(args.dir)
    if args.part == "summary":
        inputs = args.inputs or [folder / f"{p}.jsonl" for p in ("make", "peer", "tpn")]
        records = [r for p in inputs for r in read_jsonl(p)]
        if not records:
            raise SystemExit(f"bench_e2e_peer: error: no records in {', '.join(map(str, inputs))}")
        out = Path(args.out or folder / "summary.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summarise(records, args.batch, args.nvdec_fps), indent=1))
        print(f"wrote {out}")
        return
    rec = Recorder(args.jsonl or folder / f"{args.part}.jsonl", args.part, args.budget_s, args.redo, args.only)
    files = {n: set_digest(folder / n) for n in args.sets + [f"{p}_prepared" for p in args.prepare]}
    rec.emit(what="machine", **machine_info(PACKAGES), argv=sys.argv[1:] if argv is None else list(argv), files=files)
    {"make": part_make, "peer": part_peer, "tpn": part_tpn}[args.part](args, rec)
    rec.close()


if __name__ == "__main__":
    main()
