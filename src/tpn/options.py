"""Command-line values shared by the sub-commands: "AxB" pairs and the --device option."""
from __future__ import annotations

import argparse

from tpn.errors import TpnError


def parse_pair(text: str, flag: str, form: str, example: str) -> tuple[int, int]:
    """"AxB" -> (A, B) integers; anything else is a one-line error naming `flag`, the `form`
    (e.g. "WIDTHxHEIGHT") and an `example`."""
    try:
        a, b = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise TpnError(f"{flag} {text!r}: expected {form}, e.g. {example}") from None
    return a, b


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                   help="where to run (default auto: CUDA when available)")


def check_clip_shape(frames: int | None, size: int | None) -> None:
    """`--frames` / `--size` of `tpn info` and `tpn export`: a clip a model can take and a machine
    can hold (1-256 frames, 16-1024 pixels), else a one-line error."""
    if frames is not None and not 1 <= frames <= 256:
        raise TpnError(f"--frames {frames}: must be 1 to 256")
    if size is not None and not 16 <= size <= 1024:
        raise TpnError(f"--size {size}: must be 16 to 1024")
