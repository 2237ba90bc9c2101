"""The Something-Something workflow with the shipped TSM-TPN configs, on synthetic raw frames:
`tpn train tpn_tsm_r50_1x1x8_sthv1` (the full R50 model) runs, and a converted mmaction2 TSM-TPN
checkpoint is tested (`tpn test`, 2 x 3 views) with mmaction2's own scores."""
import json

import numpy as np
import pytest
import torch

from tests.test_engine_common import cli, sets


def sth_overrides(root) -> list[str]:
    """The shipped config on the synthetic V1-layout frames at small sizes (the model unchanged)."""
    return [f"data.root={root}", f"data.train_list={root}/train.txt", f"data.val_list={root}/val.txt",
            f"data.test_list={root}/val.txt", "data.short_side=72", "data.crop_size=64", "data.test_crop_size=72",
            "data.num_workers=0", "test.batch_size=2"]


@pytest.fixture(scope="module")
def sthv1_frames(tmp_path_factory):
    from tpn.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("sthv1_synth")
    generate_dataset(root, classes=4, videos_per_class=3, size=(80, 64), frames=24, seed=5, workers=1,
                     layout="sthv1", val_fraction=0.34)
    return root


@pytest.mark.slow  # the full 82M-parameter model trains for an epoch on the CPU (about 30 s)
def test_train_full_sthv1_config_on_synthetic_frames(sthv1_frames, tmp_path):
    overrides = sth_overrides(sthv1_frames) + [f"data.label_map={sthv1_frames}/labels.txt", "model.head.num_classes=4",
                                               "data.flip_label_pairs=[[0,2],[1,3]]",
                                               "train.epochs=1", "train.batch_size=2", "train.val_interval=1"]
    r = cli("train", "tpn_tsm_r50_1x1x8_sthv1", "--work-dir", str(tmp_path / "run"), "--device", "cpu",
            *sets(overrides), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "finished: 1 epochs" in r.stderr and "validation" in r.stderr
    ckpt = torch.load(tmp_path / "run" / "epoch_0001.pth", weights_only=True)
    assert ckpt["config"]["model"]["backbone"]["type"] == "resnet_tsm"
    n = sum(v.numel() for k, v in ckpt["state_dict"].items() if not k.endswith(("running_mean", "running_var",
                                                                                  "num_batches_tracked")))
    assert n == 82_445_724 - 2 * 170 * 2049  # the full model with 4 classes, not 174, in the head and aux head


def test_tpn_test_of_a_converted_mmaction2_tsm_checkpoint(sthv1_frames, tmp_path):
    from tests.mmaction2_ref import build_reference_tsm, randomize
    from tpn.config import load_config
    from tpn.data.datasets import build_dataset
    from tpn.data.transforms import normalize

    ref = build_reference_tsm()
    randomize(ref, seed=6)
    with torch.no_grad():  # logits near 1, so that the averaged probabilities are not one-hot
        ref.cls_head.fc_cls.weight.mul_(1e-4)
        ref.cls_head.fc_cls.bias.mul_(1e-4)
    src = tmp_path / "tpn_tsm_mmaction2.pth"
    torch.save({"state_dict": ref.state_dict()}, src)
    dst = tmp_path / "tpn_tsm.pth"
    r = cli("convert", str(src), str(dst), "--config", "tpn_tsm_r50_1x1x8_sthv1")
    assert r.returncode == 0, r.stderr
    overrides = sth_overrides(sthv1_frames)
    r = cli("test", "tpn_tsm_r50_1x1x8_sthv1", "--checkpoint", str(dst), "--views", "2x3", "--device", "cpu",
            "--work-dir", str(tmp_path / "test"), *sets(overrides), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "test" / "metrics.json").read_text())
    assert m["videos"] == 4 and not m["skipped_videos"]
    rows = json.loads((tmp_path / "test" / "predictions.json").read_text())
    # mmaction2's Recognizer2D (fcn_test) on the same 6 views of the first video, probabilities averaged
    cfg = load_config("tpn_tsm_r50_1x1x8_sthv1", overrides)
    views = build_dataset(cfg.data, "test")[rows[0]["index"]][0]
    x = normalize(views, torch.tensor(cfg.data.mean), torch.tensor(cfg.data.std))
    ref.cls_head.new_cls = None
    with torch.no_grad():
        scores, _ = ref.extract_feat(x.transpose(1, 2).reshape(1, -1, 3, *x.shape[-2:]), stage="head", test_mode=True)
    probs = scores.softmax(-1).mean(0)
    assert scores.shape == (6, 174)
    for item in rows[0]["top5"]:  # no label map: classes are named by their index
        assert abs(probs[int(item["label"])].item() - item["score"]) < 1e-5
    assert [int(t["label"]) for t in rows[0]["top5"]] == torch.topk(probs, 5).indices.tolist()
    assert np.isclose(probs.sum().item(), 1.0)


def test_quick_tsm_demo_runs_on_jpg_frames(tmp_path):
    r = cli("demo", "--model", "tsm", "--quick", "--out", str(tmp_path), "--device", "cpu", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "training tpn_tsm_tiny_synth" in r.stdout and "2x3-view test" in r.stdout and "(chance 25%)" in r.stdout
    assert (tmp_path / "data_quick_sthv1" / "rawframes" / "right_slow_0000" / "00001.jpg").is_file()
    m = json.loads((tmp_path / "test_quick_tsm" / "metrics.json").read_text())
    assert m["videos"] == 8 and not m["skipped_videos"]
