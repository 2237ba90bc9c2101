"""`tpn convert`, `tpn export` and `tpn zoo` sub-commands."""


def _cmd_convert(args) -> int:
    from tpn.convert.weights import convert_checkpoint
    from tpn.data.datasets import read_label_names

    print(convert_checkpoint(args.src, args.dst, config=args.config, fmt=args.format,
                             label_names=read_label_names(args.labels) if args.labels else None))
    return 0


def _cmd_export(args) -> int:
    from tpn.convert.export import export_onnx

    print(export_onnx(args.config, args.checkpoint, args.out, frames=args.frames, size=args.size,
                      opset=args.opset, overrides=args.overrides, check=not args.no_check))
    return 0


def _cmd_zoo(args) -> int:
    from tpn.convert.weights import resolve_source
    from tpn.convert.zoo import PREFIX, zoo_table

    if args.fetch:
        print(resolve_source(PREFIX + args.fetch.removeprefix(PREFIX)))
    else:
        print(zoo_table())
    return 0


def add_convert_commands(sub, add_set) -> None:
    p = sub.add_parser("convert", help="convert a foreign checkpoint (mmaction2, official TPN, Paddle) to tpn's format")
    p.add_argument("src", help="source checkpoint file, Paddle .pdparams file or Paddle persistables folder")
    p.add_argument("dst", help="output .pth file")
    p.add_argument("--config", default="tpn_r50_8x8_k400", help="model config the weights are for (default tpn_r50_8x8_k400)")
    p.add_argument("--format", default="auto",
                   help="source format: auto, tpn, mmaction2, tpn_official, paddle_tpn (default auto)")
    p.add_argument("--labels", default=None, metavar="FILE", help="class names, one per line, stored in the checkpoint")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("export", help="export a model to ONNX (dynamic batch axis)")
    p.add_argument("config", help="shipped config name or YAML path")
    p.add_argument("out", help="output .onnx file")
    p.add_argument("--checkpoint", default=None, help="weights (any format `tpn convert` reads)")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (onnx)")
    p.add_argument("--frames", type=int, default=None, help="clip length T (default: the config's data.clip_len)")
    p.add_argument("--size", type=int, default=None, help="crop size H=W (default: the config's data.crop_size)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    add_set(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("zoo", help="released models usable as --checkpoint zoo:NAME (names, configs, published accuracy)")
    p.add_argument("--fetch", default=None, metavar="NAME",
                   help="download, check and convert this model now (into TPN_HOME) and print its path")
    p.set_defaults(func=_cmd_zoo)
