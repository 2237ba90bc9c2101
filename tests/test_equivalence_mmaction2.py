"""tpn's TPN equals mmaction2's at identical weights (fp32, eval), through `tpn convert`."""
import numpy as np
import pytest
import torch

import tpn
from tpn.convert.weights import convert_checkpoint
from tests.mmaction2_ref import (assert_aux_head_matches, build_reference, randomize, reference_aux_logits,
                                 reference_logits)

TOL = 0.0  # bit-identical: the same float32 operations in the same order as mmaction2's


class _TrainingMeta:  # stands in for the arbitrary objects mmaction2 puts into `meta`
    def __init__(self):
        self.history = [1, 2, 3]


@pytest.fixture(scope="module")
def mm_checkpoint(tmp_path_factory):
    ref = build_reference("cascade")
    randomize(ref, seed=1)
    sd = ref.state_dict()
    # a stale fully-convolutional copy of fc_cls, as mmaction2 saves after validation
    sd["cls_head.new_cls.weight"] = torch.randn(400, 2048, 1, 1, 1)
    sd["cls_head.new_cls.bias"] = torch.randn(400)
    path = tmp_path_factory.mktemp("mm") / "tpn_mmaction2.pth"
    torch.save({"state_dict": sd, "meta": {"epoch": 150, "arr": np.arange(3), "obj": _TrainingMeta()}}, path)
    return ref, path


@pytest.mark.parametrize("size", [224, 256])
def test_logits_match_mmaction2(mm_checkpoint, size, tmp_path):
    ref, path = mm_checkpoint
    out = tmp_path / "converted.pth"
    report = convert_checkpoint(path, out)
    assert "dropped 2 non-weight tensors" in report
    model = tpn.load_model("tpn_r50_8x8_k400", out)
    x = torch.randn(1, 3, 8, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        ours = model(x)
    theirs = reference_logits(ref, x)
    assert ours.shape == (1, 400)
    diff = (ours - theirs).abs().max().item()
    print(f"max |logit difference| {diff:.2e} at {size}x{size} (max |logit| {theirs.abs().max().item():.2f})")
    assert diff <= TOL, f"max |logit difference| {diff:.2e} at {size}x{size}"
    assert theirs.abs().max() > 1e-2  # logits are not trivially zero


def test_aux_head_matches_mmaction2(mm_checkpoint):
    ref, path = mm_checkpoint
    model = tpn.load_model("tpn_r50_8x8_k400", path)  # an mmaction2 checkpoint loads directly
    assert_aux_head_matches(model, lambda x: reference_aux_logits(ref, x), TOL)


def test_parallel_flow_matches_mmaction2(mm_checkpoint):
    ref_c, path = mm_checkpoint
    ref = build_reference("parallel")
    ref.load_state_dict({k: v for k, v in ref_c.state_dict().items() if 'new_cls' not in k})
    cfg = tpn.load_config("tpn_r50_8x8_k400", ["model.neck.flow=parallel"])
    model = tpn.load_model(cfg, path)
    x = torch.randn(1, 3, 8, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(x)
        cascade = tpn.load_model("tpn_r50_8x8_k400", path)(x)
    diff = (ours - reference_logits(ref, x)).abs().max().item()
    assert diff <= TOL, f"parallel flow: max |logit difference| {diff:.2e}"
    assert (ours - cascade).abs().max() > 1e-3  # the two flows really differ


def test_parameter_count_equals_mmaction2():
    ref = build_reference("cascade")
    model = tpn.load_model("tpn_r50_8x8_k400")
    n = sum(p.numel() for p in model.parameters())
    assert n == 91_498_336
    assert n == sum(p.numel() for p in ref.parameters())


def test_unequal_temporal_scales_match_mmaction2(mm_checkpoint, tmp_path):
    """The official R101 8x8 neck (res4 pooled by 4, res5 by 8) on the R50 backbone."""
    ref_c, _ = mm_checkpoint
    ref = build_reference("cascade", temporal_scales=(4, 8))
    ref.load_state_dict({k: v for k, v in ref_c.state_dict().items() if "new_cls" not in k})
    path = tmp_path / "mm.pth"
    torch.save({"state_dict": ref.state_dict()}, path)
    cfg = tpn.load_config("tpn_r50_8x8_k400", ["model.neck.temporal_scales=[4,8]"])
    model = tpn.load_model(cfg, path)
    x = torch.randn(1, 3, 8, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = model(x)
        feats = model.backbone(x)
        assert model.neck.temporal[0](model.neck.spatial[0](feats[0])).shape[2] == 2  # the levels differ
    diff = (ours - reference_logits(ref, x)).abs().max().item()
    assert diff <= TOL, f"temporal scales (4, 8): max |logit difference| {diff:.2e}"
