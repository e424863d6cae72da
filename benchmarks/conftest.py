"""Fixtures shared by the pytest-benchmark suites, and what every saved run records.

The suites run in two modes (docs/BENCHMARKS.md):
- in the normal test suite, benchmarks are disabled (pyproject ``--benchmark-disable``): each timed
  callable runs once and its result is checked against a reference — a correctness pass;
- ``pytest benchmarks/ --benchmark-enable`` (tox ``bench`` / ``bench-compare``) times them.

Each benchmark's ``extra_info`` says what it timed (suite, shape, method, K, device, path: reference
or kernel, FLOPs or items for throughput), so that ``python benchmarks/benchtable.py`` can build tables
from the saved JSON alone. The one-minute load average is recorded too: on a shared machine it
explains outliers.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import settings


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["cbcn"] = settings.environment()


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Drop the per-round timings from ``--benchmark-json`` files (kept with ``--benchmark-save-data``):
    the statistics are what tables need, and results are committed."""
    if not config.getoption("benchmark_save_data"):
        for bench in output_json.get("benchmarks", []):
            bench.get("stats", {}).pop("data", None)


def pytest_report_header(config):
    return (
        f"cbcn benchmarks: size={settings.bench_size()} device={settings.bench_device()} "
        f"threads={settings.bench_threads()} timer={settings.bench_timer_name()} "
        "(CBCN_BENCH_SIZE, CBCN_BENCH_DEVICE, CBCN_BENCH_THREADS, CBCN_BENCH_TIMER)"
    )


def pytest_collection_modifyitems(config, items):
    """Time the benchmarks in this folder with ``settings.bench_timer_name()``'s clock (a
    ``@pytest.mark.benchmark(timer=...)`` of a test's own wins)."""
    here = Path(__file__).resolve().parent
    timer = settings.bench_clock()
    for item in items:
        if here in Path(item.path).resolve().parents and "benchmark" in getattr(item, "fixturenames", ()):
            if item.get_closest_marker("benchmark") is None:
                item.add_marker(pytest.mark.benchmark(timer=timer))


@pytest.fixture(scope="session")
def size() -> str:
    return settings.bench_size()


@pytest.fixture(scope="session")
def device() -> torch.device:
    return settings.bench_device()


@pytest.fixture(autouse=True)
def _seed_and_threads():
    """Fixed inputs; ``CBCN_BENCH_THREADS`` torch threads (restored after each benchmark)."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.bench_threads())
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def record(benchmark, size, device):
    """``record(suite, group, **info)``: name the benchmark's table group and fill its ``extra_info``.

    ``baseline=True`` marks the row the others in the group are compared with (``benchmarks/benchtable.py``).
    """

    def _record(suite: str, group: str, **info):
        benchmark.group = f"{suite}: {group}"
        benchmark.extra_info.update(
            suite=suite,
            size=size,
            device=str(device),
            torch_threads=torch.get_num_threads(),
            timer=settings.bench_timer_name(),
            loadavg_1m=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            **info,
        )

    return _record

