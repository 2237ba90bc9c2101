"""torch.distributed set-up from torchrun's environment, and a resumable sharded sampler.

Launch with `torchrun --nproc-per-node N -m tpn.cli train ...` (or `tpn train` for one
process; several nodes and elastic restarts: docs/training.md). NCCL on CUDA, gloo on CPU.
Rank 0 logs and saves.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout
from torch.utils.data import Sampler

from tpn.errors import TpnError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(device: str = "auto") -> Dist:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise TpnError("--device cuda: no CUDA GPU is visible to this process (torch "
                       f"{torch.__version__}{'' if torch.version.cuda else ', a CPU-only build'}): use --device cpu or auto")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":  # torchrun's store outlives restarts
            dist.init_process_group(backend, store=attempt_store(rank, world), rank=rank, world_size=world)
        else:
            dist.init_process_group(backend, rank=rank, world_size=world)
    return Dist(rank, world, local, dev)


def attempt_store(rank: int, world: int) -> dist.Store:
    """torchrun's store (MASTER_ADDR:MASTER_PORT), seen through a prefix that only this attempt
    of the group writes under.

    torchrun keeps one store for all restarts of a group (`--max-restarts`), and the keys in it: a
    restarted rank can read its peers' addresses from the attempt before, dead with its processes,
    and the set-up fails or hangs (pytorch#135712; `TORCHELASTIC_RESTART_COUNT` cannot tell the attempts
    apart, each node counts its own restarts). So rank 0 names the attempt with a fresh random key,
    and every other rank says hello under the name it reads until rank 0 answers its own hello
    (under a name left by an earlier attempt nobody does).
    """
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=default_pg_timeout)
    if rank == 0:
        attempt = uuid.uuid4().hex
        store.set("tpn/attempt", attempt)
        for r in range(1, world):
            hello = f"tpn/{attempt}/hello/{r}"
            store.wait([hello])
            store.set(f"tpn/{attempt}/welcome/{r}", store.get(hello))
        return dist.PrefixStore(f"tpn/{attempt}/", store)
    me, deadline = uuid.uuid4().hex.encode(), time.monotonic() + default_pg_timeout.total_seconds()
    while time.monotonic() < deadline:
        attempt = store.get("tpn/attempt").decode()  # waits for the first attempt to name itself
        welcome = f"tpn/{attempt}/welcome/{rank}"
        if store.check([welcome]) and store.get(welcome) == me:
            return dist.PrefixStore(f"tpn/{attempt}/", store)
        store.set(f"tpn/{attempt}/hello/{rank}", me)
        time.sleep(0.1)
    raise TpnError(f"rank {rank}: rank 0 of this torchrun attempt did not answer within "
                   f"{default_pg_timeout} (MASTER_ADDR {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']})")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()


def all_reduce_mean(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        t = t.clone()
        dist.all_reduce(t)
        t /= d.world
    return t


def gather_objects(obj, d: Dist) -> list:
    if not d.enabled:
        return [obj]
    out = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


class ShardedSampler(Sampler[int]):
    """Epoch-seeded permutation, split across ranks, that can start mid-epoch.

    Training (`shuffle=True`) pads the permutation by repeating it from its start (cyclically,
    so even a set smaller than the ranks) until every rank gets the same number of samples. Evaluation (`shuffle=False`) does not pad: rank r
    takes indices r, r + world, ..., so every sample is seen exactly once overall.
    """

    def __init__(self, size: int, rank: int = 0, world: int = 1, shuffle: bool = True, seed: int = 0):
        self.size, self.rank, self.world, self.shuffle, self.seed = size, rank, world, shuffle, seed
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """`start`: how many of this rank's samples of the epoch were already consumed."""
        self.epoch, self.start = epoch, start

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.size, self.world))
        g = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
        perm = torch.randperm(self.size, generator=g).tolist()
        per_rank = -(-self.size // self.world)
        if self.size:  # repeat the permutation from its start (cyclically: a set smaller than the ranks too)
            perm = [perm[i % self.size] for i in range(per_rank * self.world)]
        return perm[self.rank::self.world]

    def __iter__(self):
        return iter(self._indices()[self.start:])

    def __len__(self) -> int:
        return len(self._indices()) - self.start
