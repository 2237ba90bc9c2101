"""Annotation formats, dataset items, broken videos during training/val/test, loading."""
import json
import logging
import shutil
from dataclasses import replace

import numpy as np
import pytest

from tests.conftest import write_broken_videos
import torch

from tpn.config import DataConfig, load_config
from tpn.data import sampling
from tpn.data.datasets import AnnotationError, Batch, build_dataset, read_annotations, read_label_names
from tpn.data.loader import build_loader
from tpn.data.synthetic import class_names
from tpn.data.video import read_all_frames
from tpn.errors import TpnError


# ---------------------------------------------------------------- annotations
def test_annotation_formats_and_bad_lines(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("walk\nrun\n")
    names = read_label_names(labels)
    assert names == ["walk", "run"]
    lst = tmp_path / "list.txt"
    lst.write_text("a/x.mp4 1\n\n# comment\nb/y.mp4 walk\n")
    assert read_annotations(lst, "list", names) == [("a/x.mp4", 1, -1), ("b/y.mp4", 0, -1)]
    assert read_annotations(lst, "mmaction_video", names) == [("a/x.mp4", 1, -1), ("b/y.mp4", 0, -1)]
    lst.write_text("a/x.mp4 1\nb/y.mp4\n")
    with pytest.raises(AnnotationError, match=r"list.txt:2: expected 'PATH LABEL'.*missing label"):
        read_annotations(lst, "list", names)
    lst.write_text("a/x.mp4 0\na/x.mp4 jump\n")
    with pytest.raises(AnnotationError, match=r"list.txt:2: unknown label name 'jump'"):
        read_annotations(lst, "list", names)
    lst.write_text("a/x.mp4 7\n")
    with pytest.raises(AnnotationError, match=r"list.txt:1: label 7 out of range \(the label map has 2 classes: 0-1\)"):
        read_annotations(lst, "list", names)
    lst.write_text("a/x.mp4 -1\n")
    with pytest.raises(AnnotationError, match=r"list.txt:1: label -1 out of range \(negative\)"):
        read_annotations(lst, "list", None)
    raw = tmp_path / "raw.txt"
    raw.write_text("frames/v1 120 1\n")
    assert read_annotations(raw, "mmaction_rawframes", names) == [("frames/v1", 1, 120)]
    raw.write_text("frames/v1 1\n")
    with pytest.raises(AnnotationError, match=r"raw.txt:1: expected 'FRAME_DIR TOTAL_FRAMES LABEL'"):
        read_annotations(raw, "mmaction_rawframes", names)
    csvf = tmp_path / "k400.csv"
    csvf.write_text("label,youtube_id,time_start,time_end,split\nrun,abc,10,20,train\n")
    assert read_annotations(csvf, "kinetics_csv", names) == [("run/abc_000010_000020.mp4", 1, -1)]
    csvf.write_text("label,youtube_id,time_start,time_end,split\nrun,abc,10,20,train\nfly,abc,10,20,train\n")
    with pytest.raises(AnnotationError, match=r"k400.csv:3: unknown label name 'fly'"):
        read_annotations(csvf, "kinetics_csv", names)
    with pytest.raises(AnnotationError, match=r"nothere.txt: annotation file not found"):
        read_annotations(tmp_path / "nothere.txt", "list", names)


# ---------------------------------------------------------------- items
def _cfg(root, **kw):
    base = DataConfig(root=str(root), train_list=str(root / "train.txt"), val_list=str(root / "val.txt"),
                      test_list=str(root / "val.txt"), label_map=str(root / "labels.txt"), clip_len=4,
                      frame_interval=2, short_side=64, crop_size=56, test_crop_size=64, test_clips=3, num_workers=0)
    return replace(base, **kw)


def test_items_have_the_documented_layout_and_exact_frames(synth_dataset):
    cfg = _cfg(synth_dataset)
    train = build_dataset(cfg, "train")
    clip, label, index, ok, aug, job = train[0]
    assert index == 0 and ok and aug is None and job is None
    assert clip.dtype == torch.uint8 and clip.shape == (3, 4, 56, 56) and 0 <= label < 4
    assert train.label_names == class_names(4) and len(train) == len(train.samples) == 12
    val = build_dataset(cfg, "val")
    clip, label, index, ok, *_ = val[1]
    assert clip.shape == (3, 4, 56, 56) and index == 1 and ok and label == val.samples[1][1]
    # val = the centre clip of the video, short side 64 (80 -> 64: 96 -> 77), centre crop 56
    frames = read_all_frames(val.samples[1][0])
    idx = sampling.val_indices(len(frames), 4, 2)
    from tpn.data import transforms as T
    expect = T.center_crop(T.resize_short_side(T.to_clip(frames[idx]), 64), 56)
    assert torch.equal(clip, expect)
    views, label, index, ok, *_ = build_dataset(cfg, "test")[0]
    assert views.shape == (9, 3, 4, 64, 64) and ok  # 3 clips x 3 crops, clip-major
    full = T.resize_short_side(T.to_clip(frames if index == 1 else read_all_frames(val.samples[0][0])), 64)
    tidx = sampling.test_indices(full.shape[1], 4, 2, 3)
    for v in range(9):
        k, c = divmod(v, 3)
        assert torch.equal(views[v], T.three_crop(full[:, tidx[k]], 64)[c]), v
    one = build_dataset(_cfg(synth_dataset, test_crops=1, test_clips=2, test_crop_size=56), "test")[0][0]
    assert one.shape == (2, 3, 4, 56, 56)


def test_test_views_in_mmaction2_order_equal_its_pipeline(synth_dataset):
    """Our decoded frames through mmaction2's test pipeline (SampleFrames, Resize, ThreeCrop,
    FormatShape) give our test sample's views, rearranged by view_order(..., "mmaction2")."""
    loading = pytest.importorskip("mmaction.datasets.transforms.loading")
    proc = pytest.importorskip("mmaction.datasets.transforms.processing")
    formatting = pytest.importorskip("mmaction.datasets.transforms.formatting")
    from tpn.data import transforms as T

    ds = build_dataset(_cfg(synth_dataset), "test")  # 3 clips x 4 frames, short side 64, 3 crops of 64
    views = ds[0][0]
    frames = read_all_frames(ds.samples[0][0])
    r = loading.SampleFrames(clip_len=4, frame_interval=2, num_clips=3, test_mode=True).transform(
        dict(total_frames=len(frames), start_index=0))
    r.update(imgs=list(frames[r["frame_inds"]]), img_shape=frames.shape[1:3], original_shape=frames.shape[1:3])
    for t in (proc.Resize(scale=(-1, 64)), proc.ThreeCrop(64), formatting.FormatShape("NCTHW")):
        r = t.transform(r)
    ref = torch.from_numpy(r["imgs"])  # (crops x clips, 3, T, 64, 64)
    assert ref.shape == views.shape == (9, 3, 4, 64, 64)
    assert torch.equal(views[T.view_order(3, 3, "mmaction2")], ref)
    assert not torch.equal(views, ref)
    assert T.view_order(3, 3, "mmaction2") == [0, 3, 6, 2, 5, 8, 1, 4, 7]
    assert T.view_order(2, 1, "mmaction2") == T.view_order(2, 1) == [0, 1]


@pytest.mark.timeout(120)
def test_loader_workers_resize_after_opencv_ran_threaded_in_the_parent(synth_dataset):
    """A process that used OpenCV with its thread pool (as user code or mmaction2 may), then loads
    data: the forked workers resize without hanging (turning the pool off inside a forked worker
    deadlocks; tpn turns it off in the parent, on import)."""
    import subprocess
    import sys

    script = f"""
import cv2, numpy as np
cv2.resize(np.zeros((1080, 1920, 3), np.uint8), (455, 256))  # starts OpenCV's pool
from dataclasses import replace
from tpn.config import DataConfig, load_config
from tpn.data.datasets import build_dataset
from tpn.data.loader import build_loader
root = {str(synth_dataset)!r}
cfg = DataConfig(root=root, train_list=root + '/train.txt', val_list=root + '/val.txt', label_map=root + '/labels.txt',
                 clip_len=4, frame_interval=2, short_side=64, crop_size=56)
clips = next(iter(build_loader(build_dataset(cfg, 'val'), 4, num_workers=2, persistent_workers=False)))[0]
print(tuple(clips.shape), cv2.getNumThreads())
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=100)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["(4,", "3,", "4,", "56,", "56)", "1"]


def test_train_draws_depend_on_seed_epoch_index_only(synth_dataset):
    ds = build_dataset(_cfg(synth_dataset, train_crop="random_resized", color_jitter=True), "train", seed=3)
    a = ds[2][0]
    assert torch.equal(a, ds[2][0])
    ds.set_epoch(1)
    b = ds[2][0]
    assert not torch.equal(a, b)
    ds.set_epoch(0)
    assert torch.equal(a, ds[2][0])


def test_persistent_workers_see_set_epoch(synth_dataset):
    ds = build_dataset(_cfg(synth_dataset), "train", seed=1)
    loader = build_loader(ds, batch_size=4, num_workers=2, persistent_workers=True)
    epochs = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        x, y = next(iter(loader))[:2]
        assert x.dtype == torch.uint8 and x.shape == (4, 3, 4, 56, 56) and y.shape == (4,)
        epochs.append(x)
    assert not torch.equal(epochs[0], epochs[1])
    ds.set_epoch(1)  # same clips without workers: reproducible for any worker layout
    assert torch.equal(torch.stack([ds[i][0] for i in range(4)]), epochs[1])


# ---------------------------------------------------------------- broken videos
@pytest.fixture(scope="module")
def synth_broken_dataset(synth_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    shutil.copytree(synth_dataset, root, dirs_exist_ok=True)
    rel = write_broken_videos(root)[:4]
    bad = ["zero.mp4", "truncated.mp4", "text.mp4", "missing.mp4", "short.mp4"]
    (root / "mixed.txt").write_text("".join(f"{p} 0\n" for p in rel + bad))
    return root, bad


def test_broken_videos_are_replaced_in_training_and_reported(synth_broken_dataset, tmp_path, caplog):
    root, bad = synth_broken_dataset
    report = tmp_path / "bad_videos.jsonl"
    ds = build_dataset(_cfg(root, train_list=str(root / "mixed.txt")), "train", report_path=report)
    with caplog.at_level(logging.WARNING, logger="tpn.data"):
        clips = [ds[i] for i in range(len(ds))]
    assert all(c.shape == (3, 4, 56, 56) and c.dtype == torch.uint8 for c, *_ in clips)
    again = [ds[i][0] for i in range(len(ds))]
    assert all(torch.equal(a.clip, b) for a, b in zip(clips, again))  # deterministic replacement
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    reported = {x["path"].split("/")[-1]: x["error"] for x in lines}
    assert set(bad) <= set(reported)
    assert "too short" in reported["short.mp4"] and "zero-byte" in reported["zero.mp4"]
    assert "file not found" in reported["missing.mp4"]
    assert all(x["split"] == "train" for x in lines)
    assert sum("short.mp4" in r.getMessage() for r in caplog.records) >= 1
    # data.short_videos=loop keeps the short video (indices wrap around)
    loop = build_dataset(_cfg(root, train_list=str(root / "mixed.txt"), short_videos="loop"), "train")
    assert loop[8][0].shape == (3, 4, 56, 56)



def test_a_broken_video_is_reported_once_per_process(synth_broken_dataset, tmp_path, caplog):
    # was: one line and one warning each time it was drawn (every epoch, every replacement try)
    root, bad = synth_broken_dataset
    report = tmp_path / "bad_videos.jsonl"
    ds = build_dataset(_cfg(root, train_list=str(root / "mixed.txt")), "train", report_path=report)
    with caplog.at_level(logging.WARNING, logger="tpn.data"):
        for epoch in range(3):
            ds.set_epoch(epoch)
            for i in range(len(ds)):
                ds[i]
    paths = [json.loads(x)["path"].split("/")[-1] for x in report.read_text().splitlines()]
    assert sorted(paths) == sorted(bad)
    assert sum("zero.mp4" in r.getMessage() for r in caplog.records) == 1

def test_report_lines_from_many_workers(synth_broken_dataset, tmp_path):
    root, bad = synth_broken_dataset
    report = tmp_path / "r.jsonl"
    ds = build_dataset(_cfg(root, train_list=str(root / "mixed.txt")), "train", report_path=report)
    loader = build_loader(ds, batch_size=3, num_workers=2, persistent_workers=False)
    assert sum(len(b.label) for b in loader) == 9
    lines = [json.loads(x) for x in report.read_text().splitlines()]  # every line whole JSON
    assert {x["path"].split("/")[-1] for x in lines} >= set(bad)


def test_broken_videos_in_val_and_test_come_back_not_ok(synth_broken_dataset, tmp_path):
    root, bad = synth_broken_dataset
    report = tmp_path / "r.jsonl"
    cfg = _cfg(root, val_list=str(root / "mixed.txt"), test_list=str(root / "mixed.txt"))
    ds = build_dataset(cfg, "val", report_path=report)
    oks = [ds[i].ok for i in range(len(ds))]
    assert oks == [True] * 4 + [False] * 4 + [True]  # the short video loops in val
    clip, _, index, ok, *_ = ds[5]
    assert clip.shape == (3, 4, 56, 56) and not clip.any() and index == 5 and not ok
    views, _, _, ok, *_ = build_dataset(cfg, "test", report_path=report)[6]
    assert views.shape == (9, 3, 4, 64, 64) and not ok
    splits = [json.loads(x)["split"] for x in report.read_text().splitlines()]
    assert splits.count("val") == 4 and splits.count("test") == 1  # ds[5] was read twice, reported once


def test_batches_are_frames_last_and_equal_to_the_items(synth_broken_dataset):
    """Loader batches hold the dataset's values, laid out channels_last_3d in memory (the GPU
    model's layout), from workers (shared memory) and in-process, broken-video zeros included."""
    from tpn.engine.distributed import setup
    from tpn.engine.evaluate import make_eval_loader

    root, _ = synth_broken_dataset
    cfg = _cfg(root, test_list=str(root / "mixed.txt"))
    train = build_dataset(cfg, "train", seed=2)
    batch = next(iter(build_loader(train, batch_size=4, num_workers=2, persistent_workers=False)))
    assert isinstance(batch, Batch) and batch._fields == ("clip", "label", "index", "ok", "aug", "job")
    assert batch.clip.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(batch.clip, torch.stack([train[i].clip for i in range(4)]))
    assert batch.label.dtype == torch.int64 and batch.ok.all() and batch.aug is None
    deferred = build_dataset(replace(cfg, augment_on_device=True), "train", seed=2)
    batch = next(iter(build_loader(deferred, batch_size=4, num_workers=0)))
    assert isinstance(batch, Batch) and batch.aug.shape == (4, 7)
    assert torch.equal(batch.aug, torch.stack([deferred[i].aug for i in range(4)]))
    test = build_dataset(cfg, "test")
    for workers in (0, 2):
        batches = list(make_eval_loader(test, setup("cpu"), 3, workers))
        views = torch.cat([b.clip for b in batches])
        assert views.shape == (9, 9, 3, 4, 64, 64)
        assert all(b.clip.permute(0, 1, 3, 4, 5, 2).is_contiguous() for b in batches)  # frames-last memory
        assert torch.equal(views, torch.stack([test[i][0] for i in range(9)]))
        assert [bool(o) for b in batches for o in b.ok] == [test[i].ok for i in range(9)]
        assert [int(i) for b in batches for i in b.index] == list(range(9))


def test_rawframe_dataset_matches_video_frames(synth_dataset, tmp_path):
    from PIL import Image

    cfg = _cfg(synth_dataset)
    path, label, _ = build_dataset(cfg, "val").samples[0]
    frames = read_all_frames(path)
    folder = tmp_path / "frames" / "v0"
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"img_{i + 1:05d}.jpg", quality=100, subsampling=0)
    (tmp_path / "raw.txt").write_text(f"frames/v0 {len(frames)} {label}\nframes/none 40 0\n")
    rcfg = _cfg(tmp_path, format="mmaction_rawframes", val_list=str(tmp_path / "raw.txt"),
                label_map=str(synth_dataset / "labels.txt"))
    ds = build_dataset(rcfg, "val", report_path=tmp_path / "r.jsonl")
    clip, got_label, _, ok, *_ = ds[0]
    video_clip = build_dataset(cfg, "val")[0][0]
    assert ok and got_label == label and clip.shape == video_clip.shape
    assert (clip.float() - video_clip.float()).abs().mean() < 3  # JPEG round trip
    assert ds[1].ok is False and "frames/none" in (tmp_path / "r.jsonl").read_text()


