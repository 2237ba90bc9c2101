"""2D -> 3D inflation from torchvision/timm-layout and Paddle TSN-layout ResNets (written here)."""
import pickle

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.test_engine_common import tempo_data, tiny_cfg  # noqa: F401
from tpn.checkpoint import CheckpointError
from tpn.config import load_config
from tpn.convert.inflate import inflate_2d_into
from tpn.models.build import build_model
from tpn.models.resnet3d import ResNet3dSlowOnly

TINY = ["model.backbone.base_channels=8", "model.backbone.stage_blocks=[1,1,1,1]",
        "model.neck.out_channels=64", "model.neck.groups=8", "model.head.num_classes=10"]


class Bottleneck2d(nn.Module):
    """torchvision's Bottleneck layout (stride on the 3x3 conv), written out for the test."""

    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, planes * 4, 1, bias=False), nn.BatchNorm2d(planes * 4)
        self.downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.downsample(x))


class ResNet2d(nn.Module):
    def __init__(self, base=8, classes=7):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base)
        cin = base
        for i in range(4):
            planes = base * 2**i
            setattr(self, f"layer{i + 1}", nn.Sequential(Bottleneck2d(cin, planes, 1 if i == 0 else 2)))
            cin = planes * 4
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        outs = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            outs.append(x)
        return outs


def random_2d(seed=0) -> ResNet2d:
    torch.manual_seed(seed)
    net = ResNet2d()
    for m in net.modules():  # non-trivial BN statistics, so copying them is tested too
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def tiny_backbone() -> ResNet3dSlowOnly:
    return ResNet3dSlowOnly(base_channels=8, stage_blocks=(1, 1, 1, 1), out_indices=(2, 3)).eval()


PADDLE_BRANCH = {"conv1": "2a", "conv2": "2b", "conv3": "2c"}


def paddle_tsn_names(sd: dict) -> dict:
    """The torchvision-layout tensors under the Paddle TSN ResNet's names (fc as [in, out])."""
    out = {}
    for k, v in sd.items():
        if k.endswith("num_batches_tracked"):
            continue
        parts = k.split(".")
        if parts[0] == "fc":
            out["fc_0.w_0" if parts[1] == "weight" else "fc_0.b_0"] = v.t() if parts[1] == "weight" else v
            continue
        if parts[0] in ("conv1", "bn1"):
            conv, bn, field = "conv1", "bn_conv1", parts[1]
        else:
            stage, block = int(parts[0][5:]) + 1, chr(ord("a") + int(parts[1]))
            if parts[2] == "downsample":
                branch, is_bn, field = "1", parts[3] == "1", parts[4]
            else:
                branch, is_bn, field = PADDLE_BRANCH["conv" + parts[2][-1]], parts[2].startswith("bn"), parts[3]
            conv, bn = f"res{stage}{block}_branch{branch}", f"bn{stage}{block}_branch{branch}"
            if not is_bn:
                out[conv + "_weights"] = v
                continue
        if parts[0] == "conv1":
            out[conv + "_weights"] = v
            continue
        suffix = {"weight": "scale", "bias": "offset", "running_mean": "mean", "running_var": "variance"}[field]
        out[f"{bn}_{suffix}"] = v
    return out


