"""`tpn predict VIDEO --timeline`: class scores over time, window by window, for long videos.

A window is one clip span of the config (`clip_len` frames `frame_interval` apart), scored with
the config's test crops (`data.test_crops`, resized to the short side as `tpn test` does) and
the softmax averaged over them. Windows start every `--stride` seconds (default: one window's
duration, so they tile the video); the last window ends within one stride of the video's end.
A video shorter than one window gets one window, its frames looped (as `tpn predict`).

The video is decoded once, in order (`tpn.data.video.stream_frames`): only the frames some
window samples are converted, and a frame is dropped once no pending window needs it, so memory
holds at most one window span of frames however long the file (tests/test_predict_timeline.py
measures it). The scores of every window are kept: (windows x classes) float32, 5.8 MB for an
hour at a 1 s stride with 400 classes.

Outputs, in `--out`: `<stem>.timeline.csv` (per window: start and end in seconds, top-k labels
and scores; formula-like text escaped as in `tpn test`'s predictions.csv), `<stem>.timeline.json`
(the same, plus `segments`: runs of consecutive windows with the same top-1 class) and
`<stem>.timeline.png` (the scores of the top classes over time).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tpn.data import sampling
from tpn.data.plan import Draft, Planner
from tpn.data.transforms import make_views
from tpn.data.video import VideoError, read_clip, stream_frames
from tpn.errors import TpnError, csv_text, write_text_atomic


class Windows:
    """Window starts every `stride` frames; each samples `clip_len` frames `interval` apart."""

    def __init__(self, clip_len: int, interval: int, stride: int):
        self.clip_len, self.interval, self.stride = clip_len, interval, max(1, stride)
        self.span = sampling.span(clip_len, interval)

    def frames(self, start: int) -> np.ndarray:
        return start + np.arange(self.clip_len, dtype=np.int64) * self.interval

    def wanted(self, i: int) -> bool:
        """Whether some window samples frame `i`."""
        first = -(-max(0, i - self.span + 1) // self.stride) * self.stride
        return any((i - s) % self.interval == 0 for s in range(first, i + 1, self.stride))


def window_views(planner: Planner, frames: dict[int, np.ndarray], idx: np.ndarray) -> torch.Tensor:
    """The test crops of one window, uint8 (crops, 3, T, S, S) frames-last, from decoded `frames`."""
    uniq = np.unique(idx)
    stack = np.stack([frames[int(k)] for k in uniq])
    draft = Draft(planner, 0, "", 0, np.repeat(idx[None], planner.cfg.test_crops, axis=0), None)
    return make_views(stack, uniq, draft.place(*stack.shape[1:3]))


def stride_frames(stride_s: float | None, fps: float, span: int) -> int:
    """Frames between window starts: `stride_s` seconds, at least 1 (None: one window span)."""
    if stride_s is None:
        return span
    if not 0 < stride_s < float("inf"):
        raise TpnError(f"--stride {stride_s}: must be a positive, finite number of seconds")
    return max(1, round(stride_s * fps))


def score_windows(cfg, forward, device, video: str, stride_s: float | None = None) -> dict:
    """Softmax scores of every window of `video` (one streaming decode): {"fps", "frames",
    "window_frames", "stride_frames", "starts" (int64), "probs" (windows x classes)}."""
    d = cfg.data
    if d.sampling == "segments":
        raise TpnError(f"--timeline: config {cfg.name} samples segments (data.sampling=segments), which spread "
                       "over a whole video; a timeline needs dense clips (data.sampling=dense)")
    planner, win, seen = Planner(d, "test"), None, [0]

    def wanted(i: int) -> bool:
        seen[0] = i + 1
        return win.wanted(i)

    stream = stream_frames(video, wanted, d.max_frame_pixels, d.short_side)
    info = next(stream)
    span = sampling.span(d.clip_len, d.frame_interval)
    win = Windows(d.clip_len, d.frame_interval, stride_frames(stride_s, info.fps, span))
    buffer, starts, probs, batch = {}, [], [], []
    next_start = 0

    def flush():
        if batch:
            p = torch.softmax(forward(torch.cat(batch).to(device)).float(), -1)
            probs.extend(p.view(len(batch), -1, p.shape[-1]).mean(1).cpu().numpy())
            batch.clear()

    for i, rgb in stream:
        buffer[i] = rgb
        while next_start + win.span - 1 <= i:
            batch.append(window_views(planner, buffer, win.frames(next_start)))
            starts.append(next_start)
            next_start += win.stride
            for k in [k for k in buffer if k < next_start]:
                del buffer[k]
            if len(batch) >= cfg.test.batch_size:
                flush()
    flush()
    n = seen[0]
    if not starts:  # shorter than one window: one window, its frames looped
        if n == 0:
            raise VideoError(f"{video}: no frames")
        frames, idx = read_clip(video, lambda m: sampling.test_indices(m, d.clip_len, d.frame_interval, 1)[0])
        batch.append(window_views(planner, dict(zip(idx.tolist(), frames)), idx))
        starts.append(0)
        flush()
    return {"fps": info.fps, "frames": n, "window_frames": win.span, "stride_frames": win.stride,
            "starts": np.asarray(starts, np.int64), "probs": np.stack(probs)}


def segments(rows: list[dict]) -> list[dict]:
    """Runs of consecutive windows with the same top-1 class: label, start, end (s), windows, mean score."""
    out: list[dict] = []
    for r in rows:
        top = r["top"][0]
        if out and out[-1]["label"] == top["label"]:
            s = out[-1]
            s["end"], s["windows"], s["score"] = r["end"], s["windows"] + 1, s["score"] + top["score"]
        else:
            out.append({"label": top["label"], "start": r["start"], "end": r["end"], "windows": 1,
                        "score": top["score"]})
    for s in out:
        s["score"] /= s["windows"]
    return out


def timeline_rows(scores: dict, names: list[str], topk: int) -> list[dict]:
    fps, span = scores["fps"], scores["window_frames"]
    rows = []
    for start, p in zip(scores["starts"].tolist(), scores["probs"]):
        order = np.argsort(-p, kind="stable")[:topk]
        rows.append({"start": round(start / fps, 3), "end": round((start + span) / fps, 3),
                     "top": [{"label": names[int(c)], "index": int(c), "score": float(p[c])} for c in order]})
    return rows


def plot_timeline(scores: dict, names: list[str], path: Path, classes: int = 5) -> Path:
    """Scores over time (window centres) of the classes that are top-1 in most windows, then by mean score."""
    from tpn.engine.report import pyplot, save_figure

    probs = scores["probs"]
    wins = np.bincount(probs.argmax(1), minlength=probs.shape[1])
    shown = np.lexsort((-probs.mean(0), -wins))[:classes]
    t = (scores["starts"] + scores["window_frames"] / 2) / scores["fps"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(12, 4))
    for c in shown:
        ax.plot(t, probs[:, c], lw=1.2, marker="." if len(t) < 60 else None, label=names[int(c)])
    ax.set_xlabel("time (s, window centre)")
    ax.set_ylabel("score (softmax)")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return save_figure(fig, path)


def write_timeline(out_dir: Path, video: str, scores: dict, names: list[str], topk: int, stem: str = "") -> dict:
    """`<stem>.timeline.csv`, `.json` and `.png` in `out_dir` (`stem`: the video's file name without
    its suffix unless given); returns the result with their paths."""
    from tpn.engine.evaluate import csv_cell

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = timeline_rows(scores, names, topk)
    stem = out_dir / f"{stem or Path(video).stem}.timeline"
    paths = {"csv": f"{stem}.csv", "json": f"{stem}.json", "png": f"{stem}.png"}
    write_text_atomic(paths["csv"], csv_text(
        [["start", "end"] + [f"{k}{i}" for i in range(1, topk + 1) for k in ("label", "score")]]
        + [[r["start"], r["end"]] + [csv_cell(x) for t in r["top"] for x in (t["label"], t["score"])] for r in rows]))
    result = {"video": video, "fps": scores["fps"], "frames": scores["frames"],
              "window_frames": scores["window_frames"], "stride_frames": scores["stride_frames"],
              "segments": segments(rows), "windows": rows, "files": paths}
    write_text_atomic(paths["json"], json.dumps(result, indent=1))
    plot_timeline(scores, names, Path(paths["png"]))
    return result
