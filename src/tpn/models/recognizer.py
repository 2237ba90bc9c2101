"""Recognizer: backbone -> (TPN neck) -> head, plus the training-only auxiliary head."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Recognizer(nn.Module):
    """`forward(x)` on (N, 3, T, H, W) normalised clips returns (N, classes) logits.

    In train mode, `forward(x, labels)` returns a dict of losses: `loss_cls`, `loss_aux`
    (weighted, when the aux head exists), their sum `loss`, and the `logits`.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module | None, head: nn.Module,
                 aux_head: nn.Module | None = None, aux_weight: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.aux_head = aux_head
        self.aux_weight = aux_weight

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        feats = self.backbone(x)
        feat = self.neck(feats) if self.neck is not None else feats[-1]
        logits = self.head(feat)
        if labels is None or not self.training:
            return logits
        losses = {"loss_cls": F.cross_entropy(logits, labels)}
        if self.aux_head is not None:
            losses["loss_aux"] = self.aux_weight * F.cross_entropy(self.aux_head(feats[-2]), labels)
        losses["loss"] = sum(losses.values())
        losses["logits"] = logits
        return losses

    def forward_aux(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the auxiliary head (for tests and analysis)."""
        return self.aux_head(self.backbone(x)[-2])
