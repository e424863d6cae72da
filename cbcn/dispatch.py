"""Backend choice for the packed binary layers: Triton kernels or the PyTorch reference.

``CBCN_BACKEND=reference|triton|auto`` (default ``auto``) or an explicit ``backend=`` argument:

- ``auto``: Triton kernels when the tensors are on a CUDA device and Triton imports, else the
  reference path (``cbcn.bitpack``);
- ``reference``: always the PyTorch reference;
- ``triton``: always the kernels — on CPU tensors they run in the Triton interpreter (exact but
  slow; for tests). Fails clearly if Triton is missing.

Both backends give bit-identical results. Triton is imported lazily, so ``cbcn`` works without it.
"""
from __future__ import annotations

import functools
import importlib
import os
from types import SimpleNamespace

import torch

BACKENDS = ("auto", "reference", "triton")
ENV_VAR = "CBCN_BACKEND"


@functools.lru_cache(maxsize=None)
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
    """``"triton"`` or ``"reference"`` for tensors on ``device`` (see the module docstring)."""
    choice = requested_backend(backend)
    if choice == "reference":
        return "reference"
    if choice == "triton":
        if not triton_available():
            raise RuntimeError(f"backend 'triton' was requested ({ENV_VAR} or backend=) but Triton is not importable")
        return "triton"
    dev = torch.device(device) if device is not None else None
    on_cuda = dev.type == "cuda" if dev is not None else torch.cuda.is_available()
    return "triton" if on_cuda and triton_available() else "reference"


def describe_backend(backend: str | None = None, device: torch.device | str | None = None) -> str:
    """Short text for reprs and summaries, e.g. ``"auto->reference (cpu)"``."""
    choice = requested_backend(backend)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = resolve_backend(choice, dev)
    except RuntimeError as exc:
        resolved = f"unavailable: {exc}"
    return f"{choice}->{resolved} ({dev.type})"


def get_ops(backend: str) -> SimpleNamespace:
    """The operations of a resolved backend: ``pack_signs``, ``unpack_signs``, ``packed_conv2d``,
    ``cif_pack_bank``."""
    if backend == "reference":
        from . import bitpack

        return SimpleNamespace(
            name="reference",
            pack_signs=bitpack.pack_signs,
            unpack_signs=bitpack.unpack_signs,
            packed_conv2d=bitpack.packed_conv2d_reference,
            cif_pack_bank=bitpack.cif_pack_bank_reference,
        )
    if backend == "triton":
        tk = importlib.import_module("triton_kernels")
        return SimpleNamespace(
            name="triton",
            pack_signs=tk.pack_signs,
            unpack_signs=tk.unpack_signs,
            packed_conv2d=tk.packed_conv2d,
            cif_pack_bank=tk.cif_pack_bank,
        )
    raise ValueError(f"resolve the backend first (got {backend!r}; expected 'reference' or 'triton')")


def ops_for(backend: str | None = None, device: torch.device | str | None = None) -> SimpleNamespace:
    return get_ops(resolve_backend(backend, device))
