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
        feats = self.features(x)
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

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The backbone's (N, C, T, H, W) feature maps."""
        return self.backbone(x)

    def forward_aux(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the auxiliary head (for tests and analysis)."""
        return self.aux_head(self.features(x)[-2])


class Recognizer2D(Recognizer):
    """A recognizer around a 2D (frame) backbone such as TSM: the same (N, 3, T, H, W) input.

    The T frames of each clip go through the backbone as a batch of N * T images (frames of
    one clip adjacent, as the temporal shift expects) and its features come back as
    (N, C, T, H, W) for the TPN neck and the heads.
    """

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n, c, t, h, w = x.shape
        if t != self.backbone.num_segments:
            raise ValueError(f"this model takes clips of {self.backbone.num_segments} frames "
                             f"(model.backbone.num_segments), got {t}")
        frames = x.transpose(1, 2).reshape(n * t, c, h, w)
        return tuple(f.view(n, t, *f.shape[1:]).transpose(1, 2) for f in self.backbone(frames))
