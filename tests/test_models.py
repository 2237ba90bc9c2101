"""Model family: shapes, train/eval behaviour, options, memory format and bf16 on CPU."""
import pytest
import torch

import tpn
from tpn.config import load_config
from tpn.models.build import build_model

TINY = ["model.backbone.base_channels=8", "model.backbone.stage_blocks=[1,1,1,1]",
        "model.neck.out_channels=32", "model.neck.groups=4", "model.head.num_classes=5"]


def tiny(config="tpn_r50_8x8_k400", extra=()):
    return build_model(load_config(config, TINY + list(extra)))


def clip(n=2, t=8, s=64, seed=0):
    return torch.randn(n, 3, t, s, s, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("config,frames", [("tpn_r50_8x8_k400", 8), ("tpn_r50_16x4_k400", 16),
                                           ("tpn_r50_32x2_k400", 32), ("tpn_r101_8x8_k400", 8),
                                           ("slowonly_r50_8x8_k400", 8)])
def test_shipped_models_build_and_run(config, frames):
    cfg = load_config(config, ["model.backbone.base_channels=8", "model.neck.out_channels=32", "model.neck.groups=4"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        out = model(clip(1, frames, 64))
    assert out.shape == (1, 400)
    assert torch.isfinite(out).all()


def test_full_size_shapes_and_counts():
    full = tpn.load_model("tpn_r50_8x8_k400")
    assert sum(p.numel() for p in full.parameters()) == 91_498_336
    base = tpn.load_model("slowonly_r50_8x8_k400")
    assert base.neck is None and base.aux_head is None
    assert sum(p.numel() for p in base.parameters()) == 31_634_496 + 2048 * 400 + 400
    r101 = build_model(load_config("tpn_r101_8x8_k400"))
    assert len(r101.backbone.layer3) == 23


def test_train_mode_returns_losses_and_eval_returns_logits():
    model = tiny()
    labels = torch.tensor([1, 3])
    out = model.train()(clip(), labels)
    assert set(out) == {"loss", "loss_cls", "loss_aux", "logits"}
    assert torch.allclose(out["loss"], out["loss_cls"] + out["loss_aux"])
    out["loss"].backward()
    assert model.aux_head.fc.weight.grad is not None
    assert model.eval()(clip()).shape == (2, 5)
    no_aux = tiny(extra=["model.aux_head.loss_weight=0"])
    assert no_aux.aux_head is None and set(no_aux.train()(clip(), labels)) == {"loss", "loss_cls", "logits"}


def test_aux_loss_weight_is_applied():
    model = tiny(extra=["model.aux_head.loss_weight=0.5"]).train()
    torch.manual_seed(0)
    x, labels = clip(), torch.tensor([0, 1])
    model.aux_head.dropout.p = 0.0
    model.head.dropout = torch.nn.Identity()
    out = model(x, labels)
    aux_logits = model.aux_head(model.backbone(x)[-2])
    expected = 0.5 * torch.nn.functional.cross_entropy(aux_logits, labels)
    assert torch.allclose(out["loss_aux"], expected, atol=1e-5)


def test_fully_convolutional_head_accepts_larger_crops():
    model = tiny().eval()
    with torch.no_grad():
        assert model(clip(1, 8, 64)).shape == model(clip(1, 8, 96)).shape == (1, 5)


def test_parallel_and_cascade_differ_only_in_flow():
    torch.manual_seed(0)
    a = tiny(extra=["model.neck.flow=cascade"]).eval()
    b = tiny(extra=["model.neck.flow=parallel"]).eval()
    b.load_state_dict(a.state_dict())
    x = clip(1)
    with torch.no_grad():
        assert not torch.allclose(a(x), b(x))


def test_temporal_scales_reduce_time():
    model = tiny(extra=["model.neck.temporal_scales=[4,4]"]).eval()
    feats = model.backbone(clip(1))
    assert model.neck(feats).shape[2] == 2  # 8 frames pooled by 4


def test_activation_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    a = tiny().train()
    b = tiny(extra=["model.backbone.with_cp=true"]).train()
    b.load_state_dict(a.state_dict())
    x, labels = clip(), torch.tensor([0, 2])
    for m in (a, b):
        m.head.dropout = torch.nn.Identity()
        m.aux_head.dropout.p = 0.0
        m(x, labels)["loss"].backward()
    ga = a.backbone.layer1[0].conv1.conv.weight.grad
    gb = b.backbone.layer1[0].conv1.conv.weight.grad
    assert torch.allclose(ga, gb, atol=1e-5)


def test_frozen_stages_and_norm_eval():
    model = tiny(extra=["model.backbone.frozen_stages=1", "model.backbone.norm_eval=true"]).train()
    assert not any(p.requires_grad for p in model.backbone.conv1.parameters())
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())
    assert all(p.requires_grad for p in model.backbone.layer2.parameters())
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert bns and not any(m.training for m in bns)
    assert model.head.training


def test_channels_last_3d_and_bf16_autocast_on_cpu():
    model = tiny().eval()
    x = clip()
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last_3d)(x.contiguous(memory_format=torch.channels_last_3d))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf = model(x.contiguous(memory_format=torch.channels_last_3d))
    assert cl.shape == bf.shape == (2, 5)
    assert torch.isfinite(bf).all()
    assert torch.allclose(ref, cl, atol=1e-4)
    assert (bf.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


def test_load_model_public_interface(tmp_path):
    cfg = load_config("tpn_r50_8x8_k400", TINY)
    model = build_model(cfg)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {k: v for k, v in model.state_dict().items()}}, path)
    with pytest.raises(tpn.TpnError, match="mis-shaped"):
        tpn.load_model("tpn_r50_8x8_k400", path)  # tiny weights into the full-size model
    loaded = tpn.load_model(cfg, path)
    assert not loaded.training
    x = clip(1)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_folded_batchnorm_matches_eval_model():
    from tests.mmaction2_ref import randomize
    from tpn.models.layers import fold_batchnorm

    model = tiny().eval()
    randomize(model, seed=2)  # non-trivial BN statistics
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())  # original untouched
    x = clip(1)
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert (ref - out).abs().max() <= 1e-5 * ref.abs().max() + 1e-5
