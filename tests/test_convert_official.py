"""Official TPN release checkpoints (decisionforce/TPN, mmaction v1 layout), written here."""
import pytest
import torch

from tpn.checkpoint import CheckpointError
from tpn.cli import main
from tpn.config import load_config
from tpn.convert.weights import load_model, load_weights
from tpn.models.build import build_model

TINY_YAML = ("model:\n  backbone: {base_channels: 8, stage_blocks: [1, 1, 1, 1]}\n"
             "  neck: {out_channels: 64, groups: 8}\n  head: {num_classes: 10}\n")
BASELINE_YAML = ("model:\n  backbone: {base_channels: 8, stage_blocks: [1, 1, 1, 1], out_indices: [3]}\n"
                 "  neck: {enabled: false}\n  aux_head: {loss_weight: 0}\n  head: {num_classes: 10}\n")

# tpn name prefix -> official name prefix, following the release's module tree
# (ResNet_SlowFast backbone, necks/tpn.py TPN, ClsHead).
NECK = [
    ("neck.spatial.0.0.", "necks.spatial_modulation.spatial_modulation.0.0."),
    ("neck.top_down_fusion.fuse.conv.", "necks.level_fusion_op2.fusion_conv.0."),
    ("neck.top_down_fusion.fuse.bn.", "necks.level_fusion_op2.fusion_conv.1."),
    ("neck.bottom_up_fusion.fuse.conv.", "necks.level_fusion_op.fusion_conv.0."),
    ("neck.bottom_up_fusion.fuse.bn.", "necks.level_fusion_op.fusion_conv.1."),
    ("neck.pyramid_fusion.conv.", "necks.pyramid_fusion_op.0."),
    ("neck.pyramid_fusion.bn.", "necks.pyramid_fusion_op.1."),
    ("aux_head.fc.", "necks.aux_head.fc."),
    ("head.fc.", "cls_head.fc_cls."),
]


def official_names(sd: dict, aux_as_list: bool = True) -> dict:
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        if k.startswith("backbone.conv1."):
            name = "backbone.conv1.weight" if p[2] == "conv" else "backbone.bn1." + p[3]
        elif k.startswith("backbone.layer"):
            block = f"backbone.{p[1]}.{p[2]}"
            if p[3] == "downsample":
                name = f"{block}.downsample.{0 if p[4] == 'conv' else 1}.{p[5]}"
            else:
                name = f"{block}.{p[3]}.weight" if p[4] == "conv" else f"{block}.bn{p[3][-1]}.{p[5]}"
        elif k.startswith("neck.temporal."):
            name = f"necks.temporal_modulation_ops.{p[2]}.conv.weight"
        elif k.startswith("neck.bottom_up."):
            name = f"necks.downsampling_ops.{p[2]}.conv.weight"
        elif ".branches." in k:
            op = "level_fusion_op2" if p[1] == "top_down_fusion" else "level_fusion_op"
            name = f"necks.{op}.ops.{p[3]}.{'conv' if p[4] == 'conv' else 'norm'}.{p[5]}"
        elif k.startswith("aux_head.conv."):
            name = ("necks.aux_head.convs.0." if aux_as_list else "necks.aux_head.convs.") + ".".join(p[2:])
        else:
            pre, off = next((a, b) for a, b in NECK if k.startswith(a))
            name = off + k[len(pre):]
        out[name] = v
    return out


def randomised(cfg_path):
    torch.manual_seed(0)
    model = build_model(load_config(cfg_path)).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return model


