"""Inputs that used to lose data or end in a traceback: `data prepare` into its own originals,
a class folder named `#...`, out-of-range arguments, a folder the system refuses, `--device cuda`
without a GPU, a Kinetics CSV with infinite times, `data synth` over an existing dataset."""
import hashlib

import pytest
import torch

from tpn.cli import main
from tpn.data.datasets import AnnotationError, read_annotations
from tpn.engine.evaluate import parse_views
from tpn.engine.timeline import stride_frames
from tpn.errors import TpnError

SYNTH = ["--classes", "2", "--videos-per-class", "2", "--frames", "8", "--size", "32x32", "--workers", "1"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "d"
    assert main(["data", "synth", str(root)] + SYNTH) == 0
    return root


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tpn: error: "), err
    return err[0]


def digest(folder) -> str:
    return hashlib.sha1(b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())).hexdigest()


def test_prepare_never_writes_over_its_originals(synth, capsys):
    before = digest(synth)
    for out in (synth, synth / "videos" / ".."):
        assert main(["data", "prepare", str(synth / "train.txt"), "--root", str(synth), "--out", str(out)]) == 2
        assert "the folder of the originals" in one_error_line(capsys)
    assert digest(synth) == before
    for flag, value in (("--gop", "0"), ("--short-side", "7"), ("--crf", "99")):
        assert main(["data", "prepare", str(synth / "train.txt"), "--root", str(synth), "--out",
                     str(synth.parent / "p"), flag, value]) == 2
        assert f"{flag} {value}: must lie in" in one_error_line(capsys)
    assert not (synth.parent / "p").exists()


def test_a_class_folder_named_like_a_comment_keeps_its_videos(synth, tmp_path, capsys):
    videos = sorted(synth.rglob("*.mp4"))[:4]
    for i, cls in enumerate(("#1 tag", "plain")):
        (tmp_path / "v" / cls).mkdir(parents=True)
        for v in videos[2 * i:2 * i + 2]:
            (tmp_path / "v" / cls / v.name).write_bytes(v.read_bytes())
    assert main(["data", "lists", str(tmp_path / "v"), "--val-fraction", "0"]) == 0
    rows = read_annotations(tmp_path / "v" / "train.txt", "list")
    assert sorted(label for _, label, _ in rows) == [0, 0, 1, 1]
    assert all((tmp_path / "v" / rel).is_file() for rel, _, _ in rows)


def test_a_folder_the_system_refuses_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["data", "synth", str(tmp_path / "afile" / "d")] + SYNTH) == 2
    line = one_error_line(capsys)
    assert str(tmp_path / "afile") in line and "Not a directory" in line


def test_synth_does_not_write_over_a_dataset_unasked(synth, capsys):
    before = (synth / "train.txt").read_text()
    assert main(["data", "synth", str(synth)] + SYNTH + ["--seed", "3"]) == 2
    assert "pass --overwrite" in one_error_line(capsys) and (synth / "train.txt").read_text() == before


def test_argument_bounds_are_one_line_errors():
    for views in ("1000x3", "0x3", ""):
        with pytest.raises(TpnError, match="--views"):
            parse_views(views)
    for stride in (float("inf"), float("nan"), 0.0, -1.0):
        with pytest.raises(TpnError, match="--stride"):
            stride_frames(stride, 30.0, 64)
    assert stride_frames(1.0, 30.0, 64) == 30


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_one_line():
    from tpn.engine.distributed import setup

    with pytest.raises(TpnError, match="--device cuda: no CUDA GPU"):
        setup("cuda")


def test_kinetics_csv_with_infinite_times_is_a_line_error(tmp_path):
    csvf = tmp_path / "k.csv"
    csvf.write_text("label,youtube_id,time_start,time_end,split\nrun,abc,inf,20,train\n")
    with pytest.raises(AnnotationError, match=r"k.csv:2: time_start/time_end must be numbers \(finite\)"):
        read_annotations(csvf, "kinetics_csv", ["run"])


def test_export_info_and_convert_arguments_are_checked(tmp_path, capsys):
    import tpn.convert.weights as W
    from tpn.checkpoint import CheckpointError
    from tpn.config import load_config
    from tpn.models.build import build_model

    for args in (["--size", "0"], ["--size", "100000"], ["--frames", "-1"]):
        assert main(["info", "tpn_tiny_synth", *args]) == 2
        assert f"{args[0]} {args[1]}: must be" in one_error_line(capsys)
    torch.save({"state_dict": build_model(load_config("tpn_tiny_synth")).state_dict()}, tmp_path / "w.pth")
    classes = load_config("tpn_tiny_synth").model.head.num_classes
    with pytest.raises(CheckpointError, match=f"--labels: {classes + 1} class names for a model of {classes}"):
        W.convert_checkpoint(tmp_path / "w.pth", tmp_path / "out.pth", "tpn_tiny_synth",
                             label_names=[f"c{i}" for i in range(classes + 1)])
    assert not (tmp_path / "out.pth").exists()


def test_a_data_root_that_is_not_a_folder_is_named(synth, tmp_path):
    from tpn.config import load_config
    from tpn.data.datasets import VideoDataset

    cfg = load_config("tpn_tiny_synth", [f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(AnnotationError, match="data.root .*nowhere: not a folder"):
        VideoDataset(cfg.data, "train", read_annotations(synth / "train.txt", "list"), None)
    assert len(VideoDataset(cfg.data, "train", [(str(p), 0, -1) for p in synth.rglob("*.mp4")], None)) == 4


def test_a_blank_line_inside_a_label_map_is_refused_trailing_ones_are_not(tmp_path):
    from tpn.data.datasets import read_label_names

    (tmp_path / "l.txt").write_text("run\njump\n\n\n")
    assert read_label_names(tmp_path / "l.txt") == ["run", "jump"]
    (tmp_path / "l.txt").write_text("run\n\njump\n")
    with pytest.raises(AnnotationError, match=r"l.txt:2: blank line inside the label map"):
        read_label_names(tmp_path / "l.txt")


def test_reports_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A full disk while a report is written (predictions, metrics, timelines, check and prepare
    reports) leaves the earlier file as it was and no empty or temporary file."""
    import errno
    import os

    from tpn.errors import csv_text, write_text_atomic

    write_text_atomic(tmp_path / "p.csv", csv_text([["a", "b"], [1, "x,y"]]))
    assert (tmp_path / "p.csv").read_bytes() == b'a,b\r\n1,"x,y"\r\n'

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        write_text_atomic(tmp_path / "p.csv", "new")
    assert (tmp_path / "p.csv").read_bytes() == b'a,b\r\n1,"x,y"\r\n' and os.listdir(tmp_path) == ["p.csv"]


def test_a_folder_given_as_a_video_is_called_a_folder(tmp_path):
    from tpn.data.video import VideoError, VideoReader

    with pytest.raises(VideoError, match="a folder, not a video file"):
        VideoReader(tmp_path)
    with pytest.raises(VideoError, match="file not found"):
        VideoReader(tmp_path / "nothere.mp4")


def test_data_check_refuses_a_report_it_could_not_write_before_scanning(synth, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["data", "check", str(synth / "train.txt"), "--root", str(synth),
                 "--report", str(tmp_path / "afile" / "r.json")]) == 2
    line = one_error_line(capsys)
    assert "--report" in line and "a file is there" in line
