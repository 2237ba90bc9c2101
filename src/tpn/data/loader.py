"""DataLoader settings for the video datasets.

Batch layouts (uint8 on the host; `tpn.data.transforms.normalize` on the device):
- train: `clips [N, 3, T, H, W]`, `labels [N]` (int64).
- val:   `clips [N, 3, T, H, W]`, `labels [N]`, `indices [N]`, `ok [N]` (bool; False = unreadable
  video, zeros in its place, listed in the report).
- test:  `views [N, V, 3, T, S, S]`, `labels`, `indices`, `ok`, with V = test_clips x test_crops,
  clip-major: view v is clip v // test_crops, crop v % test_crops (crops: start, centre, end of
  the long side). Reshape to `[N * V, 3, T, S, S]` for the model and average the V scores.
With `data.clips_per_decode: k`, a train batch still holds N clips, from N / k videos (k
consecutive clips per video). Clips are laid out frames-last in memory (channels_last_3d for a batch; `collate`), as decoded
and as the GPU model runs: the shapes above are the logical ones.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from tpn.data.transforms import frames_last_perms, stack_frames_last
from tpn.errors import TpnError


def seed_worker(worker_id: int) -> None:
    """Give each worker distinct numpy/random seeds derived from torch's per-worker seed.

    The datasets draw their augmentation from (seed, epoch, index) and do not need this;
    it keeps any other randomness in a worker (user transforms) distinct and reproducible.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _stack_frames_last(items: list[torch.Tensor]) -> torch.Tensor:
    """Stack uint8 clips/views frames-last (tpn.data.transforms.frames_last): a row copy per item,
    and a batch already in the channels_last_3d layout of the GPU model."""
    x = items[0]
    out = None
    if get_worker_info() is not None:  # in a worker: straight into shared memory, as default_collate does
        perm, _ = frames_last_perms(x.dim())
        shape = (len(items), *(x.shape[p] for p in perm))
        out = x.new(x._typed_storage()._new_shared(len(items) * x.numel(), device=x.device)).resize_(shape)
    return stack_frames_last(items, out)


def collate(batch):
    """`default_collate`, except that uint8 clips (..., 3, T, H, W) are stacked frames-last."""
    def field(items):
        x = items[0]
        if (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.dim() in (4, 5)
                and all(t.shape == x.shape for t in items)):
            return _stack_frames_last(items)
        return default_collate(items)

    if isinstance(batch[0], (tuple, list)):
        return [field(list(f)) for f in zip(*batch)]
    return field(batch)


def collate_clips(batch):
    """`collate` for training items of k clips each (`data.clips_per_decode`): clips
    [N, k, 3, T, H, W] -> [N * k, 3, T, H, W] (a view, still frames-last), labels and
    augmentation draws likewise, so the engine sees an ordinary batch of N * k clips."""
    return [f.flatten(0, 1) for f in collate(batch)]


def build_loader(dataset: Dataset, batch_size: int, num_workers: int, shuffle: bool = False,
                 sampler: Sampler | None = None, pin_memory: bool | None = None, drop_last: bool = False,
                 persistent_workers: bool = True, seed: int = 0, prefetch_factor: int = 2) -> DataLoader:
    """A DataLoader with persistent workers, pinned memory (when CUDA is there) and seeded workers.

    `batch_size` counts clips: a dataset whose items hold k clips (`clips_per_item`, from
    `data.clips_per_decode`) gets batches of `batch_size // k` items, flattened by `collate_clips`.
    """
    k = getattr(dataset, "clips_per_item", 1)
    if batch_size % k:
        raise TpnError(f"batch size {batch_size} is not a multiple of data.clips_per_decode ({k})")
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
