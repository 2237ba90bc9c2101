"""The tempo study (issues 25 and 27): is it the pyramid, and does fine-tuning from a tempo model help?

Every run is the unchanged `tpn train` / `tpn test` command on the harder synthetic tempo set
(`tpn data synth --tempo-ratio 1.5 --distractors 3 --frames 64`, 24 classes; a held-out test set
from another seed), 3 training seeds each, the sets stored as mp4 as tempo_hard.sh stores them.
`--layout sthv1` stores them as JPEG frame folders instead (read as mmaction_rawframes: a clip
reads only the 8 frames it samples). It gains nothing measured: on this project's 2-core machine a
training clip of this set costs one process 4.3-4.7 ms from mp4 and 4.4 ms from JPEG (after the
first pass), and on the H100 machine (2026-12-07) one TPN run fed by 5 loader workers from the JPEG
set trained at 333.6 clips/s steady, against 831.8-853.4 with 15 workers from mp4 on 2026-11-26
(`benchmarks/results/tempo_study_h100_2026-12-07_failed_call.json`, `tempo_hard_h100_2026-11-26/`).
Groups (`--groups`, in this order of priority):

  tpn              TPN R50 8x8, the recipe (tempo_hard_tpn_r50_8x8: lr 0.05, 16 epochs)
  finetune         TPN pre-trained on the tempo set (the `tpn` run of seed 0) fine-tuned to another
                   task (FT_CLASSES classes: 6 directions x slow/fast 3.24x apart, 1 distractor, 8 training videos a
                   class): `model.init_from`, lr 0.01, 16 epochs ...
  scratch          ... against the same model from scratch, the same epochs, lr 0.05 (the recipe) ...
  scratch_lr0.01   ... and lr 0.01 (the fine-tuning lr)
  tpn_long         TPN, the recipe's lr 0.05, 48 epochs (against slowonly_long_lr0.15)
  tpn_noaux        TPN without the auxiliary head (model.aux_head.loss_weight=0)
  tpn_parallel     TPN with parallel flow (model.neck.flow=parallel)
  slowonly_aux     slow-only with the auxiliary head on res4 (deep supervision without the pyramid)
  slowonly_aux_lr0.15  ... the same at lr 0.15 (where slow-only alone trains)
  slowonly_lr*     slow-only R50 8x8 (no neck, no aux head), lr 0.015 / 0.05 (the recipe) / 0.15, 16 epochs
  slowonly_long    slow-only, lr 0.05, 48 epochs (3x the recipe's schedule)
  slowonly_long_lr0.15  slow-only, lr 0.15 (the best of the sweep at 16 epochs), 48 epochs
  tsm_tpn, tsm     TPN on TSM R50 (8 segments, 2x3 views) and TSM alone; the tsm_tpn seed-0 model
                   is also tested fp32 (IEEE, unfolded) and bf16 (folded, the default test path)
                   on the same 6 views: share of equal top-1, largest difference (precision)
  tsm_lr0.15       TSM alone at lr 0.15 (TSM at the recipe's lr 0.05 does not fit its training set)

`--groups NAME:SEEDS` gives a group its own seeds (`slowonly_long:0`).

Per run (RESULTS/<group>_s<seed>/): run.json (30-view test top-1, tempo-pair accuracy, confusions,
validation and training-accuracy curves), metrics.jsonl, config.yaml, test/metrics.json and
test/predictions.csv.gz; for seed 0 of the 3D groups also `tpn test --tempo` (accuracy against
playback speed, tempo/metrics.json). `--summary` then writes RESULTS/summary.json, table.md and
curves.png over every run found (several device calls can fill one results folder).

    python benchmarks/tempo_study.py --work /tmp/study --results /tmp/results --archive $OUT/results.tar.gz \
        --slots 3 --workers 5 --deadline-s 540
    python benchmarks/tempo_study.py --summary --results benchmarks/results/tempo_study_h100_2026-12-07
    python benchmarks/tempo_study.py --tiny --work work_dirs/study_tiny --results work_dirs/study_tiny/results

Runs share the GPU (`--slots` at a time, `--workers` loader workers each): timings in the logs are
not speed measurements. A run not finished by `--deadline-s` is stopped and left out; a run of a
kind that took longer in this call than is left is not started.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from summarise_tempo import _mean_std, summarise_run  # noqa: E402

TPN_CFG, SLOW_CFG = "tempo_hard_tpn_r50_8x8", "tempo_hard_slowonly_r50_8x8"
TSM_TPN_CFG, TSM_CFG = "tempo_hard_tpn_tsm_r50_1x1x8", "tempo_hard_tsm_r50_1x1x8"
SPEEDS = "0.5,0.75,1,1.5,2"
FT_CLASSES = 12
GROUPS = {  # name: (config, extra --sets, needs the fine-tuning data, tempo test on seed 0)
    "tpn": (TPN_CFG, [], False, True),
    "finetune": (TPN_CFG, ["train.lr=0.01", "model.init_from={pretrained}"], True, False),
    "scratch": (TPN_CFG, [], True, False),
    "scratch_lr0.01": (TPN_CFG, ["train.lr=0.01"], True, False),
    "tpn_long": (TPN_CFG, ["train.epochs=48", "train.val_interval=4"], False, False),
    "tpn_noaux": (TPN_CFG, ["model.aux_head.loss_weight=0"], False, True),
    "tpn_parallel": (TPN_CFG, ["model.neck.flow=parallel"], False, True),
    "slowonly_aux": (SLOW_CFG, ["model.backbone.out_indices=[2,3]", "model.aux_head.loss_weight=0.5"], False, True),
    "slowonly_aux_lr0.15": (SLOW_CFG, ["train.lr=0.15", "model.backbone.out_indices=[2,3]",
                                       "model.aux_head.loss_weight=0.5"], False, False),
    "slowonly_lr0.015": (SLOW_CFG, ["train.lr=0.015"], False, False),
    "slowonly_lr0.05": (SLOW_CFG, [], False, True),
    "slowonly_lr0.15": (SLOW_CFG, ["train.lr=0.15"], False, False),
    "slowonly_long": (SLOW_CFG, ["train.epochs=48", "train.val_interval=4"], False, False),
    "slowonly_long_lr0.15": (SLOW_CFG, ["train.lr=0.15", "train.epochs=48", "train.val_interval=4"], False, True),
    "tsm_tpn": (TSM_TPN_CFG, [], False, False),
    "tsm": (TSM_CFG, [], False, False),
    "tsm_lr0.15": (TSM_CFG, ["train.lr=0.15"], False, False),
}
TINY = ["model.backbone.base_channels=8", "model.backbone.stage_blocks=[1,1,1,1]", "model.neck.out_channels=64",
        "model.neck.groups=8", "train.batch_size=4", "train.lr_batch_size=4", "train.warmup_epochs=0",
        "train.val_interval=1", "train.log_interval=2", "train.epochs=2"]


DEADLINE = [float("inf")]  # time.time() after which commands are stopped (--deadline-s)


def sh(cmd: list[str], log: Path, env: dict | None = None) -> None:
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        try:
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                               timeout=max(1.0, DEADLINE[0] - time.time()))
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"stopped at the deadline: {' '.join(cmd[:4])} ... (log {log})") from None
    if r.returncode:
        raise RuntimeError(f"exit {r.returncode}: {' '.join(cmd[:4])} ... (log {log})")


def synth(tpn: list[str], root: Path, classes: int, vpc: int, tvpc: int, ratio: float, distractors: int,
          workers: int, seed: int, log: Path, layout: str) -> None:
    """train + val (20%) from `seed`; a held-out test set of `tvpc` videos a class from `seed + 1`."""
    if (root / "test.txt").is_file():
        return
    common = ["--classes", str(classes), "--frames", "64", "--tempo-ratio", str(ratio),
              "--distractors", str(distractors), "--workers", str(workers), "--layout", layout,
              "--overwrite"]  # a run cut before test.txt is written starts the set again
    sh(tpn + ["data", "synth", str(root), "--videos-per-class", str(vpc), "--seed", str(seed)] + common, log)
    sh(tpn + ["data", "synth", str(root / "test_set"), "--videos-per-class", str(tvpc), "--seed", str(seed + 1)]
       + common, log)
    rows = [f"test_set/{line}" for name in ("train.txt", "val.txt")
            for line in (root / "test_set" / name).read_text().splitlines() if line.strip()]
    (root / "test.txt").write_text("\n".join(rows) + "\n")


def data_sets(root: Path, classes: int, layout: str) -> list[str]:
    frames = ["data.format=mmaction_rawframes", "data.filename_tmpl={:05}.jpg"] if layout == "sthv1" else []
    return [f"data.root={root}", f"data.train_list={root}/train.txt", f"data.val_list={root}/val.txt",
            f"data.test_list={root}/test.txt", f"data.label_map={root}/labels.txt",
            f"model.head.num_classes={classes}"] + frames


def run_one(args, tpn: list[str], group: str, seed: int, roots: dict) -> str:
    cfg, extra, ft, tempo = GROUPS[group]
    name = f"{group}_s{seed}"
    work, res = args.work / "runs" / name, args.results / name
    root, classes = roots["ft"] if ft else roots["main"]
    pretrained = args.work / "runs" / "tpn_s0" / "epoch_final.pth"
    sets = data_sets(root, classes, args.layout) + [f"data.num_workers={args.workers}", f"train.seed={seed}"]
    sets += [s.format(pretrained=pretrained) for s in extra] + (TINY if args.tiny else [])
    setargs = [a for s in sets for a in ("--set", s)]
    log = args.work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sh(tpn + ["train", cfg, "--work-dir", str(work), "--overwrite"] + setargs, log)
    final = sorted(work.glob("epoch_*.pth"))[-1]  # the final model (not the best by validation)
    if group == "tpn" and seed == 0:
        shutil.copyfile(final, pretrained)
    sh(tpn + ["test", str(work / "config.yaml"), "--checkpoint", str(final), "--work-dir", str(work / "test"),
              "--view-scores", "tpn"], log)
    if tempo and seed == 0:
        sh(tpn + ["test", str(work / "config.yaml"), "--checkpoint", str(final), "--work-dir", str(work / "tempo"),
                  "--tempo", SPEEDS], log)
    if group == "tsm_tpn" and seed == 0:
        precision(tpn, work, final, log)
    summary = collect(work, res, group, seed, cfg, sets, round(time.time() - t0, 1))
    return f"{name}: test top-1 {100 * summary['test_30view']['top1']:.2f}% ({summary['wall_s']:.0f} s)"


def collect(work: Path, res: Path, group: str, seed: int, cfg: str, sets: list[str], wall_s: float | None) -> dict:
    """RESULTS/<run>/run.json and the run's small files, from its work dir (tested, maybe tempo/precision)."""
    res.mkdir(parents=True, exist_ok=True)
    summary = summarise_run(work)
    summary["train_top1_curve"] = [{"epoch": r["epoch"], "top1": r["train_top1"]} for r in _records(work)
                                   if r.get("kind") == "epoch" and "train_top1" in r]
    summary.update(group=group, seed=seed, config=cfg, sets=sets)
    if (work / "tempo" / "metrics.json").is_file():
        summary["tempo"] = json.loads((work / "tempo" / "metrics.json").read_text()).get("tempo")
    if (work / "precision.json").is_file():
        summary["precision"] = json.loads((work / "precision.json").read_text())
    for f in ("metrics.jsonl", "config.yaml", "test/metrics.json", "test/predictions.csv", "train.log",
              "tempo/metrics.json", "tempo/accuracy_vs_tempo.png", "tempo/predictions_by_tempo.csv"):
        if (work / f).is_file() or not f.startswith("tempo/"):
            (res / f).parent.mkdir(parents=True, exist_ok=True)
            if f.endswith(".csv"):  # gzip: the results travel with every device call (64 MiB in all)
                with (work / f).open("rb") as src, gzip.GzipFile(res / (f + ".gz"), "wb", mtime=0) as dst:
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copyfile(work / f, res / f)
    summary["wall_s"] = wall_s
    (res / "run.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def collect_all(args) -> None:
    """--collect: RESULTS from the work dirs of WORK/runs whose test finished (when a device call's
    results folder did not come back: at most 8 files return); each run's group, seed, config and
    --sets are read from its command in WORK/logs; wall_s is unknown (null)."""
    for work in sorted((args.work / "runs").iterdir()):
        name, log = work.name, args.work / "logs" / f"{work.name}.log"
        if not (work / "test" / "metrics.json").is_file() or not log.is_file():
            print(f"{name}: no finished test, left out")
            continue
        group, _, seed = name.rpartition("_s")
        words = next(x for x in log.read_text().splitlines() if x.startswith("$ ") and " train " in x).split()
        cfg = words[words.index("train") + 1]
        sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        collect(work, args.results / name, group, int(seed), cfg, sets, None)
        print(f"{name}: collected")


def precision(tpn: list[str], work: Path, ckpt: Path, log: Path) -> None:
    """fp32 (IEEE: no TF32, BN unfolded) against the default bf16 folded test path, the config's views:
    WORK/precision.json."""
    env = dict(os.environ, NVIDIA_TF32_OVERRIDE="0")
    base = tpn + ["test", str(work / "config.yaml"), "--checkpoint", str(ckpt), "--view-scores", "tpn"]
    sh(base + ["--work-dir", str(work / "fp32"), "--precision", "fp32", "--set", "test.fold_bn=false"], log, env)
    sh(base + ["--work-dir", str(work / "bf16"), "--precision", "bf16"], log)
    out = work / "precision.json"
    sh([sys.executable, str(Path(__file__).parent / "precision_summary.py"), f"fp32={work / 'fp32'}",
        f"bf16={work / 'bf16'}", "--out", str(out)], log)


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def kind(g: str, s: int) -> tuple:
    """Runs that cost alike: config, data set, epochs, with the tempo test or not."""
    cfg, extra, ft, tempo = GROUPS[g]
    return cfg, ft, tuple(x for x in extra if x.startswith("train.epochs")), tempo and s == 0


def not_finishing(queue: list[tuple[str, int]], left: float, min_left_s: float, took: dict) -> list[tuple[str, int]]:
    """The queued runs not to start with `left` seconds to go: less than `min_left_s`, or less than
    the longest a run of the same `kind` took so far (`took`)."""
    return [j for j in queue if left < max(min_left_s, took.get(kind(*j), 0.0))]


def run_all(args) -> int:
    tpn = [sys.executable, "-m", "tpn.cli"]
    deadline = DEADLINE[0] = time.time() + args.deadline_s  # data generation included
    args.work.mkdir(parents=True, exist_ok=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.work / "logs").mkdir(exist_ok=True)
    from tpn.bench import machine_info

    calls = args.results / "calls.jsonl"  # where and when each call ran (the summary lists them)
    with calls.open("a") as f:
        f.write(json.dumps({"machine": machine_info(), "groups": args.groups, "argv": sys.argv[1:]}) + "\n")
    jobs = []
    for spec in args.groups:  # NAME or NAME:SEED,SEED
        g, _, seeds = spec.partition(":")
        if g not in GROUPS:
            raise SystemExit(f"--groups: unknown group {g!r} (choose from {', '.join(GROUPS)})")
        jobs += [(g, s) for s in ([int(x) for x in seeds.split(",")] if seeds else args.seeds)]
    w = args.synth_workers
    tiny = args.tiny
    main_root, ft_root = args.work / "data" / "tempo_hard", args.work / "data" / "tempo_ft"
    synth(tpn, main_root, 4 if tiny else 24, 5 if tiny else 100, 2 if tiny else 25, 1.5, 3, w, 0,
          args.work / "logs" / "synth.log", args.layout)
    roots = {"main": (main_root, 4 if tiny else 24)}
    if any(GROUPS[g][2] for g, _ in jobs):
        synth(tpn, ft_root, 4 if tiny else FT_CLASSES, 5 if tiny else 10, 2 if tiny else 25, 1.8, 1, w, 2,
              args.work / "logs" / "synth_ft.log", args.layout)
        roots["ft"] = (ft_root, 4 if tiny else FT_CLASSES)
    pretrained = args.work / "runs" / "tpn_s0" / "epoch_final.pth"
    done, failed, skipped = [], [], []

    queue, running, lock = list(jobs), set(), threading.Lock()

    def ready(g: str) -> bool:  # fine-tuning waits for its pre-trained model while the tpn run of seed 0 is to come
        return g != "finetune" or pretrained.is_file() or not (("tpn", 0) in queue or ("tpn", 0) in running)

    took: dict[tuple, float] = {}  # the longest wall time of each kind of run finished in this call

    def take() -> tuple[str, int] | None:
        """The first queued run that can start (a waiting fine-tune lets later runs go first). A run
        whose kind took longer in this call than is left is not started (the call ends sooner
        instead of stopping it at the deadline), nor any with less than --min-left-s left."""
        while True:
            with lock:
                late = not_finishing(queue, deadline - time.time(), args.min_left_s, took)
                skipped.extend(f"{g}_s{s}" for g, s in late)
                queue[:] = [j for j in queue if j not in late]
                if not queue:
                    return None
                for i, (g, _) in enumerate(queue):
                    if ready(g):
                        running.add(queue[i])
                        return queue.pop(i)
            time.sleep(2)

    def slot() -> None:
        while (gs := take()) is not None:
            g, s = gs
            t0 = time.time()
            try:
                msg = run_one(args, tpn, g, s, roots)
                done.append(msg)
                print(msg, flush=True)
                with lock:
                    took[kind(g, s)] = max(took.get(kind(g, s), 0.0), time.time() - t0)
            except Exception as e:  # noqa: BLE001 - one failed run must not lose the others
                failed.append(f"{g}_s{s}: {e}")
                print(f"FAILED {g}_s{s}: {e}", flush=True)
            with lock:
                running.discard(gs)

    threads = [threading.Thread(target=slot) for _ in range(args.slots)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{len(done)} runs done, {len(failed)} failed, {len(skipped)} not started: {skipped}", flush=True)
    for line in failed:
        print("  " + line)
    shutil.copytree(args.work / "logs", args.results / "logs", dirs_exist_ok=True)  # the commands and their output
    summarise_all(args.results)
    archive(args)
    return 1 if failed else 0


def archive(args) -> None:
    """--archive FILE.tar.gz: RESULTS in one file (a device call returns at most 8 files, 2 folders deep)."""
    if args.archive:
        import tarfile

        with tarfile.open(args.archive, "w:gz") as tar:
            tar.add(args.results, arcname=args.results.name)
        print(f"wrote {args.archive}")


def summarise_all(results: Path) -> dict:
    """summary.json (per group: mean +- std over its seeds), table.md and curves.png of every run.json."""
    runs = [json.loads(p.read_text()) for p in sorted(results.glob("*/run.json"))]
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["group"], []).append(r)
    order = [g for g in GROUPS if g in groups]
    calls = results / "calls.jsonl"
    out = {"calls": [json.loads(x) for x in calls.read_text().splitlines() if x.strip()] if calls.is_file() else [],
           "groups": {}}
    for g in order:
        rs = sorted(groups[g], key=lambda r: r["seed"])
        final_train = [r["train_top1_curve"][-1]["top1"] for r in rs if r["train_top1_curve"]]
        out["groups"][g] = {
            "config": rs[0]["config"], "sets": [s.split("=")[0] + "=<tpn_s0 final>" if s.startswith("model.init_from=")
                                                else s for s in rs[0]["sets"]
                                                if not s.startswith(("data.", "train.seed", "model.head.num_classes"))],
            "seeds": [r["seed"] for r in rs],
            "test_top1": _mean_std([r["test_30view"]["top1"] for r in rs]),
            "tempo_pair_accuracy": _mean_std([r["tempo_pair_accuracy"] for r in rs]),
            "tempo_confusions": _mean_std([r["tempo_confusions"] for r in rs]),
            "direction_confusions": _mean_std([r["direction_confusions"] for r in rs]),
            "final_train_top1": _mean_std(final_train) if final_train else None,
            "val_curves": {r["seed"]: r["val_curve"] for r in rs},
            "train_top1_curves": {r["seed"]: r["train_top1_curve"] for r in rs},
            **({"tempo_seed0": rs[0]["tempo"]} if rs[0].get("tempo") else {}),
            **({"precision_seed0": rs[0]["precision"]} if rs[0].get("precision") else {}),
        }
    (results / "summary.json").write_text(json.dumps(out, indent=1) + "\n")
    (results / "table.md").write_text(table(out))
    if order:
        plot(out, results / "curves.png")
    print(table(out))
    return out


def _pm(m: dict | None) -> str:
    return "-" if m is None else f"{100 * m['mean']:.1f} +- {100 * m['std']:.1f}"


def table(summary: dict) -> str:
    lines = ["| group | config, changes | seeds | test top-1 % (30 views; TSM 6) | tempo-pair acc. % | "
             "final training top-1 % |", "|---|---|---|---|---|---|"]
    for g, m in summary["groups"].items():
        lines.append(f"| {g} | {m['config']} {' '.join(m['sets'])} | "
                     f"{len(m['seeds'])} | {_pm(m['test_top1'])} | {_pm(m['tempo_pair_accuracy'])} | "
                     f"{_pm(m['final_train_top1'])} |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [("harder tempo set (24 classes)", [g for g in summary["groups"] if not GROUPS[g][2]]),
            (f"fine-tuning set ({FT_CLASSES} classes, 8 training videos a class)",
             [g for g in summary["groups"] if GROUPS[g][2]])]
    sets = [(title, gs) for title, gs in sets if gs]
    fig, rows = plt.subplots(len(sets), 2, figsize=(12, 4.2 * len(sets)), squeeze=False)
    for (title, gs), axes in zip(sets, rows):
        for i, g in enumerate(gs):
            m, colour = summary["groups"][g], f"C{i % 10}"
            for ax, curves in zip(axes, (m["val_curves"], m["train_top1_curves"])):
                for j, c in enumerate(curves.values()):
                    if c:
                        ax.plot([p["epoch"] for p in c], [100 * p["top1"] for p in c], color=colour, alpha=0.8,
                                label=g if j == 0 else None)
        axes[0].set_ylabel("validation top-1 (1 clip), %")
        axes[1].set_ylabel("training top-1 (augmented clips), %")
        axes[0].set_title(title + ": each line one seed", fontsize=9)
        for ax in axes:
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("work_dirs/tempo_study"))
    ap.add_argument("--results", type=Path, default=None, help="small files per run (default WORK/results)")
    ap.add_argument("--groups", nargs="+", default=list(GROUPS), help="NAME or NAME:SEED,SEED (default: all)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--slots", type=int, default=3, help="runs at a time on the GPU")
    ap.add_argument("--workers", type=int, default=5, help="loader workers per run")
    ap.add_argument("--synth-workers", type=int, default=15)
    ap.add_argument("--deadline-s", type=float, default=1e9,
                    help="stop runs at this many seconds (data generation included); a run that would not finish is not started")
    ap.add_argument("--min-left-s", type=float, default=100, help="no run starts with less than this left")
    ap.add_argument("--layout", default="mp4", choices=["mp4", "sthv1"],
                    help="how the sets are stored: mp4 (default, as benchmarks/tempo_hard.sh) or JPEG frame folders")
    ap.add_argument("--tiny", action="store_true", help="4 classes, 1/8-width models, 2 epochs: CPU pipeline check")
    ap.add_argument("--summary", action="store_true", help="only summarise RESULTS")
    ap.add_argument("--collect", action="store_true",
                    help="only write RESULTS from WORK's finished runs (their logs give config and --sets), then summarise")
    ap.add_argument("--archive", type=Path, help="also pack RESULTS into this .tar.gz at the end")
    args = ap.parse_args()
    args.results = args.results or args.work / "results"
    if args.summary or args.collect:
        if args.collect:
            collect_all(args)
        summarise_all(args.results)
        archive(args)
        return 0
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
