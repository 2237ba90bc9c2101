"""`tpn test` numbers against a hand-computed view average, `tpn predict`, and one-line user errors."""
import json
import re

import numpy as np
import pytest
import torch

from tests.test_engine_common import TINY, cli, data_overrides, sets, tempo_data, tiny_cfg  # noqa: F401
from tpn.config import load_config


def test_test_numbers_match_a_hand_computed_average(tempo_data, tmp_path):  # noqa: F811
    from tpn.checkpoint import save_atomic
    from tpn.data.datasets import build_dataset
    from tpn.engine.evaluate import run_test
    from tpn.models.build import build_model

    cfg = tiny_cfg(tempo_data, ["data.num_workers=0", "test.batch_size=3"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for m in model.modules():  # make the toy model's predictions differ between videos
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.normal_(0, 0.1)
    ckpt = tmp_path / "toy.pth"
    save_atomic({"format": "tpn", "state_dict": model.state_dict()}, ckpt)
    r = run_test(cfg, ckpt, tmp_path / "test", views="2x3", device="cpu", progress=False, view_scores="mmaction2")
    ds = build_dataset(cfg.data, "test")
    probs, labels, per_view = [], [], []
    mean, std = torch.tensor(cfg.data.mean).view(3, 1, 1, 1), torch.tensor(cfg.data.std).view(3, 1, 1, 1)
    with torch.no_grad():
        for i in range(len(ds)):
            views, label, _, ok, *_ = ds[i]
            assert views.shape == (6, 3, 4, 48, 48) and ok  # 2 clips x 3 crops of 48 px
            p = torch.stack([torch.softmax(model(((v.float() - mean) / std)[None]), -1)[0] for v in views])
            per_view.append(p.numpy())
            probs.append(p.mean(0).numpy())
            labels.append(label)
    probs, labels = np.stack(probs), np.array(labels)
    m = r["metrics"]
    assert m["videos"] == len(ds) == 8
    assert m["top1"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
    top5 = (np.argsort(-probs, 1)[:, :4] == labels[:, None]).any(1).mean()  # 4 classes: top-5 is top-4
    assert m["top5"] == pytest.approx(float(top5))
    per_class = [float((probs.argmax(1)[labels == c] == c).mean()) for c in range(4)]
    assert m["mean_class_accuracy"] == pytest.approx(np.mean(per_class))
    import csv

    rows = list(csv.DictReader((tmp_path / "test" / "predictions.csv").open()))
    assert np.allclose([float(row["score"]) for row in rows], probs.max(1), atol=1e-4)
    assert [row["correct"] for row in rows] == [str(int(c)) for c in probs.argmax(1) == labels]
    assert (tmp_path / "test" / "confusion_matrix.png").stat().st_size > 1000
    per_video = json.loads((tmp_path / "test" / "predictions.json").read_text())
    assert [v["index"] for v in per_video] == list(range(8)) and len(per_video[0]["top5"]) == 4
    assert np.allclose([v["top5"][0]["score"] for v in per_video], probs.max(1), atol=1e-4)
    saved = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert saved["videos"] == 8 and set(saved["per_class_accuracy"]) == set(ds.label_names)
    # per-view scores in mmaction2's view order (crop-major: left, right, middle); averages unchanged
    views = np.load(tmp_path / "test" / "view_scores.npy")
    assert views.shape == (8, 6, 4) and r["paths"]["view_scores"].endswith("view_scores.npy")
    assert np.allclose(views, np.stack(per_view)[:, [0, 3, 2, 5, 1, 4]], atol=1e-5)
    assert np.allclose(views.mean(1), probs, atol=1e-5)
    plain = run_test(cfg, ckpt, tmp_path / "plain", views="2x3", device="cpu", progress=False)
    assert "view_scores" not in plain["paths"] and plain["metrics"] == m
    assert (tmp_path / "plain" / "predictions.json").read_text() == json.dumps(per_video, indent=1)
    # the most confused pairs (true, predicted) by hand, and the command's line with a readable rate
    conf = np.zeros((4, 4), int)
    np.add.at(conf, (labels, probs.argmax(1)), 1)
    pairs = sorted(((-conf[t, p], t, p) for t in range(4) for p in range(4) if t != p and conf[t, p]))
    assert [(q["true"], q["predicted"], q["videos"]) for q in saved["most_confused"]] == [
        (ds.label_names[t], ds.label_names[p], -n) for n, t, p in pairs]
    out = cli("test", "tpn_tiny_synth", "--checkpoint", str(ckpt), "--work-dir", str(tmp_path / "cli"), "--views",
              "2x3", "--device", "cpu", *sets(TINY + data_overrides(tempo_data) + ["data.num_workers=0"]))
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"\(8 videos in \d+\.\d s, \d[\d.]* videos/s\)", out.stdout), out.stdout


def test_user_errors_are_one_line(tempo_data, tmp_path):  # noqa: F811
    def one_line_error(r, text):
        assert r.returncode == 2, r.stderr[-1000:]
        assert r.stderr.strip().count("\n") == 0 and text in r.stderr, r.stderr

    one_line_error(cli("train", "tpn_tiny_synth", "--set", "train.epoch=3"), "unknown config key 'train.epoch'")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: fast\n")
    one_line_error(cli("train", str(bad)), "config key 'train.lr' must be a number")
    one_line_error(cli("test", "tpn_tiny_synth", "--checkpoint", str(tmp_path / "nope.pth"),
                       *sets(data_overrides(tempo_data))), "nope.pth: checkpoint file not found")
    one_line_error(cli("train", "tpn_tiny_synth", "--work-dir", str(tmp_path / "w"), "--resume",
                       str(tmp_path / "nope.pth")), "nope.pth: checkpoint file not found")
    from tpn.models.build import build_model

    other = build_model(load_config("tpn_tiny_synth", ["model.head.num_classes=7"]))
    torch.save({"format": "tpn", "state_dict": other.state_dict()}, tmp_path / "other.pth")
    one_line_error(cli("predict", str(tmp_path / "x.mp4"), "--config", "tpn_tiny_synth", "--checkpoint",
                       str(tmp_path / "other.pth")), "mis-shaped: head.fc.weight (7, 256) vs model (10, 256)")
    one_line_error(cli("test", "tpn_tiny_synth", "--checkpoint", str(tmp_path / "other.pth"), *sets(
        data_overrides(tempo_data))), "mis-shaped: head.fc.weight (7, 256) vs model (4, 256)")


def test_predict_uses_the_label_names_of_the_checkpoint(tempo_data, tmp_path):  # noqa: F811
    from tpn.models.build import build_model

    model = build_model(tiny_cfg(tempo_data))
    ckpt = tmp_path / "m.pth"
    torch.save({"format": "tpn", "state_dict": model.state_dict(), "label_names": ["a", "b", "c", "d"]}, ckpt)
    video = next((tempo_data / "videos").rglob("*.mp4"))
    r = cli("predict", str(video), str(tmp_path / "missing.mp4"), "--config", "tpn_tiny_synth", "--checkpoint",
            str(ckpt), "--topk", "2", "--json", "--device", "cpu", *sets(TINY + data_overrides(tempo_data)))
    assert r.returncode == 1, r.stderr  # the missing video
    out = json.loads(r.stdout)
    assert [t["label"] for t in out[0]["top"]][0] in "abcd" and len(out[0]["top"]) == 2
    assert out[0]["top"][0]["score"] >= out[0]["top"][1]["score"] and sum(t["score"] for t in out[0]["top"]) <= 1 + 1e-6
    r = cli("predict", str(video), "--config", "tpn_tiny_synth", "--checkpoint", str(ckpt), "--topk", "3",
            "--device", "cpu", *sets(TINY + data_overrides(tempo_data)))
    assert r.returncode == 0 and r.stdout.splitlines()[0] == str(video) and len(r.stdout.splitlines()) == 4


def test_predict_topk_beyond_the_classes_and_a_head_wider_than_its_names(tempo_data, tmp_path):  # noqa: F811
    from tpn.models.build import build_model

    over = TINY + data_overrides(tempo_data, classes=6)[:-1] + ["model.head.num_classes=6"]
    model = build_model(load_config("tpn_tiny_synth", over))
    ckpt = tmp_path / "m.pth"
    torch.save({"format": "tpn", "state_dict": model.state_dict(), "label_names": ["a", "b", "c", "d"]}, ckpt)
    video = str(next((tempo_data / "videos").rglob("*.mp4")))
    args = ["predict", video, "--config", "tpn_tiny_synth", "--checkpoint", str(ckpt), "--device", "cpu",
            "--views", "1x1", *sets(over)]
    r = cli(*args, "--json")  # default top-5 of a 6-class head with 4 names: no IndexError
    assert r.returncode == 0, r.stderr
    top = json.loads(r.stdout)[0]["top"]
    assert len(top) == 5 and {t["label"] for t in top} <= {"a", "b", "c", "d", "class_4", "class_5"}
    assert "the model has 6 classes but 4 class names: classes 4-5 are shown as class_<i>" in r.stderr
    r = cli(*args, "--json", "--topk", "9")
    assert r.returncode == 0 and len(json.loads(r.stdout)[0]["top"]) == 6, r.stderr
    assert "--topk 9: the model has 6 classes; showing all 6" in r.stderr
    r = cli(*args, "--topk", "0")
    assert r.returncode == 2 and r.stderr == "tpn: error: --topk must be at least 1, got 0\n"


def test_predict_reports_why_an_input_failed_and_exits_1(tempo_data, tmp_path):  # noqa: F811
    from tpn.models.build import build_model

    torch.save({"format": "tpn", "state_dict": build_model(tiny_cfg(tempo_data)).state_dict()}, tmp_path / "m.pth")
    video = next((tempo_data / "videos").rglob("*.mp4"))
    (tmp_path / "text.mp4").write_text("not a video\n")
    args = [str(video), str(tmp_path / "missing.mp4"), str(tmp_path / "text.mp4"), "--config", "tpn_tiny_synth",
            "--checkpoint", str(tmp_path / "m.pth"), "--topk", "2", "--device", "cpu",
            *sets(TINY + data_overrides(tempo_data))]
    r = cli("predict", *args, "--json")
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    assert [sorted(o) for o in out] == [["top", "video"], ["error", "video"], ["error", "video"]]
    assert out[1]["error"] == f"{tmp_path / 'missing.mp4'}: file not found"
    assert out[2]["error"].startswith(f"{tmp_path / 'text.mp4'}: cannot open video")
    assert "2 of 3 videos could not be read" in r.stderr
    r = cli("predict", *args)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert lines[3:] == [str(tmp_path / "missing.mp4"), f"  error: {out[1]['error']}",
                         str(tmp_path / "text.mp4"), f"  error: {out[2]['error']}"]


def test_test_report_is_a_real_csv_and_predicts_nothing_for_unreadable_videos(tempo_data, tmp_path):  # noqa: F811
    import csv
    import shutil

    from tpn.engine.evaluate import CSV_COLUMNS, run_test
    from tpn.models.build import build_model

    videos = sorted((tempo_data / "videos").rglob("*.mp4"))
    odd = 'a,b "c".mp4'  # a comma and quotes: one CSV field all the same
    shutil.copy(videos[0], tmp_path / odd)
    shutil.copy(videos[1], tmp_path / "plain.mp4")
    (tmp_path / "text.mp4").write_text("not a video\n")
    (tmp_path / "list.txt").write_text(f"{odd} 0\ntext.mp4 1\nplain.mp4 2\nmissing.mp4 3\n")
    cfg = tiny_cfg(tempo_data, ["data.num_workers=0", "test.batch_size=2", f"data.root={tmp_path}",
                                f"data.test_list={tmp_path}/list.txt"])
    torch.save({"format": "tpn", "state_dict": build_model(cfg).state_dict()}, tmp_path / "m.pth")
    r = run_test(cfg, tmp_path / "m.pth", tmp_path / "test", views="1x1", device="cpu", progress=False)
    assert r["metrics"]["videos"] == 2 and r["metrics"]["skipped"] == 2
    with (tmp_path / "test" / "predictions.csv").open(newline="") as f:
        header = next(csv.reader(f))
        f.seek(0)
        rows = list(csv.DictReader(f))
    assert tuple(header) == CSV_COLUMNS
    names = (tempo_data / "labels.txt").read_text().split()
    assert [row["label"] for row in rows] == names
    assert [row["path"] for row in rows] == [str(tmp_path / n) for n in (odd, "text.mp4", "plain.mp4", "missing.mp4")]
    assert [row["readable"] for row in rows] == ["1", "0", "1", "0"]
    for row in rows:
        if row["readable"] == "1":
            assert row["prediction"] in names and 0 < float(row["score"]) <= 1 and row["error"] == ""
            assert row["correct"] == str(int(row["prediction"] == row["label"]))
        else:
            assert row["prediction"] == row["score"] == row["correct"] == ""
    assert rows[1]["error"].startswith("cannot open video") and rows[3]["error"] == "file not found"
    per_video = json.loads((tmp_path / "test" / "predictions.json").read_text())
    assert [v["readable"] for v in per_video] == [True, False, True, False]
    assert per_video[1]["top5"] == [] and per_video[1]["prediction"] is None and per_video[1]["correct"] is None
    assert per_video[3]["error"] == "file not found"
    skipped = json.loads((tmp_path / "test" / "metrics.json").read_text())["skipped_videos"]
    assert skipped == [{"path": str(tmp_path / "text.mp4"), "error": rows[1]["error"]},
                       {"path": str(tmp_path / "missing.mp4"), "error": "file not found"}]


def test_precision_switch_sets_the_arithmetic_of_test_and_predict(tempo_data, tmp_path):  # noqa: F811
    """`test.precision` / `--precision`: fp32 is the CPU default bit for bit; bf16 and fp16 run
    CPU autocast and change the scores by rounding only."""
    from tpn.checkpoint import save_atomic
    from tpn.engine.evaluate import run_test
    from tpn.models.build import build_model

    cfg = tiny_cfg(tempo_data, ["data.num_workers=0"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.normal_(0, 0.1)
    ckpt = tmp_path / "toy.pth"
    save_atomic({"format": "tpn", "state_dict": model.state_dict()}, ckpt)
    scores = {}
    for p in ("auto", "fp32", "bf16", "fp16"):
        run_test(tiny_cfg(tempo_data, ["data.num_workers=0", f"test.precision={p}"]), ckpt, tmp_path / p,
                 views="1x3", device="cpu", progress=False, view_scores="tpn")
        scores[p] = np.load(tmp_path / p / "view_scores.npy")
    assert np.array_equal(scores["auto"], scores["fp32"])
    for p in ("bf16", "fp16"):
        diff = np.abs(scores[p] - scores["fp32"]).max()
        assert 0 < diff < 0.05, (p, diff)
    assert np.abs(scores["bf16"] - scores["fp32"]).max() > np.abs(scores["fp16"] - scores["fp32"]).max()
    out = cli("test", "tpn_tiny_synth", "--checkpoint", str(ckpt), "--work-dir", str(tmp_path / "cli"), "--views",
              "1x3", "--device", "cpu", "--view-scores", "tpn", "--precision", "bf16",
              *sets(TINY + data_overrides(tempo_data) + ["data.num_workers=0", "test.precision=fp32"]))
    assert out.returncode == 0, out.stderr[-2000:]
    assert np.array_equal(np.load(tmp_path / "cli" / "view_scores.npy"), scores["bf16"])  # the flag wins over --set
    video = str(tempo_data / json.loads((tmp_path / "fp32" / "predictions.json").read_text())[0]["path"])
    top = {}
    for p in ("fp32", "bf16"):
        out = cli("predict", video, "--config", "tpn_tiny_synth", "--checkpoint", str(ckpt), "--json", "--views",
                  "1x3", "--device", "cpu", "--precision", p, *sets(TINY + data_overrides(tempo_data)))
        assert out.returncode == 0, out.stderr[-2000:]
        top[p] = json.loads(out.stdout)[0]["top"][0]["score"]
    assert top["fp32"] != top["bf16"] and abs(top["fp32"] - top["bf16"]) < 0.05


# ---------------------------------------------------------------- inputs that must not kill the command
def toy_checkpoint(cfg, path, label_names=None):
    """A tiny model whose predictions differ between videos (random BN means), saved as a tpn checkpoint."""
    from tpn.checkpoint import save_atomic
    from tpn.models.build import build_model

    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.normal_(0, 0.1)
    save_atomic({"format": "tpn", "state_dict": model.state_dict(), "label_names": label_names}, path)
    return path


def test_a_label_map_in_another_order_is_scored_in_the_checkpoint_order(tempo_data, tmp_path):  # noqa: F811
    """A checkpoint carrying its class names numbers them its own way: the same classes listed in
    another order score as in the training order (they scored near 0%); other classes are refused."""
    from tpn.engine.evaluate import run_test

    names = (tempo_data / "labels.txt").read_text().split()
    lines = (x.split() for x in (tempo_data / "val.txt").read_text().splitlines())
    labelled = [f"{p} {names[int(n)]}" for p, n in lines]
    (tmp_path / "val.txt").write_text("\n".join(labelled) + "\n")  # labels by name: their meaning is fixed
    (tmp_path / "shuffled.txt").write_text("\n".join(names[::-1]) + "\n")
    (tmp_path / "other.txt").write_text("\n".join(names[:3] + ["jump"]) + "\n")
    over = ["data.num_workers=0", f"data.test_list={tmp_path}/val.txt"]
    ckpt = toy_checkpoint(tiny_cfg(tempo_data, over), tmp_path / "m.pth", label_names=names)
    r = {}
    for label_map in ("labels", "shuffled"):
        path = tempo_data / "labels.txt" if label_map == "labels" else tmp_path / "shuffled.txt"
        cfg = tiny_cfg(tempo_data, over + [f"data.label_map={path}"])
        r[label_map] = run_test(cfg, ckpt, tmp_path / label_map, views="1x1", device="cpu", progress=False)
    assert r["shuffled"]["metrics"] == r["labels"]["metrics"]
    csv_text = {k: (tmp_path / k / "predictions.csv").read_text() for k in r}
    assert csv_text["shuffled"] == csv_text["labels"]
    from tpn.errors import TpnError

    with pytest.raises(TpnError, match=rf"^{tmp_path}/other.txt: not the classes the checkpoint {ckpt} was trained "
                                       rf"with \(only in the label map: jump; only in the checkpoint: {names[3]}\)"):
        run_test(tiny_cfg(tempo_data, ["data.num_workers=0", f"data.label_map={tmp_path}/other.txt"]), ckpt,
                 tmp_path / "other", views="1x1", device="cpu", progress=False)


def test_csv_cells_that_a_spreadsheet_would_run_are_escaped(tempo_data, tmp_path, monkeypatch):  # noqa: F811
    import csv
    import shutil

    from tpn.engine.evaluate import run_test

    monkeypatch.chdir(tmp_path)
    video = sorted((tempo_data / "videos").rglob("*.mp4"))[0]
    shutil.copy(video, tmp_path / "=HYPERLINK(x).mp4")
    shutil.copy(video, tmp_path / "plain.mp4")
    names = ["=1+1", "+x", "-y", "@SUM(A1)"]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "list.txt").write_text("=HYPERLINK(x).mp4 0\nplain.mp4 -y\n")
    cfg = tiny_cfg(tempo_data, ["data.num_workers=0", "data.root=", "data.test_list=list.txt",
                                "data.label_map=labels.txt"])
    run_test(cfg, toy_checkpoint(cfg, tmp_path / "m.pth"), tmp_path / "test", views="1x1", device="cpu",
             progress=False)
    with (tmp_path / "test" / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["path"], r["label"]) for r in rows] == [("'=HYPERLINK(x).mp4", "'=1+1"), ("plain.mp4", "'-y")]
    assert all(r["prediction"] in {"'" + n for n in names} for r in rows)
    per_video = json.loads((tmp_path / "test" / "predictions.json").read_text())  # JSON keeps the text as it is
    assert [(v["path"], v["label"]) for v in per_video] == [("=HYPERLINK(x).mp4", "=1+1"), ("plain.mp4", "-y")]


def test_a_test_of_only_unreadable_videos_fails_with_one_line(tempo_data, tmp_path, capsys):  # noqa: F811
    from tpn.cli import main

    (tmp_path / "text.mp4").write_text("not a video\n")
    (tmp_path / "list.txt").write_text("text.mp4 0\nmissing.mp4 1\n")
    ckpt = toy_checkpoint(tiny_cfg(tempo_data), tmp_path / "m.pth")
    over = TINY + data_overrides(tempo_data) + ["data.num_workers=0", f"data.root={tmp_path}",
                                                f"data.test_list={tmp_path}/list.txt"]
    rc = main(["test", "tpn_tiny_synth", "--checkpoint", str(ckpt), "--work-dir", str(tmp_path / "test"), "--views",
               "1x1", "--device", "cpu", *sets(over)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err  # was 0, with "top-1 0.00%"
    error, = [x for x in err.splitlines() if x.startswith("tpn: error: ")]  # the others: a warning per video
    assert error == (f"tpn: error: {tmp_path}/list.txt: none of its 2 videos could be read (why: "
                     f"{tmp_path}/test/predictions.csv, {tmp_path}/test/bad_videos.jsonl)")
    assert (tmp_path / "test" / "predictions.csv").read_text().count("\n") == 3


def test_a_work_dir_that_is_a_file_or_read_only_is_one_line(tempo_data, tmp_path, capsys):  # noqa: F811
    import os
    from pathlib import Path

    from tpn.cli import main

    (tmp_path / "file").write_text("")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root writes there anyway; sysfs takes no new folder even from root
        ro = Path("/sys")
        if os.access(ro, os.W_OK) and not Path("/sys/class").is_dir():
            pytest.skip("no place this process cannot write")
    over = sets(TINY + data_overrides(tempo_data) + ["data.num_workers=0"])
    ckpt = toy_checkpoint(tiny_cfg(tempo_data), tmp_path / "m.pth")
    for work, why in ((tmp_path / "file", "a file is there, not a directory"), (ro / "run", "cannot write there (")):
        for command in (["train", "tpn_tiny_synth"], ["test", "tpn_tiny_synth", "--checkpoint", str(ckpt)]):
            assert main([*command, "--work-dir", str(work), "--device", "cpu", *over]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"tpn: error: --work-dir {work}: {why}") and err.count("\n") == 1, err


def test_predict_carries_on_past_a_video_declaring_huge_frames(tempo_data, tmp_path, capsys):  # noqa: F811
    """A 16384x16 video: with short side 48 it would be 49152x48 frames, above a limit of a million
    pixels; it is reported unreadable before decoding and the other videos are predicted."""
    from tests.conftest import write_wide_video
    from tpn.cli import main

    write_wide_video(tmp_path / "wide.mp4")
    video = str(sorted((tempo_data / "videos").rglob("*.mp4"))[0])
    ckpt = toy_checkpoint(tiny_cfg(tempo_data), tmp_path / "m.pth")
    over = sets(TINY + data_overrides(tempo_data) + ["data.max_frame_pixels=1000000"])
    rc = main(["predict", str(tmp_path / "wide.mp4"), video, "--config", "tpn_tiny_synth", "--checkpoint", str(ckpt),
               "--json", "--device", "cpu", *over])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and [sorted(o) for o in out] == [["error", "video"], ["top", "video"]]
    assert out[0]["error"] == (f"{tmp_path}/wide.mp4: frames of 16384x16 resized to short side 48 would be 49152x48 "
                               f"(2,359,296 pixels), above data.max_frame_pixels (1,000,000)")
