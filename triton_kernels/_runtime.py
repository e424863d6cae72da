"""Loads each kernel module twice: compiled (``triton.jit``) and interpreted (``TRITON_INTERPRET``).

Triton decides at *decoration* time whether ``@triton.jit`` builds a compiled or an interpreted
function, from the environment variable ``TRITON_INTERPRET``. To run the same kernels on CPU
tensors (the interpreter) and compile them for a GPU target in one process, regardless of which
test or module imported Triton first, the device-code modules (``*_kernels.py``) are executed
under private module names once per mode, with the variable set accordingly while they load.

Kernels run interpreted when the tensors live on the CPU or ``TRITON_INTERPRET=1`` is set.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

import triton  # noqa: F401

try:  # imported lazily by Triton on first launch; it asserts the mode it was imported in
    import triton.experimental.gluon  # noqa: F401
except Exception:  # pragma: no cover - older Triton without gluon
    pass

_HERE = Path(__file__).resolve().parent
_LOCK = threading.RLock()  # re-entrant: a kernel module may load another while it loads
_CACHE: dict[tuple[str, bool], ModuleType] = {}
KERNEL_MODULES = ("pack_kernels", "conv_kernels", "cif_kernels", "async_mma_kernels")
COMPILED_ONLY = ("async_mma_kernels",)  # Gluon device code: Gluon has no interpreter


def interpret_forced() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def use_interpreter(*tensors) -> bool:
    """Interpret when asked to by the environment, or when any operand lives on the CPU."""
    return interpret_forced() or any(t.device.type == "cpu" for t in tensors if t is not None)


def load(name: str, interpret: bool) -> ModuleType:
    """The kernel module ``triton_kernels/<name>.py`` built in the given mode (cached)."""
    if name not in KERNEL_MODULES:
        raise ValueError(f"unknown kernel module {name!r}; valid: {KERNEL_MODULES}")
    if interpret and name in COMPILED_ONLY:
        raise ValueError(f"{name} is Gluon code, which the Triton interpreter cannot run: it needs a GPU")
    key = (name, bool(interpret))
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        modname = f"triton_kernels._{'interp' if interpret else 'jit'}_{name}"
        spec = importlib.util.spec_from_file_location(modname, _HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        module.INTERPRET = bool(interpret)
        old = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
        try:
            sys.modules[modname] = module
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(modname, None)
            raise
        finally:
            if old is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = old
        _CACHE[key] = module
        return module


_PROBLEM: list = []  # [message or None] once probed


def interpreter_problem() -> str | None:
    """Why this Triton's interpreter cannot run the kernels here, or None (probed once, by running
    ``pack_kernels.interpreter_probe_kernel``). Known case: Triton ≤ 3.6 with numpy ≥ 2.4, whose
    interpreter turns a runtime loop bound into ``int`` of a 1-element array, an error since
    numpy 2.4 (Triton 3.7 fixed it). Compiled kernels on a GPU are not concerned."""
    with _LOCK:
        if _PROBLEM:
            return _PROBLEM[0]
    import numpy
    import torch

    try:
        out = torch.zeros(1, dtype=torch.int32)
        load("pack_kernels", interpret=True).interpreter_probe_kernel[(1,)](out, 3)
        problem = None if int(out[0]) == 3 else f"the probe kernel returned {int(out[0])}, not 3"
    except Exception as exc:  # noqa: BLE001 - reported to the caller as the reason
        problem = f"{type(exc).__name__}: {str(exc)[:200]}"
    if problem is not None:
        problem = (f"the Triton {triton.__version__} interpreter cannot run these kernels with numpy "
                   f"{numpy.__version__} ({problem}); Triton >= 3.7, or numpy < 2.4 with Triton <= 3.6, "
                   "runs them (compiled kernels on a GPU are not affected)")
    with _LOCK:
        _PROBLEM[:] = [problem]
    return problem


def kernels_for(name: str, *tensors) -> ModuleType:
    """The kernel module in the mode that suits these operands (a clear error if the interpreter
    is needed and cannot run them)."""
    interpret = use_interpreter(*tensors)
    if interpret:
        problem = interpreter_problem()
        if problem:
            raise RuntimeError(problem)
    return load(name, interpret)
