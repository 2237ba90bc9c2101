"""Data edge cases: list paths with repeated spaces, damaged packets, `tpn data check --config`, rotated videos."""
import json
import shutil

import numpy as np
import pytest
import torch

from tests.conftest import write_damaged_video, write_wide_video
from tpn.cli import main
from tpn.config import DataConfig
from tpn.data.check import check_list, decode_errors
from tpn.data.datasets import build_dataset, read_annotations
from tpn.data.synthetic import render, write_mp4
from tpn.data.video import VideoError, probe_video, read_all_frames, read_video_frames


# ---------------------------------------------------------------- list paths
def test_list_path_keeps_repeated_spaces(synth_dataset, tmp_path):
    src = sorted((synth_dataset / "videos").rglob("*.mp4"))[0]
    name = "a  b   c.mp4"  # two and three consecutive spaces
    shutil.copy(src, tmp_path / name)
    (tmp_path / "frames  dir").mkdir()
    lst = tmp_path / "list.txt"
    lst.write_text(f"{name} 1\n  {name}\t0  \n")
    assert read_annotations(lst, "list") == [(name, 1, -1), (name, 0, -1)]
    raw = tmp_path / "raw.txt"
    raw.write_text("frames  dir 120 1\n")
    assert read_annotations(raw, "mmaction_rawframes") == [("frames  dir", 1, 120)]
    cfg = DataConfig(root=str(tmp_path), test_list=str(lst), clip_len=4, frame_interval=2, short_side=64,
                     test_crop_size=64, test_clips=1, test_crops=1, num_workers=0)
    item = build_dataset(cfg, "test")[0]
    assert item.ok  # the file itself was read, not 'a b c.mp4'
    rep = check_list(lst, DataConfig(root=str(tmp_path), clip_len=4, frame_interval=2), workers=1, progress=False)
    assert rep["counts"] == {"ok": 2} and rep["clean_lines"] == [f"{name} 1", f"  {name}\t0  "]


