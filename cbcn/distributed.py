"""Data-parallel helpers for ``torchrun`` (DistributedDataParallel).

Why so little: ``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR; we only pick the
backend (NCCL for GPUs, gloo for CPU), the device of this rank, and provide the reductions that
turn per-rank counts into global metrics. Without those variables everything is a no-op, so the
same training code runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> this rank's GPU if CUDA is available, else CPU; 'cuda' uses cuda:LOCAL_RANK."""
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available; use --device cpu")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(pref)


def init_distributed(device_pref: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group if launched by torchrun with WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    if world <= 1:
        return DistInfo(), device
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, backend), device


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks (in place on a copy; identity in one process)."""
    if not info.enabled:
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean_(tensor: torch.Tensor, info: DistInfo) -> None:
    """Average a tensor over ranks in place (e.g. center-loss centres kept in sync)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= info.world_size


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's ``obj`` (list indexed by rank); ``[obj]`` in one process."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
