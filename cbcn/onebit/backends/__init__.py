"""The 1-bit backends behind one API: the reference, the CPU engine and the Triton kernels.

Every backend offers the same operations with the same signatures (``Ops``; no backend swallows
unknown keywords, so a misspelt one is an error everywhere):

- ``pack_signs(x)`` / ``unpack_signs(packed, channels)`` — the packing format of ``contract``;
- ``packed_conv2d(x_packed, w_packed, in_channels, stride, padding, scale, bias, bn_scale,
  bn_shift, binarize_output, out_dtype, ksum, path)`` — a binary conv with the keyword epilogue;
- ``fused_conv2d(x_packed, w_packed, in_channels, stride, padding, epilogue, ksum, memory_format,
  path)`` — a binary conv with a whole ``epilogue.Epilogue`` (batch-norm, pooling, residual, next
  layer's signs); returns ``(real, packed)``. ``path`` is the layer's GEMM path: it picks the Triton
  kernel and, computing the same integers, changes nothing on the reference and the CPU engine;
- ``run_epilogue(x, epilogue, memory_format)`` — an ``Epilogue`` applied to a float tensor instead
  of conv sums (a full-precision layer's output on its way into the first binary conv);
- ``cif_pack_bank(W, K, in_channels, ksum)`` — a CBConv's packed filter bank.

Backends (``CBCN_BACKEND=auto|reference|cpu|triton`` or ``backend=``; default ``auto``):

- ``reference`` (``reference.py``): plain PyTorch, the oracle every other backend is tested against;
- ``cpu`` (``cpu/``): the CPU engine — native XOR + popcount kernels, or ``torch._int_mm``;
- ``triton`` (``triton_kernels/``, top level): GPU kernels; on CPU tensors they run in the Triton
  interpreter (exact but slow; for tests). Fails clearly if Triton is missing.
- ``auto``: ``triton`` for CUDA tensors when Triton imports, ``cpu`` for CPU tensors.

All give bit-identical results. Triton is imported lazily, so ``cbcn`` works without it.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

import torch

from cbcn.memo import memoize
from cbcn.onebit.backends.epilogue import Epilogue

BACKENDS = ("auto", "reference", "cpu", "triton")
ENV_VAR = "CBCN_BACKEND"


@dataclass(frozen=True)
class Ops:
    """The operations of one resolved backend (see the module docstring)."""

    name: str
    pack_signs: Callable
    unpack_signs: Callable
    packed_conv2d: Callable
    fused_conv2d: Callable
    run_epilogue: Callable
    cif_pack_bank: Callable
    prefers_ksum: Callable[[str], bool]  # path -> whether CBConv layers should hand it the K-sum bank
    describe: Callable[[], str]  # e.g. "cpu[native[avx512, openmp]]"
    # resolves once what a forward asks (the engine, its batch-norm mode), so that a torch.compile
    # trace finds it memoised (cbcn.memo) rather than tracing into building it
    prepare: Callable[[], None] = lambda: None


@memoize
def triton_available() -> bool:
    """Whether ``triton`` and this project's ``triton_kernels`` import."""
    try:
        importlib.import_module("triton")
        importlib.import_module("triton_kernels")
    except Exception:  # ImportError, or a broken Triton install
        return False
    return True


def requested_backend(backend: str | None = None) -> str:
    """The backend asked for: the argument, else ``$CBCN_BACKEND``, else ``auto`` (validated)."""
    choice = backend if backend is not None else os.environ.get(ENV_VAR, "auto")
    choice = str(choice).strip().lower()
    if choice not in BACKENDS:
        source = "backend argument" if backend is not None else f"${ENV_VAR}"
        raise ValueError(f"unknown {source} {choice!r}; valid choices: {list(BACKENDS)}")
    return choice


def resolve_backend(backend: str | None = None, device: torch.device | str | None = None) -> str:
    """``"reference"``, ``"cpu"`` or ``"triton"`` for tensors on ``device`` (see the module docstring)."""
    choice = requested_backend(backend)
    if choice == "triton" and not triton_available():
        raise RuntimeError(f"backend 'triton' was requested ({ENV_VAR} or backend=) but Triton is not importable")
    if choice != "auto":
        return choice
    dev = torch.device(device) if device is not None else None
    on_cuda = dev.type == "cuda" if dev is not None else torch.cuda.is_available()
    if on_cuda:
        return "triton" if triton_available() else "reference"
    return "cpu"


def describe_backend(backend: str | None = None, device: torch.device | str | None = None) -> str:
    """Short text for reprs and summaries, e.g. ``"auto->cpu[native[avx512, openmp]] (cpu)"``."""
    choice = requested_backend(backend)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = get_ops(resolve_backend(choice, dev)).describe()
    except (RuntimeError, ValueError) as exc:
        resolved = f"unavailable: {exc}"
    return f"{choice}->{resolved} ({dev.type})"


def _fused_via_packed_conv(packed_conv2d, pack_signs):
    """``fused_conv2d`` for a backend that only has ``packed_conv2d``: the conv sums from the
    kernel, the ``Epilogue`` in PyTorch after it (exact: the same ops as the reference)."""

    def fused_conv2d(x_packed, w_packed, in_channels, stride=1, padding=0, epilogue: Epilogue = Epilogue(),
                     ksum=1, memory_format=torch.channels_last, path: str = "mma"):
        sums = packed_conv2d(x_packed, w_packed, in_channels, stride, padding, ksum=ksum, path=path)
        real, packed = epilogue.outputs(epilogue.apply(sums), pack_signs)
        return (None if real is None else real.contiguous(memory_format=memory_format)), packed

    return fused_conv2d


def _reference_run_epilogue(x, epilogue, memory_format=torch.channels_last):
    from cbcn.onebit.backends import reference

    return reference.run_epilogue(x, epilogue, memory_format)


@memoize
def get_ops(backend: str) -> Ops:
    """The operations of a resolved backend (``reference``, ``cpu`` or ``triton``)."""
    if backend == "reference":
        from cbcn.onebit.backends import reference

        return Ops("reference", reference.pack_signs, reference.unpack_signs, reference.packed_conv2d_reference,
                   reference.fused_conv2d_reference, reference.run_epilogue, reference.cif_pack_bank_reference,
                   prefers_ksum=lambda path: path != "popcount", describe=lambda: "reference")
    if backend == "cpu":
        from cbcn.onebit.backends import cpu

        return Ops("cpu", cpu.pack_signs, cpu.unpack_signs, cpu.packed_conv2d, cpu.fused_conv2d, cpu.run_epilogue,
                   cpu.cif_pack_bank,
                   prefers_ksum=lambda path: cpu.prefers_ksum(), describe=lambda: f"cpu[{cpu.describe()}]",
                   prepare=cpu.prepare)
    if backend == "triton":
        tk = importlib.import_module("triton_kernels")
        return Ops("triton", tk.pack_signs, tk.unpack_signs, tk.packed_conv2d,
                   _fused_via_packed_conv(tk.packed_conv2d, tk.pack_signs), _reference_run_epilogue, tk.cif_pack_bank,
                   prefers_ksum=lambda path: path in tk.KSUM_PATHS, describe=lambda: "triton")
    raise ValueError(f"resolve the backend first (got {backend!r}; expected 'reference', 'cpu' or 'triton')")


def ops_for(backend: str | None = None, device: torch.device | str | None = None) -> Ops:
    return get_ops(resolve_backend(backend, device))
