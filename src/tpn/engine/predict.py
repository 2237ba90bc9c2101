"""`tpn predict`: top-k classes for video files, with the config's test views (`--views` to change).

Each result is {"video", "top": [{"label", "index", "score"}]} or, for a video that cannot be
read, {"video", "error"} (the reason, naming the file); the other videos are still predicted.
`topk` above the model's classes shows them all (with a warning); below 1 is an error. Class
names come from the checkpoint (indices when it has none); a head with more classes than
names calls the rest `class_<i>`, with a warning.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tpn.config import Config
from tpn.data.datasets import VideoDataset
from tpn.data.labels import resolve_num_classes
from tpn.data.video import VideoError
from tpn.engine.distributed import setup
from tpn.engine.evaluate import inference_forward, with_views
from tpn.errors import TpnError

log = logging.getLogger("tpn.predict")


@torch.no_grad()
def predict_videos(cfg: Config, checkpoint, videos: list[str], topk: int = 5, views: str | None = None,
                   device: str = "auto") -> list[dict]:
    if topk < 1:
        raise TpnError(f"--topk must be at least 1, got {topk}")
    cfg = with_views(cfg, views)
    if cfg.model.head.num_classes is None:
        cfg = resolve_num_classes(cfg, ())
    dev = setup(device).device
    forward, info = inference_forward(cfg, checkpoint, dev, compile_model=False)  # a few videos: no compile
    names = class_names(info.get("label_names"), cfg.model.head.num_classes)
    if topk > len(names):
        log.warning("--topk %d: the model has %d classes; showing all %d", topk, len(names), len(names))
        topk = len(names)
    data = replace(cfg.data, root="")
    dataset = VideoDataset(data, "test", [(str(Path(v)), 0, -1) for v in videos], names)
    out = []
    for i, path in enumerate(videos):
        try:
            views = dataset.eval_clip(i)
        except VideoError as e:  # the message names the file and what is wrong with it
            out.append({"video": path, "error": str(e)})
            continue
        probs = torch.softmax(forward(views.to(dev)).float(), -1).mean(0).cpu().numpy()
        order = np.argsort(-probs)[:topk]
        out.append({"video": path, "top": [{"label": names[int(c)], "index": int(c), "score": float(probs[c])}
                                           for c in order]})
    return out


def class_names(names: list[str] | None, num_classes: int) -> list[str]:
    """One name per head class: `names` (the checkpoint's) or indices; missing ones `class_<i>`."""
    if names is None:
        return [str(i) for i in range(num_classes)]
    if len(names) < num_classes:
        log.warning("the model has %d classes but %d class names: classes %d-%d are shown as class_<i>",
                    num_classes, len(names), len(names), num_classes - 1)
    return list(names[:num_classes]) + [f"class_{i}" for i in range(len(names), num_classes)]
