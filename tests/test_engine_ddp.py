"""Real torch.distributed (gloo, 2 processes under torchrun) on CPU: training and testing match one process."""
import csv
import json
import os

import numpy as np
import pytest
import torch

from tests.test_engine_common import SPLIT_INVARIANT, TINY, cli, data_overrides, sets, tempo_data, torchrun  # noqa: F401


@pytest.mark.slow
def test_two_processes_match_one_in_training_and_testing(tempo_data, tmp_path):  # noqa: F811
    # same total batch: 1 x 4 against 2 x 2, gradients averaged by DDP
    common = TINY + data_overrides(tempo_data) + SPLIT_INVARIANT + [
        "train.epochs=1", "train.val_interval=0", "data.num_workers=1", "train.lr=0.05", "train.lr_batch_size=4"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = cli("train", "tpn_tiny_synth", "--work-dir", str(tmp_path / "one"), "--device", "cpu",
              *sets(common + ["train.batch_size=4"]), env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = torchrun(2, "train", "tpn_tiny_synth", "--work-dir", str(tmp_path / "two"), "--device", "cpu",
                   *sets(common + ["train.batch_size=2"]), env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    assert two.stderr.count("epoch 1 done") == 1  # rank 0 alone logs
    a = torch.load(tmp_path / "one" / "epoch_0001.pth", weights_only=True)
    b = torch.load(tmp_path / "two" / "epoch_0001.pth", weights_only=True)
    assert a["global_iter"] == b["global_iter"] == 8  # 32 training videos / 4
    assert b["world_size"] == 2 and len(b["rng"]) == 2
    diff = max((a["state_dict"][k] - v).abs().max().item() for k, v in b["state_dict"].items() if v.is_floating_point())
    print(f"max |w(1 process) - w(2 processes)| = {diff:.2e}")
    assert diff < 2e-5, diff
    losses = [[json.loads(x)["loss"] for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
               if '"train"' in x] for run in ("one", "two")]
    assert np.allclose(*losses, rtol=1e-4)

    # testing: 7 videos over 2 processes (4 + 3, nothing padded) gives one row per video, as one process does
    lines = (tempo_data / "val.txt").read_text().splitlines()[:7]
    (tmp_path / "seven.txt").write_text("\n".join(lines) + "\n")
    test_sets = sets(TINY + data_overrides(tempo_data) + SPLIT_INVARIANT + [
        f"data.test_list={tmp_path}/seven.txt", "data.num_workers=0", "test.batch_size=2"])
    ckpt = str(tmp_path / "two" / "epoch_0001.pth")
    t1 = cli("test", "tpn_tiny_synth", "--checkpoint", ckpt, "--work-dir", str(tmp_path / "t1"), "--device", "cpu",
             *test_sets, env=env)
    assert t1.returncode == 0, t1.stderr[-2000:]
    t2 = torchrun(2, "test", "tpn_tiny_synth", "--checkpoint", ckpt, "--work-dir", str(tmp_path / "t2"),
                  "--device", "cpu", *test_sets, env=env)
    assert t2.returncode == 0, t2.stderr[-2000:]
    assert t2.stdout.count("top-1") == 1
    rows = [list(csv.DictReader((tmp_path / t / "predictions.csv").open())) for t in ("t1", "t2")]
    assert [r["index"] for r in rows[1]] == [str(i) for i in range(7)]
    for r1, r2 in zip(*rows):
        assert r1["prediction"] == r2["prediction"] and abs(float(r1["score"]) - float(r2["score"])) < 1e-5
    m = [json.loads((tmp_path / t / "metrics.json").read_text()) for t in ("t1", "t2")]
    assert m[0]["videos"] == m[1]["videos"] == 7 and m[0]["top1"] == m[1]["top1"]


def test_two_processes_train_through_the_gpu_decoding_path(tempo_data, tmp_path):  # noqa: F811
    """data.decoder nvdec under torchrun, FFmpeg standing in for NVDEC (TPN_DECODER_STANDIN): each
    process decodes its own shard's clips through its own stage; training ends as with pyav."""
    common = TINY + data_overrides(tempo_data) + [
        "train.epochs=1", "train.val_interval=0", "data.num_workers=1", "train.batch_size=2", "data.decoder=nvdec"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TPN_DECODER_STANDIN="pyav")
    two = torchrun(2, "train", "tpn_tiny_synth", "--work-dir", str(tmp_path / "two"), "--device", "cpu",
                   *sets(common), env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "decoder nvdec: 100% of training items decoded on cpu" in two.stderr
    epoch = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
             if '"kind": "epoch"' in x][0]
    assert epoch["decode"]["gpu_clips"] == 16 and epoch["decode"]["cpu_clips"] == 0  # rank 0's half of 32
    assert torch.load(tmp_path / "two" / "epoch_0001.pth", weights_only=True)["global_iter"] == 8
