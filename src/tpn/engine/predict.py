"""`tpn predict`: top-k classes for video files, with the 30-view test protocol.

Each result is {"video", "top": [{"label", "index", "score"}]} or, for a video that cannot be
read, {"video", "error"} (the reason, naming the file); the other videos are still predicted."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tpn.config import Config
from tpn.data.datasets import VideoDataset
from tpn.data.video import VideoError
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
