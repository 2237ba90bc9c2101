"""`tpn predict`: top-k classes for video files, with the 30-view test protocol."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tpn.accel import make_eval_forward
from tpn.config import Config
from tpn.convert import load_weights
from tpn.data.datasets import VideoDataset
from tpn.engine.evaluate import parse_views
from tpn.models.build import build_model


@torch.no_grad()
def predict_videos(cfg: Config, checkpoint, videos: list[str], topk: int = 5, views: str | None = None,
                   device: str = "auto") -> list[dict]:
    if views:
        clips, crops = parse_views(views)
        cfg = replace(cfg, data=replace(cfg.data, test_clips=clips, test_crops=crops))
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    model = build_model(cfg)
    info = load_weights(model, checkpoint)
    names = info.get("label_names") or [str(i) for i in range(cfg.model.head.num_classes)]
    model = model.to(dev).eval()
    cuda = dev.type == "cuda"
    forward = make_eval_forward(model, cfg, amp=cuda, channels_last=cuda, fold_bn=cfg.test.fold_bn)
    data = replace(cfg.data, root="")
    dataset = VideoDataset(data, "test", [(str(Path(v)), 0, -1) for v in videos], names)
    out = []
    for i, path in enumerate(videos):
        views_u8, _, _, ok = dataset[i]
        if not ok:
            out.append({"video": path, "error": "unreadable video (see the log)"})
            continue
        probs = torch.softmax(forward(views_u8.to(dev)).float(), -1).mean(0).cpu().numpy()
        order = np.argsort(-probs)[:topk]
        out.append({"video": path, "top": [{"label": names[int(c)], "index": int(c), "score": float(probs[c])}
                                           for c in order]})
    return out