# ---------------------------------------------------------------- damaged packets
@pytest.fixture(scope="module")
def damaged_root(synth_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    good = sorted((synth_dataset / "videos").rglob("*.mp4"))[0]
    shutil.copy(good, root / "good.mp4")
    write_damaged_video(good, root / "flipped.mp4", "flipped")
    write_damaged_video(good, root / "rejected.mp4", "rejected", packets=(20,))
    (root / "list.txt").write_text("good.mp4 0\nflipped.mp4 1\nrejected.mp4 2\n")
    return root


def test_decoder_errors_are_counted(damaged_root):
    assert decode_errors(damaged_root / "good.mp4") == (40, 0, 0)
    decoded, rejected, concealed = decode_errors(damaged_root / "flipped.mp4")
    assert decoded == 40 and rejected == 0 and concealed >= 2
    assert decode_errors(damaged_root / "rejected.mp4") == (39, 1, 0)


def test_check_reports_damaged_videos(damaged_root, tmp_path, capsys):
    rep = check_list(damaged_root / "list.txt", DataConfig(root=str(damaged_root), clip_len=4, frame_interval=2),
                     workers=1, progress=False)
    assert rep["counts"] == {"ok": 1, "damaged": 2} and rep["clean_lines"] == ["good.mp4 0"]
    flipped, rejected = rep["problems"]
    assert flipped["status"] == rejected["status"] == "damaged"
    assert "0 packets rejected" in flipped["detail"] and "40 of 40 frames decoded" in flipped["detail"]
    assert rejected["detail"] == "decoder errors: 1 packets rejected, 0 frames concealed, 39 of 40 frames decoded"
    rc = main(["data", "check", str(damaged_root / "list.txt"), "--root", str(damaged_root), "--workers", "1",
               "--report", str(tmp_path / "r.json")])
    assert rc == 1 and "damaged    2" in capsys.readouterr().out


def test_training_keeps_concealed_damage_and_replaces_clips_that_fail(damaged_root, tmp_path):
    """The policy docs/data.md states: a clip decoded with concealed errors is kept; a clip whose
    decode raised is replaced (train) or scored as missing (val/test), and reported."""
    lst = damaged_root / "list.txt"
    cfg = DataConfig(root=str(damaged_root), train_list=str(lst), val_list=str(lst), clip_len=4, frame_interval=8,
                     short_side=64, crop_size=56, num_workers=0, short_videos="loop")
    report = tmp_path / "bad.jsonl"
    train = build_dataset(cfg, "train", report_path=report)
    assert train[1].index == 1 and train[1].ok and not report.exists()  # flipped: concealed, kept
    for epoch in range(3):  # every training clip spans frames >= 24: it decodes through packet 20
        train.set_epoch(epoch)
        assert train[2].index != 2 and train[2].ok
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    # replaced in each of the 3 epochs, reported once (per process)
    assert len(lines) == 1 and {x["path"] for x in lines} == {str(damaged_root / "rejected.mp4")}
    assert "decoding failed" in lines[0]["error"]
    val = build_dataset(cfg, "val", report_path=report)
    assert val[1].ok and not val[2].ok


# ---------------------------------------------------------------- check --config
def test_check_takes_the_geometry_from_the_config(tmp_path, monkeypatch, capsys):
    """`tpn data synth` with its default frames and size, then `tpn data check --config
    tpn_tiny_synth` (root and lists data/synth/...): every video passes; the default geometry
    (8x8: 57 frames) and a config asking for more frames than the videos have flag them."""
    monkeypatch.chdir(tmp_path)
    assert main(["data", "synth", "data/synth", "--classes", "2", "--videos-per-class", "2", "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["data", "check", "--config", "tpn_tiny_synth", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "data/synth/train.txt: 2 lines, 2 readable" in out and "at least 29 frames" in out
    assert main(["data", "check", "--config", "tpn_tiny_synth", "--split", "val", "--workers", "1"]) == 0
    assert "data/synth/val.txt: 2 lines, 2 readable" in capsys.readouterr().out
    assert main(["data", "check", "data/synth/train.txt", "--root", "data/synth", "--workers", "1"]) == 1
    assert "too-short  2" in capsys.readouterr().out  # 48 frames < 57
    wide = ["--config", "tpn_tiny_synth", "--set", "data.frame_interval=8", "--workers", "1"]
    assert main(["data", "check", *wide]) == 1
    assert "48 frames < one clip (57)" in capsys.readouterr().out
    assert main(["data", "check", *wide, "--set", "data.short_videos=loop"]) == 0  # training loops them
    assert main(["data", "check", *wide, "--split", "test"]) == 0  # test always loops


def test_check_flags_that_conflict_with_a_config_are_one_line_errors(capsys):
    assert main(["data", "check", "--config", "tpn_tiny_synth", "--root", "x"]) == 2
    assert capsys.readouterr().err.strip() == ("tpn: error: --root conflicts with --config: the config's data.root is "
                                               "what training reads (change it there or with --set data.root=...)")
    assert main(["data", "check", "list.txt", "--clip-len", "4"]) == 2
    assert "--clip-len: the clip geometry comes from a config" in capsys.readouterr().err
    assert main(["data", "check"]) == 2
    assert "no list to check" in capsys.readouterr().err


def test_check_reads_raw_frames_and_segments_from_a_tsm_config(tmp_path, monkeypatch, capsys):
    """Something-Something V1 layout (`{:05}.jpg` frame folders) with segment sampling: 8
    segments need 8 frames; the config's file-name template finds the frames."""
    monkeypatch.chdir(tmp_path)
    assert main(["data", "synth", "data/synth_sthv1", "--layout", "sthv1", "--classes", "4", "--videos-per-class",
                 "2", "--size", "48x32", "--frames", "12", "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["data", "check", "--config", "tpn_tsm_tiny_synth", "--workers", "1"]) == 0
    assert "4 lines, 4 readable" in capsys.readouterr().out
    assert main(["data", "check", "--config", "tpn_tsm_tiny_synth", "--set", "data.clip_len=16", "--workers", "1"]) == 1
    assert "12 frames < one clip (16)" in capsys.readouterr().out
    assert main(["data", "check", "--config", "tpn_tsm_tiny_synth", "--set", "data.filename_tmpl=img_{:05d}.jpg",
                 "--workers", "1"]) == 1
    assert "frame file not found" in capsys.readouterr().out  # as training would find it


# ---------------------------------------------------------------- display rotation
@pytest.fixture(scope="module")
def rotated_videos(tmp_path_factory):
    """The same 96x64 frames written plain and with a display matrix of 90, 180 and 270 degrees,
    each also mirrored (`rot90h.mp4`: turned, then mirrored left-right; `v`: upside down), and one
    turned 45 degrees (x264 ultrafast is deterministic: the coded pictures are identical, only the
    matrix differs)."""
    root = tmp_path_factory.mktemp("rotated")
    frames = render("right_slow", (96, 64), 20, np.random.default_rng(0))
    for deg in (0, 90, 180, 270):
        write_mp4(root / f"rot{deg}.mp4", frames, gop=8, rotation=deg)
        write_mp4(root / f"rot{deg}h.mp4", frames, gop=8, rotation=deg, hflip=True)
        write_mp4(root / f"rot{deg}v.mp4", frames, gop=8, rotation=deg, vflip=True)
    write_mp4(root / "rot45.mp4", frames, gop=8, rotation=45)
    return root


@pytest.mark.parametrize("deg", [90, 180, 270])
def test_rotated_video_frames_come_out_as_a_player_shows_them(rotated_videos, deg):
    plain = read_all_frames(rotated_videos / "rot0.mp4")
    assert plain.shape == (20, 64, 96, 3)
    expect = np.rot90(plain, deg // 90, axes=(1, 2))  # counter-clockwise
    path = rotated_videos / f"rot{deg}.mp4"
    assert np.array_equal(read_all_frames(path), expect)
    idx = [17, 3, 9, 9, 0]
    assert np.array_equal(read_video_frames(path, idx), expect[idx])  # the seeking reader
    info = probe_video(path)
    assert (info.width, info.height) == ((64, 96) if deg in (90, 270) else (96, 64))
    cv2 = pytest.importorskip("cv2")  # OpenCV turns frames by the display matrix, as players do
    cap = cv2.VideoCapture(str(path))
    ok, first = cap.read()
    cap.release()
    assert ok and np.array_equal(first[..., ::-1], expect[0])


def test_rotated_video_geometry_in_the_dataset_and_prepare(rotated_videos, tmp_path):
    from tpn.data import transforms as T
    from tpn.data.prepare import reencode

    (rotated_videos / "list.txt").write_text("rot0.mp4 0\nrot90.mp4 1\n")
    cfg = DataConfig(root=str(rotated_videos), val_list=str(rotated_videos / "list.txt"), clip_len=4,
                     frame_interval=2, short_side=48, crop_size=40, num_workers=0)
    val = build_dataset(cfg, "val")
    idx = [6, 8, 10, 12]  # centre clip of 20 frames
    portrait = np.rot90(read_all_frames(rotated_videos / "rot0.mp4")[idx], 1, axes=(1, 2))
    resized = T.resize_short_side(T.to_clip(portrait), 48)
    assert resized.shape[-2:] == (72, 48)  # short side 48 across, the long side up
    assert torch.equal(val[1].clip, T.frames_last(T.center_crop(resized, 40)))
    assert reencode(rotated_videos / "rot90.mp4", tmp_path / "p.mp4", short_side=64, gop=2) == 20
    out = read_all_frames(tmp_path / "p.mp4")
    assert out.shape == (20, 96, 64, 3)  # the copy keeps the display matrix: still portrait
    plain = read_all_frames(rotated_videos / "rot0.mp4")

    def error(k):  # mean difference to the source turned k quarter turns
        return np.abs(out.astype(float) - np.rot90(plain, k, axes=(1, 2))).mean()

    assert error(1) < 8 < 16 < error(3), (error(1), error(3))  # re-encoded (crf 23), turned the right way


# FFmpeg's player turns and flips a frame by its display matrix through these filters (fftools
# ffmpeg_filter.c, autorotate): the display of each turned-and-mirrored matrix
PLAYER_FILTERS = {(0, "h"): "hflip", (0, "v"): "vflip", (90, "h"): "transpose=clock_flip",
                  (90, "v"): "transpose=cclock_flip", (180, "h"): "vflip", (180, "v"): "hflip",
                  (270, "h"): "transpose=cclock_flip", (270, "v"): "transpose=clock_flip"}


def through_filter(path, spec: str) -> np.ndarray:
    """Every frame of `path` (its display matrix not applied) through the FFmpeg filter `spec`."""
    import av

    name, _, arg = spec.partition("=")
    out = []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        graph = av.filter.Graph()
        chain = [graph.add_buffer(template=stream), graph.add(name, arg or None), graph.add("buffersink")]
        chain[0].link_to(chain[1])
        chain[1].link_to(chain[2])
        graph.configure()
        for frame in c.decode(stream):
            graph.push(frame)
            out.append(graph.pull().to_ndarray(format="rgb24"))
    return np.stack(out)


@pytest.mark.parametrize("deg,mirror", sorted(PLAYER_FILTERS))
def test_mirrored_video_frames_come_out_as_a_player_shows_them(rotated_videos, deg, mirror):
    """A display matrix with a mirror is applied whole (it came out as a half turn: left/right
    motion reversed); the frames are FFmpeg's player's, pixel for pixel."""
    plain = read_all_frames(rotated_videos / "rot0.mp4")
    turned = np.rot90(plain, deg // 90, axes=(1, 2))
    expect = turned[:, :, ::-1] if mirror == "h" else turned[:, ::-1]  # turned, then mirrored
    assert np.array_equal(through_filter(rotated_videos / "rot0.mp4", PLAYER_FILTERS[deg, mirror]), expect)
    assert not np.array_equal(expect, np.rot90(turned, 2, axes=(1, 2)))  # a mirror is no half turn
    path = rotated_videos / f"rot{deg}{mirror}.mp4"
    assert np.array_equal(read_all_frames(path), expect)
    idx = [17, 3, 9, 9, 0]
    assert np.array_equal(read_video_frames(path, idx), expect[idx])  # the seeking reader
    info = probe_video(path)
    assert (info.width, info.height) == ((64, 96) if deg in (90, 270) else (96, 64))
    if deg == 0:
        from tpn.data import nvdec

        assert nvdec.demux(rotated_videos / "rot0.mp4") is not None
        assert nvdec.demux(path) is None  # the GPU path leaves a video with a display matrix to the CPU


def test_other_display_matrices_are_refused_and_prepare_keeps_a_mirror(rotated_videos, tmp_path):
    from tpn.data.prepare import reencode

    with pytest.raises(VideoError, match=r"rot45.mp4: display matrix .* is not a turn by a multiple of 90 degrees"):
        read_video_frames(rotated_videos / "rot45.mp4", [0])
    assert reencode(rotated_videos / "rot0h.mp4", tmp_path / "p.mp4", short_side=64, gop=2) == 20
    out = read_all_frames(tmp_path / "p.mp4").astype(float)
    plain = read_all_frames(rotated_videos / "rot0.mp4")
    mirrored, half_turn = plain[:, :, ::-1], np.rot90(plain, 2, axes=(1, 2))
    assert np.abs(out - mirrored).mean() < 8 < 16 < np.abs(out - half_turn).mean()  # re-encoded, still mirrored


# ---------------------------------------------------------------- text a list or label file may hold
def test_byte_order_marks_and_non_ascii_digits_in_lists(synth_dataset, tmp_path):
    """A UTF-8 BOM (Windows editors write one) is not part of the first path, class name, CSV
    column or config key; a label that str.isdigit takes but is not ASCII digits ('²' made int()
    raise ValueError, '١' was read as 1) is a class name: one line without a label map."""
    from tpn.config import load_config
    from tpn.data.datasets import AnnotationError, read_label_names

    bom = "\ufeff".encode()
    (tmp_path / "labels.txt").write_bytes(bom + "walk\nrun\n²\n".encode())
    assert read_label_names(tmp_path / "labels.txt") == ["walk", "run", "²"]
    (tmp_path / "list.txt").write_bytes(bom + b"a.mp4 1\nb.mp4 run\n")
    assert read_annotations(tmp_path / "list.txt", "list", ["walk", "run"]) == [("a.mp4", 1, -1), ("b.mp4", 1, -1)]
    (tmp_path / "k.csv").write_bytes(bom + b"label,youtube_id,time_start,time_end,split\nrun,abc,1,11,val\n")
    kinetics = read_annotations(tmp_path / "k.csv", "kinetics_csv", ["walk", "run"])
    assert kinetics == [("run/abc_000001_000011.mp4", 1, -1)]
    (tmp_path / "c.yaml").write_bytes(bom + b"train: {epochs: 3}\n")
    assert load_config(tmp_path / "c.yaml").train.epochs == 3
    for label in ("²", "١"):
        (tmp_path / "odd.txt").write_text(f"a.mp4 0\nb.mp4 {label}\n")
        with pytest.raises(AnnotationError, match=rf"odd.txt:2: label '{label}' is not an integer and no label map"):
            read_annotations(tmp_path / "odd.txt", "list")
    (tmp_path / "odd.txt").write_text("a.mp4 ²\n")
    assert read_annotations(tmp_path / "odd.txt", "list", ["walk", "run", "²"]) == [("a.mp4", 2, -1)]
    (tmp_path / "raw.txt").write_text("frames ² 1\n")
    with pytest.raises(AnnotationError, match=r"raw.txt:1: expected 'FRAME_DIR TOTAL_FRAMES LABEL'"):
        read_annotations(tmp_path / "raw.txt", "mmaction_rawframes")


# ---------------------------------------------------------------- frames too large to hold
@pytest.fixture(scope="module")
def huge_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("huge") / "wide.mp4"
    write_wide_video(path)
    return path


def test_videos_declaring_frames_too_large_are_unreadable_not_fatal(huge_video, synth_dataset, tmp_path):
    """The header's size is checked before decoding, as it is and after the short-side resize,
    against data.max_frame_pixels: such a video is reported and scored as missing (it took the
    whole `tpn test` down with a 15 GiB allocation error); the other videos are read."""
    good = sorted((synth_dataset / "videos").rglob("*.mp4"))[0]
    (tmp_path / "list.txt").write_text(f"{huge_video} 0\n{good} 1\n")
    report = tmp_path / "bad.jsonl"
    cfg = DataConfig(test_list=str(tmp_path / "list.txt"), clip_len=1, test_clips=1, short_side=256,
                     test_crop_size=256, num_workers=0)  # one frame: the old code's resize took 201 MB
    test = build_dataset(cfg, "test", report_path=report)
    assert not test[0].ok and test[1].ok
    assert json.loads(report.read_text())["error"] == (
        f"{huge_video}: frames of 16384x16 resized to short side 256 would be 262144x256 (67,108,864 pixels), "
        f"above data.max_frame_pixels (16,777,216)")
    native = {**cfg.__dict__, "short_side": 80, "test_crop_size": 80}  # 96x80 frames as they are: 7,680 pixels
    with pytest.raises(VideoError, match=r"frames of 96x80 \(7,680 pixels\) exceed data.max_frame_pixels \(7,000\)"):
        build_dataset(DataConfig(**{**native, "max_frame_pixels": 7000}), "test").eval_clip(1)
    assert build_dataset(DataConfig(**{**native, "max_frame_pixels": 7680}), "test")[1].ok


def test_data_check_applies_the_frame_size_limit(huge_video, synth_dataset, tmp_path):
    """`tpn data check` finds the videos training would refuse for their frame size, before decoding."""
    from tpn.data.check import check_list

    good = sorted((synth_dataset / "videos").rglob("*.mp4"))[0]
    (tmp_path / "list.txt").write_text(f"{huge_video} 0\n{good} 1\n")
    cfg = DataConfig(clip_len=1, test_clips=1, short_side=256, test_crop_size=256)
    report = check_list(tmp_path / "list.txt", cfg, "test", workers=1, progress=False)
    assert report["counts"] == {"unreadable": 1, "ok": 1}
    assert report["problems"][0]["path"] == str(huge_video)
    assert "resized to short side 256 would be 262144x256" in report["problems"][0]["detail"]
