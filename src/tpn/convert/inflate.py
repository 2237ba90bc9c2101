"""2D-to-3D inflation: initialise the 3D ResNet backbone from a 2D ResNet-50/101.

Sources: a torchvision or timm ResNet state_dict (a torch file: `conv1.weight`, `bn1.*`,
`layerX.Y.convK/bnK`, `downsample.0/1`, `fc.*`), or the Paddle TSN ResNet (a .pdparams file
or a Paddle 1.x persistables folder: `conv1_weights`, `bn_conv1_scale`, ...). Each 2D kernel
(out, in, kh, kw) becomes (out, in, kt, kh, kw) by repeating it kt times over time and
dividing by kt, so a clip of identical frames gives the 2D network's response away from the
temporal borders; BatchNorm tensors are copied. The 2D classifier (`fc`) is ignored; every
other tensor must fill the backbone exactly or loading fails listing what is wrong.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from tpn.checkpoint import CheckpointError, misfit_error
from tpn.convert.weights import read_raw, rename


def inflate_weight(w2d: torch.Tensor, kt: int) -> torch.Tensor:
    """(out, in, kh, kw) -> (out, in, kt, kh, kw), repeated over time and divided by kt."""
    return w2d.unsqueeze(2).repeat(1, 1, kt, 1, 1) / kt


def detect_2d_layout(state_dict: dict) -> str:
    keys = set(state_dict)
    if "conv1_weights" in keys:
        return "paddle_tsn2d"
    if "conv1.weight" in keys:
        return "torchvision_resnet"
    shown = ", ".join(sorted(keys)[:4])
    raise CheckpointError(f"not a 2D ResNet in torchvision/timm or Paddle TSN layout (first keys: {shown})")


def read_2d_state_dict(path: str | Path) -> tuple[dict, list[str]]:
    """A 2D ResNet's tensors in tpn backbone names. Returns (state_dict, ignored keys)."""
    sd, _info = read_raw(path)
    for prefix in ("backbone.", "model."):  # wrappers some training scripts add
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    try:
        layout = detect_2d_layout(sd)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    return rename(sd, layout, str(path))


def inflate_state_dict(backbone: nn.Module, sd2d: dict, source: str) -> dict:
    """Backbone state_dict from 2D tensors; raises listing missing/unexpected/mis-shaped ones."""
    own = backbone.state_dict()
    out, missing, misshaped = {}, [], []
    for key, target in own.items():
        if key not in sd2d:
            if key.endswith("num_batches_tracked"):
                out[key] = target.clone()
            else:
                missing.append(key)
            continue
        src = sd2d[key]
        if target.dim() == 5 and src.dim() == 4 and tuple(src.shape) == tuple(target.shape[:2] + target.shape[3:]):
            out[key] = inflate_weight(src.to(target.dtype), target.shape[2])
        elif tuple(src.shape) == tuple(target.shape):
            out[key] = src.to(target.dtype)
        else:
            misshaped.append(f"{key} {tuple(src.shape)} vs backbone {tuple(target.shape)}")
    unexpected = [k for k in sd2d if k not in own]
    if missing or unexpected or misshaped:
        raise misfit_error(f"{source}: 2D weights do not fit the 3D backbone", missing, unexpected, misshaped)
    return out


def inflate_2d_into(backbone: nn.Module, path: str | Path) -> dict:
    """Fill `backbone` from the 2D ResNet at `path`. Returns {'inflated': n, 'copied': n, 'ignored': [...]}."""
    sd2d, ignored = read_2d_state_dict(path)
    sd3d = inflate_state_dict(backbone, sd2d, str(path))
    backbone.load_state_dict(sd3d, strict=True)
    inflated = sum(1 for k, v in sd2d.items() if v.dim() == 4 and sd3d[k].dim() == 5)
    return {"inflated": inflated, "copied": len(sd2d) - inflated, "ignored": ignored}
