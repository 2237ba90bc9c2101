"""Build a model from a config: modules and their random initialisation, no file reads.

Weights: `tpn.convert.weights.load_model` / `tpn.load_model`; the 2D-ResNet initialisation
(`model.backbone.pretrained2d`) is applied by `tpn train` when it starts from scratch.
"""
from __future__ import annotations

from tpn.config import BackboneConfig, Config, ConfigError, ModelConfig
from tpn.models.heads import AuxHead, ClsHead
from tpn.models.recognizer import Recognizer, Recognizer2D
from tpn.models.resnet3d import ResNet3dSlowOnly
from tpn.models.resnet_tsm import ResNetTSM
from tpn.models.tpn_neck import TPNNeck

# fields that describe only one backbone type: a config that sets them for the other is a mistake
_ONLY_3D = ("conv1_kernel", "conv1_stride_t", "pool1_stride_t", "temporal_strides", "inflate", "stem_pad_channels",
            "stem_2d")
_ONLY_TSM = ("num_segments", "shift_div")


def _check_fields(b: BackboneConfig) -> None:
    default = BackboneConfig()
    for name in _ONLY_3D if b.type == "resnet_tsm" else _ONLY_TSM:
        if getattr(b, name) != getattr(default, name):
            other = "resnet3d" if b.type == "resnet_tsm" else "resnet_tsm"
            raise ConfigError(f"config key 'model.backbone.{name}' applies to model.backbone.type {other} only "
                              f"(this config's type is {b.type})")
    if b.type == "resnet_tsm" and (b.num_segments < 1 or b.shift_div < 2):
        raise ConfigError(f"model.backbone.num_segments must be >= 1 and shift_div >= 2, "
                          f"got {b.num_segments} and {b.shift_div}")


def build_backbone(b: BackboneConfig):
    _check_fields(b)
    common = dict(depth=b.depth, base_channels=b.base_channels, stage_blocks=b.stage_blocks,
                  spatial_strides=b.spatial_strides, out_indices=b.out_indices, frozen_stages=b.frozen_stages,
                  norm_eval=b.norm_eval, with_cp=b.with_cp)
    if b.type == "resnet_tsm":
        return ResNetTSM(num_segments=b.num_segments, shift_div=b.shift_div, **common)
    return ResNet3dSlowOnly(conv1_kernel=b.conv1_kernel, conv1_stride_t=b.conv1_stride_t,
                            pool1_stride_t=b.pool1_stride_t, temporal_strides=b.temporal_strides,
                            inflate=b.inflate, stem_pad_channels=b.stem_pad_channels, stem_2d=b.stem_2d, **common)


def build_model(cfg: ModelConfig | Config) -> Recognizer:
    m = cfg.model if isinstance(cfg, Config) else cfg
    b = m.backbone
    backbone = build_backbone(b)
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
    recognizer = Recognizer2D if b.type == "resnet_tsm" else Recognizer
    return recognizer(backbone, neck, head, aux, m.aux_head.loss_weight)
