"""`tpn predict`: top-k classes for video files, with the config's test views (`--views` to change).

Each result is {"video", "top": [{"label", "index", "score"}]} or, for a video that cannot be
read, {"video", "error"} (the reason, naming the file); the other videos are still predicted.
`topk` above the model's classes shows them all (with a warning); below 1 is an error. Class
names come from the checkpoint (indices when it has none); a head with more classes than
names calls the rest `class_<i>`, with a warning.

Without `--config`, a tpn checkpoint's saved config is used (`checkpoint_config`); a foreign
checkpoint (mmaction2, official, Paddle) carries none and is a one-line error asking for one.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from tpn.config import Config, ConfigError, apply_overrides, check_ranges, check_rules, from_dict
from tpn.data.datasets import VideoDataset
from tpn.data.labels import resolve_num_classes
from tpn.data.video import VideoError
from tpn.engine.distributed import setup
from tpn.engine.evaluate import inference_forward, with_views
from tpn.errors import TpnError, listing

log = logging.getLogger("tpn.predict")


def prepare(cfg: Config, checkpoint, topk: int, views: str | None, device: str):
    """(cfg with the views, device, forward, class names, topk at most the classes)."""
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
    return cfg, dev, forward, names, topk


@torch.no_grad()
def predict_videos(cfg: Config, checkpoint, videos: list[str], topk: int = 5, views: str | None = None,
                   device: str = "auto") -> list[dict]:
    cfg, dev, forward, names, topk = prepare(cfg, checkpoint, topk, views, device)
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


@torch.no_grad()
def predict_timelines(cfg: Config, checkpoint, videos: list[str], out_dir, stride: float | None = None,
                      topk: int = 5, views: str | None = None, device: str = "auto") -> list[dict]:
    """`tpn predict --timeline`: per-window top-k of each video written to `out_dir`
    (`tpn.engine.timeline`); a video that cannot be read is {"video", "error"}."""
    from tpn.engine.timeline import score_windows, write_timeline

    Path(out_dir).mkdir(parents=True, exist_ok=True)  # a folder that cannot be written fails before the model runs
    cfg, dev, forward, names, topk = prepare(cfg, checkpoint, topk, views, device)
    out, stems = [], set()
    for path in videos:
        stem, n = Path(path).stem, 1
        while stem in stems:  # a/clip.mp4 and b/clip.mp4: clip.timeline.* and clip_2.timeline.*
            n += 1
            stem = f"{Path(path).stem}_{n}"
        stems.add(stem)
        try:
            scores = score_windows(cfg, forward, dev, path, stride)
        except VideoError as e:
            out.append({"video": path, "error": str(e)})
            continue
        out.append(write_timeline(Path(out_dir), path, scores, names, topk, stem))
    return out


def class_names(names: list[str] | None, num_classes: int) -> list[str]:
    """One name per head class: `names` (the checkpoint's) or indices; missing ones `class_<i>`."""
    if names is None:
        return [str(i) for i in range(num_classes)]
    if len(names) < num_classes:
        log.warning("the model has %d classes but %d class names: classes %d-%d are shown as class_<i>",
                    num_classes, len(names), len(names), num_classes - 1)
    return list(names[:num_classes]) + [f"class_{i}" for i in range(len(names), num_classes)]


def checkpoint_config(checkpoint, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config a tpn checkpoint was saved with, plus `--set` overrides, checked as a config file
    is; a checkpoint without one (a foreign format) is a one-line error asking for `--config`."""
    from tpn.convert.weights import read_raw

    sd, info = read_raw(checkpoint)
    saved = info.get("saved_config")
    if saved is None:
        kind = "a tpn checkpoint saved without its config" if info.get("format") else "not a tpn checkpoint"
        raise ConfigError(f"{checkpoint}: {kind}, so it carries no config: pass --config NAME_OR_YAML "
                          "(the config of the model it holds, e.g. tpn_r50_8x8_k400)")
    source = f"{checkpoint} (its saved config)"
    cfg = apply_overrides(from_dict(Config, saved, source=source), overrides)
    overridden = [item.split("=", 1)[0].strip() for item in overrides]

    def source_of(key: str) -> str:
        return "--set" if any(key == k or key.startswith(k + ".") for k in overridden) else source

    check_ranges(cfg, source_of)
    check_rules(cfg, source_of)
    _fits_its_weights(cfg, sd, checkpoint)
    return cfg


def _fits_its_weights(cfg: Config, sd: dict, checkpoint) -> None:
    """A saved config that does not describe the file's own tensors (an edited or crafted file:
    say a head of a billion classes) is refused before a model is built from it; built on the
    meta device first, the model takes no memory."""
    from tpn.models.build import build_model

    if cfg.model.head.num_classes is None:  # from the label map: the weights are checked when they load
        return
    with torch.device("meta"):
        shell = build_model(cfg)
    bad = [f"{k} {tuple(sd[k].shape)} vs config {tuple(v.shape)}" for k, v in shell.state_dict().items()
           if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        raise ConfigError(f"{checkpoint}: its saved config does not fit its own weights ({listing(bad)}): pass "
                          "--config NAME_OR_YAML (the config of the model it holds)")