@pytest.mark.parametrize("aux_as_list", [True, False])
def test_official_tpn_checkpoint_loads_and_matches(tmp_path, aux_as_list):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    model = randomised(cfg)
    official = official_names(model.state_dict(), aux_as_list)
    assert "necks.level_fusion_op2.ops.1.norm.running_var" in official
    assert "backbone.layer3.0.downsample.1.num_batches_tracked" in official
    src = tmp_path / "tpn_r50f8s8.pth"
    torch.save({"meta": {"epoch": 150, "mmcv_version": "0.2.10"}, "state_dict": official,
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}}, src)
    x = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        ref, ref_aux = model(x), model.forward_aux(x)
    loaded = load_model(cfg, src)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ref)
        torch.testing.assert_close(loaded.forward_aux(x), ref_aux)
    dst = tmp_path / "converted.pth"
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(10)) + "\n")
    assert main(["convert", str(src), str(dst), "--config", str(cfg), "--labels", str(labels)]) == 0
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt["source"]["format"] == "tpn_official" and ckpt["label_names"][3] == "class 3"
    with torch.no_grad():
        torch.testing.assert_close(load_model(cfg, dst)(x), ref)


def test_official_slowonly_baseline_loads(tmp_path):
    cfg = tmp_path / "baseline.yaml"
    cfg.write_text(BASELINE_YAML)
    model = randomised(cfg)
    src = tmp_path / "r50f8s8_baseline.pth"
    # the release predates PyTorch 1.6: its files use the legacy (non-zip) serialisation
    torch.save({"state_dict": official_names(model.state_dict())}, src, _use_new_zipfile_serialization=False)
    x = torch.randn(1, 3, 8, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(load_model(cfg, src)(x), model(x))


def test_official_errors_list_the_tensors(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY_YAML)
    official = official_names(randomised(cfg).state_dict())
    del official["necks.level_fusion_op.fusion_conv.0.weight"]
    official["necks.temporal_modulation_ops.0.conv.weight"] = torch.zeros(64, 512, 3, 1, 1)
    src = tmp_path / "bad.pth"
    torch.save({"state_dict": official}, src)
    with pytest.raises(CheckpointError) as e:
        load_weights(build_model(load_config(cfg)), src)
    msg = str(e.value)
    assert "1 missing: neck.bottom_up_fusion.fuse.conv.weight" in msg
    assert "neck.temporal.0.conv.conv.weight (64, 512, 3, 1, 1) vs model (64, 32, 3, 1, 1)" in msg
    official["necks.level_fusion_op.fusion_conv.0.weight"] = torch.zeros(1)
    official["necks.upsampling_ops.0.weight"] = torch.zeros(1)
    torch.save({"state_dict": official}, src)
    assert main(["convert", str(src), str(tmp_path / "o.pth"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "1 unexpected tensors for format tpn_official: necks.upsampling_ops.0.weight" in err
    assert err.count("\n") == 1


def test_full_size_r50_names_map_strictly():
    """Every tensor of the full R50 8x8 model round-trips through the official and seed Paddle names."""
    from tests.test_convert_paddle import tpn_to_paddle_names
    from tpn.checkpoint import load_state_dict_strict
    from tpn.convert.weights import fit_to_model, rename

    model = build_model(load_config("tpn_r50_8x8_k400"))
    own = model.state_dict()
    official = official_names(own)
    assert len(official) == len(own) == 379
    renamed, dropped = rename(official, "tpn_official", "official")
    assert dropped == [] and all(renamed[k] is own[k] for k in own)
    paddle = tpn_to_paddle_names(own)
    assert "res5c_branch2a_weights" in paddle and "bn4f_branch2c_variance" in paddle
    renamed, _ = rename(paddle, "paddle_tpn", "paddle")
    fit_to_model(model, renamed)
    load_state_dict_strict(model, renamed, "paddle")


def test_full_size_r101_official_names_map_strictly():
    """The release's r101f8s8 (res4 blocks b1..b22 in Paddle, 23 blocks here) fits tpn_r101_8x8_k400."""
    from tpn.convert.weights import rename

    model = build_model(load_config("tpn_r101_8x8_k400"))
    own = model.state_dict()
    renamed, dropped = rename(official_names(own), "tpn_official", "official")
    assert dropped == [] and set(renamed) == set(own) and all(renamed[k] is own[k] for k in own)
