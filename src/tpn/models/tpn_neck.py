"""Temporal Pyramid Network neck (Yang et al., CVPR 2020).

Given backbone features of several depths (e.g. res4, res5) it
1. aligns their spatial semantics (strided 1x3x3 convs bring shallow levels to the top's size),
2. modulates their tempo (a grouped 3x1x1 conv, then max-pool over time by a per-level scale),
3. fuses the levels top-down and bottom-up (`cascade`: bottom-up starts from the top-down
   result, as the official release; `parallel`: both start from the modulated features),
4. concatenates both flows and fuses them into one feature map for the head.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from tpn.models.layers import ConvBN, conv3d


class TemporalModulation(nn.Module):
    def __init__(self, cin: int, cout: int, scale: int, groups: int):
        super().__init__()
        # a bare conv nested as mmaction2's ConvModule: checkpoints name it `conv.conv.weight`
        self.conv = nn.Sequential(OrderedDict(conv=conv3d(cin, cout, (3, 1, 1), padding=(1, 0, 0), groups=groups)))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return F.max_pool3d(x, (self.scale, 1, 1), (self.scale, 1, 1), ceil_mode=True)


class LevelFusion(nn.Module):
    """Per level a grouped 1x1x1 conv + BN + ReLU, then concat and a 1x1x1 fusion conv."""

    def __init__(self, cin: int, mid: int, cout: int, levels: int, groups: int):
        super().__init__()
        self.branches = nn.ModuleList(ConvBN(cin, mid, 1, groups=groups) for _ in range(levels))
        self.fuse = ConvBN(mid * levels, cout, 1)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        # levels pooled over time by unequal scales meet at the shortest one, pooled before
        # the branch conv (the official release's level-fusion `ds_scales`, e.g. R101 8x8)
        t = min(x.shape[2] for x in xs)
        xs = [_to_length(x, t) for x in xs]
        return self.fuse(torch.cat([b(x) for b, x in zip(self.branches, xs)], 1))


def _to_length(x: torch.Tensor, t: int) -> torch.Tensor:
    """Bring `x` to temporal length `t` (nearest upsample or max-pool over time)."""
    if x.shape[2] == t:
        return x
    if x.shape[2] < t:
        return F.interpolate(x, size=(t, *x.shape[3:]), mode="nearest")
    k = math.ceil(x.shape[2] / t)
    return F.max_pool3d(x, (k, 1, 1), (k, 1, 1), ceil_mode=True)


class TPNNeck(nn.Module):
    def __init__(self, in_channels: list[int], out_channels: int = 1024, temporal_scales=(8, 8),
                 flow: str = "cascade", groups: int = 32):
        super().__init__()
        if flow not in ("cascade", "parallel"):
            raise ValueError(f"flow must be 'cascade' or 'parallel', got {flow!r}")
        if len(temporal_scales) != len(in_channels):
            raise ValueError(f"temporal_scales needs one entry per level ({len(in_channels)}), got {temporal_scales}")
        self.flow = flow
        levels = len(in_channels)
        top = in_channels[-1]
        self.spatial = nn.ModuleList()
        for c in in_channels:
            steps = int(math.log2(top // c))
            convs = [ConvBN(c * 2**k, c * 2 ** (k + 1), (1, 3, 3), (1, 2, 2), (0, 1, 1)) for k in range(steps)]
            self.spatial.append(nn.Sequential(*convs))  # empty for the top level: identity
        self.temporal = nn.ModuleList(TemporalModulation(top, out_channels, s, groups) for s in temporal_scales)
        self.bottom_up = nn.ModuleList(
            nn.Conv3d(out_channels, out_channels, (3, 1, 1), padding=(1, 0, 0), bias=False) for _ in range(levels - 1)
        )
        self.top_down_fusion = LevelFusion(out_channels, out_channels, top, levels, groups)
        self.bottom_up_fusion = LevelFusion(out_channels, out_channels, top, levels, groups)
        self.pyramid_fusion = ConvBN(2 * top, top, 1)
        self.out_channels = top
        self.init_weights()

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.xavier_uniform_(m.weight)
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> torch.Tensor:
        modulated = [tm(sm(x)) for sm, tm, x in zip(self.spatial, self.temporal, feats)]
        outs = list(modulated)
        for i in range(len(outs) - 1, 0, -1):  # top-down: deeper levels flow into shallower ones
            outs[i - 1] = outs[i - 1] + _to_length(outs[i], outs[i - 1].shape[2])
        top_down = self.top_down_fusion(outs)
        if self.flow == "parallel":
            outs = list(modulated)
        for i in range(len(outs) - 1):  # bottom-up: shallower levels flow into deeper ones
            outs[i + 1] = outs[i + 1] + _to_length(self.bottom_up[i](outs[i]), outs[i + 1].shape[2])
        bottom_up = self.bottom_up_fusion(outs)
        return self.pyramid_fusion(torch.cat([top_down, bottom_up], 1))