# ---------------------------------------------------------------- clips per decode
def reference_train_clip(cfg, clip, rng):
    """One training clip as the pre-plan pipeline made it, op by op: crop geometry, then the
    flip/jitter draw, applied in the worker unless data.augment_on_device."""
    from tpn.data import transforms as T

    clip = T.apply_geometry(clip, T.draw_train_geometry(clip.shape[-2], clip.shape[-1], cfg.train_crop,
                                                        cfg.crop_size, cfg.short_side, rng), cfg.crop_size)
    aug = T.draw_augment(rng, cfg.flip, cfg.color_jitter)
    return (clip if cfg.augment_on_device else T.apply_augment(clip[None], aug[None])[0]), aug


@pytest.mark.parametrize("on_device", [False, True])
def test_clips_per_decode_takes_k_clips_from_one_read(synth_dataset, monkeypatch, on_device):
    """k clips per item, each exactly what the one-clip path makes from the same draws (starts
    drawn one after another, then each clip's crop/flip/jitter), from a single read of the video."""
    from tpn.data import decoders, transforms as T, video

    kw = dict(train_crop="random_resized", color_jitter=True, augment_on_device=on_device)
    ds = build_dataset(_cfg(synth_dataset, clips_per_decode=3, **kw), "train", seed=5)
    reads = []
    monkeypatch.setattr(decoders, "VideoReader", lambda p: reads.append(p) or video.VideoReader(p))
    item = ds[4]
    assert len(reads) == 1  # one open and one decoding pass for the three clips
    clips, labels = item.clip, item.label
    assert clips.shape == (3, 3, 4, 56, 56) and labels.tolist() == [ds.samples[4][1]] * 3
    assert item.index.tolist() == [4] * 3 and item.ok.tolist() == [True] * 3
    rng = np.random.default_rng([5, 0, 4, 0])  # (seed, epoch, index, attempt)
    frames = read_all_frames(ds.samples[4][0])
    picks = [sampling.train_indices(len(frames), 4, 2, rng) for _ in range(3)]
    assert len({tuple(p) for p in picks}) > 1  # independent starts
    for j in range(3):
        clip, aug = reference_train_clip(ds.cfg, T.to_clip(frames[picks[j]]), rng)
        assert torch.equal(clips[j], clip), j
        if on_device:
            assert torch.equal(item.aug[j], aug)
    # k = 1 (the default) is the one-clip recipe: one start, then that clip's draws
    one = build_dataset(_cfg(synth_dataset, **kw), "train", seed=5)[4]
    rng = np.random.default_rng([5, 0, 4, 0])
    clip, _ = reference_train_clip(ds.cfg, T.to_clip(frames[sampling.train_indices(len(frames), 4, 2, rng)]), rng)
    assert torch.equal(one.clip, clip) and one.label == ds.samples[4][1] and one.index == 4


