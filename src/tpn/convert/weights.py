"""Reading checkpoints into tpn models: `load_weights`, `load_model`, `tpn convert`.

`load_weights(model, path)` accepts a tpn checkpoint, a bare state_dict, or a foreign
checkpoint whose layout `detect_format` recognises (mmaction2, the official TPN release, the
Paddle reproduction's model as a .pdparams file or a persistables folder); names are rewritten by
the rule tables in `tpn.convert.mappings` and every tensor must fit (no silent
`strict=False`). See docs/convert.md.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn as nn

from tpn.checkpoint import FORMAT, CheckpointError, load_file, load_state_dict_strict, save_atomic
from tpn.config import Config, load_config, to_dict
from tpn.convert import zoo
from tpn.convert.mappings import MAPPINGS, TRANSFORMS
from tpn.errors import listing
from tpn.models.build import build_model

_2D_HINT = "is a 2D ResNet: inflate it into the backbone with the config option model.backbone.pretrained2d"


def detect_format(state_dict: dict) -> str:
    """Name the layout of a full-model state_dict (2D ResNets are refused with a hint)."""
    keys = set(state_dict)
    if any(k.startswith("head.fc.") for k in keys):
        return "tpn"
    # the official release's backbone keeps torchvision names (`backbone.bn1`, `layerX.Y.bn1`)
    if any(k.startswith("necks.") for k in keys) or "backbone.conv1.weight" in keys:
        return "tpn_official"
    if any(k.startswith(("cls_head.", "neck.")) for k in keys):
        return "mmaction2"
    if keys & {"cls_head_fc_w", "TemporalModulation0_weights", "pyramid_fusion_weights"}:
        return "paddle_tpn"
    if "conv1_weights" in keys:
        raise CheckpointError(f"these Paddle weights (TSN ResNet names) {_2D_HINT}")
    if "conv1.weight" in keys and "layer1.0.conv1.weight" in keys:
        raise CheckpointError(f"this torchvision/timm checkpoint {_2D_HINT}")
    raise CheckpointError("unrecognised checkpoint layout (first keys: " + ", ".join(sorted(keys)[:3]) + ")")


def rename(state_dict: dict, fmt: str, source: str) -> tuple[dict, list[str]]:
    """Apply the rules of `fmt`. Returns (renamed, dropped keys); unmatched keys raise."""
    if fmt not in MAPPINGS:
        raise CheckpointError(f"{source}: unknown checkpoint format {fmt!r}; known: {', '.join(MAPPINGS)}")
    rules = [(re.compile(p), r, rest[0] if rest else None) for p, r, *rest in MAPPINGS[fmt]]
    out, dropped, unmatched = {}, [], []
    for key, value in state_dict.items():
        for pattern, repl, transform in rules:
            if pattern.search(key):
                if repl is None:
                    dropped.append(key)
                else:
                    new = pattern.sub(repl, key, count=1)
                    if new in out:
                        raise CheckpointError(f"{source}: two tensors map onto {new} (format {fmt})")
                    out[new] = TRANSFORMS[transform](value) if transform else value
                break
        else:
            unmatched.append(key)
    if unmatched:
        raise CheckpointError(f"{source}: {len(unmatched)} unexpected tensors for format {fmt}: {listing(unmatched)}")
    return out, dropped


def resolve_source(path: str | Path) -> Path:
    """The file a checkpoint argument names. Every weights read (load_weights, convert,
    model.init_from, pretrained2d) passes through here: the one place for `zoo:NAME` names
    (`tpn.convert.zoo`: downloaded, checked and converted once, then cached)."""
    if isinstance(path, str) and path.startswith(zoo.PREFIX):
        return zoo.resolve(path, convert_checkpoint)
    return Path(path)


def read_raw(path: str | Path) -> tuple[dict, dict]:
    """The tensors of a checkpoint under their own names: a torch file (tpn, mmaction2, official
    TPN, torchvision/timm), a Paddle .pdparams file or a Paddle 1.x persistables folder."""
    from tpn.convert.paddle import is_paddle_source, read_paddle

    path = resolve_source(path)
    if is_paddle_source(path):
        sd, skipped = read_paddle(path)
        return sd, {"skipped_objects": skipped}
    obj, skipped = load_file(path)
    info: dict = {"skipped_objects": skipped}
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        sd, names = obj.get("state_dict"), obj.get("label_names")
        if not isinstance(sd, dict) or not (names is None or isinstance(names, list)
                                            and all(isinstance(n, str) for n in names)):
            raise CheckpointError(f"{path}: a damaged tpn checkpoint (its state_dict must be a dict and its "
                                  "label_names a list of strings)")
        info["label_names"] = names
        info["format"] = FORMAT
        info["saved_config"] = obj.get("config") if isinstance(obj.get("config"), dict) else None
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        sd = obj["state_dict"]
    elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        sd = obj["model"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        sd = obj
    else:
        raise CheckpointError(f"{path}: no state_dict found in this checkpoint")
    sd = {k.removeprefix("module."): v for k, v in sd.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    return sd, info


def read_state_dict(path: str | Path, fmt: str = "auto") -> tuple[dict, str, dict]:
    """Read a checkpoint's tensors. Returns (state_dict in tpn names, format, info)."""
    sd, info = read_raw(path)
    if fmt == "auto":
        try:
            fmt = info.get("format") or detect_format(sd)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
    renamed, dropped = rename(sd, fmt, str(path))
    info["dropped"] = dropped
    return renamed, fmt, info


