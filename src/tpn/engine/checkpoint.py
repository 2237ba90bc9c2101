"""Training-checkpoint housekeeping: RNG state, the newest valid file to resume from, pruning.

File I/O (atomic save, safe load) is `tpn.checkpoint`; what a training checkpoint holds is
written by `tpn.engine.train`.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch

from tpn.checkpoint import CheckpointError, load_file
from tpn.engine.workdir import CHECKPOINTS
from tpn.errors import listing

log = logging.getLogger("tpn.train")


def rng_state() -> dict:
    """torch, numpy, Python (and CUDA) RNG states as tensors and plain values (weights_only loads them)."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                                                       int(np_state[2]), int(np_state[3]), float(np_state[4])],
             "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_files(work_dir: Path) -> list[Path]:
    return sorted(work_dir.glob("epoch_*.pth")) + sorted(work_dir.glob("iter_*.pth"))


def finite(obj) -> bool:
    """Whether every floating-point tensor in `obj` (nested dicts, lists) is finite: one host sync."""
    flags = [torch.isfinite(t).all() for t in _tensors(obj) if t.is_floating_point()]
    return bool(torch.stack([f.to(flags[0].device) for f in flags]).all()) if flags else True


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def trainable(ckpt: dict) -> bool:
    """Weights and optimiser state finite: a run can go on from the checkpoint."""
    return finite(ckpt.get("state_dict", {})) and finite(ckpt.get("optimizer", {}))


def find_resume(work_dir: Path, resume: str | None) -> tuple[dict | None, Path | None]:
    """`auto`: the newest training checkpoint in work_dir that is readable and finite (a truncated
    file, or one saved after the loss diverged, is skipped with a warning). Finding none is a
    fresh start in a dir without checkpoints (a new run, or one that died before its first) and
    an error in a dir that holds some: starting afresh would overwrite them."""
    if not resume:
        return None, None
    if resume != "auto":
        obj, _ = load_file(resume, foreign=False)
        if not isinstance(obj, dict) or "optimizer" not in obj:
            raise CheckpointError(f"{resume}: not a tpn training checkpoint (no optimiser state)")
        if not trainable(obj):
            raise CheckpointError(f"{resume}: its weights or optimiser state are not finite (saved after the loss "
                                  f"diverged): resume from an earlier checkpoint")
        return obj, Path(resume)
    best = (None, None, -1)
    for p in checkpoint_files(work_dir):
        try:
            obj, _ = load_file(p, foreign=False)
        except CheckpointError as e:
            log.warning("ignoring unreadable checkpoint %s (%s)", p, e)
            continue
        if not isinstance(obj, dict) or "optimizer" not in obj or obj.get("global_iter", -1) <= best[2]:
            continue
        if not trainable(obj):
            log.warning("ignoring checkpoint %s: its weights or optimiser state are not finite (saved after the "
                        "loss diverged)", p)
            continue
        best = (obj, p, obj["global_iter"])
    found = sorted({p.name for pattern in CHECKPOINTS for p in work_dir.glob(pattern)})
    if best[0] is None and found:
        raise CheckpointError(f"{work_dir} holds checkpoints of an earlier run ({listing(found, 3)}) but none that "
                              f"--resume auto continues from (a readable epoch_*.pth or iter_*.pth with finite "
                              f"weights): continue from one with --resume PATH, train into a new --work-dir, or "
                              f"pass --overwrite to delete them")
    return best[0], best[1]


def prune(work_dir: Path, pattern: str, keep: int) -> None:
    """Delete all but the newest `keep` files matching `pattern` (keep <= 0: delete none)."""
    files = sorted(work_dir.glob(pattern), key=lambda p: p.stat().st_mtime)
    for p in files[:-keep] if keep > 0 else []:
        p.unlink(missing_ok=True)


def prune_after_epoch(work_dir: Path, keep_last: int) -> None:
    """An epoch's checkpoint is saved: keep the last `keep_last` epochs, drop the in-epoch files."""
    prune(work_dir, "epoch_*.pth", keep_last)
    for p in work_dir.glob("iter_*.pth"):
        p.unlink(missing_ok=True)
