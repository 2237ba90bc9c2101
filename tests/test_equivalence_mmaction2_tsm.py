"""tpn's TPN-TSM equals mmaction2's `tpn-tsm_imagenet-pretrained-r50_8xb8-1x1x8-150e_sthv1-rgb` at
identical weights (fp32, eval), through `tpn convert`: mmaction2's own model built from its
packaged config, random weights and random BN statistics, saved as an mmaction2 checkpoint."""
import pytest
import torch

import tpn
from tpn.checkpoint import CheckpointError
from tpn.convert.weights import convert_checkpoint
from tests.mmaction2_ref import (assert_aux_head_matches, build_reference_tsm, randomize, reference_aux_logits_2d,
                                 reference_logits_2d)

TOL = 1e-4
CONFIG = "tpn_tsm_r50_1x1x8_sthv1"


@pytest.fixture(scope="module")
def mm_tsm(tmp_path_factory):
    ref = build_reference_tsm()
    randomize(ref, seed=2)
    # features of a random 2D ResNet-50 reach ~1e4: smaller classifiers keep the logits near 1,
    # so that the absolute tolerance is a strict one (float32 resolution at 1e4 is ~1e-3)
    with torch.no_grad():
        for fc in (ref.cls_head.fc_cls, ref.neck.aux_head.fc):
            fc.weight.mul_(1e-4)
            fc.bias.mul_(1e-4)
    sd = ref.state_dict()
    assert any(k.endswith("conv1.conv.net.weight") for k in sd)  # the TemporalShift wrapper's names
    path = tmp_path_factory.mktemp("mm") / "tpn_tsm_mmaction2.pth"
    torch.save({"state_dict": sd, "meta": {"epoch": 150}}, path)
    return ref, path


@pytest.mark.parametrize("size", [224, 256])
def test_tsm_logits_match_mmaction2(mm_tsm, size, tmp_path):
    ref, path = mm_tsm
    out = tmp_path / "converted.pth"
    convert_checkpoint(path, out, config=CONFIG)
    model = tpn.load_model(CONFIG, out)
    x = torch.randn(2, 3, 8, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        ours = model(x)
    theirs = reference_logits_2d(ref, x)
    assert ours.shape == theirs.shape == (2, 174)
    diff = (ours - theirs).abs().max().item()
    print(f"max |logit difference| {diff:.2e} at {size}x{size} (max |logit| {theirs.abs().max().item():.2f})")
    assert diff <= TOL, f"max |logit difference| {diff:.2e} at {size}x{size}"
    assert 1 < theirs.abs().max() < 100  # logits are neither trivially small nor so large that 1e-4 is below float resolution
    # the two clips differ only in time: a shift that leaks across clips would change clip 0
    with torch.no_grad():
        assert (model(x[:1]) - ours[:1]).abs().max() <= TOL


def test_tsm_aux_head_matches_mmaction2(mm_tsm):
    ref, path = mm_tsm
    model = tpn.load_model(CONFIG, path)  # the mmaction2 file loads directly too
    assert_aux_head_matches(model, lambda x: reference_aux_logits_2d(ref, x), TOL)


def test_tsm_parameter_count_equals_mmaction2(mm_tsm):
    ref, _ = mm_tsm
    model = tpn.load_model(CONFIG)
    n = sum(p.numel() for p in model.parameters())
    assert n == 82_445_724
    # without fcn_test's lazily made copy of the classifier (`new_cls`, not a model weight)
    assert n == sum(p.numel() for k, p in ref.named_parameters() if not k.startswith("cls_head.new_cls"))


def test_tsm_frame_order_matters(mm_tsm):
    """Temporal shift makes the model order-sensitive (a TSN without it would not be)."""
    _, path = mm_tsm
    model = tpn.load_model(CONFIG, path)
    x = torch.randn(1, 3, 8, 96, 96, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        assert (model(x) - model(x.flip(2))).abs().max() > 1e-3


def test_tsm_checkpoint_refused_by_3d_config(mm_tsm):
    _, path = mm_tsm
    with pytest.raises(CheckpointError, match="--config tpn_tsm_r50_1x1x8_sthv1"):
        tpn.load_model("tpn_r50_8x8_k400", path)


def test_tsm_r101_backbone_matches_mmaction2():
    """ResNet-101 shifts every other block (mmaction2's rule for deep networks)."""
    from tpn.convert.weights import rename
    from tpn.models.resnet_tsm import ResNetTSM

    ref = build_reference_tsm(depth=101, backbone_only=True)
    randomize(ref, seed=4)
    sd, _ = rename({"backbone." + k: v for k, v in ref.state_dict().items()}, "mmaction2", "mmaction2 R101")
    ours = ResNetTSM(depth=101).eval()
    ours.load_state_dict({k.removeprefix("backbone."): v for k, v in sd.items()})
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a, b in zip(ours(x), ref(x)):
            assert (a - b).abs().max() <= 1e-5 * b.abs().max()
