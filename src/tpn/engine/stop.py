"""Stopping a training run on SIGTERM, what Slurm and Kubernetes send before they kill a job.

The handler only notes the signal; the training loop asks `requested()` between optimiser
steps and at an epoch's end, saves a resumable checkpoint there, releases the work dir's lock
and says so (`tpn.engine.train`). Under torchrun every rank gets the signal, not all at the
same step: a max all-reduce of the flag at each step boundary makes every rank stop at the same
one. It runs on a CPU (gloo) group, so a GPU run's step gains no device sync.
"""
from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

from tpn.engine.distributed import Dist


class StopSignal:
    """Notes SIGTERM while installed (from the constructor to `close`); the main thread only,
    where Python runs signal handlers (elsewhere it never asks to stop)."""

    def __init__(self, d: Dist):
        self.d = d
        self.received = False
        # every rank creates the group at the same point (a collective call)
        self.group = dist.new_group(backend="gloo") if d.enabled and dist.get_backend() != "gloo" else None
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._note)

    def _note(self, signum, frame) -> None:
        self.received = True

    def requested(self) -> bool:
        """Whether to stop here; every rank gets the same answer (call it at the same points on all)."""
        if not self.d.enabled:
            return self.received
        flag = torch.tensor([int(self.received)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
