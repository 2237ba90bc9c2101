"""Training engine on CPU: learning, DDP equivalence, exact resume after SIGKILL, test numbers, errors."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tpn.config import load_config
from tpn.engine.train import train

TINY = ["model.backbone.base_channels=4", "model.backbone.stage_blocks=[1,1,1,1]", "model.neck.out_channels=16",
        "model.neck.groups=4", "data.clip_len=4", "data.frame_interval=2", "data.short_side=48",
        "data.crop_size=40", "data.test_crop_size=48", "data.test_clips=2", "train.log_interval=1",
        "train.val_interval=1", "train.warmup_epochs=0", "train.clip_grad=10"]


def data_overrides(root: Path, classes: int) -> list[str]:
    return [f"data.root={root}", f"data.train_list={root}/train.txt", f"data.val_list={root}/val.txt",
            f"data.test_list={root}/val.txt", f"data.label_map={root}/labels.txt", f"model.head.num_classes={classes}"]


@pytest.fixture(scope="module")
def tempo_data(tmp_path_factory):
    from tpn.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tempo")
    generate_dataset(root, classes=4, videos_per_class=10, size=(64, 48), frames=24, seed=3, workers=2,
                     val_fraction=0.2)
    return root


def tiny_cfg(root, extra=()):
    return load_config("tpn_tiny_synth", TINY + data_overrides(root, 4) + list(extra))


@pytest.mark.slow
def test_loss_falls_and_accuracy_beats_chance(tempo_data, tmp_path):
    cfg = tiny_cfg(tempo_data, ["train.epochs=8", "train.lr=0.1", "train.batch_size=8", "train.lr_batch_size=8",
                                "data.num_workers=2", "train.schedule=cosine", "model.head.dropout=0.0"])
    s = train(cfg, tmp_path / "run", device="cpu")
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if r["kind"] == "train"]
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4])
    # accuracy on the training videos (1 clip, centre crop) beats chance (25%) clearly
    from tpn.accel import make_eval_forward
    from tpn.data.datasets import build_dataset
    from tpn.engine.distributed import Dist
    from tpn.engine.evaluate import make_eval_loader, metrics, predict_probs

    ds = build_dataset(cfg.data, "val")
    ds.items = build_dataset(cfg.data, "train").items
    ds.samples = build_dataset(cfg.data, "train").samples
    model = s["model"].eval()
    res = predict_probs(make_eval_forward(model, cfg, amp=False, channels_last=False), make_eval_loader(ds, Dist(), 8, 0),
                        Dist())
    assert metrics(res, 4)["top1"] >= 0.5
    assert (tmp_path / "run" / "training_curves.png").stat().st_size > 1000
    assert (tmp_path / "run" / "best.pth").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "tpn.cli", *args], capture_output=True, text=True, env=env, **kw)


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tempo_data, tmp_path):
    # BN in eval mode and no dropout: then per-process batches of 2 + gradient averaging must equal one batch of 4
    common = TINY + data_overrides(tempo_data, 4) + [
        "model.neck.enabled=false", "model.aux_head.loss_weight=0", "model.backbone.out_indices=[3]",
        "model.backbone.norm_eval=true", "model.head.dropout=0.0", "train.epochs=1", "train.val_interval=0",
        "data.num_workers=1", "train.lr=0.05", "train.lr_batch_size=4"]
    args = lambda bs: [f"--set={o}" for o in common + [f"train.batch_size={bs}"]]  # noqa: E731
    one = _cli("train", "tpn_tiny_synth", "--work-dir", str(tmp_path / "one"), "--device", "cpu", *args(4))
    assert one.returncode == 0, one.stderr[-2000:]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", str(_free_port()), "-m", "tpn.cli", "train", "tpn_tiny_synth",
                          "--work-dir", str(tmp_path / "two"), "--device", "cpu", *args(2)],
                         capture_output=True, text=True, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    a = torch.load(tmp_path / "one" / "epoch_0001.pth", weights_only=True)
    b = torch.load(tmp_path / "two" / "epoch_0001.pth", weights_only=True)
    assert a["global_iter"] == b["global_iter"] == 8  # 32 training videos / 4
    assert b["world_size"] == 2
    for k, v in a["state_dict"].items():
        if v.is_floating_point():
            assert torch.allclose(v, b["state_dict"][k], atol=2e-5, rtol=1e-4), k
    la = [json.loads(x)["loss"] for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
          if '"train"' in x]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
          if '"train"' in x]
    assert np.allclose(la, lb, rtol=1e-4)


@pytest.mark.slow
def test_exact_resume_after_sigkill(tempo_data, tmp_path):
    sets = [f"--set={o}" for o in TINY + data_overrides(tempo_data, 4) + [
        "train.epochs=2", "train.batch_size=4", "train.ckpt_interval_iters=3", "data.num_workers=1",
        "train.val_interval=0", "train.lr=0.05", "train.lr_batch_size=4"]]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    full = _cli("train", "tpn_tiny_synth", "--work-dir", str(tmp_path / "full"), "--device", "cpu", *sets, env=env)
    assert full.returncode == 0, full.stderr[-2000:]
    work = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "tpn.cli", "train", "tpn_tiny_synth", "--work-dir", str(work),
                             "--device", "cpu", *sets], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(work.glob("epoch_0001.pth")) and not list(work.glob("iter_000000[1-9]*.pth")):
        assert time.time() < deadline and proc.poll() is None, "no checkpoint appeared"
        time.sleep(0.05)
    # let it run on a little past the first in-epoch checkpoint, then kill it hard
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = list(work.glob("epoch_0002.pth"))
    assert not done, "the run finished before it was killed; make it longer"
    (work / "iter_99999999.pth").write_bytes(b"truncated")  # a broken newest file must be skipped
    resumed = _cli("train", "tpn_tiny_synth", "--work-dir", str(work), "--device", "cpu", "--resume", "auto", *sets,
                   env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    a = torch.load(tmp_path / "full" / "epoch_0002.pth", weights_only=True)["state_dict"]
    b = torch.load(work / "epoch_0002.pth", weights_only=True)["state_dict"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_test_numbers_match_a_hand_computed_average(tempo_data, tmp_path):
    from tpn.data.datasets import build_dataset
    from tpn.engine.evaluate import run_test
    from tpn.models.build import build_model
    from tpn.checkpoint import save_atomic

    cfg = tiny_cfg(tempo_data, ["data.num_workers=0", "test.batch_size=3"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for m in model.modules():  # make the toy model's predictions differ between videos
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.normal_(0, 0.1)
    ckpt = tmp_path / "toy.pth"
    save_atomic({"format": "tpn", "state_dict": model.state_dict()}, ckpt)
    r = run_test(cfg, ckpt, tmp_path / "test", views="2x3", device="cpu", progress=False)
    ds = build_dataset(cfg.data, "test")
    probs, labels = [], []
    with torch.no_grad():
        for i in range(len(ds)):
            views, label, _, ok = ds[i]
            assert views.shape[0] == 6 and ok
            x = (views.float() - torch.tensor(cfg.data.mean).view(3, 1, 1, 1)) / torch.tensor(cfg.data.std).view(3, 1, 1, 1)
            p = torch.stack([torch.softmax(model(v[None]), -1)[0] for v in x]).mean(0)
            probs.append(p.numpy())
            labels.append(label)
    probs = np.stack(probs)
    top1 = float((probs.argmax(1) == np.array(labels)).mean())
    assert r["metrics"]["videos"] == len(ds) == 8
    assert r["metrics"]["top1"] == pytest.approx(top1)
    rows = (tmp_path / "test" / "predictions.csv").read_text().splitlines()[1:]
    scores = [float(row.split(",")[4]) for row in rows]
    assert np.allclose(scores, probs.max(1), atol=1e-4)
    assert (tmp_path / "test" / "confusion_matrix.png").exists()
    assert json.loads((tmp_path / "test" / "metrics.json").read_text())["videos"] == 8


def test_user_errors_are_one_line(tempo_data, tmp_path):
    r = _cli("train", "tpn_tiny_synth", "--set", "train.epoch=3")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "unknown config key 'train.epoch'" in r.stderr
    r = _cli("test", "tpn_tiny_synth", "--checkpoint", str(tmp_path / "nope.pth"))
    assert r.returncode == 2 and "nope.pth: checkpoint file not found" in r.stderr
    assert r.stderr.strip().count("\n") == 0
    from tpn.models.build import build_model
    other = build_model(load_config("tpn_tiny_synth", ["model.head.num_classes=7"]))
    torch.save({"format": "tpn", "state_dict": other.state_dict()}, tmp_path / "other.pth")
    r = _cli("predict", str(tmp_path / "x.mp4"), "--config", "tpn_tiny_synth", "--checkpoint", str(tmp_path / "other.pth"))
    assert r.returncode == 2 and "mis-shaped: head.fc.weight (7, 256) vs model (10, 256)" in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_predict_uses_the_label_names_of_the_checkpoint(tempo_data, tmp_path):
    from tpn.models.build import build_model

    cfg = tiny_cfg(tempo_data)
    model = build_model(cfg)
    ckpt = tmp_path / "m.pth"
    torch.save({"format": "tpn", "state_dict": model.state_dict(), "label_names": ["a", "b", "c", "d"]}, ckpt)
    video = next((tempo_data / "videos").rglob("*.mp4"))
    sets = [f"--set={o}" for o in TINY + data_overrides(tempo_data, 4)]
    r = _cli("predict", str(video), str(tmp_path / "missing.mp4"), "--config", "tpn_tiny_synth", "--checkpoint",
             str(ckpt), "--topk", "2", "--json", "--device", "cpu", *sets)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [t["label"] for t in out[0]["top"]][0] in "abcd" and len(out[0]["top"]) == 2
    assert abs(sum(t["score"] for t in out[0]["top"])) <= 1.0 + 1e-6
    assert "error" in out[1]
