"""Fine-tuning (issue 25.1): model.init_from from any checkpoint format, heads of another class count
re-initialised, frozen stages, train.backbone_lr_mult parameter groups kept on resume."""
import logging

import pytest
import torch

from tests.test_checkpoint import mmaction2_reference_state_dict
from tests.test_engine_common import TINY, tempo_data, tiny_cfg  # noqa: F401
from tpn.checkpoint import CheckpointError, FORMAT, load_file, save_atomic
from tpn.config import ConfigError, load_config, to_dict
from tpn.convert.weights import init_from
from tpn.engine.train import lr_at, param_groups, train
from tpn.errors import TpnError
from tpn.models.build import build_model

SMALL = ["model.backbone.base_channels=4", "model.backbone.stage_blocks=[1,1,1,1]", "model.neck.out_channels=16",
         "model.neck.groups=4", "model.head.dropout=0.0"]
HEAD_KEYS = ["head.fc.weight", "head.fc.bias", "aux_head.fc.weight", "aux_head.fc.bias"]


def small(classes: int, extra=()):
    return load_config("tpn_tiny_synth", SMALL + [f"model.head.num_classes={classes}", *extra])


def save_tpn(model, cfg, path):
    torch.manual_seed(0)
    with torch.no_grad():
        for k, v in model.state_dict().items():  # weights no fresh model has
            if k.endswith("running_var"):
                v.uniform_(0.5, 1.5)
            elif v.is_floating_point():
                v.add_(0.05 * torch.randn_like(v))
    save_atomic({"format": FORMAT, "state_dict": model.state_dict(), "config": to_dict(cfg),
                 "label_names": None}, path)
    return model.state_dict()


def test_head_of_another_class_count_is_reinitialised(tmp_path):
    src_cfg = small(7)
    theirs = save_tpn(build_model(src_cfg), src_cfg, tmp_path / "src.pth")
    model = build_model(small(3))
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    r = init_from(model, tmp_path / "src.pth")
    assert sorted(r["reinit"]) == sorted(HEAD_KEYS)
    assert r["why"] == "the checkpoint has 7 classes, this model 3"
    assert r["loaded"] == r["total"] - 4 and r["format"] == "tpn"
    for k, v in model.state_dict().items():
        assert torch.equal(v, fresh[k] if k in HEAD_KEYS else theirs[k]), k
    assert model.head.fc.weight.shape[0] == 3


def test_unmatched_non_head_tensors_are_one_line_errors(tmp_path):
    src_cfg = small(3, ["model.neck.out_channels=32"])
    save_tpn(build_model(src_cfg), src_cfg, tmp_path / "wide_neck.pth")
    with pytest.raises(CheckpointError) as e:
        init_from(build_model(small(3)), tmp_path / "wide_neck.pth")
    msg = str(e.value)
    assert "only a head may differ" in msg and "neck." in msg and "vs model" in msg and "\n" not in msg
    sd = build_model(small(3)).state_dict()
    del sd["backbone.layer2.0.conv1.conv.weight"]
    sd["backbone.mystery.weight"] = torch.zeros(2)
    torch.save({"state_dict": sd}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"backbone\.layer2\.0\.conv1\.conv\.weight \(missing\).*"
                                              r"1 checkpoint tensors the model lacks: backbone\.mystery\.weight"):
        init_from(build_model(small(3)), tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="not found"):
        init_from(build_model(small(3)), tmp_path / "nowhere.pth")


def test_mmaction2_k400_checkpoint_into_a_10_class_model(tmp_path):
    sd = mmaction2_reference_state_dict()  # every name and shape of mmaction2's TPN R50 8x8 K400 release
    assert sd["cls_head.fc_cls.weight"].shape == (400, 2048)
    sd["backbone.layer3.0.conv2.conv.weight"].fill_(0.5)
    sd["neck.aux_head.conv.conv.weight"].fill_(0.25)
    torch.save({"meta": {"epoch": 150}, "state_dict": sd}, tmp_path / "tpn_k400_mmaction2.pth")
    model = build_model(load_config("tpn_r50_8x8_k400", ["model.head.num_classes=10"]))
    r = init_from(model, tmp_path / "tpn_k400_mmaction2.pth")
    assert r["format"] == "mmaction2"
    assert sorted(r["reinit"]) == sorted(HEAD_KEYS)
    assert r["why"] == "the checkpoint has 400 classes, this model 10"
    assert (r["loaded"], r["total"]) == (375, 379)  # docs/training.md's example line
    assert bool((model.backbone.layer3[0].conv2.conv.weight == 0.5).all())
    assert bool((model.aux_head.conv.conv.weight == 0.25).all())  # the aux head's conv fits: loaded
    assert model.head.fc.weight.shape == (10, 2048) and model.head.fc.weight.abs().sum() > 0  # fresh, not zeros


