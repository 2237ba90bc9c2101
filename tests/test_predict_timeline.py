"""`tpn predict` without --config (a tpn checkpoint carries it) and `tpn predict --timeline`:
segments found on a video that concatenates synthetic classes, the files written, and memory that
stays flat on long files (a streaming decode)."""
import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.test_engine_common import TINY, cli
from tpn.config import load_config, to_dict

CLASSES = ["right_slow", "left_fast", "down_slow"]
# Each class's segment carries its own tint, so that a random backbone tells them apart: the model's
# predictions are controlled (its head is fitted on held-out clips), the checkpoint is a real one on disk.
TINT = np.array([[255, 40, 40], [40, 255, 40], [40, 40, 255]], np.float32)
SEGMENT_FRAMES = 60  # 2 s at 30 fps


def tinted(y: int, frames: np.ndarray) -> np.ndarray:
    return (frames * 0.4 + TINT[y] * 0.6).astype(np.uint8)


def tiny_config(extra=()):
    return load_config("tpn_tiny_synth", TINY + ["model.head.num_classes=3", "data.test_crops=1", *extra])


@pytest.fixture(scope="module")
def controlled(tmp_path_factory):
    """(checkpoint, concatenated video): a tiny TPN whose head is fitted on held-out tinted clips of
    each class, saved as a tpn checkpoint with its config and class names; a video of the three
    classes, 2 s each, one after the other."""
    from tpn.checkpoint import save_atomic
    from tpn.data.plan import Planner
    from tpn.data.synthetic import render, write_mp4
    from tpn.engine.timeline import Windows, window_views
    from tpn.models.build import build_model

    root = tmp_path_factory.mktemp("timeline")
    cfg = tiny_config()
    rng = np.random.default_rng(0)
    video = root / "three_classes.mp4"
    segments = [tinted(y, render(c, (64, 48), SEGMENT_FRAMES, rng)) for y, c in enumerate(CLASSES)]
    write_mp4(video, np.concatenate(segments))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    feats = {}
    hook = model.head.fc.register_forward_hook(lambda m, i, o: feats.__setitem__("x", i[0]))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1, 1) for v in (cfg.data.mean, cfg.data.std))
    planner, win, xs, ys = Planner(cfg.data, "test"), Windows(cfg.data.clip_len, cfg.data.frame_interval, 1), [], []
    held_out = np.random.default_rng(1)
    with torch.no_grad():
        for y, c in enumerate(CLASSES):
            frames = dict(enumerate(tinted(y, render(c, (64, 48), 40, held_out))))
            views = torch.cat([window_views(planner, frames, win.frames(s)) for s in range(0, 33, 4)])
            model((views.float() - mean) / std)
            xs.append(feats["x"])
            ys += [y] * len(views)
    hook.remove()
    x, y = torch.cat(xs), torch.tensor(ys)
    opt = torch.optim.Adam(model.head.fc.parameters(), 0.05)
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(model.head.fc(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ckpt = root / "controlled.pth"
    save_atomic({"format": "tpn", "state_dict": model.state_dict(), "config": to_dict(cfg), "label_names": CLASSES},
                ckpt)
    return ckpt, video


def test_predict_without_config_uses_the_checkpoints(controlled, tmp_path):
    ckpt, video = controlled
    r = cli("predict", str(video), "--checkpoint", str(ckpt), "--json", "--topk", "3", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    (out,) = json.loads(r.stdout)
    assert sorted(t["label"] for t in out["top"]) == sorted(CLASSES)  # the checkpoint's class names
    # the same numbers as with the config given explicitly
    from tpn.engine.predict import checkpoint_config, predict_videos

    cfg = checkpoint_config(ckpt)
    assert to_dict(cfg) == to_dict(tiny_config())
    explicit = predict_videos(tiny_config(), ckpt, [str(video)], topk=3, device="cpu")[0]
    assert [t["label"] for t in explicit["top"]] == [t["label"] for t in out["top"]]
    assert np.allclose([t["score"] for t in explicit["top"]], [t["score"] for t in out["top"]], atol=1e-5)
    # --set still applies on top of the checkpoint's config
    assert checkpoint_config(ckpt, ["data.test_clips=3"]).data.test_clips == 3


def test_predict_foreign_checkpoint_without_config_is_one_line(controlled, tmp_path):
    from tpn.models.build import build_model

    _, video = controlled
    sd = {k.replace("head.fc.", "cls_head.fc_cls."): v for k, v in build_model(tiny_config()).state_dict().items()}
    foreign = tmp_path / "mmaction2_style.pth"
    torch.save({"state_dict": sd, "meta": {}}, foreign)
    bare = tmp_path / "bare_tpn.pth"
    torch.save({"format": "tpn", "state_dict": build_model(tiny_config()).state_dict()}, bare)
    for path, kind in ((foreign, "not a tpn checkpoint"), (bare, "saved without its config")):
        r = cli("predict", str(video), "--checkpoint", str(path), "--device", "cpu")
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and kind in lines[0] and "--config" in lines[0], r.stderr


def test_predict_takes_videos_around_options_and_names_a_config_given_as_a_video(controlled, tmp_path):
    ckpt, video = controlled
    # videos before and after the options, as a shell user writes them
    r = cli("predict", str(video), "--checkpoint", str(ckpt), str(video), "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert [o["video"] for o in json.loads(r.stdout)] == [str(video)] * 2
    # a config where train/test take it (first, positional): one line saying to pass it as --config
    for config in (str(tmp_path / "config.yaml"), "tpn_tiny_synth"):
        r = cli("predict", config, "--checkpoint", str(ckpt), str(video), "--device", "cpu")
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and f"--config {config}" in lines[0], r.stderr


def test_timeline_finds_the_segments(controlled, tmp_path):
    ckpt, video = controlled
    r = cli("predict", str(video), "--checkpoint", str(ckpt), "--timeline", "--stride", "0.25", "--out",
            str(tmp_path / "tl"), "--topk", "2", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "tl" / "three_classes.timeline.json").read_text())
    fps, span, stride = out["fps"], out["window_frames"], out["stride_frames"]
    assert (fps, out["frames"], span, stride) == (30, 3 * SEGMENT_FRAMES, 7, 8)  # 4 frames 2 apart; 0.25 s -> 8
    starts = [w["start"] for w in out["windows"]]
    assert starts == [round(8 * i / 30, 3) for i in range((180 - 7) // 8 + 1)]  # every window fits in the video
    segs = out["segments"]
    assert [s["label"] for s in segs] == CLASSES, segs
    for s, true_start in zip(segs[1:], (2.0, 4.0)):  # each change found within one window and stride
        assert abs(s["start"] - true_start) <= (span + stride) / fps, segs
    assert segs[0]["start"] == 0 and segs[-1]["end"] == out["windows"][-1]["end"]
    assert sum(s["windows"] for s in segs) == len(out["windows"])
    assert all(s["label"] in r.stdout for s in segs)  # the segments are printed
    with open(tmp_path / "tl" / "three_classes.timeline.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["start", "end", "label1", "score1", "label2", "score2"]
    assert len(rows) == 1 + len(out["windows"])
    assert rows[1][2] == out["windows"][0]["top"][0]["label"]
    png = (tmp_path / "tl" / "three_classes.timeline.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_timeline_csv_escapes_formula_labels_and_short_video(tmp_path):
    """A class name that starts a spreadsheet formula is escaped in the CSV (kept in the JSON); a
    video shorter than one window gets one window; an unreadable one is an error line, exit 1."""
    from tpn.checkpoint import save_atomic
    from tpn.data.synthetic import render, write_mp4
    from tpn.models.build import build_model

    cfg = tiny_config()
    names = ["=HYPERLINK(1)", "b", "c"]
    ckpt = tmp_path / "m.pth"
    save_atomic({"format": "tpn", "state_dict": build_model(cfg).state_dict(), "config": to_dict(cfg),
                 "label_names": names}, ckpt)
    short = tmp_path / "short.mp4"
    write_mp4(short, render("right_slow", (64, 48), 5, np.random.default_rng(0)))
    (tmp_path / "bad.mp4").write_text("not a video")
    r = cli("predict", str(short), str(tmp_path / "bad.mp4"), "--checkpoint", str(ckpt), "--timeline",
            "--out", str(tmp_path / "tl"), "--topk", "3", "--device", "cpu")
    assert r.returncode == 1 and "bad.mp4" in r.stdout and "error" in r.stdout, (r.stdout, r.stderr)
    out = json.loads((tmp_path / "tl" / "short.timeline.json").read_text())
    assert len(out["windows"]) == 1 and out["frames"] == 5
    assert "=HYPERLINK(1)" in [t["label"] for t in out["windows"][0]["top"]]
    text = (tmp_path / "tl" / "short.timeline.csv").read_text()
    assert "'=HYPERLINK(1)" in text and ",=HYPERLINK" not in text
    r = cli("predict", str(short), "--checkpoint", str(ckpt), "--stride", "1")
    assert r.returncode == 2 and "--timeline" in r.stderr


def write_long_video(path, frames: int, size=(160, 120)) -> None:
    """`frames` frames at 30 fps: a rendered 60-frame clip over and over (encoded as it goes)."""
    import av

    from tpn.data.synthetic import render

    clip = render("right_fast", size, 60, np.random.default_rng(0))
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt, s.options = size[0], size[1], "yuv420p", {"preset": "ultrafast"}
        for i in range(frames):
            for packet in s.encode(av.VideoFrame.from_ndarray(clip[i % 60], format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


PEAK_RSS = """import resource, sys
from tpn.cli import main
code = main(sys.argv[1:])
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def test_timeline_memory_stays_flat_on_long_videos(controlled, tmp_path):
    """Peak RSS of `tpn predict --timeline` on 4000 and 8000 frames of 160x120: the decoded frames
    alone would be 230 MB and 461 MB; twice the length must cost under 1.2x the peak."""
    ckpt, _ = controlled
    peaks = {}
    for frames in (4000, 8000):
        video = tmp_path / f"long_{frames}.mp4"
        write_long_video(video, frames)
        r = subprocess.run([sys.executable, "-c", PEAK_RSS, "predict", str(video), "--checkpoint", str(ckpt),
                            "--timeline", "--stride", "20", "--out", str(tmp_path / "tl"), "--device", "cpu"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        peaks[frames] = int(r.stderr.rsplit("PEAK_KB", 1)[1].split()[0])
        out = json.loads((tmp_path / "tl" / f"long_{frames}.timeline.json").read_text())
        assert out["frames"] == frames and len(out["windows"]) == (frames - 7) // 600 + 1
    assert peaks[8000] < 1.2 * peaks[4000], peaks


def test_timelines_of_videos_with_the_same_file_name_do_not_overwrite_each_other(controlled, tmp_path):
    ckpt, video = controlled
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copy(video, tmp_path / d / video.name)
    r = cli("predict", str(tmp_path / "a" / video.name), str(tmp_path / "b" / video.name), "--checkpoint", str(ckpt),
            "--timeline", "--stride", "1", "--out", str(tmp_path / "tl"), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    first, second = (json.loads((tmp_path / "tl" / f"{video.stem}{s}.timeline.json").read_text()) for s in ("", "_2"))
    assert (first["video"], second["video"]) == (str(tmp_path / "a" / video.name), str(tmp_path / "b" / video.name))
    assert r.returncode == 0 and "_2.timeline" in r.stdout
