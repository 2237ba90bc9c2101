"""TSM ResNet-50/101 backbone (Lin et al., ICCV 2019): a 2D ResNet on frames whose residual
branches exchange channels between neighbouring frames.

Frames arrive folded into the batch, (N * T, 3, H, W) with T = `num_segments` frames of one
clip next to each other. Before the first conv of a block's residual branch, 1/`shift_div`
of the channels is taken from the next frame and another 1/`shift_div` from the previous one
(zeros past the clip's ends); the identity path keeps the unshifted input (mmaction2's
`shift_place='blockres'`). ResNet-101 shifts every other block, as mmaction2 does.

Layer names equal the 3D backbone's (`conv1`, `layerX.Y.convK`, `downsample`, each a conv +
BN), so torchvision/timm ImageNet ResNets load by the same rules, without inflation.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from tpn.models.layers import ConvBN, ResidualBlock, StagedBackbone
from tpn.models.resnet3d import STAGE_BLOCKS


class ConvBN2d(ConvBN):
    """Conv2d (no bias) -> BatchNorm2d -> optional ReLU; a ConvBN, so BN folding applies to it."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0, act: bool = True):
        nn.Module.__init__(self)
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = act


def temporal_shift(x: torch.Tensor, num_segments: int, shift_div: int = 8) -> torch.Tensor:
    """(N*T, C, H, W): channels [0, C/d) come from frame t+1, [C/d, 2C/d) from frame t-1."""
    nt, c, h, w = x.shape
    x = x.view(nt // num_segments, num_segments, c, h, w)
    fold = c // shift_div
    zero = x.new_zeros(x.shape[0], 1, fold, h, w)
    from_next = torch.cat([x[:, 1:, :fold], zero], 1)
    from_prev = torch.cat([zero, x[:, :-1, fold:2 * fold]], 1)
    return torch.cat([from_next, from_prev, x[:, :, 2 * fold:]], 2).view(nt, c, h, w)


class BottleneckTSM(ResidualBlock):
    """1x1 -> 3x3 (stride) -> 1x1 on frames; the residual branch sees temporally shifted input."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, num_segments: int = 8,
                 shift_div: int = 8, shift: bool = True, with_cp: bool = False):
        super().__init__()
        self.conv1 = ConvBN2d(inplanes, planes, 1)
        self.conv2 = ConvBN2d(planes, planes, 3, stride, 1)
        self.conv3 = ConvBN2d(planes, planes * self.expansion, 1)  # its ReLU comes after the residual add
        out = planes * self.expansion
        self.downsample = ConvBN2d(inplanes, out, 1, stride, act=False) if stride != 1 or inplanes != out else None
        self.num_segments = num_segments
        self.shift_div = shift_div
        self.shift = shift
        self.with_cp = with_cp

    def _residual(self, x: torch.Tensor) -> torch.Tensor:
        y = temporal_shift(x, self.num_segments, self.shift_div) if self.shift else x
        out = self.conv3.conv(self.conv2(self.conv1(y)))  # convs in mmaction2's order: conv3, then downsample
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.conv3.norm_act(out, residual=shortcut)


class ResNetTSM(StagedBackbone):
    """(N * num_segments, 3, H, W) frames -> the feature maps of the stages in `out_indices`."""

    block = BottleneckTSM

    def __init__(self, depth: int = 50, base_channels: int = 64, stage_blocks=None, num_segments: int = 8,
                 shift_div: int = 8, spatial_strides=(1, 2, 2, 2), out_indices=(2, 3), frozen_stages: int = -1,
                 norm_eval: bool = False, with_cp: bool | tuple[int, ...] = False):
        super().__init__()
        blocks = tuple(stage_blocks) if stage_blocks is not None else STAGE_BLOCKS[depth]
        if len(blocks) != len(spatial_strides):
            raise ValueError("stage_blocks and spatial_strides need one entry per stage")
        self.num_segments = num_segments
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        # mmaction2 shifts every other block in networks as deep as ResNet-101 (23 blocks in res4)
        every = 2 if len(blocks) > 2 and blocks[2] >= 23 else 1
        self.conv1 = ConvBN2d(3, base_channels, 7, 2, 3)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = base_channels
        self.stage_channels = []
        for i, n in enumerate(blocks):
            planes = base_channels * 2**i
            cp_stage = with_cp if isinstance(with_cp, bool) else (i + 1) in with_cp
            layer = []
            for j in range(n):
                layer.append(BottleneckTSM(inplanes, planes, spatial_strides[i] if j == 0 else 1, num_segments,
                                           shift_div, j % every == 0, cp_stage))
                inplanes = planes * BottleneckTSM.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            self.stage_channels.append(inplanes)
        self.num_stages = len(blocks)
        self.init_weights()
        self.freeze()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if x.dim() != 4 or x.shape[0] % self.num_segments:
            raise ValueError(f"ResNetTSM takes (N * {self.num_segments}, 3, H, W) frames, got {tuple(x.shape)}")
        return self.run_stages(self.maxpool(self.conv1(x)))

