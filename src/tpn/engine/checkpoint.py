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


def find_resume(work_dir: Path, resume: str | None) -> tuple[dict | None, Path | None]:
    """`auto`: the newest readable training checkpoint in work_dir (a truncated one is skipped)."""
    if not resume:
        return None, None
    if resume != "auto":
        obj, _ = load_file(resume, foreign=False)
        if not isinstance(obj, dict) or "optimizer" not in obj:
            raise CheckpointError(f"{resume}: not a tpn training checkpoint (no optimiser state)")
        return obj, Path(resume)
    best = (None, None, -1)
    for p in checkpoint_files(work_dir):
        try:
            obj, _ = load_file(p, foreign=False)
        except CheckpointError as e:
            log.warning("ignoring unreadable checkpoint %s (%s)", p, e)
            continue
        if isinstance(obj, dict) and obj.get("global_iter", -1) > best[2] and "optimizer" in obj:
            best = (obj, p, obj["global_iter"])
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
