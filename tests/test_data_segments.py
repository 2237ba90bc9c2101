"""Segment (TSN/TSM) sampling, Something-Something data layouts and the flip label map."""
import numpy as np
import pytest

from tpn.data import sampling


@pytest.mark.parametrize("n", [3, 7, 8, 9, 15, 16, 17, 37, 48, 64, 100, 333])
def test_segment_indices_equal_mmaction2(n, monkeypatch):
    loading = pytest.importorskip("mmaction.datasets.transforms.loading")
    for twice in (False, True):
        ref = loading.SampleFrames(clip_len=1, frame_interval=1, num_clips=8, twice_sample=twice, test_mode=True)
        theirs = ref.transform(dict(total_frames=n, start_index=0))["frame_inds"]
        ours = sampling.segment_test_indices(n, 8, 2 if twice else 1)
        assert ours.reshape(-1).tolist() == theirs.tolist(), (n, twice)
    # train: mmaction2 draws with the global np.random.randint; give it the draws of our generator
    ref = loading.SampleFrames(clip_len=1, frame_interval=1, num_clips=8)
    for seed in range(5):
        theirs_rng = np.random.default_rng(seed)
        monkeypatch.setattr(np.random, "randint", lambda high, size: theirs_rng.integers(high, size=size))
        theirs = ref.transform(dict(total_frames=n, start_index=0))["frame_inds"]
        ours = sampling.segment_train_indices(n, 8, np.random.default_rng(seed))
        assert ours.tolist() == theirs.tolist(), (n, seed)


