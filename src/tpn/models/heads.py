"""Classification heads.

`ClsHead` pools adaptively over (T, H, W), so it is fully convolutional: a 256x256 test crop
works with the weights trained on 224x224 (pool-then-linear equals mmaction2's
conv-then-pool `fcn_test`). `AuxHead` supervises the res4 feature during training only.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from tpn.models.layers import ConvBN


class ClsHead(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.5, init_std: float = 0.01):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels, num_classes)
        nn.init.normal_(self.fc.weight, std=init_std)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x.mean(dim=(2, 3, 4))))


class AuxHead(nn.Module):
    """1x3x3 stride-2 conv doubling the channels + BN + ReLU, global pool, dropout 0.5, FC."""

    def __init__(self, in_channels: int, num_classes: int, init_std: float = 0.01):
        super().__init__()
        self.conv = ConvBN(in_channels, 2 * in_channels, (1, 3, 3), (1, 2, 2), (0, 1, 1))
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(2 * in_channels, num_classes)
        nn.init.xavier_uniform_(self.conv.conv.weight)
        nn.init.normal_(self.fc.weight, std=init_std)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.conv(x).mean(dim=(2, 3, 4))))
