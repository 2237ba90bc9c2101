"""ResNet-3D "slow-only" backbone (He et al. 2016, inflated as in Feichtenhofer et al. 2019).

Layer names follow mmaction2's ResNet3d (`conv1`, `layer1..4`, blocks with `conv1..3` and
`downsample`, each a conv + BN), so its checkpoints map onto this module with few rules.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tpn.models.layers import ConvBN, ResidualBlock, StagedBackbone, triple

STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def _frames(x: torch.Tensor) -> torch.Tensor:
    """(N, C, T, H, W) -> (N*T, C, H, W); a view when x is channels_last_3d."""
    return x.transpose(1, 2).flatten(0, 1)


def _clips(y: torch.Tensor, n: int) -> torch.Tensor:
    """(N*T, C, H, W) -> (N, C, T, H, W), the inverse of `_frames`."""
    return y.unflatten(0, (n, -1)).transpose(1, 2)


class Bottleneck3d(ResidualBlock):
    """1x1x1 (or 3x1x1 when inflated) -> 1x3x3 -> 1x1x1, with a projection shortcut when needed."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, spatial_stride: int = 1, temporal_stride: int = 1,
                 inflate: bool = False, with_cp: bool = False):
        super().__init__()
        k1, p1 = ((3, 1, 1), (1, 0, 0)) if inflate else (1, 0)
        self.conv1 = ConvBN(inplanes, planes, k1, padding=p1)
        self.conv2 = ConvBN(planes, planes, (1, 3, 3), (temporal_stride, spatial_stride, spatial_stride), (0, 1, 1))
        self.conv3 = ConvBN(planes, planes * self.expansion, 1)  # its ReLU comes after the residual add
        out = planes * self.expansion
        needs_proj = spatial_stride != 1 or temporal_stride != 1 or inplanes != out
        self.downsample = (
            ConvBN(inplanes, out, 1, (temporal_stride, spatial_stride, spatial_stride), act=False)
            if needs_proj else None
        )
        self.with_cp = with_cp

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv3.conv(self.conv2(self.conv1(x)))  # convs in mmaction2's order: conv3, then downsample
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.conv3.norm_act(out, residual=shortcut)


class ResNet3dSlowOnly(StagedBackbone):
    """Returns the feature maps of the stages named in `out_indices` (0-based), as a tuple."""

    block = Bottleneck3d

    def __init__(self, depth: int = 50, base_channels: int = 64, stage_blocks=None,
                 conv1_kernel=(1, 7, 7), conv1_stride_t: int = 1, pool1_stride_t: int = 1,
                 spatial_strides=(1, 2, 2, 2), temporal_strides=(1, 1, 1, 1), inflate=(0, 0, 1, 1),
                 out_indices=(2, 3), frozen_stages: int = -1, norm_eval: bool = False, with_cp: bool = False,
                 stem_pad_channels: int = 0, stem_2d: bool = False):
        super().__init__()
        blocks = tuple(stage_blocks) if stage_blocks is not None else STAGE_BLOCKS[depth]
        if not (len(blocks) == len(spatial_strides) == len(temporal_strides) == len(inflate)):
            raise ValueError("stage_blocks, spatial_strides, temporal_strides and inflate need one entry per stage")
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        k = triple(conv1_kernel)
        self.conv1 = ConvBN(3, base_channels, k, (conv1_stride_t, 2, 2), tuple((x - 1) // 2 for x in k))
        self.maxpool = nn.MaxPool3d((1, 3, 3), (pool1_stride_t, 2, 2), (0, 1, 1))
        if stem_2d and (k[0], conv1_stride_t, pool1_stride_t) != (1, 1, 1):
            raise ValueError("stem_2d needs a (1, k, k) stem conv with temporal strides 1 (conv1_kernel, "
                             "conv1_stride_t, pool1_stride_t)")
        self.stem_pad_channels, self.stem_2d = stem_pad_channels, stem_2d
        inplanes = base_channels
        self.stage_channels = []
        for i, n in enumerate(blocks):
            planes = base_channels * 2**i
            cp_stage = with_cp if isinstance(with_cp, bool) else (i + 1) in with_cp
            layer = [Bottleneck3d(inplanes, planes, spatial_strides[i], temporal_strides[i], bool(inflate[i]), cp_stage)]
            inplanes = planes * Bottleneck3d.expansion
            layer += [Bottleneck3d(inplanes, planes, 1, 1, bool(inflate[i]), cp_stage) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            self.stage_channels.append(inplanes)
        self.num_stages = len(blocks)
        self.init_weights()
        self.freeze()

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 (conv, BN, ReLU) and the max-pool. Two reformulations of the same arithmetic reach
        faster GPU kernels: input channels padded with zeros (zero weights: the same sums), and
        the (1, k, k) conv and (1, 3, 3) pool run as 2D ops over the N*T frames (a free view of a
        channels_last_3d tensor). Other kernels sum in another order: outputs, gradients and the
        BN-folded test path agree within 1e-5 (relative; 1e-4 folded) in tests/test_models_stem.py."""
        if not (self.stem_2d or self.stem_pad_channels > x.shape[1]):
            return self.maxpool(self.conv1(x))
        cb, n = self.conv1, x.shape[0]
        fmt = torch.channels_last_3d if x.is_contiguous(memory_format=torch.channels_last_3d) else None
        w = cb.conv.weight
        pad = self.stem_pad_channels - x.shape[1]
        if pad > 0:
            x, w = (F.pad(v, (0, 0, 0, 0, 0, 0, 0, pad)) for v in (x, w))
            if fmt is not None:
                x, w = (v.contiguous(memory_format=fmt) for v in (x, w))
        if self.stem_2d:
            y = _clips(F.conv2d(_frames(x), w[:, :, 0], cb.conv.bias, cb.conv.stride[1:], cb.conv.padding[1:]), n)
        else:
            y = F.conv3d(x, w, cb.conv.bias, cb.conv.stride, cb.conv.padding)
        y = cb.norm_act(y)
        if self.stem_2d:
            return _clips(F.max_pool2d(_frames(y), 3, 2, 1), n)
        return self.maxpool(y)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.run_stages(self.stem(x))

