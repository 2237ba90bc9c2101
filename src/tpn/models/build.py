"""Build a model from a config: modules and their random initialisation, no file reads.

Weights: `tpn.convert.weights.load_model` / `tpn.load_model`; the 2D-ResNet initialisation
(`model.backbone.pretrained2d`) is applied by `tpn train` when it starts from scratch.
"""
from __future__ import annotations

from tpn.config import Config, ModelConfig
from tpn.models.heads import AuxHead, ClsHead
from tpn.models.recognizer import Recognizer
from tpn.models.resnet3d import ResNet3dSlowOnly
from tpn.models.tpn_neck import TPNNeck


def build_model(cfg: ModelConfig | Config) -> Recognizer:
    m = cfg.model if isinstance(cfg, Config) else cfg
    b = m.backbone
    backbone = ResNet3dSlowOnly(
        depth=b.depth, base_channels=b.base_channels, stage_blocks=b.stage_blocks,
        conv1_kernel=b.conv1_kernel, conv1_stride_t=b.conv1_stride_t, pool1_stride_t=b.pool1_stride_t,
        spatial_strides=b.spatial_strides, temporal_strides=b.temporal_strides, inflate=b.inflate,
        out_indices=b.out_indices, frozen_stages=b.frozen_stages, norm_eval=b.norm_eval, with_cp=b.with_cp,
        stem_pad_channels=b.stem_pad_channels, stem_2d=b.stem_2d,
    )
    channels = backbone.out_channels
    neck = None
    if m.neck.enabled:
        neck = TPNNeck(channels, m.neck.out_channels, m.neck.temporal_scales, m.neck.flow, m.neck.groups)
    head = ClsHead(channels[-1], m.head.num_classes, m.head.dropout, m.head.init_std)
    aux = None
    if m.aux_head.loss_weight > 0:
        if len(channels) < 2:
            raise ValueError("the auxiliary head needs two backbone outputs (model.backbone.out_indices)")
        aux = AuxHead(channels[-2], m.head.num_classes, m.head.init_std)
    return Recognizer(backbone, neck, head, aux, m.aux_head.loss_weight)