def test_clips_per_decode_batches_hold_batch_size_clips(synth_dataset):
    ds = build_dataset(_cfg(synth_dataset, clips_per_decode=2), "train", seed=1)
    for workers in (0, 2):
        b = next(iter(build_loader(ds, batch_size=4, num_workers=workers, persistent_workers=False)))
        x = b.clip
        assert x.shape == (4, 3, 4, 56, 56) and x.is_contiguous(memory_format=torch.channels_last_3d)
        assert torch.equal(x, torch.cat([ds[i].clip for i in range(2)]))
        assert torch.equal(b.label, torch.cat([ds[i].label for i in range(2)]))
        assert b.index.tolist() == [0, 0, 1, 1] and b.ok.tolist() == [True] * 4 and b.aug is None
    with pytest.raises(TpnError, match="batch size 3 is not a multiple of data.clips_per_decode \\(2\\)"):
        build_loader(ds, batch_size=3, num_workers=0)
    with pytest.raises(TpnError, match="config key 'data.clips_per_decode' must be"):
        load_config("tpn_tiny_synth", ["data.clips_per_decode=0"])
    assert build_dataset(_cfg(synth_dataset, clips_per_decode=2), "val").clips_per_item == 1


def _append_lines(path, worker, n):
    from tpn.data.datasets import write_report_line
    for i in range(n):
        write_report_line(path, {"worker": worker, "i": i, "pad": "x" * (300 + 37 * worker)})


def test_bad_video_report_lines_from_concurrent_processes_never_interleave(tmp_path):
    import json
    import multiprocessing as mp
    path = tmp_path / "bad_videos.jsonl"
    procs = [mp.get_context("fork").Process(target=_append_lines, args=(path, w, 300)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    rows = [json.loads(x) for x in path.read_text().splitlines()]  # every line whole
    assert sorted((r["worker"], r["i"]) for r in rows) == [(w, i) for w in range(4) for i in range(300)]
