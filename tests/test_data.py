"""Video data pipeline: exact frames, exact sampling, transforms, lists, broken videos, loading."""
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from tpn.config import DataConfig
from tpn.data import sampling, transforms as T
from tpn.data.check import check_list
from tpn.data.datasets import AnnotationError, build_dataset, read_annotations
from tpn.data.synthetic import class_names, render, write_mp4
from tpn.data.video import VideoError, read_all_frames, read_rawframes, read_video_frames


# ---------------------------------------------------------------- decoding
@pytest.mark.parametrize("gop", [None, 6])
def test_seeking_reader_returns_exactly_the_requested_frames(tmp_path, gop):
    path = tmp_path / "v.mp4"
    write_mp4(path, render("left_fast", (64, 48), 60, np.random.default_rng(0)), gop=gop)
    reference = read_all_frames(path)
    assert reference.shape == (60, 48, 64, 3)
    rng = np.random.default_rng(1)
    for idx in ([0, 1, 2], [7, 15, 23, 31], [59], [40, 12, 40, 3], list(rng.integers(0, 60, 8))):
        got = read_video_frames(path, idx)
        assert np.array_equal(got, reference[idx]), idx
        assert np.array_equal(read_video_frames(path, idx, seek=False), reference[idx])
    with pytest.raises(VideoError, match="not in the video"):
        read_video_frames(path, [10, 60])


def test_rawframe_folder(tmp_path):
    from PIL import Image

    frames = render("up_slow", (32, 24), 6, np.random.default_rng(0))
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"img_{i + 1:05d}.png")
    got = read_rawframes(tmp_path, [0, 5, 2], template="img_{:05d}.png")
    assert np.array_equal(got, frames[[0, 5, 2]])


# ---------------------------------------------------------------- sampling
def test_train_indices_are_one_strided_clip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = sampling.train_indices(300, 8, 8, rng)
        assert idx[0] <= 300 - 57 and np.array_equal(np.diff(idx), [8] * 7)
    assert np.array_equal(sampling.train_indices(20, 8, 8, rng), [0, 8, 16, 4, 12, 0, 8, 16])  # loops


def test_val_and_test_indices():
    assert np.array_equal(sampling.val_indices(300, 8, 8), 121 + 8 * np.arange(8))
    t = sampling.test_indices(300, 8, 8, 10)
    assert t.shape == (10, 8)
    # 244 possible starts cut into 10 segments of 24.4; each clip starts mid-segment
    assert list(t[:, 0]) == [12, 36, 61, 85, 109, 134, 158, 182, 207, 231]
    assert np.array_equal(sampling.test_indices(30, 8, 8, 2), [[0, 8, 16, 24, 2, 10, 18, 26]] * 2)


# ---------------------------------------------------------------- transforms
def _ramp_clip(t=4, h=40, w=60):
    base = torch.arange(h * w, dtype=torch.int64).view(h, w) % 251
    return base.expand(3, t, h, w).to(torch.uint8).clone()


def test_random_ops_draw_once_per_clip():
    clip = _ramp_clip()
    rng = np.random.default_rng(0)
    out = T.random_crop(clip, 32, rng)
    assert out.shape == (3, 4, 32, 32)
    assert all(torch.equal(out[:, 0], out[:, i]) for i in range(4))  # same crop on every frame
    out = T.random_resized_crop(clip, 24, np.random.default_rng(3))
    assert out.shape == (3, 4, 24, 24) and out.dtype == torch.uint8
    assert all(torch.equal(out[:, 0], out[:, i]) for i in range(4))
    jit = T.color_jitter(clip, np.random.default_rng(0))
    assert jit.dtype == torch.uint8 and all(torch.equal(jit[:, 0], jit[:, i]) for i in range(4))


def test_three_crop_covers_the_long_side_and_resize():
    clip = _ramp_clip(2, 40, 60)
    crops = T.three_crop(clip, 40)
    assert [c.shape[-1] for c in crops] == [40, 40, 40]
    assert torch.equal(crops[0], clip[..., :, :40]) and torch.equal(crops[2], clip[..., :, 20:])
    r = T.resize_short_side(clip, 20)
    assert r.shape == (3, 2, 20, 30) and r.dtype == torch.uint8
    x = T.normalize(torch.full((2, 3, 1, 1, 1), 128, dtype=torch.uint8), (128, 0, 0), (1, 2, 4))
    assert x.dtype == torch.float32 and x[0, 0].item() == 0 and x[0, 1].item() == 64 and x[0, 2].item() == 32


