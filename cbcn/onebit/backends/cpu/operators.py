"""The ``cbcn`` PyTorch operators of the CPU engine: built on first use, loaded once per process.

``ops.cpp`` defines the operators (``cbcn::binary_conv2d``, ``cbcn::epilogue``,
``cbcn::pack_signs``; their schemas are the one contract of a binary conv and its ``Epilogue``)
and their CPU kernels, which call the engine builds of ``bconv.c`` (``native.py``) through the
C interface of ``bconv.h``. This module compiles it with ``torch.utils.cpp_extension.load``
(ninja and a C++ compiler; cached under ``$CBCN_CACHE_DIR/ops``, keyed by the sources and the
torch version) and registers the fake (shape-only) implementations that ``torch.compile`` and
``torch.export`` trace with. Because the operators are PyTorch operators, a compiled or exported
1-bit model calls them directly: no Python per layer, and an AOTInductor package runs them from
C++ (``cbcn export``).

``load()`` returns the path of the loaded library; it raises ``OperatorsUnavailable`` (one line:
what is missing) when the library cannot be built or loaded, and the engine then takes its next
path (``cbcn.onebit.backends.cpu``).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import io
import os
from pathlib import Path

import torch

from cbcn.fileio import atomic_write_bytes

FOLDER = Path(__file__).parent
SOURCES = (FOLDER / "ops.cpp", FOLDER / "bconv.h")
LIBRARY_NAME = "cbcn_ops"
POOL_CODES = {"": 0, "max2": 2, "avg2": 3}  # Epilogue.pool -> the operators' pool argument


class OperatorsUnavailable(RuntimeError):
    """The operator library cannot be built or loaded here (the message says why, in one line)."""


def _loaded_elsewhere() -> bool:
    """Whether this process already has the ``cbcn`` operators (e.g. ``torch.ops.load_library``
    of a deployed copy, before cbcn was imported)."""
    return hasattr(torch.ops.cbcn, "binary_conv2d") if hasattr(torch.ops, "cbcn") else False


def build_folder() -> Path:
    from cbcn.onebit.backends.cpu.native import cache_dir

    # the torch install too: cpp_extension writes its include paths into the build, and two virtual
    # environments sharing one folder would rebuild it in turn
    torch_id = f"{torch.__version__} {Path(torch.__file__).parent}".encode()
    key = hashlib.sha256(b"\0".join([*(p.read_bytes() for p in SOURCES), torch_id])).hexdigest()[:16]
    return cache_dir() / "ops" / key


@functools.lru_cache(maxsize=None)
def load() -> str:
    """Build (unless cached) and load the operator library; its path. ``OperatorsUnavailable``
    with the reason if it cannot be."""
    if _loaded_elsewhere():
        _register_fakes()
        return "(loaded before cbcn)"
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        raise OperatorsUnavailable("the cbcn operators are compiled on first use and need ninja (pip install ninja)")
    folder = build_folder()
    sources = folder / "src"  # a copy per key: checkouts elsewhere with the same sources share the build
    sources.mkdir(parents=True, exist_ok=True)
    for source in SOURCES:
        if not (sources / source.name).exists():
            atomic_write_bytes(sources / source.name, source.read_bytes())
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            cpp_extension.load(LIBRARY_NAME, [str(sources / SOURCES[0].name)], extra_include_paths=[str(sources)],
                               extra_cflags=["-O2"], build_directory=str(folder), is_python_module=False,
                               verbose=False)
    except Exception as exc:  # compiler missing or failing: cpp_extension raises RuntimeError / OSError / ...
        text = (str(exc) + "\n" + log.getvalue()).splitlines()
        lines = [ln for ln in text if ": error:" in ln or "fatal error" in ln] or text[:1]
        raise OperatorsUnavailable(f"the cbcn operator library did not build: {lines[0].strip()}") from None
    path = folder / f"{LIBRARY_NAME}.so"
    # its symbols global: an AOTInductor package calls the C shims (aoti_shims) by name
    ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL | os.RTLD_NOLOAD)
    _register_fakes()
    return str(path)


def aoti_shims() -> dict:
    """``aot_inductor.custom_ops_to_c_shims`` for the ``cbcn`` operators: each operator's C shim
    declaration (``ops.cpp``), so that a package calls it directly, not through AOTInductor's
    proxy executor (which boxes every argument and dispatches, per call)."""
    load()
    shims = {}
    for declaration in torch.ops.cbcn.aoti_shims():
        name = declaration.split("aoti_torch_cpu_", 1)[1].split("(", 1)[0]
        shims[getattr(torch.ops.cbcn, name).default] = [declaration]
    return shims


_DEFAULT_ENGINE: list[str] = []  # mirrors the library's default engine (the first one loaded, or set)


def load_engine(name: str, path: Path) -> int:
    """Load an engine build (``native.build``) into the operators under ``name``; its lanes."""
    load()
    lanes = torch.ops.cbcn.load_engine(name, str(path))
    if not _DEFAULT_ENGINE:
        _DEFAULT_ENGINE.append(torch.ops.cbcn.default_engine())
    return lanes


def set_default_engine(name: str) -> None:
    """Make ``name`` the engine the operators run when their ``engine`` argument is None."""
    load()
    torch.ops.cbcn.set_default_engine(name)
    _DEFAULT_ENGINE[:] = [name]


def engine_argument(name: str) -> str | None:
    """The operators' ``engine`` argument that runs engine ``name``: ``None`` for the default
    engine, so that a traced or exported graph names no variant and runs on whatever engine the
    deploying machine loads."""
    return None if _DEFAULT_ENGINE and _DEFAULT_ENGINE[0] == name else name


# --- shapes for torch.compile / torch.export ---------------------------------------------------
def _outputs_like(device, N, C, OH, OW, pool: int, real: bool, packed: bool, channels_last: bool):
    PH, PW = (OH // 2, OW // 2) if pool == 2 else ((OH + 1) // 2, (OW + 1) // 2) if pool == 3 else (OH, OW)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = torch.empty((N, C, PH, PW), dtype=torch.float32, device=device, memory_format=fmt) if real else \
        torch.empty((0,), dtype=torch.float32, device=device)
    out_packed = torch.empty((N, PH, PW, (C + 31) // 32), dtype=torch.int32, device=device) if packed else \
        torch.empty((0,), dtype=torch.int32, device=device)
    return out, out_packed


@functools.lru_cache(maxsize=None)
def _register_fakes() -> None:
    @torch.library.register_fake("cbcn::binary_conv2d")
    def _binary_conv2d_fake(x_packed, weight, in_channels, stride, padding, ksum, scale, bias, pool, relu, bn_mul,
                            bn_add, bn_fma, residual, real, packed, channels_last, engine=None):
        N, H, W, _ = x_packed.shape
        C_out, KH, KW, _ = weight.shape
        OH, OW = (H + 2 * padding - KH) // stride + 1, (W + 2 * padding - KW) // stride + 1
        return _outputs_like(x_packed.device, N, C_out, OH, OW, pool, real, packed, channels_last)

    @torch.library.register_fake("cbcn::epilogue")
    def _epilogue_fake(src, scale, bias, pool, relu, bn_mul, bn_add, bn_fma, residual, real, packed, channels_last,
                       engine=None):
        N, C, H, W = src.shape
        return _outputs_like(src.device, N, C, H, W, pool, real, packed, channels_last)

    @torch.library.register_fake("cbcn::pack_signs")
    def _pack_signs_fake(x, engine=None):
        N, C, H, W = x.shape
        return torch.empty((N, H, W, (C + 31) // 32), dtype=torch.int32, device=x.device)
