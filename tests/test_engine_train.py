"""Training on CPU: the loss falls and accuracy beats chance, accumulation equals a big batch, NaN stops cleanly."""
import json
import re

import numpy as np
import pytest
import torch

from tests.test_engine_common import SPLIT_INVARIANT, tempo_data, tiny_cfg  # noqa: F401
from tpn.engine.train import train
from tpn.errors import TpnError


@pytest.mark.slow
def test_loss_falls_and_accuracy_beats_chance(tempo_data, tmp_path):  # noqa: F811
    cfg = tiny_cfg(tempo_data, ["train.epochs=8", "train.lr=0.1", "train.batch_size=8", "train.lr_batch_size=8",
                                "data.num_workers=2", "train.schedule=cosine", "model.head.dropout=0.0"])
    s = train(cfg, tmp_path / "run", device="cpu")
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if r["kind"] == "train"]
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    assert [r["epoch"] for r in recs if r["kind"] == "val"] == list(range(1, 9))
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert len(epochs) == 8 and all(r["time_s"] > 0 and r["clips_per_s"] > 0 for r in epochs)
    train_top1 = [r["train_top1"] for r in epochs]  # 32 augmented clips an epoch: noisy, so 3 epochs' means
    assert np.mean(train_top1[-3:]) > np.mean(train_top1[:3])
    # accuracy on the training videos (1 clip, centre crop) beats chance (25%) clearly
    from tpn.accel import make_eval_forward
    from tpn.data.datasets import build_dataset
    from tpn.engine.distributed import Dist
    from tpn.engine.evaluate import make_eval_loader, metrics, predict_probs

    ds = build_dataset(cfg.data, "val")
    train_set = build_dataset(cfg.data, "train")
    ds.samples = train_set.samples
    model = s["model"].eval()
    forward = make_eval_forward(model, cfg.data.mean, cfg.data.std)
    res = predict_probs(forward, make_eval_loader(ds, Dist(), 8, 0), Dist())
    assert metrics(res, 4)["top1"] >= 0.5
    run = tmp_path / "run"
    assert (run / "training_curves.png").stat().st_size > 1000
    assert (run / "best.pth").exists() and (run / "config.yaml").exists() and (run / "train.log").exists()
    assert sorted(p.name for p in run.glob("epoch_*.pth")) == ["epoch_0006.pth", "epoch_0007.pth", "epoch_0008.pth"]
    ckpt = torch.load(run / "epoch_0008.pth", weights_only=True)
    assert ckpt["format"] == "tpn" and ckpt["label_names"] == train_set.label_names
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])


def test_gradient_accumulation_equals_one_big_batch(tempo_data, tmp_path):  # noqa: F811
    common = SPLIT_INVARIANT + ["train.val_interval=0", "data.num_workers=0", "train.lr=0.05",
                                "train.lr_batch_size=4", "train.epochs=1"]
    big = train(tiny_cfg(tempo_data, common + ["train.batch_size=4"]), tmp_path / "big", device="cpu", max_iters=3)
    acc = train(tiny_cfg(tempo_data, common + ["train.batch_size=2", "train.accum_steps=2"]), tmp_path / "acc",
                device="cpu", max_iters=3)
    a, b = big["model"].state_dict(), acc["model"].state_dict()
    for k in a:
        if a[k].is_floating_point():
            assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k


def test_nan_loss_stops_with_a_clear_message(tempo_data, tmp_path):  # noqa: F811
    cfg = tiny_cfg(tempo_data, ["train.lr=1e30", "train.val_interval=0", "data.num_workers=0", "train.clip_grad=0"])
    with pytest.raises(TpnError, match=r"loss is nan at epoch 1 iteration 2: lower train.lr"):
        train(cfg, tmp_path / "nan", device="cpu", max_iters=5)


def test_epoch_summary_steady_rate_and_no_validation(tempo_data, tmp_path, caplog):  # noqa: F811
    cfg = tiny_cfg(tempo_data, ["train.val_interval=0", "data.num_workers=0", "train.epochs=2"])
    with caplog.at_level("INFO", logger="tpn"):
        s = train(cfg, tmp_path / "run", device="cpu")
    epochs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"epoch"' in x and '"kind": "epoch"' in x]
    assert len(epochs) == 2 and s["best_val_top1"] is None
    for r in epochs:  # 4 steps an epoch: the first 2 are warm-up, the rate is over the other 2
        assert 0 < r["warmup_s"] < r["time_s"] and r["steady_clips_per_s"] > 0
        steady_s = r["time_s"] - r["warmup_s"]
        assert r["steady_clips_per_s"] == pytest.approx(16 / steady_s, rel=0.05)  # 2 steps of 8 clips
    text = caplog.text
    assert "clips/s steady after" in text and "warm-up" in text
    finished = next(line for line in text.splitlines() if "finished:" in line)
    assert finished.rstrip().endswith(f"curves {tmp_path / 'run' / 'training_curves.png'}")
    assert "no validation" in finished and "best val" not in finished and "clips/s steady (warm-up" in finished


def test_the_time_the_step_waits_for_data_is_measured(tempo_data, tmp_path, monkeypatch, caplog):  # noqa: F811
    """Items made 0.1 s slower each (in this process: no workers): each log window's `data_wait` share
    and the epoch's `data_wait_s` hold that time, and the epoch's log line says the share."""
    import time

    from tpn.data.datasets import VideoDataset

    make = VideoDataset.__getitem__
    monkeypatch.setattr(VideoDataset, "__getitem__", lambda self, i: (time.sleep(0.1), make(self, i))[1])
    cfg = tiny_cfg(tempo_data, ["train.val_interval=0", "data.num_workers=0", "train.epochs=1", "train.log_interval=1",
                                "train.batch_size=4"])
    with caplog.at_level("INFO", logger="tpn"):
        train(cfg, tmp_path / "run", device="cpu")
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if r["kind"] == "train"]
    (epoch,) = [r for r in recs if r["kind"] == "epoch"]
    assert epoch["data_wait_s"] >= 0.1 * 4 * len(steps) and epoch["data_wait_s"] <= epoch["time_s"]
    assert all(0 < r["data_wait"] <= 1 for r in steps) and np.mean([r["data_wait"] for r in steps]) > 0.3
    line = next(x for x in caplog.text.splitlines() if "epoch 1 done" in x)
    logged = re.search(r"waited for data (\d+)% of it$", line.rstrip())
    assert logged and abs(int(logged.group(1)) - 100 * epoch["data_wait_s"] / epoch["time_s"]) < 2, line
    assert epoch["steady_data_wait"] > 0.3  # after the warm-up steps too: the hint is about the steady state
    assert "the loader is the bound" in caplog.text and "Choosing a decoding path" in caplog.text


def test_epoch_records_training_top1_of_its_clips(tempo_data, tmp_path, caplog):  # noqa: F811
    """Each epoch's record carries the top-1 of the clips it trained on: hits / clips, a multiple of 1/clips."""
    cfg = tiny_cfg(tempo_data, ["train.epochs=2", "train.val_interval=0", "data.num_workers=0",
                                "train.batch_size=4", "train.lr_batch_size=4"])
    with caplog.at_level("INFO", logger="tpn"):
        train(cfg, tmp_path / "run", device="cpu")
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    clips = 4 * epochs[0]["iter"]  # an epoch's iterations x the batch
    assert len(epochs) == 2
    for r in epochs:
        hits = r["train_top1"] * clips
        assert 0 <= r["train_top1"] <= 1 and abs(hits - round(hits)) < 1e-9
    assert "training top-1" in caplog.text