def test_frozen_stages_get_no_gradient_and_keep_bn_statistics():
    cfg = small(3, ["model.backbone.frozen_stages=2"])
    model = build_model(cfg).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = ("backbone.conv1.", "backbone.layer1.", "backbone.layer2.")
    opt = torch.optim.SGD(param_groups(model, cfg), lr=0.1)
    for _ in range(2):
        out = model(torch.randn(2, 3, 8, 32, 32), torch.tensor([0, 1]))
        out["loss"].backward()
        for name, p in model.named_parameters():
            assert (p.grad is None) == name.startswith(frozen), name
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    for k, v in after.items():
        if k.startswith(frozen):
            assert torch.equal(v, before[k]), k  # weights and BN running statistics
    assert not torch.equal(after["backbone.layer3.0.conv1.bn.running_mean"],
                           before["backbone.layer3.0.conv1.bn.running_mean"])
    assert not torch.equal(after["backbone.layer3.0.conv1.conv.weight"], before["backbone.layer3.0.conv1.conv.weight"])


def test_lr_groups_backbone_times_mult_and_decay_exemptions_unchanged():
    cfg = small(3, ["train.backbone_lr_mult=0.1", "train.decay_norm_and_bias=false"])
    model = build_model(cfg)
    groups = param_groups(model, cfg)
    backbone = {id(p) for p in model.backbone.parameters()}
    for g in groups:
        assert {id(p) in backbone for p in g["params"]} == {g["lr_mult"] == 0.1}
    assert sorted((g["lr_mult"], g.get("weight_decay", -1)) for g in groups) == [(0.1, -1), (0.1, 0.0),
                                                                                    (1.0, -1), (1.0, 0.0)]
    exempt = {id(p) for g in groups if g.get("weight_decay") == 0.0 for p in g["params"]}
    plain = param_groups(model, small(3, ["train.decay_norm_and_bias=false"]))  # mult 1: the groups of before
    assert len(plain) == 2 and "lr_mult" not in plain[0]
    assert exempt == {id(p) for p in plain[1]["params"]}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    one = param_groups(model, small(3))
    assert len(one) == 1 and len(one[0]["params"]) == len(list(model.parameters()))


def test_config_rules_and_ranges():
    with pytest.raises(ConfigError, match=r"--set: model.init_from and model.backbone.pretrained2d both"):
        small(3, ["model.init_from=a.pth", "model.backbone.pretrained2d=r50.pth"])
    with pytest.raises(ConfigError, match=r"train.backbone_lr_mult' must be >= 0"):
        small(3, ["train.backbone_lr_mult=-1"])
    assert small(3, ["model.init_from=zoo:x"]).model.init_from == "zoo:x"


def test_finetune_run_logs_freezes_and_resume_keeps_the_groups(tempo_data, tmp_path, caplog):  # noqa: F811
    src_cfg = tiny_cfg(tempo_data, ["model.head.num_classes=7"])
    theirs = save_tpn(build_model(src_cfg), src_cfg, tmp_path / "pre.pth")
    ft = ["model.backbone.frozen_stages=1", "train.backbone_lr_mult=0.1", f"model.init_from={tmp_path / 'pre.pth'}",
          "train.ckpt_interval_iters=1", "train.epochs=2"]
    work = tmp_path / "ft"
    with caplog.at_level(logging.INFO, logger="tpn.train"):
        train(tiny_cfg(tempo_data, ft), work, device="cpu", max_iters=2)
    line = next(r.getMessage() for r in caplog.records if "model initialised from" in r.getMessage())
    assert f"{tmp_path / 'pre.pth'} (tpn):" in line and "re-initialised head.fc.weight" in line
    assert "(the checkpoint has 7 classes, this model 4)" in line
    ckpt, _ = load_file(work / "iter_00000002.pth", foreign=False)
    assert ckpt["config"]["train"]["backbone_lr_mult"] == 0.1
    assert ckpt["config"]["model"]["backbone"]["frozen_stages"] == 1
    for k, v in ckpt["state_dict"].items():
        if k.startswith(("backbone.conv1.", "backbone.layer1.")):
            assert torch.equal(v, theirs[k]), k  # frozen: the pre-trained weights and BN statistics
    assert not torch.equal(ckpt["state_dict"]["backbone.layer2.0.conv1.conv.weight"],
                           theirs["backbone.layer2.0.conv1.conv.weight"])
    ipe = ckpt["iters_per_epoch"]
    lr = lr_at(tiny_cfg(tempo_data, ft), 1, ipe, ckpt["scheduler"]["base_lr"])
    groups = sorted((g["lr_mult"], g["lr"]) for g in ckpt["optimizer"]["param_groups"])
    assert [m for m, _ in groups] == [0.1, 1.0]
    assert [x for _, x in groups] == pytest.approx([0.1 * lr, lr])
    # resume: the checkpoint's weights, not init_from's file again, and the same groups
    (tmp_path / "pre.pth").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tpn.train"):
        train(tiny_cfg(tempo_data, ft), work, device="cpu", resume="auto", max_iters=3)
    assert not any("model initialised from" in r.getMessage() for r in caplog.records)
    ckpt3, _ = load_file(work / "iter_00000003.pth", foreign=False)
    assert [g["lr_mult"] for g in ckpt3["optimizer"]["param_groups"]] == \
        [g["lr_mult"] for g in ckpt["optimizer"]["param_groups"]]
    for other in ("train.backbone_lr_mult=1", "train.backbone_lr_mult=0.5"):  # other groups; another multiplier
        with pytest.raises(TpnError, match="does not fit this config's parameter groups") as e:
            train(tiny_cfg(tempo_data, [*ft, other]), work, device="cpu", resume="auto", max_iters=4)
        assert "\n" not in str(e.value)


