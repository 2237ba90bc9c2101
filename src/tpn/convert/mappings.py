"""Parameter-name mappings from foreign checkpoints to tpn's names, as data.

Each mapping is an ordered list of (regex, replacement) rules; the first rule whose regex
matches a key decides: the key is rewritten with `re.sub`, or dropped when the replacement
is None. A key that no rule matches is reported as unexpected.
"""
from __future__ import annotations

import re

# mmaction2 1.x (and 0.x) TPN recognizers: `backbone.*`, `neck.*`, `cls_head.*`.
MMACTION2 = [
    # fcn_test's lazily created copy of fc_cls (may be stale): not a model weight
    (r"^cls_head\.new_cls\.", None),
    # TSM backbones wrap the first conv of a shifted block in a TemporalShift module (`.net`)
    (r"^backbone\.(layer\d+\.\d+\.conv1\.conv)\.net\.", r"backbone.\1."),
    (r"^backbone\.", "backbone."),
    (r"^neck\.spatial_modulation\.spatial_modulation\.", "neck.spatial."),
    (r"^neck\.temporal_modulation_ops\.", "neck.temporal."),
    (r"^neck\.downsample_ops\.(\d+)\.conv\.conv\.", r"neck.bottom_up.\1."),
    (r"^neck\.level_fusion_1\.downsamples\.(\d+)\.conv\.", r"neck.top_down_fusion.branches.\1."),
    (r"^neck\.level_fusion_1\.fusion_conv\.", "neck.top_down_fusion.fuse."),
    (r"^neck\.level_fusion_2\.downsamples\.(\d+)\.conv\.", r"neck.bottom_up_fusion.branches.\1."),
    (r"^neck\.level_fusion_2\.fusion_conv\.", "neck.bottom_up_fusion.fuse."),
    (r"^neck\.pyramid_fusion\.", "neck.pyramid_fusion."),
    (r"^neck\.aux_head\.", "aux_head."),
    (r"^cls_head\.fc_cls\.", "head.fc."),
]

# tpn's own names map to themselves.
TPN = [(r"^(backbone|neck|head|aux_head)\.", r"\1.")]

MAPPINGS = {"mmaction2": MMACTION2, "tpn": TPN}


# --------------------------------------------------------------------------- helpers
# A rule may carry a third element naming a tensor transform (see TRANSFORMS); a
# replacement may be a function of the regex match where names need arithmetic.
TRANSFORMS = {"transpose": lambda t: t.t().contiguous()}


def _prefixed(rules: list, out_prefix: str, in_prefix: str = "") -> list:
    """The same rules for keys that carry `in_prefix`, written under `out_prefix`."""
    out = []
    for pattern, repl, *rest in rules:
        if repl is None or isinstance(repl, str):
            new = None if repl is None else out_prefix + repl
        else:
            new = (lambda f: lambda m: out_prefix + f(m))(repl)
        out.append((pattern.replace("^", "^" + re.escape(in_prefix), 1), new, *rest))
    return out


# --------------------------------------------------------------------------- 2D ResNets
# torchvision and timm ResNet-50/101 (`conv1`, `bn1`, `layerX.Y.convK/bnK`,
# `layerX.0.downsample.0/1`, `fc`) onto tpn's backbone (names relative to the backbone).
# The same layout, in 3D, is the backbone of the official TPN release.
TORCHVISION_RESNET = [
    (r"^fc\.", None),  # the 2D classifier: expected and ignored
    (r"^conv1\.weight$", "conv1.conv.weight"),
    (r"^bn1\.", "conv1.bn."),
    (r"^(layer\d+\.\d+)\.conv(\d)\.weight$", r"\1.conv\2.conv.weight"),
    (r"^(layer\d+\.\d+)\.bn(\d)\.", r"\1.conv\2.bn."),
    (r"^(layer\d+\.\d+)\.downsample\.0\.weight$", r"\1.downsample.conv.weight"),
    (r"^(layer\d+\.\d+)\.downsample\.1\.", r"\1.downsample.bn."),
]

