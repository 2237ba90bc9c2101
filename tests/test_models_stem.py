"""The stem's exact reformulations (input channels padded with zeros, 2D ops over frames) give the
model's numbers: the same logits, losses and gradients as the plain 3D stem."""
import pytest
import torch

from tpn.config import ConfigError, load_config
from tpn.models.build import build_model
from tpn.models.layers import fold_batchnorm

TINY = ["model.backbone.base_channels=8", "model.backbone.stage_blocks=[1,1,1,1]", "model.neck.out_channels=64",
        "model.neck.groups=8", "model.head.num_classes=5", "model.head.dropout=0.0"]


def _pair(variant: list[str]):
    torch.manual_seed(0)
    ref = build_model(load_config("tpn_r50_8x8_k400", TINY))
    alt = build_model(load_config("tpn_r50_8x8_k400", TINY + variant))
    alt.load_state_dict(ref.state_dict())  # same parameter names: checkpoints load either way
    return ref, alt


@pytest.mark.parametrize("variant", [["model.backbone.stem_pad_channels=4"], ["model.backbone.stem_pad_channels=8"],
                                     ["model.backbone.stem_2d=true"],
                                     ["model.backbone.stem_2d=true", "model.backbone.stem_pad_channels=8"]])
@pytest.mark.parametrize("channels_last", [False, True])
def test_stem_variants_equal_the_plain_stem(variant, channels_last):
    ref, alt = _pair(variant)
    x = torch.randn(2, 3, 8, 48, 48)
    y = torch.tensor([1, 3])
    if channels_last:
        ref, alt = (m.to(memory_format=torch.channels_last_3d) for m in (ref, alt))
        x = x.contiguous(memory_format=torch.channels_last_3d)
    outs = []
    for m in (ref, alt):  # the auxiliary head's dropout draws from the global RNG
        torch.manual_seed(1)
        outs.append(m.train()(x, y))
    for k in ("loss", "loss_aux", "logits"):
        assert torch.allclose(outs[0][k], outs[1][k], atol=1e-5, rtol=1e-5), k
    for o in outs:
        o["loss"].backward()
    gr, ga = dict(ref.named_parameters()), dict(alt.named_parameters())
    for name, p in gr.items():
        assert torch.allclose(p.grad, ga[name].grad, atol=1e-5, rtol=1e-4), name
    # running statistics move the same way, and the eval + BN-folded test path agrees too
    assert torch.allclose(ref.backbone.conv1.bn.running_mean, alt.backbone.conv1.bn.running_mean, atol=1e-6)
    ref.eval(), alt.eval()
    plain = ref(x)
    assert torch.allclose(plain, alt(x), atol=1e-5, rtol=1e-5)
    assert torch.allclose(plain, fold_batchnorm(alt)(x), atol=1e-4, rtol=1e-4)


def test_stem_options_are_checked():
    with pytest.raises(ConfigError, match="stem_pad_channels"):
        load_config("tpn_r50_8x8_k400", ["model.backbone.stem_pad_channels=5"])
    with pytest.raises(ValueError, match="stem_2d"):
        build_model(load_config("tpn_r50_8x8_k400", TINY + ["model.backbone.stem_2d=true",
                                                            "model.backbone.conv1_kernel=[3,7,7]"]))
