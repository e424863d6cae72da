"""Measuring speed and memory: one timing helper for side-by-side comparisons, one for GPU kernels,
and peak memory.

Why these and not a loop per benchmark: a ratio of two speeds is only honest when both were
timed alike, under the same load. On a shared machine the load drifts, so contenders are timed
*interleaved*, one sample of each per round, in an order shuffled per round so that none always
inherits the caches another left behind; a ratio is then taken of medians (or per round).
Each sample is one ``timeit`` measurement (the garbage collector kept out of it) on a clock from
``CLOCKS``. GPU kernels alone are timed by Triton's own ``do_bench`` / ``do_bench_cudagraph``
(the methodology of Triton's tutorials).

Clocks (``CLOCKS``): ``wall`` (``torch.utils.benchmark.timer``: ``time.perf_counter`` after
synchronising the accelerator) everywhere; ``cpu`` (process CPU time) for one thread on a CPU,
where it does not count the time the job spends descheduled while other jobs use the cores: on a
shared 2-core machine, reruns of unchanged code spread 0.4x-2.4x in wall-clock ``min`` but
0.9x-1.05x in CPU time. It is wrong for GPU work and for several threads (it adds their times up).
"""
from __future__ import annotations

import math
import platform
import random
import statistics
import time
import timeit
from typing import Callable

import torch
from torch.utils.benchmark import timer as synchronised_wall_clock

CLOCKS = {"cpu": time.process_time, "wall": synchronised_wall_clock}


def default_clock(device: torch.device, threads: int) -> str:
    """``cpu`` for one thread on a CPU, else ``wall`` (see the module docstring)."""
    return "cpu" if torch.device(device).type == "cpu" and threads == 1 else "wall"


def interleaved_times(fns: dict[str, Callable[[], object]], *, rounds: int = 20, warmup: int = 1,
                      max_seconds: float = math.inf, clock: str = "wall", min_sample_s: float = 0.0,
                      seed: int = 0) -> dict[str, list[float]]:
    """Seconds per call of each function, one sample of each in every round.

    ``warmup`` untimed rounds first (caches, first-use builds, the allocator), then up to
    ``rounds`` timed rounds, each in an order shuffled with ``seed``; after at least 3 rounds it
    stops once ``max_seconds`` are spent. A sample repeats its call enough times to last about
    ``min_sample_s`` (for calls near the clock's resolution) and gives the time per call; the
    i-th sample of every function comes from the same round, so per-round ratios are valid.
    ``clock`` names one of ``CLOCKS``; with ``wall`` the GPU is synchronised around each sample.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {clock!r}")
    timers = {name: timeit.Timer(fn, timer=CLOCKS[clock]) for name, fn in fns.items()}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    loops = {name: 1 for name in fns}
    if min_sample_s > 0:
        for name, timer in timers.items():
            loops[name] = max(1, int(min_sample_s / max(timer.timeit(1), 1e-7)))
    order, rng = list(fns), random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for done in range(1, max(rounds, 1) + 1):
        rng.shuffle(order)
        for name in order:
            times[name].append(timers[name].timeit(loops[name]) / loops[name])
        if done >= 3 and time.perf_counter() - start > max_seconds:
            break
    return times


def time_calls(fn: Callable[[], object], *, rounds: int = 20, warmup: int = 1, max_seconds: float = math.inf,
               clock: str = "wall") -> list[float]:
    """Seconds per call of one function (``interleaved_times`` of it alone)."""
    return interleaved_times({"fn": fn}, rounds=rounds, warmup=warmup, max_seconds=max_seconds, clock=clock)["fn"]


def kernel_time_ms(fn: Callable[[], object], device: torch.device, *, graph: bool = True, rep_ms: float = 20.0,
                   warmup_ms: float = 5.0) -> float:
    """Median milliseconds of one ``fn()``.

    On a GPU with ``graph``: ``triton.testing.do_bench_cudagraph`` (a CUDA graph of back-to-back
    calls, replayed: GPU time without host overhead); if the call cannot be captured, it says so
    and times eager calls instead. Without ``graph``: ``triton.testing.do_bench`` (eager calls,
    the host's launch overhead included where it exceeds the GPU time, L2 flushed in between).
    On a CPU (the benchmarks' dry runs): ``time_calls`` for about ``rep_ms``.
    """
    if torch.device(device).type != "cuda":
        return 1e3 * statistics.median(time_calls(fn, rounds=3, max_seconds=rep_ms / 1e3))
    import triton.testing

    torch.cuda.synchronize(device)  # Triton's graph timer starts on a new stream without waiting for this one
    if graph:
        try:
            return triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")
        except Exception as exc:  # noqa: BLE001 - not capturable: time it eagerly, and say so
            print(f"[measure] CUDA graph capture failed ({type(exc).__name__}: {str(exc)[:120]}); timing eagerly")
            torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def cuda_peak_memory(fn: Callable[[], object], device: torch.device) -> tuple[int, int]:
    """``(allocated before, peak allocated during)`` one ``fn()`` on a CUDA device, in bytes:
    PyTorch's caching allocator's counters (what tensors use, not what the driver reserved)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return before, torch.cuda.max_memory_allocated(device)


def max_rss_bytes() -> int | None:
    """This process's peak resident memory so far, in bytes (``getrusage``; None on Windows)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if platform.system() == "Darwin" else rss * 1024  # bytes on macOS, KiB on Linux