def test_segment_indices_exact():
    assert sampling.segment_test_indices(80, 8, 2).tolist() == [list(range(5, 80, 10)), list(range(0, 80, 10))]
    rng = np.random.default_rng(0)
    seen = np.stack([sampling.segment_train_indices(80, 8, rng) for _ in range(500)])
    assert (seen // 10 == np.arange(8)).all()  # one frame inside each segment of 10
    assert all(set(seen[:, k] % 10) == set(range(10)) for k in range(8))  # any frame of it
    assert sampling.segment_train_indices(5, 8, rng).tolist() == [0, 1, 1, 2, 2, 3, 4, 4]
    with pytest.raises(ValueError, match="1 or 2 samplings"):
        sampling.segment_test_indices(80, 8, 3)


# ---------------------------------------------------------------- Something-Something layouts
import json  # noqa: E402
from dataclasses import replace  # noqa: E402

import torch  # noqa: E402

from tpn.config import DataConfig, load_config  # noqa: E402
from tpn.errors import TpnError  # noqa: E402
from tpn.data import transforms as T  # noqa: E402
from tpn.data.datasets import AnnotationError, build_dataset  # noqa: E402
from tpn.data.synthetic import generate_dataset, render  # noqa: E402
from tpn.data.video import read_all_frames, read_rawframes  # noqa: E402


@pytest.fixture(scope="module")
def sth(tmp_path_factory):
    """4 classes x 3 videos of 24 frames in both Something-Something layouts, from the generator."""
    out = {}
    for layout in ("sthv1", "sthv2"):
        root = tmp_path_factory.mktemp(layout)
        generate_dataset(root, classes=4, videos_per_class=3, size=(80, 64), frames=24, seed=3, workers=1,
                         layout=layout, val_fraction=0.34)
        out[layout] = root
    return out


def _cfg(root, layout, **kw):
    fmt = {"sthv1": "mmaction_rawframes", "sthv2": "mmaction_video"}[layout]
    base = DataConfig(format=fmt, root=str(root), train_list=str(root / "train.txt"), val_list=str(root / "val.txt"),
                      test_list=str(root / "val.txt"), label_map=str(root / "labels.txt"), sampling="segments",
                      clip_len=8, frame_interval=1, test_clips=2, short_side=64, crop_size=56, test_crop_size=64,
                      filename_tmpl="{:05}.jpg", flip=0.0, num_workers=0)
    return replace(base, **kw)


def test_sthv1_layout_is_jpg_folders_with_frame_counts(sth):
    root = sth["sthv1"]
    first = (root / "train.txt").read_text().splitlines()[0].split()
    assert first[1:] == ["24", "0"] and (root / first[0] / "00001.jpg").is_file()
    assert not (root / first[0] / "00025.jpg").exists()
    assert first[0] == "rawframes/right_slow_0001"  # class 0, video 1 of generator seed 3
    video_seed = int(np.random.default_rng([3, 0, 1]).integers(2**31))
    video = render("right_slow", (80, 64), 24, np.random.default_rng(video_seed))
    frames = read_rawframes(root / first[0], range(24), "{:05}.jpg")
    assert frames.shape == (24, 64, 80, 3) and frames.dtype == np.uint8
    assert np.abs(frames.astype(float) - video).mean() < 3  # the rendered frames, through JPEG
    assert json.loads((root / "synth.json").read_text())["flip_label_pairs"] == [[0, 2], [1, 3]]


@pytest.mark.parametrize("layout", ["sthv1", "sthv2"])
def test_test_views_are_two_segment_samplings_by_three_crops(sth, layout):
    root = sth[layout]
    cfg = _cfg(root, layout)
    ds = build_dataset(cfg, "test")
    views, label, index, ok, *_ = ds[0]
    assert ok and views.shape == (6, 3, 8, 64, 64)  # 2 samplings x 3 crops, clip-major
    path = ds.samples[0][0]
    frames = read_rawframes(path, range(24), "{:05}.jpg") if layout == "sthv1" else read_all_frames(path)
    assert len(frames) == 24
    idx = sampling.segment_test_indices(24, 8, 2)  # centres [1, 4, ..., 22], then starts [0, 3, ..., 21]
    assert idx.tolist() == [[1, 4, 7, 10, 13, 16, 19, 22], [0, 3, 6, 9, 12, 15, 18, 21]]
    full = T.resize_short_side(T.to_clip(frames), 64)
    for k in range(2):
        crops = T.three_crop(full[:, idx[k]], 64)
        for j in range(3):
            assert torch.equal(views[3 * k + j], crops[j])
    val_clip, _, _, ok, *_ = build_dataset(cfg, "val")[0]
    assert ok and torch.equal(val_clip, T.center_crop(full[:, idx[0]], 56))  # val: the centres
    if layout == "sthv2":
        import av

        with av.open(path) as c:
            assert c.streams.video[0].codec_context.name == "vp9" and path.endswith(".webm")


def test_training_clips_take_one_frame_per_segment(sth):
    cfg = _cfg(sth["sthv1"], "sthv1", crop_size=64, train_crop="random")
    ds = build_dataset(cfg, "train")
    ds.set_epoch(0)
    clip, label, *_ = ds[1]
    frames = T.resize_short_side(T.to_clip(read_rawframes(ds.samples[1][0], range(24), "{:05}.jpg")), 64)
    rng = np.random.default_rng([0, 0, 1, 0])  # (seed, epoch, index, attempt)
    idx = sampling.segment_train_indices(24, 8, rng)
    assert ((idx // 3) == np.arange(8)).all()
    expected = T.random_crop(frames[:, idx], 64, rng)
    assert clip.shape == (3, 8, 64, 64) and torch.equal(clip, expected)


def test_flip_label_map_swaps_left_and_right_classes(sth):
    root = sth["sthv2"]
    names = (root / "labels.txt").read_text().split()
    assert names[:4] == ["right_slow", "right_fast", "left_slow", "left_fast"]
    plain = build_dataset(_cfg(root, "sthv2", crop_size=64), "train")
    flipped = build_dataset(_cfg(root, "sthv2", crop_size=64, flip=1.0, flip_label_pairs=((0, 2), (1, 3))), "train")
    no_map = build_dataset(_cfg(root, "sthv2", crop_size=64, flip=1.0), "train")
    for i, (_, label, _) in enumerate(plain.samples):
        clip, new_label, *_ = flipped[i]
        assert new_label == {0: 2, 2: 0, 1: 3, 3: 1}[label]  # a 'right' video seen mirrored moves left
        assert no_map[i][1] == label
        assert torch.equal(clip, plain[i][0].flip(-1))  # the same draw, mirrored
    on_device = build_dataset(_cfg(root, "sthv2", crop_size=64, flip=1.0, flip_label_pairs=((0, 2), (1, 3)),
                                   augment_on_device=True), "train")
    clip, label, _, _, aug, _ = on_device[0]
    assert aug[0] == 1 and label == flipped[0][1]  # the loader swaps the label, the device flips
    with pytest.raises(AnnotationError, match="label 2 appears more than once"):
        build_dataset(_cfg(root, "sthv2", flip_label_pairs=((0, 2), (2, 3))), "train")
    with pytest.raises(TpnError, match="data.test_clips must be 1 or 2 with data.sampling segments"):
        load_config("tpn_tsm_tiny_synth", ["data.test_clips=10"])  # checked once, when the config loads
