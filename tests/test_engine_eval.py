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
            views, label, _, ok, _ = ds[i]
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
    rows = (tmp_path / "test" / "predictions.csv").read_text().splitlines()[1:]
    assert np.allclose([float(row.split(",")[4]) for row in rows], probs.max(1), atol=1e-4)
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
    one_line_error(cli("test", "tpn_tiny_synth", "--checkpoint", str(tmp_path / "nope.pth")),
                   "nope.pth: checkpoint file not found")
    one_line_error(cli("train", "tpn_tiny_synth", "--work-dir", str(tmp_path / "w"), "--resume",
                       str(tmp_path / "nope.pth")), "nope.pth: checkpoint file not found")
    from tpn.models.build import build_model

    other = build_model(load_config("tpn_tiny_synth", ["model.head.num_classes=7"]))
    torch.save({"format": "tpn", "state_dict": other.state_dict()}, tmp_path / "other.pth")
    one_line_error(cli("predict", str(tmp_path / "x.mp4"), "--config", "tpn_tiny_synth", "--checkpoint",
                       str(tmp_path / "other.pth")), "mis-shaped: head.fc.weight (7, 256) vs model (10, 256)")
    one_line_error(cli("test", "tpn_tiny_synth", "--checkpoint", str(tmp_path / "other.pth"), *sets(
        data_overrides(tempo_data, 10))), "mis-shaped: head.fc.weight (7, 256) vs model (10, 256)")


def test_predict_uses_the_label_names_of_the_checkpoint(tempo_data, tmp_path):  # noqa: F811
    from tpn.models.build import build_model

    model = build_model(tiny_cfg(tempo_data))
    ckpt = tmp_path / "m.pth"
    torch.save({"format": "tpn", "state_dict": model.state_dict(), "label_names": ["a", "b", "c", "d"]}, ckpt)
    video = next((tempo_data / "videos").rglob("*.mp4"))
    r = cli("predict", str(video), str(tmp_path / "missing.mp4"), "--config", "tpn_tiny_synth", "--checkpoint",
            str(ckpt), "--topk", "2", "--json", "--device", "cpu", *sets(TINY + data_overrides(tempo_data)))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [t["label"] for t in out[0]["top"]][0] in "abcd" and len(out[0]["top"]) == 2
    assert out[0]["top"][0]["score"] >= out[0]["top"][1]["score"] and sum(t["score"] for t in out[0]["top"]) <= 1 + 1e-6
    assert "error" in out[1]
    r = cli("predict", str(video), "--config", "tpn_tiny_synth", "--checkpoint", str(ckpt), "--topk", "3",
            "--device", "cpu", *sets(TINY + data_overrides(tempo_data)))
    assert r.returncode == 0 and r.stdout.splitlines()[0] == str(video) and len(r.stdout.splitlines()) == 4