# --------------------------------------------------------------------------- official TPN
# decisionforce/TPN (mmaction v1, TSN3D recognizer): `backbone.*` (ResNet_SlowFast,
# torchvision-style names), `necks.*` (TPN), `cls_head.fc_cls.*`. In its neck,
# `level_fusion_op2` fuses the top-down flow and `level_fusion_op` the bottom-up flow;
# `aux_head.convs` is a ModuleList in one revision of the code and a ConvModule in another.
TPN_OFFICIAL = [
    (r"^cls_head\.new_cls\.", None),  # fcn_testing's lazily made 1x1x1 copy of fc_cls
] + _prefixed([r for r in TORCHVISION_RESNET if r[1] is not None], "backbone.", "backbone.") + [
    (r"^necks\.spatial_modulation\.spatial_modulation\.(\d+)\.(\d+)\.(conv|bn)\.", r"neck.spatial.\1.\2.\3."),
    (r"^necks\.temporal_modulation_ops\.(\d+)\.conv\.weight$", r"neck.temporal.\1.conv.conv.weight"),
    (r"^necks\.downsampling_ops\.(\d+)\.conv\.weight$", r"neck.bottom_up.\1.weight"),
    (r"^necks\.level_fusion_op2\.ops\.(\d+)\.conv\.", r"neck.top_down_fusion.branches.\1.conv."),
    (r"^necks\.level_fusion_op2\.ops\.(\d+)\.norm\.", r"neck.top_down_fusion.branches.\1.bn."),
    (r"^necks\.level_fusion_op2\.fusion_conv\.0\.", "neck.top_down_fusion.fuse.conv."),
    (r"^necks\.level_fusion_op2\.fusion_conv\.1\.", "neck.top_down_fusion.fuse.bn."),
    (r"^necks\.level_fusion_op\.ops\.(\d+)\.conv\.", r"neck.bottom_up_fusion.branches.\1.conv."),
    (r"^necks\.level_fusion_op\.ops\.(\d+)\.norm\.", r"neck.bottom_up_fusion.branches.\1.bn."),
    (r"^necks\.level_fusion_op\.fusion_conv\.0\.", "neck.bottom_up_fusion.fuse.conv."),
    (r"^necks\.level_fusion_op\.fusion_conv\.1\.", "neck.bottom_up_fusion.fuse.bn."),
    (r"^necks\.pyramid_fusion_op\.0\.", "neck.pyramid_fusion.conv."),
    (r"^necks\.pyramid_fusion_op\.1\.", "neck.pyramid_fusion.bn."),
    (r"^necks\.aux_head\.convs\.(?:0\.)?(conv|bn)\.", r"aux_head.conv.\1."),
    (r"^necks\.aux_head\.fc\.", "aux_head.fc."),
    (r"^cls_head\.fc_cls\.", "head.fc."),
]

# --------------------------------------------------------------------------- PaddlePaddle
# Paddle 1.x static-graph names. The TSN ResNet (PaddleCV video models, `tsn_res_model.py`)
# and the Paddle reproduction's 3D backbone share them: `conv1_weights`, `bn_conv1_{scale,offset,mean,
# variance}`, `res{2..5}{a,b,..}_branch{2a,2b,2c,1}_weights`, `bn{2..5}{..}_branch.._*`;
# ResNet-101 names res4 blocks `res4a, res4b1 .. res4b22`. Paddle's fc weight is [in, out].
_BN_FIELDS = {"scale": "weight", "offset": "bias", "mean": "running_mean", "variance": "running_var"}
_BRANCHES = {"2a": "conv1", "2b": "conv2", "2c": "conv3", "1": "downsample"}


def _paddle_block(stage: str, block: str) -> str:
    index = int(block[1:]) if len(block) > 1 else ord(block) - ord("a")
    return f"layer{int(stage) - 1}.{index}"


def _paddle_bn(src: str, dst: str) -> list:
    """`{src}_scale` .. `{src}_variance` onto `{dst}.weight` .. `{dst}.running_var`."""
    return [(rf"^{src}_{k}$", f"{dst}.{v}") for k, v in _BN_FIELDS.items()]


# Optimiser state saved beside the weights by `save_persistables` (not model weights).
PADDLE_OPTIMIZER_STATE = [
    (r"(_velocity_\d+|_moment\d*_\d+|_pow_acc_\d+)$", None),
    (r"^(learning_rate(_\d+)?|@LR_DECAY_COUNTER@)$", None),
]

