"""Stopping a training run on SIGTERM, what Slurm and Kubernetes send before they kill a job,
or on a first Ctrl-C (SIGINT; a second one ends the process at once, without a checkpoint).

The handler only notes the signal; the training loop asks `requested()` between optimiser
steps and at an epoch's end, saves a resumable checkpoint there, releases the work dir's lock
and says so (`tpn.engine.train`). Under torchrun every rank gets the signal, not all at the
same step: a max all-reduce of the flag at each step boundary makes every rank stop at the same
one. It runs on a CPU (gloo) group, so a GPU run's step gains no device sync.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

import torch
import torch.distributed as dist

from tpn.engine.distributed import Dist


class StopSignal:
    """Notes SIGTERM or SIGINT while installed (from the constructor to `close`); the main thread
    only, where Python runs signal handlers (elsewhere it never asks to stop). `name` is the first
    signal this process received (None: none, or another rank's)."""

    def __init__(self, d: Dist):
        self.d = d
        self.received = False
        self.name: str | None = None
        # every rank creates the group at the same point (a collective call)
        self.group = dist.new_group(backend="gloo") if d.enabled and dist.get_backend() != "gloo" else None
        self._previous: dict = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._note)

    def _note(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received:  # a second Ctrl-C: stop now, whatever runs (a save
            # cut short leaves only its temporary file, which the next start removes; a stale lock is taken over)
            sys.stderr.write("\nCtrl-C again: stopped at once, without a checkpoint (--resume auto continues "
                             "from the last one saved)\n")
            sys.stderr.flush()
            os._exit(128 + signal.SIGINT)
        if signum == signal.SIGINT:
            sys.stderr.write("\nCtrl-C: stopping at the next step with a checkpoint (Ctrl-C again: at once, "
                             "without one)\n")
        self.name = self.name or signal.Signals(signum).name
        self.received = True

    @property
    def label(self) -> str:
        return self.name or "a stop signal (another rank's)"

    def requested(self) -> bool:
        """Whether to stop here; every rank gets the same answer (call it at the same points on all)."""
        if not self.d.enabled:
            return self.received
        flag = torch.tensor([int(self.received)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())

    def close(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
