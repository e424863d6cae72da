"""Optional parts of a benchmark run — a GPU, the Triton kernels, their references — or a skip
that says why they are missing.

The kernels (``triton_kernels``, ``cbcn.onebit.backends.reference``) are written alongside the benchmarks; a suite
that needs a missing one skips cleanly instead of failing collection.
"""
from __future__ import annotations

import importlib
import os

import pytest
import torch


def interpreting() -> bool:
    """``CBCN_BENCH_INTERPRET=1``: run the kernel paths on CPU in the Triton interpreter anyway —
    a correctness check of the GPU benchmarks on a machine without one (timings meaningless)."""
    return os.environ.get("CBCN_BENCH_INTERPRET") == "1"


def require_cuda(device: torch.device, what: str) -> None:
    """Skip a benchmark that means something only on a GPU (unless ``interpreting()``)."""
    if device.type != "cuda" and not interpreting():
        pytest.skip(f"{what}: needs a CUDA device (on CPU Triton runs in its interpreter, whose timing means nothing)")


def function(module: str, name: str):
    """``module.name`` (e.g. ``triton_kernels.cif``, ``cif_expand``), or a skip saying what is missing."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        pytest.skip(f"{module} is not importable: {exc}")
    fn = getattr(mod, name, None)
    if fn is None:
        pytest.skip(f"{module}.{name} does not exist (yet)")
    return fn
