"""Checkpoint files: atomic writes, safe reads, strict state_dict loading with clear errors.

A `tpn` checkpoint is a dict saved by `torch.save` holding only tensors, numbers, strings,
lists and dicts, so it loads with `weights_only=True`:
    {"format": "tpn", "state_dict": {...}, "config": {...}, "label_names": [...], ...}
Training checkpoints add optimiser, scheduler and RNG state (see tpn.engine).
"""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from tpn.errors import TpnError, listing

FORMAT = "tpn"


class CheckpointError(TpnError):
    pass


def save_atomic(obj: Any, path: str | Path) -> Path:
    """torch.save to a temp file in the same folder, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class _Unreadable:
    """Stands in for any non-tensor object of a foreign checkpoint; it runs no code."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __repr__(self) -> str:
        return f"<unreadable {getattr(type(self), 'qualname', '?')}>"


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles tensors and plain containers; every other class becomes an inert `_Unreadable`."""

    skipped: set[str] = set()
    _ALLOWED_MODULES = ("torch._utils", "torch.storage", "torch._tensor")

    def find_class(self, module: str, name: str):
        if module == "collections" and name == "OrderedDict":
            return super().find_class(module, name)
        if module in self._ALLOWED_MODULES and name.startswith("_rebuild"):
            return super().find_class(module, name)
        if module == "torch" and (name.endswith("Storage") or name in ("Size", "device")):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return super().find_class(module, name)
        qual = f"{module}.{name}"
        _RestrictedUnpickler.skipped.add(qual)
        return type(name, (_Unreadable,), {"qualname": qual})


class _RestrictedPickleModule:
    Unpickler = _RestrictedUnpickler
    load = pickle.load
    __name__ = "tpn_restricted_pickle"


def load_file(path: str | Path) -> tuple[Any, list[str]]:
    """Load a checkpoint without executing code from it.

    Returns (object, skipped) where `skipped` names the foreign classes that were replaced
    by inert placeholders (e.g. an mmaction2 checkpoint's `meta` objects); tensors and plain
    containers are always read. A missing, empty or corrupt file raises CheckpointError.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True), []
    except pickle.UnpicklingError:
        pass  # it holds non-tensor objects: read it again with the restricted unpickler
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    _RestrictedUnpickler.skipped = set()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    return obj, sorted(_RestrictedUnpickler.skipped)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load every tensor or fail listing missing, unexpected and mis-shaped ones."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or misshaped:
        raise misfit_error(f"{source}: weights do not fit the model", missing, unexpected, misshaped)
    model.load_state_dict(state_dict, strict=True)


def misfit_error(what: str, missing: list[str], unexpected: list[str], misshaped: list[str]) -> CheckpointError:
    """One line listing (the first 8 of) each kind of tensor that does not fit."""
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
        if items:
            parts.append(f"{len(items)} {label}: {listing(items)}")
    return CheckpointError(f"{what}: " + "; ".join(parts))
