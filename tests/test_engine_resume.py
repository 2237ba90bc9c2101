"""Exact resume: a run killed with SIGKILL mid-epoch and resumed ends with the same weights as an uninterrupted one."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.test_engine_common import TINY, cli, data_overrides, sets, tempo_data  # noqa: F401


def _iters_logged(metrics_path) -> int:
    if not metrics_path.exists():
        return 0
    its = [json.loads(x)["iter"] for x in metrics_path.read_text().splitlines()[:-1] if '"train"' in x]
    return max(its, default=0)


@pytest.mark.slow
def test_exact_resume_after_sigkill_mid_epoch(tempo_data, tmp_path):  # noqa: F811
    # 16 iterations per epoch, checkpoints every 4 inside an epoch; dropout, BN in train mode, random
    # crops and real DataLoader workers all draw random numbers that must continue exactly
    args = sets(TINY + data_overrides(tempo_data) + [
        "train.epochs=2", "train.batch_size=2", "train.lr_batch_size=2", "train.ckpt_interval_iters=4",
        "data.num_workers=1", "train.val_interval=0", "train.lr=0.02", "model.head.dropout=0.5"])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full = cli("train", "tpn_tiny_synth", "--work-dir", str(tmp_path / "full"), "--device", "cpu", *args, env=env)
    assert full.returncode == 0, full.stderr[-2000:]

    work = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "tpn.cli", "train", "tpn_tiny_synth", "--work-dir", str(work),
                             "--device", "cpu", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while _iters_logged(work / "metrics.jsonl") < 22:  # epoch 2, past the checkpoint of iteration 20
        assert proc.poll() is None and time.time() < deadline, "the run ended or stalled before the kill"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (work / "epoch_0002.pth").exists(), "the run finished before it was killed"
    (work / "iter_99999999.pth").write_bytes(b"truncated")  # a broken newest file must be skipped

    resumed = cli("train", "tpn_tiny_synth", "--work-dir", str(work), "--device", "cpu", "--resume", "auto", *args,
                  env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "ignoring unreadable checkpoint" in resumed.stderr and "iter_99999999.pth" in resumed.stderr
    line = next(x for x in resumed.stderr.splitlines() if "resumed from" in x)
    assert "iter_000000" in line and "(epoch 2, iteration" in line and "iteration 0 of" not in line, line
    a = torch.load(tmp_path / "full" / "epoch_0002.pth", weights_only=True)
    b = torch.load(work / "epoch_0002.pth", weights_only=True)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for s_a, s_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(s_a["momentum_buffer"], s_b["momentum_buffer"])
    assert not list(work.glob("iter_0*.pth"))  # in-epoch checkpoints are dropped once the epoch is saved
    # the killed run's lock is stale (its pid is gone) and its rows past the checkpoint were dropped
    assert "taking over the stale lock of a run that is gone" in resumed.stderr and not (work / "tpn.lock").exists()
    timing = {"clips_per_s", "data_wait", "time_s", "data_wait_s", "warmup_s", "steady_clips_per_s", "steady_data_wait"}
    rows = [[{k: v for k, v in r.items() if k not in timing}
             for r in map(json.loads, (w / "metrics.jsonl").read_text().splitlines())]
            for w in (tmp_path / "full", work)]
    assert [(r["kind"], r["iter"]) for r in rows[1]] == [(r["kind"], r["iter"]) for r in rows[0]]
    assert rows[1] == rows[0]  # every row's losses, learning rates and accuracies too, not only its place


def test_clips_per_decode_epoch_and_exact_resume(tempo_data, tmp_path):  # noqa: F811
    """data.clips_per_decode=2: an epoch visits every video once (2 clips each), batches keep
    train.batch_size clips, and a run resumed from a mid-epoch checkpoint ends identical."""
    from tests.test_engine_common import tiny_cfg
    from tpn.engine.train import train

    cfg = tiny_cfg(tempo_data, ["data.clips_per_decode=2", "train.batch_size=4", "train.lr_batch_size=4",
                                "train.epochs=1", "train.val_interval=0", "data.num_workers=0",
                                "train.ckpt_interval_iters=3", "train.log_interval=1"])
    full = train(cfg, tmp_path / "full", device="cpu")
    recs = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["iter"] for r in recs if r["kind"] == "train") == 32 * 2 // 4  # 32 videos x 2 clips / 4
    train(cfg, tmp_path / "cut", device="cpu", max_iters=4)  # stops after the checkpoint of iteration 3
    resumed = train(cfg, tmp_path / "cut", device="cpu", resume=str(tmp_path / "cut" / "iter_00000003.pth"))
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
