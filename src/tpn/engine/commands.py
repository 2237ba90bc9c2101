"""`tpn train`, `tpn test`, `tpn predict`, `tpn demo` sub-commands."""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from tpn.options import add_device_option

OUT_DEFAULT = "work_dirs/timeline"  # `tpn predict --timeline --out`


def _cmd_train(args) -> int:
    from tpn.config import load_config
    from tpn.engine.train import train
    from tpn.errors import writable_dir

    cfg = load_config(args.config, args.overrides)
    work_dir = args.work_dir or f"work_dirs/{cfg.name}"
    writable_dir(work_dir, "--work-dir")  # a file there or a read-only place: one line, before any work
    from tpn.engine.distributed import teardown

    try:
        s = train(cfg, work_dir, resume=args.resume, device=args.device, overwrite=args.overwrite,
                  break_lock=args.break_lock)
    finally:
        teardown()
    if s.get("stopped"):  # by SIGTERM or Ctrl-C, after saving a checkpoint (logged): 143 or 130, as for the signal
        return 128 + (signal.SIGINT if s.get("stop_signal") == "SIGINT" else signal.SIGTERM)
    if s.get("curves"):
        print(f"work dir: {work_dir} (checkpoints, metrics.jsonl, train.log, training_curves.png)")
    return 0


def precision_overrides(args) -> list[str]:
    """`--set` overrides plus `--precision` (it sets `test.precision`, after any --set)."""
    return list(args.overrides) + ([f"test.precision={args.precision}"] if args.precision else [])


def _cmd_test(args) -> int:
    from tpn.config import load_config
    from tpn.engine.evaluate import run_test
    from tpn.engine.report import rate_text

    cfg = load_config(args.config, precision_overrides(args))
    out = args.work_dir or f"work_dirs/{cfg.name}/test"
    from tpn.engine.distributed import teardown

    try:
        r = run_test(cfg, args.checkpoint, out, views=args.views, device=args.device, view_scores=args.view_scores,
                     tempo=args.tempo)
    finally:
        teardown()
    m = r["metrics"]
    if r["paths"]:
        print(f"{r['views']} views on {m['videos']} videos ({m['skipped']} unreadable): top-1 {100 * m['top1']:.2f}% "
              f"top-5 {100 * m['top5']:.2f}% mean class accuracy {100 * m['mean_class_accuracy']:.2f}% "
              f"({rate_text(m['videos'] + m['skipped'], r['seconds'], 'videos')})")
        if r["tempo"]:
            from tpn.engine.tempo import summary_lines

            print("\n".join(summary_lines(r["tempo"])))
        print("report: " + ", ".join(r["paths"].values()))
    return 0


def _cmd_predict(args) -> int:
    from tpn.config import available_configs, load_config
    from tpn.engine.predict import checkpoint_config, predict_videos
    from tpn.errors import TpnError

    for v in args.videos:
        if Path(v).suffix in (".yaml", ".yml") or (not Path(v).exists() and v in available_configs()):
            raise TpnError(f"{v} is a config, not a video: give it as --config {v}")
    overrides = precision_overrides(args)
    cfg = load_config(args.config, overrides) if args.config else checkpoint_config(args.checkpoint, overrides)
    if (args.stride is not None or args.out != OUT_DEFAULT) and not args.timeline:
        raise TpnError("--stride and --out go with --timeline")
    if args.timeline:
        from tpn.engine.predict import predict_timelines

        results = predict_timelines(cfg, args.checkpoint, args.videos, args.out, stride=args.stride, topk=args.topk,
                                    views=args.views, device=args.device)
    else:
        results = predict_videos(cfg, args.checkpoint, args.videos, topk=args.topk, views=args.views,
                                 device=args.device)
    failed = sum("error" in r for r in results)
    if args.json:
        print(json.dumps(results, indent=1))
    elif args.timeline:
        print_timelines(results)
    else:
        for r in results:
            print(r["video"])
            if "error" in r:
                print(f"  error: {r['error']}")
            for t in r.get("top", []):
                print(f"  {t['score']:.3f}  {t['label']}")
    if failed:
        print(f"tpn: {failed} of {len(results)} videos could not be read", file=sys.stderr)
    return 1 if failed else 0


