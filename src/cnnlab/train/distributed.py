"""Data-parallel training across processes started by ``torchrun`` (gloo on CPU, NCCL on GPU).

Every rank holds the whole in-memory dataset and draws the same shuffled
order from the same seeded generator; each global batch is split across
ranks by striding (rank r takes samples r, r + world, ...), so N ranks with
a per-rank batch of B/N take exactly the steps one process takes with a
batch of B, and DistributedDataParallel averages the gradients. Metrics are
summed across ranks before they are read. Only rank 0 writes files.
Batch-norm statistics are computed per rank (PyTorch's default under DDP).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's share of a global batch (or of a dataset): every world_size-th item."""
        return tensor[self.rank::self.world_size] if self.enabled else tensor

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_sum_int(self, value: int, device) -> int:
        if not self.enabled:
            return value
        tensor = torch.tensor(value, device=device, dtype=torch.long)
        return int(self.all_sum(tensor).item())


def context_from_env(device_type: str = "cpu") -> DistributedContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), world_size,
                 backend)
    return DistributedContext(dist.get_rank(), dist.get_world_size(),
                              int(os.environ.get("LOCAL_RANK", "0")))


def is_main_process() -> bool:
    """True on rank 0, or when not distributed (torchrun's RANK counts before the group forms)."""
    if dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0
