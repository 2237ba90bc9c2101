"""DataLoader settings for the video datasets.

Batch layouts (uint8 on the host; `tpn.data.transforms.normalize` on the device):
- train: `clips [N, 3, T, H, W]`, `labels [N]` (int64).
- val:   `clips [N, 3, T, H, W]`, `labels [N]`, `indices [N]`, `ok [N]` (bool; False = unreadable
  video, zeros in its place, listed in the report).
- test:  `views [N, V, 3, T, S, S]`, `labels`, `indices`, `ok`, with V = test_clips x test_crops,
  clip-major: view v is clip v // test_crops, crop v % test_crops (crops: start, centre, end of
  the long side). Reshape to `[N * V, 3, T, S, S]` for the model and average the V scores.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def seed_worker(worker_id: int) -> None:
    """Give each worker distinct numpy/random seeds derived from torch's per-worker seed.

    The datasets draw their augmentation from (seed, epoch, index) and do not need this;
    it keeps any other randomness in a worker (user transforms) distinct and reproducible.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool = False,
                 sampler: Sampler | None = None, pin_memory: bool | None = None, drop_last: bool = False,
                 persistent_workers: bool = True, seed: int = 0, prefetch_factor: int = 2) -> DataLoader:
    """A DataLoader with persistent workers, pinned memory (when CUDA is there) and seeded workers."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    workers = max(0, num_workers)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                      sampler=sampler, num_workers=workers, pin_memory=pin_memory, drop_last=drop_last,
                      persistent_workers=persistent_workers and workers > 0, worker_init_fn=seed_worker,
                      generator=generator, prefetch_factor=prefetch_factor if workers > 0 else None)
