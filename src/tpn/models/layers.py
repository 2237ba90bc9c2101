"""Building blocks shared by the model files: a bias-free 3D conv, conv + BN (+ ReLU), and
folding BatchNorm into the conv before it for inference."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


def triple(v) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)


def conv3d(cin: int, cout: int, kernel, stride=1, padding=0, groups: int = 1) -> nn.Conv3d:
    """A Conv3d without bias (a BatchNorm after it has one, or the layer needs none)."""
    return nn.Conv3d(cin, cout, triple(kernel), triple(stride), triple(padding), groups=groups, bias=False)


class ConvBN(nn.Module):
    """Conv3d (no bias) -> BatchNorm3d -> (+ residual) -> optional ReLU; names `conv`, `bn` as
    mmaction2's ConvModule. With `fused_bn` set (`set_fused_bn`, `train.fused_bn`), a training-mode
    BN on a channels-last tensor runs as Triton kernels (`tpn.models.fused_bn`): the same model."""

    fused_bn: bool = False

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = conv3d(cin, cout, kernel, stride, padding, groups)
        self.bn = nn.BatchNorm3d(cout)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_act(self.conv(x))

    def norm_act(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """[relu](bn(x) [+ residual]) of the conv's output `x`."""
        if self.fused_bn and self.bn is not None:
            from tpn.models import fused_bn

            if fused_bn.supported(self.bn, x):
                return fused_bn.bn_act(x, self.bn, residual, self.act)
        if self.bn is not None:  # None once folded into the conv (`fold_batchnorm`)
            x = self.bn(x)
        if residual is not None:
            x = x + residual
        return torch.relu_(x) if self.act else x


def set_fused_bn(model: nn.Module, on: bool = True) -> nn.Module:
    """Every ConvBN of `model` runs its training BN (+ add + ReLU) as Triton kernels (`on`) or as torch ops."""
    for m in model.modules():
        if isinstance(m, ConvBN):
            m.fused_bn = on
    return model


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of an eval-mode model with every BatchNorm folded into the conv before it.

    Inference only: conv(x) * s + b with s = gamma / sqrt(var + eps), b = beta - mean * s
    becomes one conv with weight W * s and bias b, so no BN kernel runs at test time.
    """
    folded = copy.deepcopy(model).eval()
    for m in folded.modules():
        if isinstance(m, ConvBN) and m.bn is not None:
            bn, conv = m.bn, m.conv
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))))
            conv.bias = nn.Parameter(bn.bias - bn.running_mean * scale)
            m.bn = None
    return folded



class ResidualBlock(nn.Module):
    """A block defines `_residual`: relu(branch(x) + shortcut(x)), the add and ReLU done by its last
    ConvBN; with `with_cp` that is recomputed in the backward instead of keeping its activations."""

    with_cp: bool = False

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return checkpoint(self._residual, x, use_reentrant=False)
        return self._residual(x)

class StagedBackbone(nn.Module):
    """What the 3D and the TSM ResNets share: a stem `conv1`, stages `layer1..N` run in order
    with the outputs of `out_indices` returned, frozen stages (no gradients, BN statistics
    fixed) and `norm_eval` (every BN in eval mode while training)."""

    num_stages: int
    out_indices: tuple[int, ...]
    frozen_stages: int
    norm_eval: bool
    stage_channels: list[int]
    block: type  # the residual block class, whose last BN starts at zero

    @property
    def out_channels(self) -> list[int]:
        return [self.stage_channels[i] for i in self.out_indices]

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # each residual branch starts as identity
            if isinstance(m, self.block):
                nn.init.zeros_(m.conv3.bn.weight)

    def run_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = []
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1] + [getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)]

    def freeze(self) -> None:
        for m in self._frozen_modules():
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen_modules():
            m.eval()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self
