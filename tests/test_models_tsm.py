"""TSM backbone and the 2D recognizer: the shift, the options, ImageNet weights, config errors."""
import pytest
import torch

from tpn.config import ConfigError, load_config
from tpn.convert.inflate import inflate_2d_into
from tpn.models.build import build_model
from tpn.models.resnet_tsm import ResNetTSM, temporal_shift
from tests.test_convert_inflate import random_2d

TINY = ["model.backbone.base_channels=8", "model.backbone.stage_blocks=[1,1,1,1]",
        "model.neck.out_channels=32", "model.neck.groups=4", "model.head.num_classes=5"]
CONFIG = "tpn_tsm_r50_1x1x8_sthv1"


def tiny(extra=()):
    return build_model(load_config(CONFIG, TINY + list(extra)))


def clip(n=2, t=8, s=64, seed=0):
    return torch.randn(n, 3, t, s, s, generator=torch.Generator().manual_seed(seed))


def test_temporal_shift_moves_one_eighth_each_way_within_a_clip():
    n, t, c = 2, 4, 16
    x = torch.arange(n * t * c, dtype=torch.float32).view(n * t, c, 1, 1) + 1
    y = temporal_shift(x, t, shift_div=8).view(n, t, c)
    x = x.view(n, t, c)
    assert torch.equal(y[:, :-1, 0:2], x[:, 1:, 0:2])  # channels 0-1: from the next frame
    assert torch.equal(y[:, 1:, 2:4], x[:, :-1, 2:4])  # channels 2-3: from the previous frame
    assert torch.equal(y[:, :, 4:], x[:, :, 4:])  # the other 3/4 stay
    assert (y[:, -1, 0:2] == 0).all() and (y[:, 0, 2:4] == 0).all()  # zeros past a clip's ends: no leak between clips


def test_tsm_model_shapes_train_and_eval():
    model = tiny()
    labels = torch.tensor([1, 3])
    out = model.train()(clip(), labels)
    assert set(out) == {"loss", "loss_cls", "loss_aux", "logits"}
    out["loss"].backward()
    assert model.backbone.conv1.conv.weight.grad is not None and model.aux_head.fc.weight.grad is not None
    model.eval()
    res4, res5 = model.features(clip())
    assert res4.shape == (2, 128, 8, 4, 4) and res5.shape == (2, 256, 8, 2, 2)  # (N, C, T, H, W) for the neck
    assert model(clip(s=80)).shape == (2, 5)  # fully convolutional


def test_clip_length_must_equal_num_segments():
    with pytest.raises(ValueError, match=r"clips of 8 frames \(model.backbone.num_segments\), got 16"):
        tiny().eval()(clip(1, 16))
    model = tiny(["model.backbone.num_segments=16"]).eval()
    assert model(clip(1, 16)).shape == (1, 5)


def test_with_cp_frozen_stages_norm_eval():
    torch.manual_seed(0)
    plain = tiny()
    cp = tiny(["model.backbone.with_cp=true"])
    cp.load_state_dict(plain.state_dict())
    x, labels = clip(), torch.tensor([0, 1])
    for m in (plain, cp):
        m.train()
        m.head.dropout = m.aux_head.dropout = torch.nn.Identity()
    lp, lc = plain(x, labels)["loss"], cp(x, labels)["loss"]
    lp.backward()
    lc.backward()
    torch.testing.assert_close(lc, lp)
    torch.testing.assert_close(cp.backbone.layer1[0].conv1.conv.weight.grad, plain.backbone.layer1[0].conv1.conv.weight.grad)
    frozen = tiny(["model.backbone.frozen_stages=1", "model.backbone.norm_eval=true"]).train()
    assert not any(p.requires_grad for p in frozen.backbone.layer1.parameters())
    assert all(p.requires_grad for p in frozen.backbone.layer2.parameters())
    assert not frozen.backbone.layer2[0].conv1.bn.training and frozen.neck.pyramid_fusion.bn.training


