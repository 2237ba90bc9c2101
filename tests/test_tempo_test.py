"""`tpn test --tempo`: accuracy against playback speed (docs/training.md, "Accuracy against playback speed")."""
import csv
import json
import re
from fractions import Fraction

import numpy as np
import pytest

from tests.test_engine_common import TINY, cli, data_overrides, sets, tempo_data, tiny_cfg  # noqa: F401
from tests.test_engine_eval import toy_checkpoint
from tpn.data import sampling
from tpn.data.plan import Dense, Planner
from tpn.engine.tempo import parse_tempos
from tpn.errors import TpnError


def test_indices_at_2x_and_half_speed_are_the_played_videos_frames():
    # 2x: a 24-frame video plays as 12 frames, frame j = source 2j; the centred 4x2 clip of those
    # starts at (12 - 7) // 2 = 2: played [2, 4, 6, 8], source frames 4 apart instead of 2
    assert Dense(4, 2, Fraction(2)).val(24).tolist() == [4, 8, 12, 16]
    assert Dense(4, 2).val(24).tolist() == [8, 10, 12, 14]  # 1x: the plain clip
    # 0.5x: 10 frames play as 20, frame j = source floor(j / 2): each frame shown twice
    assert Dense(4, 1, Fraction(1, 2)).val(10).tolist() == [4, 4, 5, 5]
    # test clips: starts spread over the played video, its first and last clip at its ends
    assert Dense(4, 2, Fraction(2)).test(24, 2).tolist() == [[0, 4, 8, 12], [10, 14, 18, 22]]
    assert Dense(4, 2, Fraction(1, 2)).test(24, 2).tolist() == [[0, 1, 2, 3], [20, 21, 22, 23]]
    # past the end the played video loops: 10 frames at 2x play as 5, a 4x2 clip is [0, 2, 4, 6 % 5 = 1]
    assert Dense(4, 2, Fraction(2)).test(10, 1).tolist() == [[0, 4, 8, 2]]
    # exact in integers: 100 played frames at 0.57x are source frame 57 (100 * 0.57 is 56.99... in floats)
    assert sampling.at_tempo(200, Fraction("0.57"), lambda m: np.array([100])).tolist() == [57]
    assert sampling.played_frames(100, Fraction("0.57")) == 176  # ceil(175.4...)
    assert parse_tempos("0.57, 2/3,2") == [Fraction(57, 100), Fraction(2, 3), Fraction(2)]
    # every index stays in the video; speed 1 is the plain sampling, index for index
    for n in (1, 5, 13, 24, 100):
        for s in ("0.25", "0.5", "0.7", "1.5", "2", "3"):
            idx = Dense(8, 3, Fraction(s)).test(n, 5)
            assert idx.min() >= 0 and idx.max() < n, (n, s)
        assert np.array_equal(Dense(8, 3, Fraction(1)).test(n, 5), sampling.test_indices(n, 8, 3, 5))
    assert [Dense(4, 2, Fraction(s)).fewest_frames() for s in ("1", "2", "0.5")] == [7, 13, 4]


def test_segment_sampling_refuses_a_tempo(tempo_data):  # noqa: F811
    cfg = tiny_cfg(tempo_data, ["data.sampling=segments"]).data
    planner = Planner(cfg, "test")
    assert planner.with_tempo(Fraction(1)).sampler.clip_len == cfg.clip_len
    with pytest.raises(TpnError, match="tempo applies to dense sampling only"):
        planner.with_tempo(Fraction(2))


