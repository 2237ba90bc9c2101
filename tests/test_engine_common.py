"""Shared helpers of the engine tests (no tests here): a tiny tempo dataset and tiny configs."""
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tpn.config import load_config

# A TPN of 4 base channels, one block per stage, 4 frames of 40 px: a training step takes milliseconds.
TINY = ["model.backbone.base_channels=4", "model.backbone.stage_blocks=[1,1,1,1]", "model.neck.out_channels=16",
        "model.neck.groups=4", "data.clip_len=4", "data.frame_interval=2", "data.short_side=48",
        "data.crop_size=40", "data.test_crop_size=48", "data.test_clips=2", "train.log_interval=1",
        "train.val_interval=1", "train.warmup_epochs=0", "train.clip_grad=10"]

# Batch statistics and dropout make a result depend on how a batch is split; these make it not.
SPLIT_INVARIANT = ["model.neck.enabled=false", "model.aux_head.loss_weight=0", "model.backbone.out_indices=[3]",
                   "model.backbone.norm_eval=true", "model.head.dropout=0.0"]


def data_overrides(root: Path, classes: int = 4) -> list[str]:
    return [f"data.root={root}", f"data.train_list={root}/train.txt", f"data.val_list={root}/val.txt",
            f"data.test_list={root}/val.txt", f"data.label_map={root}/labels.txt", f"model.head.num_classes={classes}"]


@pytest.fixture(scope="module")
def tempo_data(tmp_path_factory):
    """4 classes x 10 real mp4 videos (32 train, 8 val), made once per test session."""
    from tpn.data.synthetic import generate_dataset

    root = tmp_path_factory.getbasetemp() / "engine_tempo"
    if not (root / "labels.txt").exists():
        generate_dataset(root, classes=4, videos_per_class=10, size=(64, 48), frames=24, seed=3, workers=2,
                         val_fraction=0.2)
    return root


def tiny_cfg(root, extra=()):
    return load_config("tpn_tiny_synth", TINY + data_overrides(root) + list(extra))


def sets(overrides) -> list[str]:
    return [f"--set={o}" for o in overrides]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "tpn.cli", *args], capture_output=True, text=True, env=env, **kw)


def torchrun(nproc: int, *args, env=None):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                           "--master-port", str(free_port()), "-m", "tpn.cli", *args],
                          capture_output=True, text=True, env=env)