# ---------------------------------------------------------------- annotations
def test_annotation_formats_and_bad_lines(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("walk\nrun\n")
    names = ["walk", "run"]
    lst = tmp_path / "list.txt"
    lst.write_text("a/x.mp4 1\nb/y.mp4 walk\n")
    assert read_annotations(lst, "list", names) == [("a/x.mp4", 1, -1), ("b/y.mp4", 0, -1)]
    lst.write_text("a/x.mp4 1\nb/y.mp4\n")
    with pytest.raises(AnnotationError, match=r"list.txt:2: expected 'PATH LABEL'.*missing label"):
        read_annotations(lst, "list", names)
    lst.write_text("a/x.mp4 jump\n")
    with pytest.raises(AnnotationError, match=r"list.txt:1: unknown label name 'jump'"):
        read_annotations(lst, "list", names)
    raw = tmp_path / "raw.txt"
    raw.write_text("frames/v1 120 1\n")
    assert read_annotations(raw, "mmaction_rawframes", names) == [("frames/v1", 1, 120)]
    csvf = tmp_path / "k400.csv"
    csvf.write_text("label,youtube_id,time_start,time_end,split\nrun,abc,10,20,train\n")
    assert read_annotations(csvf, "kinetics_csv", names) == [("run/abc_000010_000020.mp4", 1, -1)]
    csvf.write_text("label,youtube_id,time_start,time_end,split\nfly,abc,10,20,train\n")
    with pytest.raises(AnnotationError, match=r"k400.csv:2: unknown label name 'fly'"):
        read_annotations(csvf, "kinetics_csv", names)


# ---------------------------------------------------------------- datasets and broken videos
def _cfg(root, **kw):
    base = DataConfig(root=str(root), train_list=str(root / "train.txt"), val_list=str(root / "val.txt"),
                      test_list=str(root / "val.txt"), label_map=str(root / "labels.txt"), clip_len=4,
                      frame_interval=2, short_side=64, crop_size=56, test_crop_size=64, test_clips=3, num_workers=0)
    return replace(base, **kw)


def test_items_have_the_documented_layout(synth_dataset):
    cfg = _cfg(synth_dataset)
    train = build_dataset(cfg, "train")
    clip, label = train[0]
    assert clip.dtype == torch.uint8 and clip.shape == (3, 4, 56, 56) and 0 <= label < 4
    assert train.label_names == class_names(4)
    clip, label, index, ok = build_dataset(cfg, "val")[1]
    assert clip.shape == (3, 4, 56, 56) and index == 1 and ok
    views, label, index, ok = build_dataset(cfg, "test")[0]
    assert views.shape == (9, 3, 4, 64, 64) and ok  # 3 clips x 3 crops, clip-major


@pytest.fixture()
def broken_dataset(synth_dataset, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(synth_dataset, root)
    good = sorted((root / "videos").rglob("*.mp4"))
    (root / "zero.mp4").write_bytes(b"")
    data = good[0].read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (root / "text.mp4").write_text("this is not a video\n")
    write_mp4(root / "short.mp4", render("right_slow", (96, 80), 3, np.random.default_rng(0)))
    rel = [str(p.relative_to(root)) for p in good[:4]]
    bad = ["zero.mp4", "truncated.mp4", "text.mp4", "missing.mp4"]
    (root / "mixed.txt").write_text("".join(f"{p} 0\n" for p in rel + bad))
    (root / "withshort.txt").write_text(f"{rel[0]} 0\nshort.mp4 1\n")
    return root, bad


def test_broken_videos_are_replaced_in_training_and_reported(broken_dataset, tmp_path):
    root, bad = broken_dataset
    report = tmp_path / "bad_videos.jsonl"
    ds = build_dataset(_cfg(root, train_list=str(root / "mixed.txt")), "train", report_path=report)
    clips = [ds[i] for i in range(len(ds))]
    assert all(c.shape == (3, 4, 56, 56) for c, _ in clips)
    first = [ds[i][0] for i in range(len(ds))]
    assert all(torch.equal(a, b) for (a, _), b in zip(clips, first))  # deterministic replacement
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    reported = {p.split("/")[-1] for p in (x["path"] for x in lines)}
    assert set(bad) <= reported
    assert all(x["split"] == "train" and x["error"] for x in lines)


def test_broken_videos_in_val_come_back_not_ok(broken_dataset, tmp_path):
    root, bad = broken_dataset
    ds = build_dataset(_cfg(root, val_list=str(root / "mixed.txt")), "val", report_path=tmp_path / "r.jsonl")
    oks = [ds[i][3] for i in range(len(ds))]
    assert oks == [True] * 4 + [False] * 4
    assert ds[5][0].shape == (3, 4, 56, 56)


def test_data_check_reports_each_problem(broken_dataset):
    root, _ = broken_dataset
    rep = check_list(root / "mixed.txt", root=str(root), workers=2, clip_len=4, frame_interval=2, progress=False)
    status = {p["path"].split("/")[-1]: p["status"] for p in rep["problems"]}
    assert status == {"zero.mp4": "zero-byte", "truncated.mp4": "unreadable", "text.mp4": "unreadable",
                      "missing.mp4": "missing"}
    assert len(rep["clean_lines"]) == 4
    rep = check_list(root / "withshort.txt", root=str(root), workers=1, clip_len=4, frame_interval=2, progress=False)
    assert [p["status"] for p in rep["problems"]] == ["too-short"]
    (root / "badlines.txt").write_text("videos/x.mp4\n")
    rep = check_list(root / "badlines.txt", root=str(root), workers=1, progress=False)
    assert "missing label" in rep["bad_lines"][0]["error"]


def test_multiworker_loader_batches(synth_dataset):
    ds = build_dataset(_cfg(synth_dataset), "train")
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True, shuffle=False)
    x, y = next(iter(loader))
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 4, 56, 56) and y.shape == (4,)
