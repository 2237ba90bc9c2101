"""Checkpoint files: atomic writes, safe reads, strict state_dict loading with clear errors.

A `tpn` checkpoint is a dict saved by `torch.save` holding only tensors, numbers, strings,
lists and dicts:
    {"format": "tpn", "state_dict": {...}, "config": {...}, "label_names": [...], ...}
Training checkpoints add optimiser, scheduler and RNG state (see tpn.engine). Every file is
read by `load_file`, which never runs code from it (see its docstring).
"""
from __future__ import annotations

import os
import pickle
import tarfile
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace
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


# Everything torch.save writes for tensors and plain containers; any other global a pickle
# names (a function, a class) becomes an inert `_Unreadable`, so calling it does nothing.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
}


def _fresh(fn):
    """A new function object calling `fn`: a pickle may set attributes on what it loads
    (`__defaults__` too), and must not reach torch's own functions that way."""

    def call(*args, **kwargs):
        return fn(*args, **kwargs)

    return call


def _restricted_pickle_module(skipped: set[str]):
    """A stand-in for the `pickle` module whose `load` and `Unpickler` both only build allowed
    globals; torch.load reads every pickle of both file formats through one or the other."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) in _ALLOWED_GLOBALS:
                found = super().find_class(module, name)
                return found if isinstance(found, type) else _fresh(found)
            if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
                return getattr(torch, name)
            skipped.add(f"{module}.{name}")
            return type(name, (_Unreadable,), {"qualname": f"{module}.{name}"})

    def load(file, **kwargs):
        return Unpickler(file, **kwargs).load()

    return SimpleNamespace(Unpickler=Unpickler, load=load, __name__="tpn_restricted_pickle")


def _refuse_code_archives(path: Path) -> None:
    """torch.load hands a TorchScript zip to torch.jit.load (which compiles and runs the
    archive's code) and tries an old tar layout before the pickle one: neither reaches it."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":  # torch.load's own zip test
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"{path}: not a readable checkpoint (damaged zip archive: {e})") from None
        # records sit in one top folder (named after the file): TorchScript adds code/ and constants.pkl
        if any(n.split("/")[1:2] in (["code"], ["constants.pkl"]) for n in names):
            raise CheckpointError(f"{path}: a TorchScript archive holds code; tpn reads weights only "
                                  "(save the model's state_dict with torch.save)")
    elif tarfile.is_tarfile(path):
        raise CheckpointError(f"{path}: a tar archive, not a checkpoint (torch's original tar layout is not read)")


def load_file(path: str | Path, foreign: bool = True) -> tuple[Any, list[str]]:
    """Load a checkpoint without executing code from it.

    Every pickle of the file, in torch's zip and legacy layouts alike, is read by an unpickler
    that builds only tensors and plain containers; any other class or function it names is
    replaced by an inert placeholder that is never called. Returns (object, skipped), where
    `skipped` names those classes (e.g. an mmaction2 checkpoint's `meta` objects). A file
    that holds them is refused when `foreign` is False, or when it says it is a tpn checkpoint
    (tpn writes none). A missing, empty or corrupt file, a TorchScript or tar archive raises
    CheckpointError.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint file is empty")
    _refuse_code_archives(path)
    skipped: set[str] = set()
    # weights_only=False only because our own restricted module does the unpickling: torch's
    # weights-only reader refuses mmaction2's meta objects, and before torch 2.6 a file could
    # make it run code (GHSA-53q9-r3pm-6pq6)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_restricted_pickle_module(skipped))
    except Exception as e:
        refused = f"; it names {', '.join(sorted(skipped))}, which tpn never runs" if skipped else ""
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {_first_line(e)}{refused})") \
            from None
    if skipped and (not foreign or isinstance(obj, dict) and obj.get("format") == FORMAT):
        raise CheckpointError(f"{path}: a tpn checkpoint holds only tensors and plain values, this one also "
                              f"names {', '.join(sorted(skipped))} (never run)")
    return obj, sorted(skipped)


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
