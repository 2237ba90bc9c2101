"""`tpn predict`: top-k classes for video files, with the 30-view test protocol."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tpn.config import Config
from tpn.data.datasets import VideoDataset
from tpn.engine.distributed import setup
from tpn.engine.evaluate import inference_forward, with_views


@torch.no_grad()
def predict_videos(cfg: Config, checkpoint, videos: list[str], topk: int = 5, views: str | None = None,
                   device: str = "auto") -> list[dict]:
    cfg = with_views(cfg, views)
    dev = setup(device).device
    forward, info = inference_forward(cfg, checkpoint, dev, compile_model=False)  # a few videos: no compile
    names = info.get("label_names") or [str(i) for i in range(cfg.model.head.num_classes)]
    data = replace(cfg.data, root="")
    dataset = VideoDataset(data, "test", [(str(Path(v)), 0, -1) for v in videos], names)
    out = []
    for i, path in enumerate(videos):
        item = dataset[i]
        if not item.ok:
            out.append({"video": path, "error": "unreadable video (see the log)"})
            continue
        probs = torch.softmax(forward(item.clip.to(dev)).float(), -1).mean(0).cpu().numpy()
        order = np.argsort(-probs)[:topk]
        out.append({"video": path, "top": [{"label": names[int(c)], "index": int(c), "score": float(probs[c])}
                                           for c in order]})
    return out
