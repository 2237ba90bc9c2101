"""`tpn info`: parameter counts, FLOPs per view and stage output shapes of a config's model."""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from tpn.config import Config
from tpn.models.build import build_model
from tpn.models.recognizer import Recognizer2D


def count_params(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def measure(cfg: Config, clip_len: int | None = None, size: int = 224) -> dict:
    """Build the model and run one (1, 3, T, size, size) view through it on the CPU."""
    model = build_model(cfg).eval()
    t = clip_len or cfg.data.clip_len
    x = torch.zeros(1, 3, t, size, size)
    shapes: list[tuple[str, tuple[int, ...]]] = []
    hooks = []

    def record(name):
        return lambda _m, _i, out: shapes.append((name, tuple(out.shape)))

    # a 2D backbone sees the clip's frames as a batch: (N * T, C, H, W)
    per_frame = " (frames)" if isinstance(model, Recognizer2D) else ""
    hooks.append(model.backbone.maxpool.register_forward_hook(record("backbone.stem" + per_frame)))
    for i in range(model.backbone.num_stages):
        name = f"backbone.layer{i + 1}{per_frame}"
        hooks.append(getattr(model.backbone, f"layer{i + 1}").register_forward_hook(record(name)))
    if model.neck is not None:
        hooks.append(model.neck.register_forward_hook(record("neck")))
    hooks.append(model.head.register_forward_hook(record("head (logits)")))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    for h in hooks:
        h.remove()
    by_module = counter.get_flop_counts()
    head_flops = sum(by_module.get(f"{type(model).__name__}.head", {}).values())
    total = counter.get_total_flops()
    parts = {
        "backbone": count_params(model.backbone),
        "neck": count_params(model.neck),
        "head": count_params(model.head),
        "aux_head (training only)": count_params(model.aux_head),
    }
    return {
        "config": cfg.name,
        "input": [1, 3, t, size, size],
        "params_total": count_params(model),
        "params": parts,
        "flops": total,
        "flops_backbone_neck": total - head_flops,
        "shapes": shapes,
    }


def model_info(cfg: Config, clip_len: int | None = None, size: int = 224) -> str:
    r = measure(cfg, clip_len, size)
    lines = [f"config: {r['config']}   input: {'x'.join(map(str, r['input']))} (N, C, T, H, W)"]
    aux = " (auxiliary head included)" if r["params"]["aux_head (training only)"] else ""
    lines.append(f"parameters: {r['params_total']:,}{aux}")
    for name, n in r["params"].items():
        lines.append(f"  {name:<26}{n:>14,}")
    g = r["flops"] / 1e9
    gbn = r["flops_backbone_neck"] / 1e9
    lines.append(
        f"FLOPs per view (torch.utils.flop_counter, 2 FLOPs per multiply-add): {g:.2f} GFLOP "
        f"= {g / 2:.2f} GMAC; backbone + neck: {gbn:.2f} GFLOP = {gbn / 2:.2f} GMAC"
    )
    lines.append("output shapes:")
    for name, shape in r["shapes"]:
        lines.append(f"  {name:<26}{tuple(shape)}")
    return "\n".join(lines)
