"""Build mmaction2 1.2.0's own TPN (the reference) on CPU for equivalence tests.

mmaction2 is a test-only dependency installed with --no-deps (README). Two of its
imports are broken in the 1.2.0 wheel or need an old `transformers`; TPN needs neither,
so they are replaced by empty modules before the registry is imported.
"""
from __future__ import annotations

import os
import sys
import types

import pytest
import torch

CONFIG = "tpn-slowonly_r50_8xb8-8x8x1-150e_kinetics400-rgb.py"
CONFIG_TSM = "tpn-tsm_imagenet-pretrained-r50_8xb8-1x1x8-150e_sthv1-rgb.py"


def require_mmaction2():
    try:
        import mmaction  # noqa: F401
        import mmengine  # noqa: F401
    except ImportError as e:
        if os.environ.get("CI"):
            raise RuntimeError("mmaction2 reference stack missing in CI: see the README's test command") from e
        pytest.skip(f"mmaction2 reference stack not installed ({e})")


def _stub_broken_imports() -> None:
    for name in ("mmaction.models.localizers.drn", "mmaction.models.localizers.drn.drn", "mmaction.models.multimodal"):
        mod = types.ModuleType(name)
        mod.DRN = type("DRN", (), {})
        sys.modules.setdefault(name, mod)


def _packaged_config(name: str):
    """mmaction2's packaged config `name` (no network), with its registry ready."""
    require_mmaction2()
    _stub_broken_imports()
    import glob

    import mmaction
    from mmengine.config import Config
    from mmaction.utils import register_all_modules

    register_all_modules()
    root = os.path.dirname(mmaction.__file__)
    return Config.fromfile(glob.glob(os.path.join(root, ".mim", "configs", "recognition", "tpn", name))[0])


def build_reference_tsm(depth: int = 50, backbone_only: bool = False):
    """mmaction2's TPN-TSM recognizer (Recognizer2D + ResNetTSM) from its packaged sthv1 config, eval
    mode; or only its backbone."""
    from mmaction.registry import MODELS

    cfg = _packaged_config(CONFIG_TSM)
    cfg.model.backbone.pretrained = None
    cfg.model.backbone.pretrained2d = False  # no torchvision download: weights are set by `randomize`
    cfg.model.backbone.depth = depth
    model = MODELS.build(cfg.model.backbone if backbone_only else cfg.model)
    model.eval()  # mmaction2's ResNet.train returns None, so no chaining
    return model


def build_reference(flow: str = "cascade", temporal_scales=(8, 8)):
    """mmaction2's TPN R50 8x8 recognizer built from its packaged config, eval mode.

    Unequal `temporal_scales` (a, b), a < b, set the neck as the official release's R101
    8x8 (scales (4, 8)): bottom-up max-pool and level-fusion pooling by b // a on level 0.
    """
    cfg = _packaged_config(CONFIG)
    from mmaction.registry import MODELS

    cfg.model.backbone.pretrained = None
    cfg.model.neck.flow_type = flow
    a, b = temporal_scales
    if a != b:
        cfg.model.neck.temporal_modulation_cfg = dict(downsample_scales=(a, b))
        cfg.model.neck.downsample_cfg = dict(downsample_scale=(b // a, 1, 1))
        cfg.model.neck.level_fusion_cfg.downsample_scales = ((b // a, 1, 1), (1, 1, 1))
    model = MODELS.build(cfg.model)  # weights are set by `randomize`
    return model.eval()


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Random weights AND random BN statistics, so that BN folding errors cannot hide."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.8 + 0.6)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 0.8 + 0.6)
            m.num_batches_tracked.fill_(1234)
        elif isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


@torch.no_grad()
def reference_logits(model, x: torch.Tensor) -> torch.Tensor:
    """mmaction2's test path: backbone -> neck -> TPNHead with fcn_test (fresh new_cls)."""
    feats = model.backbone(x)
    feat, _ = model.neck(feats)
    model.cls_head.new_cls = None
    return model.cls_head(feat, fcn_test=True)


@torch.no_grad()
def reference_aux_logits(model, x: torch.Tensor) -> torch.Tensor:
    return model.neck.aux_head(model.backbone(x)[-2])


@torch.no_grad()
def reference_logits_2d(model, x: torch.Tensor) -> torch.Tensor:
    """mmaction2's Recognizer2D test path (fcn_test) on tpn's (N, 3, T, H, W) clips: its input
    layout is (N, T, 3, H, W)."""
    model.cls_head.new_cls = None
    scores, _ = model.extract_feat(x.transpose(1, 2).contiguous(), stage="head", test_mode=True)
    return scores


@torch.no_grad()
def reference_aux_logits_2d(model, x: torch.Tensor) -> torch.Tensor:
    feats, _ = model.extract_feat(x.transpose(1, 2).contiguous(), stage="backbone", test_mode=True)
    t = x.shape[2]
    res4 = feats[-2].reshape((-1, t) + feats[-2].shape[1:]).transpose(1, 2)
    return model.neck.aux_head(res4)


def assert_aux_head_matches(model, reference_aux, tol: float = 1e-4) -> None:
    """tpn's `forward_aux` against mmaction2's aux head (`reference_aux(x)`) on one seeded 8x224 clip."""
    x = torch.randn(1, 3, 8, 224, 224, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ours = model.forward_aux(x)
    diff = (ours - reference_aux(x)).abs().max().item()
    print(f"aux head: max |logit difference| {diff:.2e}")
    assert diff <= tol, f"aux head: max |logit difference| {diff:.2e}"
