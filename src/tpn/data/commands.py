"""`tpn data ...` sub-commands."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from tpn.errors import TpnError, writable_dir
from tpn.options import parse_pair


def _size(text: str, flag: str) -> tuple[int, int]:
    w, h = parse_pair(text, flag, "WIDTHxHEIGHT", "160x128")
    if not (16 <= w <= 4096 and 16 <= h <= 4096) or w % 2 or h % 2:
        raise TpnError(f"{flag} {text!r}: width and height must be even, 16 to 4096 (H.264 4:2:0)")
    return w, h


def _cmd_synth(args) -> int:
    from tpn.data.synthetic import MIN_TEMPO_RATIO, SPEED_JITTER, generate_dataset

    w, h = _size(args.size, "--size")
    if not 2 <= args.classes <= 24:
        raise TpnError(f"--classes {args.classes}: must be between 2 and 24")
    if args.videos_per_class < 2:
        raise TpnError(f"--videos-per-class {args.videos_per_class}: need at least 2 (train and val)")
    if args.tempo_ratio is not None and not args.tempo_ratio > MIN_TEMPO_RATIO:
        raise TpnError(f"--tempo-ratio {args.tempo_ratio}: must be above {MIN_TEMPO_RATIO:.3f} (with the "
                       f"+-{SPEED_JITTER:.0%} speed jitter, closer tempos overlap)")
    if args.frames < 2:
        raise TpnError(f"--frames {args.frames}: need at least 2 (motion is a change between frames)")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise TpnError(f"{args.out}: exists and is not a folder (data synth writes a dataset folder)")
    if not 0 <= args.distractors <= 20:
        raise TpnError(f"--distractors {args.distractors}: must be between 0 and 20")
    existing = [Path(args.out) / n for n in ("train.txt", "val.txt", "labels.txt") if (Path(args.out) / n).exists()]
    if existing and not args.overwrite:
        raise TpnError(f"{existing[0]}: exists; pass --overwrite to write a new dataset over it, or another folder")
    s = generate_dataset(args.out, classes=args.classes, videos_per_class=args.videos_per_class, size=(w, h),
                         seed=args.seed, frames=args.frames, workers=args.workers, progress=True, layout=args.layout,
                         tempo_ratio=args.tempo_ratio, distractors=args.distractors)
    print(f"wrote {s['train']} train + {s['val']} val videos of {len(s['classes'])} classes to {args.out} "
          f"(train.txt, val.txt, labels.txt; layout {args.layout}; flip label pairs {s['flip_label_pairs']})")
    return 0


def check_config(args):
    """(data config, split, list) for `tpn data check`: the config's `data` section (the defaults
    without --config) with --set applied; --root/--format/--label-map only without --config."""
    from dataclasses import replace

    from tpn.config import Config, apply_overrides, load_config

    flags = {"--root": args.root, "--format": args.format, "--label-map": args.label_map}
    for flag, field in (("--clip-len", "clip_len"), ("--frame-interval", "frame_interval")):
        if getattr(args, field) is not None:
            raise TpnError(f"{flag}: the clip geometry comes from a config: pass --config CONFIG "
                           f"(or --set data.{field}=N)")
    if args.config:
        given = [flag for flag, value in flags.items() if value is not None]
        if given:
            key = given[0][2:].replace("-", "_")
            raise TpnError(f"{given[0]} conflicts with --config: the config's data.{key} is what training reads "
                           f"(change it there or with --set data.{key}=...)")
        data = load_config(args.config, args.overrides).data
    else:
        data = replace(apply_overrides(Config(), args.overrides).data,
                       **{flag[2:].replace("-", "_"): value for flag, value in flags.items() if value is not None})
    list_file = args.list or getattr(data, f"{args.split}_list")
    if not list_file:
        raise TpnError(f"no list to check: give LIST or a config whose data.{args.split}_list is set")
    return data, args.split, list_file


def _cmd_check(args) -> int:
    from tpn.data.check import check_list, summary, write_outputs

    data, split, list_file = check_config(args)
    json_path = args.report or f"{list_file}.check.json"
    for flag, out in (("--report", json_path), ("--write-clean", args.write_clean)):
        if out:  # before the scan, which may take hours: its results must have somewhere to go
            writable_dir(Path(out).parent, f"{flag} {out}: its folder")
    report = check_list(list_file, data, split=split, workers=args.workers)
    write_outputs(report, json_path, args.write_clean)
    print(summary(report))
    print(f"report: {json_path}" + (f"; clean list: {args.write_clean}" if args.write_clean else ""))
    return 0 if not report["problems"] and not report["bad_lines"] else 1


def _cmd_prepare(args) -> int:
    from tpn.data.prepare import prepare_list

    r = prepare_list(args.list, args.root, args.out, fmt=args.format, label_map=args.label_map,
                     short_side=args.short_side, gop=args.gop, crf=args.crf, workers=args.workers)
    again = f" ({r['kept_from_earlier_run']} of them by an earlier run, kept)" if r["kept_from_earlier_run"] else ""
    print(f"wrote {r['written']} videos{again} (short side {r['short_side']}, keyframe every {r['gop']} frames) "
          f"and the list to {r['out']}; {len(r['failed'])} unreadable videos skipped")
    for f in r["failed"][:10]:
        print(f"  skipped {f['path']}: {f['error']}")
    return 0 if not r["failed"] else 1


def _cmd_lists(args) -> int:
    from tpn.data.folders import write_lists

    s = write_lists(args.folder, args.out, val_fraction=args.val_fraction, seed=args.seed, overwrite=args.overwrite)
    out = Path(s["out"])
    print(f"wrote {s['train']} train + {s['val']} val videos of {len(s['classes'])} classes to {out / 'train.txt'}, "
          f"{out / 'val.txt'} and {out / 'labels.txt'}")
    if s["empty"]:
        print(f"  skipped {len(s['empty'])} sub-folders without videos: {', '.join(s['empty'][:6])}")
    if s["no_val"]:
        print(f"  classes with one video, in train only: {', '.join(s['no_val'][:6])}")
    sets = {"data.root": s["root"], "data.train_list": out / "train.txt", "data.val_list": out / "val.txt",
            "data.label_map": out / "labels.txt", "model.head.num_classes": "null"}
    print("  train on them with: " + " ".join(f"--set {shlex.quote(f'{k}={v}')}" for k, v in sets.items()))
    return 0


def add_data_commands(sub, add_set) -> None:
    data = sub.add_parser("data", help="prepare and check video datasets").add_subparsers(
        dest="data_command", required=True, metavar="DATA_COMMAND")

    p = data.add_parser("synth", help="write a synthetic tempo dataset of real videos (mp4, or the sthv1/sthv2 layouts)")
    p.add_argument("out", help="output folder")
    p.add_argument("--classes", type=int, default=10, help="number of classes, 2-24 (default 10)")
    p.add_argument("--videos-per-class", type=int, default=50)
    p.add_argument("--size", default="160x128", help="WxH (default 160x128)")
    p.add_argument("--frames", type=int, default=48, help="frames per video (default 48, 30 fps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--layout", default="mp4", choices=["mp4", "sthv1", "sthv2"],
                   help="mp4 (H.264), or Something-Something's sthv1 (jpg frame folders) / sthv2 (VP9 webm)")
    p.add_argument("--tempo-ratio", type=float, default=None,
                   help="speed ratio of neighbouring tempos (default 2.2; above 1.35; 1.5 is harder)")
    p.add_argument("--distractors", type=int, default=0,
                   help="objects moving their own way, unrelated to the class (default 0)")
    p.add_argument("--overwrite", action="store_true", help="write over a dataset already in OUT")
    p.set_defaults(func=_cmd_synth)

    p = data.add_parser("lists", help="write train/val lists and labels.txt from a folder of videos in class "
                                      "sub-folders (FOLDER/CLASS/VIDEO)")
    p.add_argument("folder", help="folder with one sub-folder of videos per class (videos at any depth inside)")
    p.add_argument("--out", default=None, help="where train.txt, val.txt, labels.txt go (default FOLDER)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of each class for validation (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing train.txt, val.txt, labels.txt")
    p.set_defaults(func=_cmd_lists)

    p = data.add_parser("prepare", help="re-encode a video list for fast training decoding (short GOP, short side)")
    p.add_argument("list", help="annotation file (video list)")
    p.add_argument("--root", default="", help="folder the list's paths are relative to")
    p.add_argument("--out", required=True, help="output folder: videos at the same relative paths, and the list")
    p.add_argument("--format", default="list", choices=["list", "mmaction_video"])
    p.add_argument("--label-map", default="", help="class names, one per line (for lists with names)")
    p.add_argument("--short-side", type=int, default=256)
    p.add_argument("--gop", type=int, default=2,  # tpn.data.prepare.DEFAULT_GOP (not imported: CLI start-up)
                   help="keyframe interval in frames (default 2: fastest training reads; 8 halves the disk space)")
    p.add_argument("--crf", type=int, default=23, help="x264 quality (lower is better; default 23)")
    p.add_argument("--workers", type=int, default=4)
    p.set_defaults(func=_cmd_prepare)

    p = data.add_parser(
        "check", help="scan an annotation list for missing, empty, unreadable, damaged or too-short videos",
        description="Decode every video of a list once and report what training cannot use. The list's root, "
                    "format, label map and clip geometry come from --config (its data section, --set applies); "
                    "without --config they are the defaults: 8-frame clips every 8th frame (57 frames, "
                    "tpn_r50_8x8_k400's geometry), with --root/--format/--label-map. "
                    "Exit status: 0 clean, 1 problems found, 2 bad arguments or list file.")
    p.add_argument("list", nargs="?", default=None,
                   help="annotation file (default: the config's data.<split>_list)")
    p.add_argument("--config", default=None, help="shipped config name or YAML: check as training reads the list")
    p.add_argument("--split", default="train", choices=["train", "val", "test"],
                   help="which list of the config, and its rules: a training clip needs one clip's span of "
                        "frames (data.short_videos=skip); val/test loop short videos (default train)")
    p.add_argument("--root", default=None, help="without --config: folder the list's paths are relative to")
    p.add_argument("--format", default=None,
                   choices=["list", "mmaction_video", "mmaction_rawframes", "kinetics_csv"],
                   help="without --config: the list's format (default list)")
    p.add_argument("--label-map", default=None,
                   help="without --config: class names, one per line (for lists with names)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--clip-len", type=int, default=None, help=argparse.SUPPRESS)  # a clear error: use a config
    p.add_argument("--frame-interval", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--report", default=None, help="JSON report path (default LIST.check.json)")
    p.add_argument("--write-clean", default=None, metavar="OUT", help="write the list without unusable lines")
    add_set(p)
    p.set_defaults(func=_cmd_check)
