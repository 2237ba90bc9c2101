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
    for name in ["train_quick/training_curves.png", "test_quick/confusion_matrix.png", "test_quick/predictions.csv",
                 "train_quick/metrics.jsonl"]:
        assert (tmp_path / name).stat().st_size > 0, name
        assert str(tmp_path / name) in r.stdout
    m = json.loads((tmp_path / "test_quick" / "metrics.json").read_text())
    assert m["videos"] == 8 and 0 <= m["top1"] <= 1  # 4 classes x 2 held-out videos
    assert "finished: 2 epochs" in r.stderr and "clips/s" in r.stderr
