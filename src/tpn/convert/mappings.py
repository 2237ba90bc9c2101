"""Parameter-name mappings from foreign checkpoints to tpn's names, as data.

Each mapping is an ordered list of (regex, replacement) rules; the first rule whose regex
matches a key decides: the key is rewritten with `re.sub`, or dropped when the replacement
is None. A key that no rule matches is reported as unexpected.
"""
from __future__ import annotations

# mmaction2 1.x (and 0.x) TPN recognizers: `backbone.*`, `neck.*`, `cls_head.*`.
MMACTION2 = [
    # fcn_test's lazily created copy of fc_cls (may be stale): not a model weight
    (r"^cls_head\.new_cls\.", None),
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