def fit_to_model(model: nn.Module, sd: dict) -> list[str]:
    """Reconcile optional parts: BN step counters and the training-only aux head. Returns notes."""
    notes = []
    own = model.state_dict()
    for k in own:
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = own[k].clone()
    aux = [k for k in sd if k.startswith("aux_head.")]
    if aux and getattr(model, "aux_head", None) is None:
        for k in aux:
            del sd[k]
        notes.append(f"ignored {len(aux)} aux-head tensors (this model has no auxiliary head)")
    return notes


def _check_family(model: nn.Module, sd: dict, source: str) -> None:
    """One line instead of hundreds of mis-shaped tensors when a TSM (2D) checkpoint meets a
    3D model or the reverse: the stem's kernel rank tells the families apart."""
    key = "backbone.conv1.conv.weight"
    own = model.state_dict().get(key)
    if own is None or key not in sd or sd[key].dim() == own.dim():
        return
    if sd[key].dim() == 4:
        raise CheckpointError(f"{source}: holds a TSM (2D) backbone but the config builds a 3D one: "
                              "pass a TSM config, e.g. --config tpn_tsm_r50_1x1x8_sthv1")
    raise CheckpointError(f"{source}: holds a 3D backbone but the config builds a TSM (2D) one: "
                          "pass a 3D config, e.g. --config tpn_r50_8x8_k400")


def _saved_config_hint(saved: dict | None) -> str:
    """A tpn checkpoint names the config it was saved with: the likely fix for weights that misfit."""
    name = saved.get("name") if isinstance(saved, dict) else None
    if not (isinstance(name, str) and name and len(name) <= 200 and name.isprintable()):
        return ""
    model = saved.get("model")
    head = model.get("head") if isinstance(model, dict) else None
    n = head.get("num_classes") if isinstance(head, dict) else None
    classes = f" (model.head.num_classes {n})" if type(n) is int else ""
    return (f"; it was saved with config {name}{classes}: pass that config "
            "(a training run's is config.yaml in its work dir)")


def load_weights(model: nn.Module, path: str | Path, fmt: str = "auto") -> dict:
    """Fill `model` from the checkpoint at `path` (format `fmt` or detected); returns what was
    read: format, label_names (tpn checkpoints), dropped and skipped entries, notes."""
    sd, fmt, info = read_state_dict(path, fmt)
    _check_family(model, sd, str(path))
    info["notes"] = fit_to_model(model, sd)
    try:
        load_state_dict_strict(model, sd, str(path))
    except CheckpointError as e:
        raise CheckpointError(f"{e}{_saved_config_hint(info.get('saved_config'))}") from None
    info["format"] = fmt
    return info


