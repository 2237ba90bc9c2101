"""`model.head.num_classes` against the label map and the labels in the lists, before any work.

A head of 400 classes trained on a 10-name label map, or a list label past the head, would
fail late (an index error in the loss or the metrics) or quietly train a wrong head; this
check makes either one line before training or testing starts.
"""
from __future__ import annotations

import logging
from dataclasses import replace

from tpn.config import Config, ConfigError
from tpn.data.datasets import AnnotationError, iter_annotations, read_label_names

log = logging.getLogger("tpn.data")


def resolve_num_classes(cfg: Config, splits: tuple[str, ...] = ("train", "val")) -> Config:
    """`cfg` with `model.head.num_classes` set: null takes the label map's count (logged). A
    mismatch with the label map, or a label >= num_classes in the lists of `splits`, is a
    one-line `ConfigError` naming the file (and line)."""
    d, n = cfg.data, cfg.model.head.num_classes
    names = read_label_names(d.label_map) if d.label_map else None
    if names is not None and n is None:
        n = len(names)
        log.info("model.head.num_classes not set: %d classes from the label map %s", n, d.label_map)
    elif names is not None and n != len(names):
        raise ConfigError(f"model.head.num_classes is {n} but the label map {d.label_map} has {len(names)} "
                          f"classes: set it to {len(names)}, or to null to take it from the label map")
    elif n is None:
        raise ConfigError("model.head.num_classes is null (take it from the label map) but data.label_map is not set")
    for split in splits:
        path = getattr(d, f"{split}_list")
        for line, _, entry in iter_annotations(path, d.format, names) if path else ():
            if isinstance(entry, AnnotationError):
                raise entry
            if entry[1] >= n:
                raise ConfigError(f"{path}:{line}: label {entry[1]} is not below model.head.num_classes ({n}); "
                                  f"set num_classes to the number of classes")
    return replace(cfg, model=replace(cfg.model, head=replace(cfg.model.head, num_classes=n)))
