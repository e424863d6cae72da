"""The one description of the machine a number was measured on: the host and the device.

Why one module: a stored result, a hardware profile and a saved benchmark run each say which
machine produced them, and they must say it the same way to be compared. ``host_description``
is the machine (hostname, OS, CPU model, cores); ``device_description`` the device a model ran
on (the GPU, or the CPU and the threads torch used).
"""
from __future__ import annotations

import os
import platform
import socket
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def host_description() -> dict:
    """The host: name, OS, CPU model and logical cores."""
    return {"hostname": socket.gethostname(), "platform": platform.platform(), "cpu": cpu_name(),
            "cpu_count": os.cpu_count()}


def device_description(device: torch.device) -> dict:
    """The device a model runs on, with the threads torch uses now: a GPU's name, memory and CUDA
    version, or the CPU's name and cores."""
    device = torch.device(device)
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return {"device": str(device), "device_name": p.name, "device_memory_bytes": p.total_memory,
                "cuda": torch.version.cuda, "torch_threads": torch.get_num_threads()}
    return {"device": str(device), "device_name": cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