def test_data_lists_from_class_folders_train_a_model(tmp_path):
    """`tpn data lists` turns FOLDER/CLASS/VIDEO into lists that training reads as they are."""
    import shutil

    from tests.test_engine_common import cli
    from tpn.data.synthetic import generate_dataset

    generate_dataset(tmp_path / "synth", classes=3, videos_per_class=5, size=(64, 48), frames=24, seed=5, workers=1)
    mine = tmp_path / "my videos"
    for p in (tmp_path / "synth" / "videos").rglob("*.mp4"):  # videos/CLASS/x.mp4, one class a level deeper
        dst = mine / p.parent.name / ("takes" if p.parent.name.endswith("slow") else "") / p.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst)
    (mine / "notes").mkdir()
    (mine / "notes" / "readme.txt").write_text("not a video")
    r = cli("data", "lists", str(mine), "--val-fraction", "0.4", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert "wrote 9 train + 6 val videos of 3 classes" in r.stdout and "without videos: notes" in r.stdout
    assert f"--set '{f'data.root={mine}'}' --set '{f'data.train_list={mine}/train.txt'}' --set" in r.stdout
    names = (mine / "labels.txt").read_text().splitlines()
    assert names == sorted(p.name for p in (tmp_path / "synth" / "videos").iterdir())
    lines = (mine / "train.txt").read_text().splitlines() + (mine / "val.txt").read_text().splitlines()
    assert len(set(lines)) == 15 and all(names[int(x.rsplit(" ", 1)[1])] == x.split("/", 1)[0] for x in lines)
    again = cli("data", "lists", str(mine))
    assert again.returncode == 2 and "train.txt: exists; pass --overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    cfg = load_config("tpn_tiny_synth", TINY + [f"data.root={mine}", f"data.train_list={mine}/train.txt",
                                                  f"data.val_list={mine}/val.txt", f"data.label_map={mine}/labels.txt",
                                                  "model.head.num_classes=null", "data.num_workers=0",
                                                  "train.batch_size=3", "train.lr_batch_size=3", "train.epochs=1"])
    summary = train(cfg, tmp_path / "work", device="cpu")
    assert summary["epochs"][0]["val_top1"] is not None
    assert summary["model"].head.fc.weight.shape[0] == 3


def test_cli_init_from_errors_are_one_line(tempo_data, tmp_path):  # noqa: F811
    from tests.test_engine_common import TINY, cli, data_overrides, sets

    src_cfg = small(4, ["model.neck.out_channels=32"])
    save_tpn(build_model(src_cfg), src_cfg, tmp_path / "other_arch.pth")
    for ckpt, text in ((tmp_path / "nowhere.pth", "not found"), (tmp_path / "other_arch.pth", "only a head may differ")):
        r = cli("train", "tpn_tiny_synth", "--work-dir", str(tmp_path / ckpt.stem), "--device", "cpu",
                *sets(TINY + data_overrides(tempo_data) + [f"model.init_from={ckpt}", "train.epochs=1"]))
        assert r.returncode == 2, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and str(ckpt) in r.stderr.strip().splitlines()[-1]
        assert text in r.stderr.strip().splitlines()[-1]
    r = cli("train", "tpn_tiny_synth", "--set", "model.init_from=a.pth", "--set", "model.backbone.pretrained2d=b.pth")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "both initialise" in r.stderr
