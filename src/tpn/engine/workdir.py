"""A training run's work dir: one run at a time, and an earlier run's checkpoints are never
overwritten unasked (a run that died before its first checkpoint leaves only log rows, which a
fresh start replaces).

- `lock` writes `tpn.lock` (pid, host, start time) with an exclusive create; a second run on
  the same dir stops with one line naming the holder. A lock left by a process that is gone
  (same host, pid not running) is taken over with a warning; one from another host cannot be
  checked, so it stops the run unless `--break-lock`.
- `check_earlier_run`: checkpoints in the dir and no `--resume` is an error with the three ways
  on; `--overwrite` deletes the earlier run's files (`EARLIER_RUN`) first.
- `remove_partial_saves`: the temporary file of a checkpoint save cut short by a kill is deleted.
Rank 0 alone calls these (`tpn.engine.train.start` hands its outcome to every rank).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from datetime import datetime
from pathlib import Path

from tpn.errors import TpnError, listing

LOCK = "tpn.lock"
CHECKPOINTS = ("epoch_*.pth", "iter_*.pth", "best.pth")
# what --overwrite deletes: the files a training run writes, except config.yaml (rewritten anyway)
EARLIER_RUN = CHECKPOINTS + ("metrics.jsonl", "train.log", "training_curves.png", "bad_videos.jsonl", "tensorboard")
# the temporary files `tpn.checkpoint.save_atomic` writes a checkpoint to before renaming it
PARTIAL_SAVES = ".*.pth.*.tmp"


def lock(work_dir: Path, break_lock: bool = False) -> tuple[dict, list[str]]:
    """Take `work_dir/tpn.lock` for this process; returns (its content, warnings to log)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().isoformat(timespec="seconds")}
    warnings = []
    for _ in range(3):  # a holder may release, or another run take over, between two steps
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = _read(path)
            except FileNotFoundError:
                continue
            warnings.append(_judge(path, holder, me, break_lock))  # raises when the holder may be running
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return me, warnings
    raise TpnError(f"{path}: could not take the work dir's lock (other runs are starting on it)")


def unlock(work_dir: Path, me: dict) -> None:
    """Remove the lock if it is still this process's."""
    path = work_dir / LOCK
    try:
        if _read(path) == me:
            path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


# `lock` creates the file, then writes it: a run reading it between the two steps finds it empty.
# An empty or garbled lock younger than this is re-read until it holds a holder or grows this old.
LOCK_SETTLE_S = 2.0


def _read(path: Path) -> dict | None:
    """The lock's holder, or None for a lock file that is not one (empty, garbled) and is not
    being written either (`LOCK_SETTLE_S`). A lock that cannot be read is a one-line error."""
    while True:
        try:
            text = path.read_bytes().decode("utf-8", "replace")
            age = time.time() - path.stat().st_mtime
        except FileNotFoundError:
            raise
        except OSError as e:
            raise TpnError(f"{path}: cannot read the work dir's lock ({e.strerror or e})") from None
        try:
            holder = json.loads(text)
        except ValueError:
            holder = None
        ok = isinstance(holder, dict) and isinstance(holder.get("pid"), int) and isinstance(holder.get("host"), str)
        if ok or not 0 <= age < LOCK_SETTLE_S:
            return holder if ok else None
        time.sleep(0.05)  # a run is taking the lock this instant: let it write who it is


def _judge(path: Path, holder: dict | None, me: dict, break_lock: bool) -> str:
    """The warning for taking over `holder`'s lock, or a TpnError when it may still be running."""
    if holder is None:
        return f"{path}: not a lock this program wrote; taking it over"
    who = f"pid {holder['pid']} on host {holder['host']}, started {holder.get('started', '?')}"
    if holder["host"] == me["host"] and (holder["pid"] == me["pid"] or not _running(holder["pid"])):
        return f"{path}: taking over the stale lock of a run that is gone ({who})"
    if break_lock:
        return f"{path}: --break-lock: taking over the lock of {who}"
    if holder["host"] == me["host"]:
        raise TpnError(f"{path.parent} is in use by another training run ({who}): wait for it, stop it, "
                       f"or train into another --work-dir")
    raise TpnError(f"{path.parent} is locked by a run on another host ({who}); whether it still runs cannot be "
                   f"checked from {me['host']}: if it does not, pass --break-lock")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a zombie (killed, not yet reaped by its parent) runs no more
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def remove_partial_saves(work_dir: Path) -> list[str]:
    """Delete the temporary files of checkpoint saves that a kill cut short (the lock is held: no
    run of this dir is saving); returns their names."""
    found = sorted(work_dir.glob(PARTIAL_SAVES))
    for p in found:
        p.unlink(missing_ok=True)
    return [p.name for p in found]


def check_earlier_run(work_dir: Path, resume: str | None, overwrite: bool) -> list[str]:
    """Refuse to start afresh over checkpoints unless `overwrite`; returns the files deleted."""
    if overwrite and resume:
        raise TpnError("--overwrite starts afresh and --resume continues the earlier run: pass one of them")
    found = sorted({p.name for pattern in CHECKPOINTS for p in work_dir.glob(pattern)})
    if not overwrite:
        if found and not resume:
            raise TpnError(f"{work_dir} holds checkpoints of an earlier run ({listing(found, 3)}): continue it with "
                           f"--resume auto, train into a new --work-dir, or pass --overwrite to delete them")
        return []
    deleted = sorted({p for pattern in EARLIER_RUN for p in work_dir.glob(pattern)})
    for p in deleted:
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    return [p.name for p in deleted]