def print_timelines(results: list[dict]) -> None:
    """Each video's segments (runs of windows with the same top-1 class) and the files written."""
    for r in results:
        print(r["video"])
        if "error" in r:
            print(f"  error: {r['error']}")
            continue
        for s in r["segments"]:
            print(f"  {s['start']:9.2f}s - {s['end']:9.2f}s  {s['label']}  "
                  f"(mean {s['score']:.3f}, {s['windows']} windows)")
        print("  files: " + ", ".join(r["files"].values()))


def _cmd_demo(args) -> int:
    from tpn.engine.demo import run_demo

    run_demo(args.out, quick=args.quick, device=args.device, model=args.model)
    return 0


def add_precision_option(p) -> None:
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"],
                   help="autocast dtype of the forward, on CUDA or CPU (config key test.precision; default: "
                        "the training execution's: bf16 on CUDA, fp32 on CPU); fp32 with --set "
                        "test.fold_bn=false runs the unfolded fp32 model")


def add_engine_commands(sub, add_set) -> None:
    p = sub.add_parser("train", help="train a model (one process, or many under torchrun)")
    p.add_argument("config")
    p.add_argument("--work-dir", default=None, help="default work_dirs/<config name>")
    p.add_argument("--resume", default=None, help="'auto' (newest valid checkpoint in the work dir) or a path")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a work dir that holds an earlier run: delete its checkpoints, metrics.jsonl, "
                        "train.log, training_curves.png, bad_videos.jsonl and tensorboard/ first")
    p.add_argument("--break-lock", action="store_true",
                   help="take over the work dir's lock even when its holder (on another host) cannot be checked")
    add_device_option(p)
    add_set(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("test", help="multi-view test of a checkpoint (default 10 clips x 3 crops)")
    p.add_argument("config")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--views", default=None, help="CLIPSxCROPS, e.g. 10x3 (default: the config's)")
    p.add_argument("--work-dir", default=None, help="report folder (default work_dirs/<config>/test)")
    p.add_argument("--view-scores", default=None, choices=["tpn", "mmaction2"], metavar="ORDER",
                   help="also write view_scores.npy (softmax per view), views in tpn's order (clip-major) "
                        "or mmaction2's (crop-major: left, right, middle)")
    p.add_argument("--tempo", default=None, metavar="SPEEDS",
                   help="test at each playback speed, e.g. 0.5,1,2: every video re-sampled as if played that fast "
                        "(clip frame interval x speed; dense sampling only); top-1/top-5 per speed in the summary, "
                        "metrics.json and accuracy_vs_tempo.png; the rest of the report is speed 1's (else the first)")
    add_precision_option(p)
    add_device_option(p)
    add_set(p)
    p.set_defaults(func=_cmd_test)

    p = sub.add_parser("predict", help="top-k classes for video files",
                       description="Top-k classes for each video. Exit status: 0 every video predicted, "
                                   "1 some video could not be read (its reason is in the output), "
                                   "2 a usage, config or checkpoint error.")
    p.add_argument("videos", nargs="+")
    p.add_argument("--config", default=None,
                   help="shipped config name or YAML path (default: the one a tpn checkpoint was saved with)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--topk", type=int, default=5, help="classes per video (at most the model's; default 5)")
    p.add_argument("--views", default=None, help="CLIPSxCROPS (default: the config's test views)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeline", action="store_true",
                   help="score sliding windows (one clip span each, the config's test crops) over each whole video, "
                        "decoded as a stream: per-window top-k to OUT/<video>.timeline.csv/.json and a plot (.png)")
    p.add_argument("--stride", type=float, default=None, metavar="SECONDS",
                   help="with --timeline: seconds between window starts (default: one window's duration)")
    p.add_argument("--out", default=OUT_DEFAULT, help="with --timeline: folder of the files (default %(default)s)")
    add_precision_option(p)
    add_device_option(p)
    add_set(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("demo", help="synthetic tempo dataset -> train a small TPN on CPU -> multi-view test on a held-out split")
    p.add_argument("--out", default="work_dirs/demo")
    p.add_argument("--quick", action="store_true", help="a much smaller run (under a minute)")
    add_device_option(p)
    p.add_argument("--model", default="tpn", choices=["tpn", "tsm"],
                   help="tpn: the 3D TPN on mp4 videos; tsm: TPN on a TSM ResNet, on jpg frames (default tpn)")
    p.set_defaults(func=_cmd_demo)
