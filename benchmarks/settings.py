"""How a benchmark run is set up — size, device, threads, clock — and what a saved run records
about it. Everything is read from environment variables (docs/BENCHMARKS.md), so that pytest,
tox and ``benchmarks/overhead.py`` agree.
"""
from __future__ import annotations

import os
import platform
import time

import torch

SIZES = ("small", "paper")


def bench_size() -> str:
    """``CBCN_BENCH_SIZE``, else ``paper`` on a CUDA machine and ``small`` otherwise."""
    size = os.environ.get("CBCN_BENCH_SIZE") or ("paper" if torch.cuda.is_available() else "small")
    if size not in SIZES:
        raise ValueError(f"CBCN_BENCH_SIZE must be one of {SIZES}, got {size!r}")
    return size


def bench_device() -> torch.device:
    """``CBCN_BENCH_DEVICE`` (e.g. ``cpu`` to time the CPU on a GPU machine), else CUDA if present."""
    return torch.device(os.environ.get("CBCN_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))


_DEFAULT_THREADS = torch.get_num_threads()


def bench_threads() -> int:
    """``CBCN_BENCH_THREADS`` (a number, or ``all`` for torch's default), else 1.

    One thread by default because benchmark machines are often shared: an OpenMP parallel region
    waits for its slowest thread, and on 2 busy cores small ops (the CiF gathers) ran 100x slower
    with 2 threads than with 1 — noise that would drown any regression.
    """
    value = os.environ.get("CBCN_BENCH_THREADS", "1")
    return _DEFAULT_THREADS if value == "all" else int(value)


TIMERS = {"cpu": time.process_time, "wall": time.perf_counter}


def bench_timer_name() -> str:
    """``CBCN_BENCH_TIMER`` (``cpu`` or ``wall``), else ``cpu`` for one thread on the CPU, else ``wall``.

    Process CPU time does not count the time a job spends descheduled while others use the cores:
    on the shared 2-core machine, reruns of unchanged code spread 0.4x-2.4x in wall-clock ``min``
    but 0.9x-1.05x (10th-90th percentile) in CPU time. It is wrong for GPU work and for several
    threads (it adds their times up), hence ``wall`` there.
    """
    name = os.environ.get("CBCN_BENCH_TIMER") or (
        "cpu" if bench_device().type == "cpu" and bench_threads() == 1 else "wall"
    )
    if name not in TIMERS:
        raise ValueError(f"CBCN_BENCH_TIMER must be one of {sorted(TIMERS)}, got {name!r}")
    return name


def environment(device: torch.device | None = None) -> dict:
    """What a saved run needs beside pytest-benchmark's own machine info to be interpreted."""
    device = device or bench_device()
    info = {
        "bench_size": bench_size(),
        "device": str(device),
        "torch": torch.__version__,
        "torch_threads": bench_threads(),
        "timer": bench_timer_name(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def synchronized(fn, device: torch.device):
    """``fn`` followed by a device synchronisation, so that wall-clock timers see the GPU work."""
    if device.type != "cuda":
        return fn

    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize(device)
        return out

    return run
