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

    @classmethod
    def from_env(cls) -> "DistInfo":
        """What torchrun's RANK/WORLD_SIZE/LOCAL_RANK say, without joining the process group: the
        one place code outside the training loop (CLI output, the report) asks "am I rank 0"."""
        return cls(rank=int(os.environ.get("RANK", "0")), world_size=int(os.environ.get("WORLD_SIZE", "1")),
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")))


class DeviceError(ValueError):
    """A device that does not exist here or is not a device at all (the message says which)."""


def resolve_device(pref: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> this rank's GPU if CUDA is available, else CPU; 'cuda' uses cuda:LOCAL_RANK;
    'cpu', 'cuda:N' and 'mps' as asked, when present."""
    pref = str(pref).strip().lower()
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(pref)
    except RuntimeError:
        raise DeviceError(f"unknown device {pref!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {pref!r} requested but CUDA is not available here; use --device cpu "
                              "(or auto)")
        count = torch.cuda.device_count()
        if device.index is None:
            return torch.device("cuda", local_rank % count)
        if device.index >= count:
            raise DeviceError(f"device {pref!r} requested but this machine has {count} CUDA device(s)")
        return device
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise DeviceError("device 'mps' requested but Apple's Metal backend is not available here")
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {pref!r} is not supported by cbcn; use auto, cpu, cuda or cuda:N")
    return device


def init_distributed(device_pref: str = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group if launched by torchrun with WORLD_SIZE > 1."""
    env = DistInfo.from_env()
    local_rank = env.local_rank
    device = resolve_device(device_pref, local_rank)
    if not env.enabled:
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
