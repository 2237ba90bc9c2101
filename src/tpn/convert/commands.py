"""`tpn convert` and `tpn export` sub-commands."""


def _cmd_convert(args) -> int:
    from tpn.convert import convert_checkpoint

    print(convert_checkpoint(args.src, args.dst, config=args.config, fmt=args.format))
    return 0


def add_convert_commands(sub, add_set) -> None:
    p = sub.add_parser("convert", help="convert a foreign checkpoint (mmaction2, official TPN, Paddle) to tpn's format")
    p.add_argument("src", help="source checkpoint file (or Paddle persistables folder)")
    p.add_argument("dst", help="output .pth file")
    p.add_argument("--config", default="tpn_r50_8x8_k400", help="model config the weights are for (default tpn_r50_8x8_k400)")
    p.add_argument("--format", default="auto", help="source format: auto, mmaction2, tpn (default auto)")
    p.set_defaults(func=_cmd_convert)
