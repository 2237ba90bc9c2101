"""The `tpn` command: parses arguments, calls the library, prints.

Each area adds its own sub-commands from a small `commands.py` beside its code; heavy
imports (torch, av) happen inside the handlers so `tpn --help` stays fast.
"""
from __future__ import annotations

import argparse
import sys

from tpn.errors import TpnError, first_line


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set model.neck.flow=parallel (repeatable)",
    )


def _cmd_info(args) -> int:
    from tpn.config import load_config
    from tpn.models.info import model_info
    from tpn.options import check_clip_shape

    check_clip_shape(args.frames, args.size)
    cfg = load_config(args.config, args.overrides)
    try:
        text = model_info(cfg, clip_len=args.frames, size=args.size)
    except RuntimeError as e:  # a clip too small for the model's strides and pooling
        raise TpnError(f"{cfg.name} cannot take a clip of {args.frames or cfg.data.clip_len} frames at "
                       f"{args.size}x{args.size}: {first_line(e)}") from None
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tpn import __version__
    from tpn.convert.commands import add_convert_commands
    from tpn.data.commands import add_data_commands
    from tpn.engine.commands import add_engine_commands

    parser = argparse.ArgumentParser(prog="tpn", description="Temporal Pyramid Networks for video action recognition")
    parser.add_argument("--version", action="version", version=f"tpn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="parameters, FLOPs and stage shapes of a config's model")
    p.add_argument("config", help="shipped config name or YAML path")
    p.add_argument("--frames", type=int, default=None, help="clip length (default: the config's data.clip_len)")
    p.add_argument("--size", type=int, default=224, help="crop size for FLOPs and shapes (default 224)")
    _add_set(p)
    p.set_defaults(func=_cmd_info)

    add_convert_commands(sub, _add_set)
    add_data_commands(sub, _add_set)
    add_engine_commands(sub, _add_set)
    parser.commands = sub.choices  # each sub-command's parser, by name
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["predict"]:
        # its videos may stand before and after options: `tpn predict a.mp4 --checkpoint c.pth b.mp4`
        args = parser.commands["predict"].parse_intermixed_args(argv[1:])
    else:
        args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TpnError as e:
        print(f"tpn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tpn: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a file or folder the system refused: no permission, a full disk, a file for a folder
        where = f"{e.filename}: " if e.filename else ""
        print(f"tpn: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
