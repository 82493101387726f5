"""Where training runs: one process or many, and on which device.

`torchrun --nproc_per_node=N train_offline.py` runs DistributedDataParallel.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything here is a no-op and the
program is a plain single process. Each global batch (the same on every rank: the batch order is a
pure function of seed and epoch) is split into one contiguous shard per rank, which is what a
distributed sampler does; rank 0 alone logs, evaluates and saves.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn

from seqrec.running.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_world: int = 1   # processes on this machine (they share its cores)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: np.ndarray) -> np.ndarray:
        """This rank's contiguous part of a global batch (parts differ by at most one sample)."""
        return np.array_split(batch, self.world)[self.rank]

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of `x` over all ranks (x itself in a single process)."""
        if self.world == 1:
            return x
        x = x.clone()
        torch_dist.all_reduce(x)
        return x

    def offset(self, n: int) -> tuple[int, int]:
        """(rows on the ranks before this one, rows on all ranks) when this rank holds n rows of a
        global batch cut in rank order: where its rows sit in what one process would hold."""
        if self.world == 1:
            return 0, n
        counts = self.sum(torch.zeros(self.world, dtype=torch.int64).index_fill_(0, torch.tensor([self.rank]), n))
        return int(counts[:self.rank].sum()), int(counts.sum())

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()


SINGLE = Dist()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` = the GPU if there is one, else the CPU; `cuda` without a GPU is an error."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("device is 'cuda' but torch sees no GPU; use --set device=auto or device=cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device_name: str) -> tuple[Dist, torch.device]:
    """(who this process is, its device); joins the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return SINGLE, resolve_device(device_name)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch_dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return Dist(rank=torch_dist.get_rank(), world=torch_dist.get_world_size(), local_world=local_world), device


def teardown() -> None:
    """Leave the process group. Collect garbage first: DDP's reducer sits in reference cycles and holds
    the gloo group, which otherwise dies during interpreter shutdown with its worker threads still
    joinable (std::terminate, SIGABRT; seen under load in CI)."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        gc.collect()
        torch_dist.destroy_process_group()


def model_device(module) -> torch.device:
    """Where a module's parameters (or buffers) live; the CPU for anything without tensors."""
    if isinstance(module, nn.Module):
        for tensor in list(module.parameters()) + list(module.buffers()):
            return tensor.device
    return torch.device("cpu")