def test_imagenet_resnet_loads_without_inflation(tmp_path):
    """A torchvision-layout 2D ResNet fills the TSM backbone tensor for tensor; with the shift
    off, the backbone is that ResNet applied to every frame."""
    net2d = random_2d()
    path = tmp_path / "resnet50_imagenet.pth"
    torch.save(net2d.state_dict(), path)
    model = tiny()
    inflate_2d_into(model.backbone, path)  # what `tpn train` does with model.backbone.pretrained2d
    model.eval()
    torch.testing.assert_close(model.backbone.layer3[0].conv2.conv.weight, net2d.layer3[0].conv2.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.backbone.layer2[0].downsample.bn.running_var,
                               net2d.layer2[0].downsample[1].running_var, rtol=0, atol=0)
    for block in model.backbone.modules():
        if hasattr(block, "shift"):
            block.shift = False
    x = clip(1)
    with torch.no_grad():
        res4, res5 = model.features(x)
        ref = net2d(x[0].transpose(0, 1))  # the 8 frames as a batch of images
    torch.testing.assert_close(res4[0].transpose(0, 1), ref[2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res5[0].transpose(0, 1), ref[3], rtol=1e-4, atol=1e-5)


def test_resnet101_shifts_every_other_block():
    b = ResNetTSM(depth=101, base_channels=8)
    assert [blk.shift for blk in b.layer3][:4] == [True, False, True, False]
    assert [blk.shift for blk in b.layer1] == [True, False, True]
    assert all(blk.shift for blk in ResNetTSM(depth=50, base_channels=8).layer3)


@pytest.mark.parametrize("override,needle", [
    ("model.backbone.type=tsm", "'model.backbone.type' must be one of 'resnet3d', 'resnet_tsm'"),
    ("model.backbone.inflate=[0,0,0,0]", "'model.backbone.inflate' applies to model.backbone.type resnet3d only"),
    ("model.backbone.shift_div=1", "'model.backbone.shift_div' must be >= 2, got 1"),
])
def test_backbone_type_errors(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        build_model(load_config(CONFIG, [override]))
    with pytest.raises(ConfigError, match="'model.backbone.num_segments' applies to model.backbone.type resnet_tsm only"):
        build_model(load_config("tpn_r50_8x8_k400", ["model.backbone.num_segments=4"]))


def test_tpn_info_prints_the_mmaction2_parameter_count(capsys):
    from tpn.cli import main

    assert main(["info", CONFIG, "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 82,445,724 (auxiliary head included)" in out
    assert "backbone.layer4 (frames)  (8, 2048, 2, 2)" in out and "neck                      (1, 2048, 1, 2, 2)" in out


@pytest.mark.parametrize("config", ["tpn_tiny_synth", "slowonly_tiny_synth", "tpn_tsm_tiny_synth"])
def test_tpn_info_flops_are_twice_the_multiply_adds_of_every_conv_and_linear(config, capsys):
    """`tpn info`'s FLOPs per view: the model's convolutions and linear layers counted by hand
    (2 FLOPs per multiply-add; BatchNorm, pooling and the shift count nothing) give the same total."""
    from tpn.cli import main
    from tpn.models.info import measure

    cfg = load_config(config)
    model = build_model(cfg).eval()
    macs = []

    def count(m, _inp, out):
        k = m.weight[0].numel() if isinstance(m, torch.nn.modules.conv._ConvNd) else m.in_features
        macs.append(out.numel() * k)

    for m in model.modules():
        if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
            m.register_forward_hook(count)
    with torch.no_grad():
        model(torch.zeros(1, 3, cfg.data.clip_len, 64, 64))
    r = measure(cfg, size=64)
    assert r["flops"] == 2 * sum(macs) > 0
    assert main(["info", config, "--size", "64"]) == 0
    assert f"FLOPs per view (torch.utils.flop_counter, 2 FLOPs per multiply-add): {r['flops'] / 1e9:.2f} GFLOP" \
        in capsys.readouterr().out
