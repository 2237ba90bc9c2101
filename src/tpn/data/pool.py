"""Work over many videos in worker processes, with a progress bar (check, prepare, synth)."""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Callable


def map_in_processes(fn: Callable, jobs: list, workers: int, chunksize: int, desc: str | None = None) -> list:
    """`[fn(job) for job in jobs]` computed by `workers` processes (at least one), in order;
    `desc` names a progress bar (none when None). A decoder or encoder crash stays in its process."""
    with ProcessPoolExecutor(max(1, workers)) as pool:
        results = pool.map(fn, jobs, chunksize=chunksize)
        if desc:
            from tqdm import tqdm

            results = tqdm(results, total=len(jobs), desc=desc, unit="video")
        return list(results)
