"""train.fused_bn: tpn's Triton BatchNorm (+ add) (+ ReLU) kernels against torch's BatchNorm.

The kernels run on the CPU through Triton's interpreter (TRITON_INTERPRET=1 must be set before
`tpn.models.fused_bn` defines them; only this module imports it on the CPU). On a GPU they are
compiled for real: benchmarks/bn_bandwidth.py, benchmarks/loss_curve.py and tests/test_gpu.py.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn

os.environ.setdefault("TRITON_INTERPRET", "1")  # read when triton is imported
pytest.importorskip("triton")  # a dev dependency (`pip install -e ".[dev]"`); torch's CUDA builds bring it

from tpn.config import load_config  # noqa: E402
from tpn.models import fused_bn  # noqa: E402
from tpn.models.build import build_model  # noqa: E402
from tpn.models.layers import ConvBN, set_fused_bn  # noqa: E402

CL = {5: torch.channels_last_3d, 4: torch.channels_last}


def pair(c: int, dim: int, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    bn = (nn.BatchNorm3d if dim == 5 else nn.BatchNorm2d)(c)
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    ref = type(bn)(c)
    ref.load_state_dict(bn.state_dict())
    return bn, ref


def leaf(shape, dtype=torch.float32, scale=3.0, shift=1.0) -> torch.Tensor:
    x = torch.randn(shape) * scale + shift
    return x.to(dtype).contiguous(memory_format=CL[len(shape)]).requires_grad_()


@pytest.mark.parametrize("shape", [(2, 70, 3, 5, 7), (3, 130, 9, 11)])  # rows and channels not multiples of the blocks
@pytest.mark.parametrize("residual,relu", [(False, True), (True, True), (False, False)])
def test_kernels_compute_torch_batchnorm_in_fp32(shape, residual, relu):
    """Output, the gradients of input, weight, bias and residual, the running statistics and
    num_batches_tracked equal torch's BatchNorm -> add -> ReLU to fp32 rounding (3D and 2D)."""
    bn, ref = pair(shape[1], len(shape))
    x, r = leaf(shape), leaf(shape, shift=0.0) if residual else None
    x2, r2 = x.detach().clone().requires_grad_(), r.detach().clone().requires_grad_() if residual else None
    y = fused_bn.bn_act(x, bn, r, relu)
    z = ref(x2) + (r2 if residual else 0)
    y2 = torch.relu(z) if relu else z
    assert y.is_contiguous(memory_format=CL[len(shape)])
    dy = torch.randn_like(y2)
    y.backward(dy)
    y2.backward(dy)
    close = dict(rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(y, y2, **close)
    torch.testing.assert_close(x.grad, x2.grad, **close)
    torch.testing.assert_close(bn.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(bn.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-4)
    if residual:
        torch.testing.assert_close(r.grad, r2.grad, **close)
    for name in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(bn, name), getattr(ref, name), rtol=1e-5, atol=1e-6)
    assert bn.num_batches_tracked.item() == ref.num_batches_tracked.item() == 1


def test_bf16_output_is_within_one_bf16_step_of_fp32():
    """bf16 storage: computed in fp32 inside, rounded once; every output is within one bf16 step
    (2^-7 relative) of the fp32 result (Triton's CPU interpreter truncates where the GPU rounds to
    nearest: half a step, checked on the GPU by tests/test_gpu.py)."""
    shape = (2, 64, 4, 6, 6)
    bn, exact = pair(64, 5)
    x, r = leaf(shape, torch.bfloat16), leaf(shape, torch.bfloat16, shift=0.0)
    y = fused_bn.bn_act(x, bn, r)
    y_exact = torch.relu(exact(x.detach().float()) + r.detach().float())
    assert y.dtype == torch.bfloat16
    assert ((y.float() - y_exact).abs() <= y_exact.abs() * 2**-7 + 1e-6).all()


def test_unsupported_cases_fall_back_to_torch():
    """Eval mode, a non-channels-last tensor, SyncBatchNorm, no running statistics, momentum None:
    ConvBN runs torch's BatchNorm instead, with the same result."""
    x = torch.randn(2, 8, 2, 3, 3)
    assert fused_bn.supported(nn.BatchNorm3d(8), x.contiguous(memory_format=torch.channels_last_3d))
    assert not fused_bn.supported(nn.BatchNorm3d(8), x)  # NCDHW
    assert not fused_bn.supported(nn.BatchNorm3d(8).eval(), x.contiguous(memory_format=torch.channels_last_3d))
    assert not fused_bn.supported(nn.SyncBatchNorm(8), x.contiguous(memory_format=torch.channels_last_3d))
    assert not fused_bn.supported(nn.BatchNorm3d(8, momentum=None), x.contiguous(memory_format=torch.channels_last_3d))
    assert not fused_bn.supported(nn.BatchNorm3d(8, track_running_stats=False),
                                  x.contiguous(memory_format=torch.channels_last_3d))
    torch.manual_seed(0)
    a = ConvBN(3, 8, 1)
    b = ConvBN(3, 8, 1)
    b.load_state_dict(a.state_dict())
    set_fused_bn(b)
    x = torch.randn(2, 3, 2, 4, 4)
    torch.testing.assert_close(b(x), a(x))  # NCDHW input: the torch path, bit for bit
    torch.testing.assert_close(b.eval()(x), a.eval()(x))


@pytest.mark.parametrize("name", ["tpn_tiny_synth", "tpn_tsm_tiny_synth"])
def test_a_backbone_trains_the_same_with_the_kernels(name):
    """A tiny 3D (and TSM) ResNet with every ConvBN fused: two SGD steps give the same losses,
    weights and running statistics as with torch's BatchNorm (fp32, channels-last)."""
    cfg = load_config(name)
    torch.manual_seed(0)
    nets = [build_model(cfg).backbone.train() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    set_fused_bn(nets[1])
    torch.manual_seed(1)
    tsm = "tsm" in name
    x = torch.randn(2 * cfg.data.clip_len, 3, 64, 64) if tsm else torch.randn(2, 3, cfg.data.clip_len, 64, 64)
    x = x.contiguous(memory_format=CL[x.dim()])
    calls = []
    losses = []
    for net in nets:
        net.to(memory_format=CL[x.dim()])
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        run = []
        for _ in range(2):
            loss = sum((f.float() ** 2).mean() for f in net(x))
            loss.backward()
            opt.step()
            opt.zero_grad()
            run.append(loss.item())
        losses.append(run)
    fused = [m for m in nets[1].modules() if isinstance(m, ConvBN) and m.fused_bn]
    assert len(fused) == sum(isinstance(m, ConvBN) for m in nets[1].modules()) > 10
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for (key, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=key)


def test_the_whole_model_runs_fused():
    """The tiny TPN (backbone, neck, aux head) with set_fused_bn: the same first loss as torch's
    BatchNorm (later steps drift apart by rounding: the neck's BNs see 2 rows a channel here)."""
    cfg = load_config("tpn_tiny_synth")
    torch.manual_seed(0)
    models = [build_model(cfg).train() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    set_fused_bn(models[1])
    x = torch.randn(2, 3, cfg.data.clip_len, 32, 32).contiguous(memory_format=torch.channels_last_3d)
    out = []
    for model in models:
        model.to(memory_format=torch.channels_last_3d)
        torch.manual_seed(2)  # the same dropout draws
        out.append(model(x, torch.tensor([0, 1]))["loss"].item())
    assert out[0] == pytest.approx(out[1], rel=1e-5)
    assert models[1].backbone.conv1.bn.num_batches_tracked.item() == 1