PADDLE_TSN2D = PADDLE_OPTIMIZER_STATE + [
    (r"^fc_\d+\.(w|b)_\d+$", None),  # the 2D classifier: expected and ignored
    (r"^conv1_weights$", "conv1.conv.weight"),
    *_paddle_bn("bn_conv1", "conv1.bn"),
    (r"^res([2-5])([a-z]|b\d+)_branch(2a|2b|2c|1)_weights$",
     lambda m: f"{_paddle_block(m[1], m[2])}.{_BRANCHES[m[3]]}.conv.weight"),
    (r"^bn([2-5])([a-z]|b\d+)_branch(2a|2b|2c|1)_(scale|offset|mean|variance)$",
     lambda m: f"{_paddle_block(m[1], m[2])}.{_BRANCHES[m[3]]}.bn.{_BN_FIELDS[m[4]]}"),
]

# The Paddle reproduction's TPN (Paddle 1.7 static graph, model/TSN3D.py + TPN.py + backbone.py): the
# backbone uses the TSN names above, in 3D; the neck and heads name their parameters
# explicitly. Its level fusion is the cascade flow (bottom-up starts from the top-down sum).
PADDLE_TPN = PADDLE_OPTIMIZER_STATE + _prefixed(
    [r for r in PADDLE_TSN2D if r[1] is not None], "backbone.") + [
    (r"^SpatialModulation_weights$", "neck.spatial.0.0.conv.weight"),
    *_paddle_bn("SpatialModulation_bn", "neck.spatial.0.0.bn"),
    (r"^TemporalModulation(\d+)_weights$", r"neck.temporal.\1.conv.conv.weight"),
    (r"^Downsamping_weights$", "neck.bottom_up.0.weight"),
    (r"^level_fusion_topdown_downout_weights$", "neck.top_down_fusion.branches.0.conv.weight"),
    *_paddle_bn("level_fusion_topdown_downout_bn", "neck.top_down_fusion.branches.0.bn"),
    (r"^level_fusion_topdown_topout_weights$", "neck.top_down_fusion.branches.1.conv.weight"),
    *_paddle_bn("level_fusion_topdown_topout_bn", "neck.top_down_fusion.branches.1.bn"),
    (r"^level_fusion_topdown_weights$", "neck.top_down_fusion.fuse.conv.weight"),
    *_paddle_bn("level_fusion_topdown_bn", "neck.top_down_fusion.fuse.bn"),
    (r"^level_fusion_downtop_downout_weights$", "neck.bottom_up_fusion.branches.0.conv.weight"),
    *_paddle_bn("level_fusion_downtop_downout_bn", "neck.bottom_up_fusion.branches.0.bn"),
    (r"^level_fusion_downtop_topout_weights$", "neck.bottom_up_fusion.branches.1.conv.weight"),
    *_paddle_bn("level_fusion_downtop_topout_bn", "neck.bottom_up_fusion.branches.1.bn"),
    (r"^level_fusion_downtop_weights$", "neck.bottom_up_fusion.fuse.conv.weight"),
    *_paddle_bn("level_fusion_downtop_bn", "neck.bottom_up_fusion.fuse.bn"),
    (r"^pyramid_fusion_weights$", "neck.pyramid_fusion.conv.weight"),
    *_paddle_bn("pyramid_fusion_bn", "neck.pyramid_fusion.bn"),
    (r"^AuxHead_weights$", "aux_head.conv.conv.weight"),
    *_paddle_bn("AuxHead_bn", "aux_head.conv.bn"),
    (r"^AuxHead_fc_w$", "aux_head.fc.weight", "transpose"),
    (r"^AuxHead_fc_b$", "aux_head.fc.bias"),
    (r"^cls_head_fc_w$", "head.fc.weight", "transpose"),
    (r"^cls_head_fc_b$", "head.fc.bias"),
]

MAPPINGS.update({
    "tpn_official": TPN_OFFICIAL,
    "paddle_tpn": PADDLE_TPN,
    "torchvision_resnet": TORCHVISION_RESNET,
    "paddle_tsn2d": PADDLE_TSN2D,
})
