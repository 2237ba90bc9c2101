"""`tpn demo --quick`: the README's first command runs end to end (synth -> train -> 30-view-style test)."""
import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tpn.cli", "demo", "--quick", "--out", str(tmp_path), "--device", "cpu"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "demo result: top-1" in r.stdout and "(chance 25%)" in r.stdout
    assert "on the 8 videos of the held-out test split (used neither for training nor for picking best.pth)" \
        in r.stdout
    for name in ["train_quick/training_curves.png", "test_quick/confusion_matrix.png", "test_quick/predictions.csv",
                 "train_quick/metrics.jsonl"]:
        assert (tmp_path / name).stat().st_size > 0, name
        assert str(tmp_path / name) in r.stdout
    m = json.loads((tmp_path / "test_quick" / "metrics.json").read_text())
    assert m["videos"] == 8 and 0 <= m["top1"] <= 1  # 4 classes x 2 held-out videos
    assert "finished: 2 epochs" in r.stderr and "clips/s" in r.stderr


def test_the_demo_tests_on_a_split_held_out_from_training_and_validation(tmp_path):
    import hashlib

    from tpn.engine.demo import write_data

    write_data(tmp_path, classes=4, per_class=10)

    def videos(list_name):
        paths = [line.rsplit(" ", 1)[0] for line in (tmp_path / list_name).read_text().splitlines()]
        return {hashlib.sha1((tmp_path / p).read_bytes()).hexdigest(): p for p in paths}

    train, val, test = videos("train.txt"), videos("val.txt"), videos("test.txt")
    assert (len(train), len(val), len(test)) == (32, 8, 8)
    assert not set(test) & (set(train) | set(val))  # no test video is a training or validation one, byte for byte
    assert all(p.startswith("test_set/") for p in test.values())
    labels = [int(line.rsplit(" ", 1)[1]) for line in (tmp_path / "test.txt").read_text().splitlines()]
    assert sorted(labels) == [0, 0, 1, 1, 2, 2, 3, 3]
