"""`tpn data check` and `tpn data synth` through the library and the CLI."""
import json
import shutil

import pytest

from tests.conftest import write_broken_videos

from tpn.cli import main
from tpn.config import DataConfig
from tpn.data.check import check_list


@pytest.fixture(scope="module")
def synth_check_root(synth_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("check")
    shutil.copytree(synth_dataset, root, dirs_exist_ok=True)
    rel = write_broken_videos(root)[:3]
    lines = [f"{p} 0" for p in rel] + ["zero.mp4 1", "truncated.mp4 1", "text.mp4 2", "missing.mp4 2", "short.mp4 3",
                                       "videos/nolabel.mp4", f"{rel[0]} jump"]
    (root / "mixed.txt").write_text("\n".join(lines) + "\n")
    return root


def test_check_reports_each_problem(synth_check_root):
    root = synth_check_root
    data = DataConfig(root=str(root), label_map=str(root / "labels.txt"), clip_len=4, frame_interval=2)
    rep = check_list(root / "mixed.txt", data, workers=2, progress=False)
    status = {p["path"].split("/")[-1]: p["status"] for p in rep["problems"]}
    assert status == {"zero.mp4": "zero-byte", "truncated.mp4": "unreadable", "text.mp4": "unreadable",
                      "missing.mp4": "missing", "short.mp4": "too-short"}
    assert [p["line"] for p in rep["problems"]] == [4, 5, 6, 7, 8]
    assert [b["line"] for b in rep["bad_lines"]] == [9, 10]
    assert "missing label" in rep["bad_lines"][0]["error"]
    assert "unknown label name 'jump'" in rep["bad_lines"][1]["error"]
    assert len(rep["clean_lines"]) == 3 and rep["counts"]["ok"] == 3


def test_check_cli_writes_json_summary_and_clean_list(synth_check_root, tmp_path, capsys):
    root = synth_check_root
    clean, js = tmp_path / "clean.txt", tmp_path / "report.json"
    rc = main(["data", "check", str(root / "mixed.txt"), "--root", str(root), "--label-map", str(root / "labels.txt"),
               "--workers", "2", "--set", "data.clip_len=4", "--set", "data.frame_interval=2", "--report", str(js),
               "--write-clean", str(clean)])
    out = capsys.readouterr().out
    assert rc == 1  # problems found
    assert "3 readable" in out and "zero-byte" in out and "too-short" in out and "bad line 9" in out
    assert len(out.splitlines()) < 25  # one screen
    report = json.loads(js.read_text())
    assert len(report["problems"]) == 5 and len(report["bad_lines"]) == 2
    assert len(clean.read_text().splitlines()) == 3
    rc = main(["data", "check", str(clean), "--root", str(root), "--workers", "1", "--set", "data.clip_len=4",
               "--set", "data.frame_interval=2", "--report", str(tmp_path / "r2.json")])
    assert rc == 0
    assert main(["data", "check", str(tmp_path / "none.txt"), "--root", str(root)]) == 2
    assert "none.txt: annotation file not found" in capsys.readouterr().err


def test_synth_cli_is_reproducible(tmp_path, capsys):
    args = ["--classes", "4", "--videos-per-class", "2", "--size", "48x32", "--frames", "20", "--seed", "7"]
    assert main(["data", "synth", str(tmp_path / "a")] + args) == 0
    assert main(["data", "synth", str(tmp_path / "b")] + args + ["--workers", "1"]) == 0
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "labels.txt").read_text().split() == ["right_slow", "right_fast", "left_slow", "left_fast"]
    for name in ("train.txt", "val.txt"):
        assert (a / name).read_text() == (b / name).read_text()
    for line in (a / "train.txt").read_text().splitlines():
        rel, label = line.split()
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert main(["data", "synth", str(tmp_path / "c"), "--size", "48"]) == 2


def test_check_kinetics_csv(synth_dataset, tmp_path):
    import shutil

    names = (synth_dataset / "labels.txt").read_text().split()
    src = sorted((synth_dataset / "videos" / names[1]).glob("*.mp4"))[0]
    (tmp_path / names[1]).mkdir()
    shutil.copy(src, tmp_path / names[1] / "abc_000010_000020.mp4")
    csvf = tmp_path / "k.csv"
    csvf.write_text("label,youtube_id,time_start,time_end,split\n"
                    f"{names[1]},abc,10,20,train\n{names[1]},gone,0,10,train\n"
                    f"fly,xyz,0,10,train\n{names[0]},q,a,b,train\n")
    data = DataConfig(root=str(tmp_path), format="kinetics_csv", label_map=str(synth_dataset / "labels.txt"),
                      clip_len=4, frame_interval=2)
    rep = check_list(csvf, data, workers=1, progress=False)
    assert rep["counts"] == {"ok": 1, "missing": 1}
    assert [(b["line"], "unknown label name 'fly'" in b["error"] or "must be numbers" in b["error"])
            for b in rep["bad_lines"]] == [(4, True), (5, True)]
    assert rep["clean_lines"] == ["label,youtube_id,time_start,time_end,split", f"{names[1]},abc,10,20,train"]
