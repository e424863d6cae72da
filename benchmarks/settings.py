"""How a benchmark run is set up — size, device, threads, clock — and what a saved run records
about it (the machine as ``cbcn.harness.machine`` describes it). Everything is read from environment variables (docs/BENCHMARKS.md), so that pytest,
tox and ``benchmarks/overhead.py`` agree.
"""
from __future__ import annotations

import os

import torch

from cbcn.harness.machine import device_description, host_description
from cbcn.harness.measure import CLOCKS, default_clock
from cbcn.harness.provenance import package_versions

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


def bench_timer_name() -> str:
    """``CBCN_BENCH_TIMER`` (``cpu`` or ``wall``), else ``cbcn.harness.measure.default_clock``: process CPU
    time for one thread on the CPU, where it ignores the time the job spends descheduled on a
    shared machine, else the wall clock that synchronises the GPU (``cbcn.harness.measure``)."""
    name = os.environ.get("CBCN_BENCH_TIMER") or default_clock(bench_device(), bench_threads())
    if name not in CLOCKS:
        raise ValueError(f"CBCN_BENCH_TIMER must be one of {sorted(CLOCKS)}, got {name!r}")
    return name


def bench_clock():
    """The clock of ``bench_timer_name()`` (``cbcn.harness.measure.CLOCKS``)."""
    return CLOCKS[bench_timer_name()]


def environment(device: torch.device | None = None) -> dict:
    """What a saved run needs beside pytest-benchmark's own machine info to be interpreted: the
    benchmark settings, the machine (``cbcn.harness.machine``) and the software versions."""
    device = device or bench_device()
    info = {"bench_size": bench_size(), "timer": bench_timer_name(), **host_description(),
            **device_description(device), "torch_threads": bench_threads(),
            "torch": torch.__version__, "triton": package_versions().get("triton")}
    if device.type == "cuda":
        info["cudnn"] = torch.backends.cudnn.version()
    return info
