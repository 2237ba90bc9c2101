"""data.augment_on_device: the loader draws flip/jitter, the device applies them; same clips as on the CPU."""
from dataclasses import replace

import torch

from tests.test_engine_common import tempo_data, tiny_cfg  # noqa: F401
from tpn.data.datasets import build_dataset
from tpn.data.transforms import apply_augment


def test_device_augmentation_equals_loader_augmentation(tempo_data):  # noqa: F811
    cfg = tiny_cfg(tempo_data, ["data.flip=0.5", "data.color_jitter=true"])
    on_cpu = build_dataset(cfg.data, "train")
    deferred = build_dataset(replace(cfg.data, augment_on_device=True), "train")
    items = [deferred[i] for i in range(8)]
    assert all(item.aug.shape == (7,) and item.ok for item in items)
    assert all(on_cpu[i].aug is None for i in range(2))
    flips = [bool(item.aug[0]) for item in items]
    assert any(flips) and not all(flips)  # both branches are exercised
    batch = apply_augment(torch.stack([it.clip for it in items]), torch.stack([it.aug for it in items]))
    reference = torch.stack([on_cpu[i][0] for i in range(8)])
    diff = (batch.int() - reference.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3  # equal but for float rounding at .5
    assert [it[1] for it in items] == [on_cpu[i][1] for i in range(8)]


def test_training_with_device_augmentation_runs(tempo_data, tmp_path):  # noqa: F811
    from tpn.engine.train import train

    cfg = tiny_cfg(tempo_data, ["data.color_jitter=true", "data.flip=0.5", "data.augment_on_device=true",
                                "data.num_workers=1", "train.epochs=1", "train.val_interval=0", "train.batch_size=4"])
    s = train(cfg, tmp_path / "run", device="cpu", max_iters=3)
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count('"train"') == 3
    assert s["model"] is not None