def check_matches_2d(backbone, net2d):
    frame = torch.randn(2, 3, 64, 64)
    clip = frame.unsqueeze(2).repeat(1, 1, 8, 1, 1)  # 8 identical frames
    with torch.no_grad():
        res4, res5 = backbone(clip)
        ref = net2d(frame)
    # 2 inflated 3x1x1 convs (res4, res5): their zero padding reaches 2 frames in from each end
    for t in range(2, 6):
        torch.testing.assert_close(res4[:, :, t], ref[2], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(res5[:, :, t], ref[3], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(res5[:, :, 0], ref[3], atol=1e-3)  # the border really differs


def test_torchvision_layout_inflates_to_the_2d_network(tmp_path):
    net2d = random_2d()
    path = tmp_path / "resnet2d.pth"
    torch.save(net2d.state_dict(), path)
    backbone = tiny_backbone()
    report = inflate_2d_into(backbone, path)
    assert report["ignored"] == ["fc.weight", "fc.bias"]
    w = backbone.layer3[0].conv1.conv.weight
    assert w.shape[2] == 3
    for t in range(3):
        torch.testing.assert_close(w[:, :, t], net2d.layer3[0].conv1.weight / 3)
    check_matches_2d(backbone, net2d)


def test_timm_style_checkpoint_wrapper(tmp_path):
    net2d = random_2d(1)
    path = tmp_path / "timm_resnet.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in net2d.state_dict().items()}, "epoch": 3}, path)
    model = build_model(load_config("tpn_r50_8x8_k400", TINY))
    inflate_2d_into(model.backbone, path)
    check_matches_2d(model.eval().backbone, net2d)


def test_config_option_inflates_when_training_starts_from_scratch_only(tempo_data, tmp_path):  # noqa: F811
    from tpn.engine.train import train

    net2d = random_2d(1)
    path = tmp_path / "resnet2d.pth"
    torch.save(net2d.state_dict(), path)
    cfg = tiny_cfg(tempo_data, ["model.backbone.base_channels=8", f"model.backbone.pretrained2d={path}",
                                "train.lr=0", "train.epochs=1", "train.val_interval=0", "data.num_workers=0",
                                "train.batch_size=8"])
    assert not torch.equal(build_model(cfg).backbone.layer1[0].conv2.bn.weight, net2d.layer1[0].bn2.weight)
    backbone = train(cfg, tmp_path / "run", device="cpu")["model"].backbone  # lr 0: the initial weights
    for t in range(3):
        torch.testing.assert_close(backbone.layer3[0].conv1.conv.weight[:, :, t], net2d.layer3[0].conv1.weight / 3)
    assert torch.equal(backbone.layer1[0].conv2.bn.weight, net2d.layer1[0].bn2.weight)
    path.unlink()  # building a model (test, predict, export) and resuming never read the 2D file
    build_model(cfg)
    assert train(cfg, tmp_path / "run", resume="auto", device="cpu")["model"] is not None


def write_pdparams(path, arrays: dict, protocol=2):
    with open(path, "wb") as f:  # what fluid.save writes: a pickle of {name: numpy array}
        pickle.dump({k: v.numpy() for k, v in arrays.items()}, f, protocol=protocol)


def test_paddle_tsn_pdparams_and_persistables_inflate_the_same(tmp_path):
    from tests.test_convert_paddle import write_lod_tensor

    net2d = random_2d(2)
    paddle_sd = paddle_tsn_names(net2d.state_dict())
    assert "res4a_branch2a_weights" in paddle_sd and "bn2a_branch1_variance" in paddle_sd
    write_pdparams(tmp_path / "ResNet50_pretrained.pdparams", paddle_sd)
    folder = tmp_path / "ResNet50_pretrained"
    folder.mkdir()
    for name, t in paddle_sd.items():
        write_lod_tensor(folder / name, t.numpy())
    for src in (tmp_path / "ResNet50_pretrained.pdparams", folder):
        backbone = tiny_backbone()
        report = inflate_2d_into(backbone, src)
        assert sorted(report["ignored"]) == ["fc_0.b_0", "fc_0.w_0"]
        check_matches_2d(backbone, net2d)


def test_paddle_resnet101_block_names():
    from tpn.convert.weights import rename

    renamed, _ = rename({"res4b22_branch2c_weights": torch.zeros(1), "bn4b1_branch2b_offset": torch.zeros(1),
                         "res4a_branch1_weights": torch.zeros(1), "bn5c_branch2a_mean": torch.zeros(1)},
                        "paddle_tsn2d", "x")
    assert sorted(renamed) == ["layer3.0.downsample.conv.weight", "layer3.1.conv2.bn.bias",
                               "layer3.22.conv3.conv.weight", "layer4.2.conv1.bn.running_mean"]


def test_inflation_errors_list_missing_unexpected_misshaped(tmp_path):
    sd = random_2d().state_dict()
    del sd["layer2.0.conv2.weight"]
    sd["layer2.0.bn3.weight"] = torch.ones(5)
    sd["layer3.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)  # 3x3 where the 3D net has 1x1
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        inflate_2d_into(tiny_backbone(), path)
    msg = str(e.value)
    assert "1 missing: layer2.0.conv2.conv.weight" in msg
    assert "layer2.0.conv3.bn.weight (5,) vs backbone (64,)" in msg
    assert "layer3.0.conv1.conv.weight (32, 64, 3, 3) vs backbone (32, 64, 3, 1, 1)" in msg
    sd = random_2d().state_dict()
    sd["layer5.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"1 unexpected: layer5\.0\.conv1\.conv\.weight"):
        inflate_2d_into(tiny_backbone(), path)
    torch.save({"encoder.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a 2D ResNet"):
        inflate_2d_into(tiny_backbone(), path)


def test_convert_refuses_a_2d_resnet_with_a_hint(tmp_path, capsys):
    from tpn.cli import main

    path = tmp_path / "resnet50.pth"
    torch.save(random_2d().state_dict(), path)
    assert main(["convert", str(path), str(tmp_path / "out.pth")]) == 2
    assert "model.backbone.pretrained2d" in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()
