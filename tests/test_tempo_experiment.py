"""The harder tempo experiment's runner (benchmarks/tempo_hard.sh) and summariser."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _summariser():
    spec = importlib.util.spec_from_file_location("summarise_tempo", REPO / "benchmarks" / "summarise_tempo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tempo_pair_accuracy_by_hand():
    s = _summariser()
    names = ["right_slow", "right_fast", "left_slow", "left_fast"]
    assert s.tempo_pairs(names) == [(0, 1), (2, 3)]
    assert len(s.tempo_pairs([f"{d}_{t}" for d in "ab" for t in ("slow", "medium", "fast")])) == 6
    labels = np.array([0, 0, 1, 2, 3, 3])
    probs = np.array([
        [0.5, 0.1, 0.3, 0.1],  # right_slow: own 0.5 > right_fast 0.1                     right
        [0.2, 0.1, 0.6, 0.1],  # right_slow, predicted left_slow: still beats right_fast  right
        [0.4, 0.3, 0.2, 0.1],  # right_fast: 0.3 < right_slow 0.4                          wrong
        [0.1, 0.1, 0.3, 0.5],  # left_slow: 0.3 < left_fast 0.5                            wrong
        [0.0, 0.0, 0.2, 0.8],  # left_fast                                                 right
        [0.7, 0.0, 0.1, 0.2],  # left_fast, predicted right_slow: 0.2 > left_slow 0.1      right
    ])
    # pair (right_slow, right_fast): 2 of 3; pair (left_slow, left_fast): 2 of 3
    assert s.tempo_pair_accuracy(names, labels, probs) == pytest.approx(2 / 3)


@pytest.mark.slow
def test_tempo_hard_script_runs_tiny_on_cpu(tmp_path):
    """The real script end to end, tiny: data, 2 seeds x 2 models of tpn train + tpn test, summary."""
    env = dict(os.environ, ROOT=str(tmp_path / "data"), OUT=str(tmp_path / "out"), SEEDS="0 1", EPOCHS="1",
               VPC="3", TVPC="2", TPN=f"{sys.executable} -m tpn.cli",
               PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(["bash", "benchmarks/tempo_hard.sh", "--tiny"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["data"]["tempo_speeds"]["medium"] == 1.5
    assert summary["data"]["distractors"] == 3 and summary["data"]["frames"] == 64
    for model in ("tempo_hard_tpn_r50_8x8", "tempo_hard_slowonly_r50_8x8"):
        runs = summary["runs"][model]
        top1 = [runs[s]["test_30view"]["top1"] for s in ("0", "1")]
        agg = summary["models"][model]["test_top1_30view"]
        assert agg["n"] == 2 and agg["mean"] == pytest.approx(np.mean(top1))
        assert agg["std"] == pytest.approx(np.std(top1, ddof=1))
        assert all(0 <= runs[s]["tempo_pair_accuracy"] <= 1 and runs[s]["test_30view"]["videos"] == 8 for s in runs)
        assert [p["epoch"] for p in summary["models"][model]["val_top1_curve"]] == [1]
    assert (tmp_path / "out" / "curves.png").stat().st_size > 1000
    assert "tempo-pair accuracy" in r.stdout


@pytest.mark.slow
def test_tempo_study_runs_tiny_on_cpu(tmp_path):
    """benchmarks/tempo_study.py end to end, tiny: data, a TPN run, fine-tuning from it, the summary."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    results = tmp_path / "results"
    r = subprocess.run([sys.executable, "benchmarks/tempo_study.py", "--tiny", "--work", str(tmp_path / "work"),
                        "--results", str(results), "--groups", "tpn", "finetune", "--seeds", "0", "--slots", "2",
                        "--workers", "0", "--synth-workers", "2", "--archive", str(tmp_path / "results.tar.gz")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = json.loads((results / "finetune_s0" / "run.json").read_text())
    assert any(s.startswith("model.init_from=") for s in run["sets"]) and run["test_30view"]["videos"] == 8
    assert "model initialised from" in (results / "finetune_s0" / "train.log").read_text()
    tpn = json.loads((results / "tpn_s0" / "run.json").read_text())
    assert [p["speed"] for p in tpn["tempo"]["speeds"]] == [0.5, 0.75, 1.0, 1.5, 2.0]
    assert [p["epoch"] for p in tpn["train_top1_curve"]] == [1, 2]
    summary = json.loads((results / "summary.json").read_text())
    assert list(summary["groups"]) == ["tpn", "finetune"]
    assert summary["groups"]["tpn"]["test_top1"]["mean"] == pytest.approx(tpn["test_30view"]["top1"])
    assert (results / "curves.png").stat().st_size > 1000 and "| finetune |" in (results / "table.md").read_text()
    assert "tpn.cli test" in (results / "logs" / "tpn_s0.log").read_text()
    import gzip

    by_speed = gzip.decompress((results / "tpn_s0" / "tempo" / "predictions_by_tempo.csv.gz").read_bytes()).decode()
    assert by_speed.startswith("speed,index,path,label") and by_speed.count("\n") == 1 + 5 * 8
    assert summary["calls"][0]["groups"] == ["tpn", "finetune"] and "date" in summary["calls"][0]["machine"]

    # one file holds the results (a device call returns at most 8 files) ...
    import tarfile

    with tarfile.open(tmp_path / "results.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"results/summary.json", "results/tpn_s0/run.json", "results/finetune_s0/run.json"} <= names
    # ... and --collect writes the same run.json from the work dirs (wall_s unknown there)
    again = tmp_path / "again"
    r = subprocess.run([sys.executable, "benchmarks/tempo_study.py", "--collect", "--work", str(tmp_path / "work"),
                        "--results", str(again)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for name in ("tpn_s0", "finetune_s0"):
        want = json.loads((results / name / "run.json").read_text())
        got = json.loads((again / name / "run.json").read_text())
        assert got["wall_s"] is None and {**got, "wall_s": want["wall_s"]} == want


def test_tempo_study_starts_no_run_that_would_not_finish():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from tempo_study import kind, not_finishing

    queue = [("tpn", 1), ("tpn", 0), ("slowonly_lr0.05", 1), ("slowonly_long", 0), ("finetune", 1)]
    took = {kind("tpn", 2): 150.0, kind("slowonly_lr0.15", 0): 90.0}  # lr changes nothing of the cost
    assert not_finishing(queue, 120, 100, took) == [("tpn", 1)]  # seed 0 adds the tempo test: another kind
    assert not_finishing(queue, 95, 100, took) == queue
    assert not_finishing(queue, 200, 100, took) == []
    assert kind("slowonly_long", 0) != kind("slowonly_lr0.05", 1) and kind("finetune", 1) != kind("tpn", 1)


def test_tempo_study_groups_are_valid_configs():
    """Every group's config with its overrides loads (a typo would cost a device call), and the groups'
    runs differ from each other in config, data or seed-0 extras."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from tempo_study import GROUPS

    from tpn.config import load_config

    seen = {}
    for name, (cfg, extra, ft, tempo) in GROUPS.items():
        sets = [s.format(pretrained="/nonexistent.pth") for s in extra]
        loaded = load_config(cfg, sets)
        key = (cfg, tuple(sorted(sets)), ft, tempo)
        assert key not in seen, f"{name} repeats {seen.get(key)}"
        seen[key] = name
        if "train.lr=0.15" in extra:
            assert loaded.train.lr == 0.15