def test_speed_1_is_the_plain_test_bit_for_bit(tempo_data, tmp_path):  # noqa: F811
    from tpn.data.datasets import build_dataset
    from tpn.engine.evaluate import run_test

    cfg = tiny_cfg(tempo_data, ["data.num_workers=0", "test.batch_size=3"])
    ckpt = toy_checkpoint(cfg, tmp_path / "m.pth")
    plain = run_test(cfg, ckpt, tmp_path / "plain", views="2x1", device="cpu", progress=False, view_scores="tpn")
    r = run_test(cfg, ckpt, tmp_path / "tempo", views="2x1", device="cpu", progress=False, view_scores="tpn",
                 tempo="0.5,1,2")
    assert plain["tempo"] is None and r["metrics"] == plain["metrics"]
    assert (tmp_path / "tempo/view_scores.npy").read_bytes() == (tmp_path / "plain/view_scores.npy").read_bytes()
    for name in ("predictions.json", "predictions.csv"):
        assert (tmp_path / "tempo" / name).read_text() == (tmp_path / "plain" / name).read_text()
    rows = r["tempo"]
    assert [x["speed"] for x in rows] == [0.5, 1.0, 2.0]
    keys = ("videos", "skipped", "top1", "top5", "mean_class_accuracy")
    assert {k: rows[1][k] for k in keys} == {k: plain["metrics"][k] for k in keys}
    saved = json.loads((tmp_path / "tempo/metrics.json").read_text())
    assert saved["tempo"] == {"report_speed": 1.0, "speeds": rows} and saved["top1"] == plain["metrics"]["top1"]
    # without speed 1 the report is the first speed's
    r2 = run_test(cfg, ckpt, tmp_path / "no1", views="2x1", device="cpu", progress=False, tempo="2,0.5")
    saved = json.loads((tmp_path / "no1/metrics.json").read_text())
    assert saved["tempo"]["report_speed"] == 2.0 and [x["speed"] for x in r2["tempo"]] == [2.0, 0.5]
    assert {k: saved[k] for k in keys} == {k: r2["tempo"][0][k] for k in keys}
    # the other speeds read other frames: the dataset's plans at 2x are the played video's
    ds = build_dataset(cfg.data, "test")
    ds.planner = ds.planner.with_tempo(Fraction(2))
    path, label, _ = ds.samples[0]
    want = np.repeat([[0, 4, 8, 12], [10, 14, 18, 22]], cfg.data.test_crops, axis=0)
    assert ds.planner.draft(0, path, label, 24).frames.tolist() == want.tolist()


def test_cli_prints_each_speed_and_writes_metrics_rows_and_the_plot(tempo_data, tmp_path):  # noqa: F811
    ckpt = toy_checkpoint(tiny_cfg(tempo_data), tmp_path / "m.pth")
    over = TINY + data_overrides(tempo_data) + ["data.num_workers=0"]
    out = cli("test", "tpn_tiny_synth", "--checkpoint", str(ckpt), "--work-dir", str(tmp_path / "t"), "--views", "1x1",
              "--device", "cpu", "--tempo", "2,0.5, 1", *sets(over))
    assert out.returncode == 0, out.stderr[-2000:]
    saved = json.loads((tmp_path / "t/metrics.json").read_text())
    rows = saved["tempo"]["speeds"]
    assert [x["speed"] for x in rows] == [2.0, 0.5, 1.0] and all(x["videos"] == 8 for x in rows)
    printed = re.findall(r"^tempo (\S+)x: top-1 (\d+\.\d\d)% top-5 (\d+\.\d\d)% \(8 videos, 0 unreadable\)$",
                         out.stdout, re.M)
    want = [(f"{x['speed']:g}", f"{100 * x['top1']:.2f}", f"{100 * x['top5']:.2f}") for x in rows]
    assert printed == want, out.stdout
    assert f"top-1 {100 * saved['top1']:.2f}%" in out.stdout.splitlines()[0]  # the report's line: speed 1's
    png = tmp_path / "t/accuracy_vs_tempo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(png) in out.stdout
    # every video at every speed, in the order given; speed 1's rows are predictions.csv's
    by_speed = list(csv.DictReader((tmp_path / "t/predictions_by_tempo.csv").open()))
    assert str(tmp_path / "t/predictions_by_tempo.csv") in out.stdout
    assert [float(r["speed"]) for r in by_speed] == [2.0] * 8 + [0.5] * 8 + [1.0] * 8
    for x in rows:
        mine = [r for r in by_speed if float(r["speed"]) == x["speed"]]
        assert sum(r["correct"] == "1" for r in mine) / 8 == pytest.approx(x["top1"])
    plain = list(csv.DictReader((tmp_path / "t/predictions.csv").open()))
    assert [{k: v for k, v in r.items() if k != "speed"} for r in by_speed[16:]] == plain


@pytest.mark.parametrize("value, text", [
    ("0", "speed 0 must be > 0"), ("-1", "speed -1 must be > 0"), ("1,-0.5", "speed -0.5 must be > 0"),
    ("fast", "'fast' is not a number"), ("1,,2", "'' is not a number"), ("nan", "'nan' is not a number"),
    ("inf", "'inf' is not a number"), ("1/0", "'1/0' is not a number"), ("1,1.0", "speed 1.0 is listed twice")])
def test_bad_speeds_are_one_line_errors(value, text, tempo_data, tmp_path, capsys):  # noqa: F811
    from tpn.cli import main

    rc = main(["test", "tpn_tiny_synth", "--checkpoint", str(tmp_path / "none.pth"), "--work-dir", str(tmp_path / "t"),
               "--device", "cpu", f"--tempo={value}", *sets(data_overrides(tempo_data))])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().count("\n") == 0, err
    assert err.startswith(f"tpn: error: --tempo {value!r}: ") and text in err, err