HEADS = ("head.", "aux_head.")


def init_from(model: nn.Module, path: str | Path) -> dict:
    """Fine-tuning's start: fill `model` from the checkpoint at `path` (any format `load_weights`
    reads) where shapes fit. A head tensor (class head, aux head) that is missing or of another
    shape keeps the model's fresh initialisation; any other tensor that does not fit, either way,
    is a CheckpointError. Returns {format, loaded, total, reinit: [keys], why}."""
    sd, fmt, _info = read_state_dict(path)
    _check_family(model, sd, str(path))
    fit_to_model(model, sd)
    own = model.state_dict()
    reinit, bad = [], []
    for k, v in own.items():
        if k in sd and sd[k].shape == v.shape:
            continue
        if k.startswith(HEADS):
            reinit.append(k)
        else:
            bad.append(f"{k} {tuple(sd[k].shape)} vs model {tuple(v.shape)}" if k in sd else f"{k} (missing)")
    extra = [k for k in sd if k not in own]
    if bad or extra:
        parts = [f"{len(bad)} model tensors not filled: {listing(bad)}"] if bad else []
        parts += [f"{len(extra)} checkpoint tensors the model lacks: {listing(extra)}"] if extra else []
        raise CheckpointError(f"model.init_from {path} ({fmt}): only a head may differ; " + "; ".join(parts))
    merged = {k: (sd[k] if k not in reinit else v) for k, v in own.items()}
    model.load_state_dict(merged, strict=True)
    theirs = sd.get("head.fc.weight")
    why = (f"the checkpoint has {theirs.shape[0]} classes, this model {own['head.fc.weight'].shape[0]}"
           if theirs is not None and theirs.shape != own["head.fc.weight"].shape else "not in the checkpoint")
    return {"format": fmt, "loaded": len(own) - len(reinit), "total": len(own), "reinit": reinit,
            "why": why if reinit else ""}


def load_model(config, checkpoint: str | Path | None = None) -> nn.Module:
    """The model of `config` (a name, a YAML path or a Config) in eval mode, with the weights of
    `checkpoint` (any format `load_weights` reads) when one is given. Without one the weights
    are the random initialisation: `model.backbone.pretrained2d` is applied by `tpn train`
    when it starts from scratch (in Python: `tpn.convert.inflate.inflate_2d_into`)."""
    cfg = config if isinstance(config, Config) else load_config(config)
    model = build_model(cfg)
    if checkpoint is not None:
        load_weights(model, checkpoint)
    return model.eval()


def convert_checkpoint(src: str | Path, dst: str | Path, config="tpn_r50_8x8_k400", fmt: str = "auto",
                       label_names: list[str] | None = None) -> str:
    """Convert `src` to a tpn checkpoint at `dst`, checking every tensor against `config`'s model."""
    cfg = load_config(config)
    model = build_model(cfg)
    info = load_weights(model, src, fmt)
    n_classes = cfg.model.head.num_classes
    if label_names and n_classes is not None and len(label_names) > n_classes:
        raise CheckpointError(f"--labels: {len(label_names)} class names for a model of {n_classes} classes "
                              f"(config {cfg.name}); give one name per class")
    ckpt = {
        "format": FORMAT,
        "state_dict": model.state_dict(),
        "config": to_dict(cfg),
        "label_names": label_names or info.get("label_names"),
        "source": {"path": str(src), "format": info["format"]},
    }
    save_atomic(ckpt, dst)
    n = sum(v.numel() for k, v in ckpt["state_dict"].items() if not k.endswith("num_batches_tracked"))
    lines = [f"converted {src} ({info['format']}) -> {dst}: {len(ckpt['state_dict'])} tensors, {n:,} values, config {cfg.name}"]
    if info["dropped"]:
        lines.append(f"  dropped {len(info['dropped'])} non-weight tensors: {', '.join(info['dropped'][:4])}")
    if info["skipped_objects"]:
        lines.append(f"  skipped non-tensor objects: {', '.join(info['skipped_objects'][:6])}")
    lines += [f"  {n}" for n in info["notes"]]
    return "\n".join(lines)
