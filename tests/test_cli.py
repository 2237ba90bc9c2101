"""Shared command-line helpers: "AxB" values, label files, --device, long lists in one-line errors."""
import pytest

from tpn.cli import build_parser, main
from tpn.errors import listing


def error_of(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one line
    return err


def test_axb_values_are_one_line_errors(tmp_path, capsys):
    assert "--size 'big': expected WIDTHxHEIGHT, e.g. 160x128" in error_of(
        ["data", "synth", str(tmp_path / "d"), "--size", "big"], capsys)
    assert "--views '10': expected CLIPSxCROPS, e.g. 10x3" in error_of(
        ["test", "tpn_tiny_synth", "--checkpoint", str(tmp_path / "c.pth"), "--views", "10"], capsys)


def test_label_files_are_read_by_one_helper(tmp_path, capsys):
    src, dst = str(tmp_path / "src.pth"), str(tmp_path / "dst.pth")
    assert "missing.txt: label file not found (one class name per line)" in error_of(
        ["convert", src, dst, "--labels", str(tmp_path / "missing.txt")], capsys)
    (tmp_path / "empty.txt").write_text("\n \n")
    assert "empty.txt: label file is empty" in error_of(["convert", src, dst, "--labels", str(tmp_path / "empty.txt")],
                                                       capsys)
    (tmp_path / "dup.txt").write_text("a\nb\na\n")
    assert "dup.txt: duplicate class names" in error_of(["convert", src, dst, "--labels", str(tmp_path / "dup.txt")],
                                                       capsys)


def test_every_engine_command_has_the_same_device_option():
    parser = build_parser()
    for argv in (["train", "c"], ["test", "c", "--checkpoint", "x"], ["predict", "v.mp4", "--config", "c",
                                                                      "--checkpoint", "x"], ["demo"]):
        assert parser.parse_args(argv).device == "auto"
        assert parser.parse_args(argv + ["--device", "cpu"]).device == "cpu"
        with pytest.raises(SystemExit):
            parser.parse_args(argv + ["--device", "gpu"])


def test_listing_shows_the_first_items_and_counts_the_rest():
    assert listing(["a", "b"]) == "a, b"
    assert listing([str(i) for i in range(10)], limit=3) == "0, 1, 2, ... (7 more)"


def test_text_files_that_are_not_utf8_are_one_line_errors(tmp_path, capsys):
    """A config, label map or annotation list saved in another encoding (or a binary file given
    by mistake) names the file instead of ending in a UnicodeDecodeError traceback."""
    binary = b"\xff\xfe\x00model: {}\n"
    (tmp_path / "cfg.yaml").write_bytes(binary)
    assert "cfg.yaml: not a UTF-8 text file (byte 0xff at offset 0)" in error_of(
        ["train", str(tmp_path / "cfg.yaml"), "--work-dir", str(tmp_path / "w")], capsys)
    (tmp_path / "labels.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    assert "labels.txt: not a UTF-8 text file (byte 0xe9 at offset 3)" in error_of(
        ["convert", str(tmp_path / "s.pth"), str(tmp_path / "d.pth"), "--labels", str(tmp_path / "labels.txt")],
        capsys)
    (tmp_path / "list.txt").write_bytes(binary)
    assert "list.txt: not a UTF-8 text file" in error_of(
        ["data", "check", str(tmp_path / "list.txt"), "--root", str(tmp_path)], capsys)
    assert "list.txt: not a UTF-8 text file" in error_of(
        ["data", "prepare", str(tmp_path / "list.txt"), "--root", str(tmp_path), "--out", str(tmp_path / "o")],
        capsys)
