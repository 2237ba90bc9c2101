"""DataLoader settings for the video datasets, and the collate that makes a `Batch`.

Batch layouts (`tpn.data.datasets.Batch`, uint8 on the host; `tpn.data.transforms.normalize`
on the device), the same fields for every split:
- clip: train/val `[N, 3, T, H, W]`; test `[N, V, 3, T, S, S]` with V = test_clips x test_crops,
  clip-major: view v is clip v // test_crops, crop v % test_crops (crops: start, centre, end of
  the long side). Reshape to `[N * V, 3, T, S, S]` for the model and average the V scores.
- label `[N]` (int64), index `[N]` (int64), ok `[N]` (bool; False = unreadable video, zeros in
  its place, listed in the report).
- aug `[N, 7]` with `data.augment_on_device` (`transforms.apply_augment` on the device), else None.
With `data.clips_per_decode: k`, a train batch still holds N clips (every field N rows), from
N / k videos (k consecutive clips per video; `collate_clips`).
Clips are laid out frames-last in memory (channels_last_3d for a batch; `collate`), as decoded
and as the GPU model runs: the shapes above are the logical ones.
"""
from __future__ import annotations

import os
import random
import signal
import threading

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from tpn.data.datasets import Batch
from tpn.data.transforms import stack_frames_last
from tpn.errors import TpnError


def seed_worker(worker_id: int) -> None:
    """Give each worker distinct numpy/random seeds derived from torch's per-worker seed.

    The datasets draw their augmentation from (seed, epoch, index) and do not need this;
    it keeps any other randomness in a worker (user transforms) distinct and reproducible.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    ignore_sigterm_but_the_parents()
    # Ctrl-C reaches every process of the terminal's group: the main process decides (a training
    # run saves a checkpoint first) and ends its workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def ignore_sigterm_but_the_parents() -> None:
    """In a loader worker: SIGTERM from any process but the parent is ignored, the parent's ends
    the worker at once (as torch's own worker handler does). Slurm sends SIGTERM to every process
    of a job; the main process decides when to stop (a training run saves a checkpoint first,
    `tpn.engine.stop`) and ends its workers itself, also with SIGTERM at exit. The signal is
    blocked in this thread (and so in the threads it starts) and taken by a waiting thread, which
    sees who sent it."""
    if not hasattr(signal, "sigwaitinfo"):  # not on macOS: torch's handler stays
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
            pass
        os._exit(0)

    threading.Thread(target=wait, name="sigterm", daemon=True).start()


def collate(items: list[Batch]) -> Batch:
    """Dataset items -> one `Batch`. Clips are stacked frames-last (`transforms.frames_last`):
    a row copy per item, and a batch already in the channels_last_3d layout of the GPU model;
    `default_collate` does the stacking, so in a worker the batch is written straight into
    shared memory. The other fields as `default_collate`; an absent `aug` stays None; `job` (GPU
    decoding, `tpn.data.nvdec`) is a list with one entry per item, or None when no item has one."""
    fields = list(zip(*items))
    rest = [default_collate(list(f)) if f[0] is not None else None for f in fields[1:-1]]
    jobs = list(fields[-1]) if any(j is not None for j in fields[-1]) else None  # per item, None: decoded here
    return Batch(stack_frames_last([b.clip for b in items], stack=default_collate), *rest, jobs)


def collate_clips(items: list[Batch]) -> Batch:
    """`collate` for training items of k clips each (`data.clips_per_decode`): clips
    [N, k, 3, T, H, W] -> [N * k, 3, T, H, W] (a view, still frames-last), labels, indices,
    ok flags and augmentation draws likewise, so the engine sees an ordinary batch of N * k clips
    (a GPU decoding job, `job`, stays one per item: it makes that item's k clips)."""
    batch = collate(items)
    return Batch(*(f.flatten(0, 1) if f is not None else None for f in batch[:-1]), batch.job)


def build_loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool = False,
                 sampler: Sampler | None = None, pin_memory: bool | None = None, drop_last: bool = False,
                 persistent_workers: bool = True, seed: int | None = 0, prefetch_factor: int = 2) -> DataLoader:
    """A DataLoader with persistent workers, pinned memory (when CUDA is there) and seeded workers.

    `seed`: the loader's own generator (shuffling, worker seeds); None draws them from the
    global torch RNG, as a plain DataLoader does.
    `batch_size` counts clips: a dataset whose items hold k clips (`clips_per_item`, from
    `data.clips_per_decode`) gets batches of `batch_size // k` items, flattened by `collate_clips`.
    """
    k = getattr(dataset, "clips_per_item", 1)
    if batch_size % k:
        raise TpnError(f"batch size {batch_size} is not a multiple of data.clips_per_decode ({k})")
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(seed)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    workers = max(0, num_workers)
    return DataLoader(dataset, batch_size=batch_size // k, shuffle=shuffle if sampler is None else False,
                      sampler=sampler, num_workers=workers, pin_memory=pin_memory, drop_last=drop_last,
                      persistent_workers=persistent_workers and workers > 0, worker_init_fn=seed_worker,
                      collate_fn=collate if k == 1 else collate_clips,
                      generator=generator, prefetch_factor=prefetch_factor if workers > 0 else None)
