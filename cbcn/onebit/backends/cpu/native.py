"""Builds and loads the CPU engine's C kernels (``bconv.c``) with the machine's C compiler.

Built on first use — no extra install step: ``cc`` (``$CC``), with ``-O3 -march=native`` so the
AVX-512 popcount loops are used where the CPU has them, OpenMP where the compiler has it, and
``-ffp-contract=off`` so that every float step rounds as the separate PyTorch ops do. The shared
library is cached under ``$CBCN_CACHE_DIR`` (default ``~/.cache/cbcn``) in a folder named by a
hash of the source, the compiler, its flags and the CPU, and written atomically, so concurrent
first uses are safe and a new CPU or compiler gets its own build.

Anything that fails (no compiler, a compile error, a load error) makes ``load()`` return ``None``
with the reason in ``problem()``; the engine then takes its next path (``cbcn.onebit.backends.cpu``).
``CBCN_NATIVE=0`` skips the native kernels; ``CBCN_NATIVE_FLAGS`` sets the compiler flags.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

from cbcn.fileio import atomic_path

SOURCE = Path(__file__).with_name("bconv.c")
ABI_VERSION = 7
COMPILE_TIMEOUT_S = 120
BASE_FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno"]
# tried in order: the first that compiles is used ($CBCN_NATIVE_FLAGS replaces them, e.g.
# "-mpopcnt" for the portable scalar kernels on an AVX-512 machine, as the tests do)
FLAG_VARIANTS = (["-march=native", "-fopenmp"], ["-march=native"], ["-mpopcnt", "-fopenmp"], ["-mpopcnt"], [])


def flag_variants() -> tuple[list[str], ...]:
    forced = os.environ.get("CBCN_NATIVE_FLAGS")
    return (forced.split(),) if forced is not None else FLAG_VARIANTS


class ConvParams(ctypes.Structure):
    """Mirror of ``cbcn_conv_params`` in bconv.c (the one parameter struct of a fused conv)."""

    _fields_ = [
        ("x", ctypes.c_void_p), ("N", ctypes.c_int64), ("H", ctypes.c_int64), ("W", ctypes.c_int64),
        ("XW", ctypes.c_int64), ("C_in", ctypes.c_int64),
        ("w", ctypes.c_void_p), ("C_out", ctypes.c_int64), ("KH", ctypes.c_int64), ("KW", ctypes.c_int64),
        ("stride", ctypes.c_int64), ("pad", ctypes.c_int64), ("OH", ctypes.c_int64), ("OW", ctypes.c_int64),
        ("scale", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("pool", ctypes.c_int64), ("relu", ctypes.c_int64),
        ("bn_mul", ctypes.c_void_p), ("bn_add", ctypes.c_void_p), ("bn_fma", ctypes.c_int64),
        ("residual", ctypes.c_void_p), ("rs_n", ctypes.c_int64), ("rs_c", ctypes.c_int64),
        ("rs_h", ctypes.c_int64), ("rs_w", ctypes.c_int64),
        ("out", ctypes.c_void_p), ("os_n", ctypes.c_int64), ("os_c", ctypes.c_int64),
        ("os_h", ctypes.c_int64), ("os_w", ctypes.c_int64),
        ("out_packed", ctypes.c_void_p), ("threads", ctypes.c_int64),
        ("src", ctypes.c_void_p), ("ss_n", ctypes.c_int64), ("ss_c", ctypes.c_int64),
        ("ss_h", ctypes.c_int64), ("ss_w", ctypes.c_int64),
        # filled in by the kernel itself (the zero-haloed input and the weight sums): left 0 here
        ("xh", ctypes.c_void_p), ("HP", ctypes.c_int64), ("WP", ctypes.c_int64), ("wsum", ctypes.c_void_p),
        ("pairs", ctypes.c_void_p), ("row_class", ctypes.c_void_p), ("col_class", ctypes.c_void_p),
        ("corr", ctypes.c_void_p), ("n_col_classes", ctypes.c_int64),
    ]


class NativeLibrary:
    """The loaded kernels: ``binary_conv(params)`` and ``pack_signs_f32(...)``."""

    def __init__(self, path: Path, flags: list[str]):
        self.path, self.flags = path, flags
        lib = ctypes.CDLL(str(path))
        if lib.cbcn_abi_version() != ABI_VERSION:
            raise OSError(f"{path} has ABI {lib.cbcn_abi_version()}, this code needs {ABI_VERSION}")
        lib.cbcn_binary_conv.argtypes = [ctypes.POINTER(ConvParams)]
        lib.cbcn_binary_conv.restype = ctypes.c_int
        lib.cbcn_pack_signs_f32.argtypes = [ctypes.c_void_p] + [ctypes.c_int64] * 8 + [ctypes.c_void_p, ctypes.c_int64]
        lib.cbcn_pack_signs_f32.restype = ctypes.c_int
        lib.cbcn_popcount_peak.argtypes = [ctypes.c_int64]
        lib.cbcn_popcount_peak.restype = ctypes.c_int64
        self.lanes = lib.cbcn_lanes()
        self._simd = lib.cbcn_simd()
        self.simd = self._simd > 0
        self.openmp = "-fopenmp" in flags
        self._lib = lib

    @property
    def variant(self) -> str:
        """``avx512`` (16-lane popcount loops), ``avx512+bitalg`` (and two pixels per 16-bit-lane
        popcount for layers of <= 16 input channels) or ``scalar``."""
        return {0: "scalar", 1: "avx512", 2: "avx512+bitalg"}[self._simd]

    def binary_conv(self, params: ConvParams) -> None:
        rc = self._lib.cbcn_binary_conv(ctypes.byref(params))
        if rc != 0:
            raise RuntimeError(f"native binary conv failed (code {rc}: {'bad arguments' if rc == -1 else 'out of memory'})")

    def popcount_peak_gmacs(self, seconds: float = 0.2) -> float:
        """This machine's peak binary GMAC/s for the kernel's XOR + popcount arithmetic on one
        thread (register-only chains, no memory traffic): the ceiling the per-layer tables use."""
        import time

        iters = 1 << 16
        while True:
            t0 = time.perf_counter()
            macs = self._lib.cbcn_popcount_peak(iters)
            dt = time.perf_counter() - t0
            if dt >= seconds:
                return macs / dt / 1e9
            iters *= 2

    def pack_signs_f32(self, ptr, N, C, H, W, strides, out_ptr, threads) -> None:
        rc = self._lib.cbcn_pack_signs_f32(ptr, N, C, H, W, *strides, out_ptr, threads)
        if rc != 0:
            raise RuntimeError(f"native sign packing failed (code {rc})")


def cache_dir() -> Path:
    return Path(os.environ.get("CBCN_CACHE_DIR") or Path.home() / ".cache" / "cbcn")


def _compiler() -> str | None:
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        found = shutil.which(name)
        if found:
            return found
    return None


def _cpu_signature() -> str:
    """The CPU model and flags, so that a ``-march=native`` build is never reused on another CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


class _CompileFailed(Exception):
    """The compiler's complaint; raised inside ``atomic_path`` so the target is left untouched."""


def _compile(cc: str, flags: list[str], target: Path) -> str | None:
    """Compile to ``target`` atomically (``cbcn.fileio``); returns the compiler's complaint on failure."""
    try:
        with atomic_path(target) as tmp:
            cmd = [cc, *BASE_FLAGS, *flags, "-o", str(tmp), str(SOURCE), "-lm"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
            if proc.returncode != 0:
                lines = (proc.stderr or proc.stdout).strip().splitlines()
                raise _CompileFailed(lines[-1] if lines else f"exit status {proc.returncode}")
        return None
    except _CompileFailed as exc:
        return str(exc)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)


_PROBLEM: list[str] = []


@functools.lru_cache(maxsize=None)
def load() -> NativeLibrary | None:
    """The compiled kernels for this machine (built on first use), or ``None`` (see ``problem()``)."""
    if os.environ.get("CBCN_NATIVE", "1") == "0":
        _PROBLEM.append("disabled by CBCN_NATIVE=0")
        return None
    cc = _compiler()
    if cc is None:
        _PROBLEM.append("no C compiler found (cc, gcc, clang or $CC)")
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        _PROBLEM.append(f"C compiler {cc} does not run: {exc}")
        return None
    source = SOURCE.read_bytes()
    complaints = []
    for flags in flag_variants():
        key = hashlib.sha256(b"\0".join([source, version.encode(), " ".join(BASE_FLAGS + flags).encode(),
                                         _cpu_signature().encode()])).hexdigest()[:16]
        target = cache_dir() / "native" / key / "libcbcn_bconv.so"
        if not target.exists():
            complaint = _compile(cc, flags, target)
            if complaint is not None:
                complaints.append(f"{' '.join(flags) or 'plain'}: {complaint}")
                continue
        try:
            return NativeLibrary(target, flags)
        except OSError as exc:
            complaints.append(f"{' '.join(flags) or 'plain'}: cannot load {target}: {exc}")
    _PROBLEM.append("could not build the native kernels: " + "; ".join(complaints))
    return None


def problem() -> str | None:
    """Why ``load()`` returned ``None`` (``None`` if it has not, or has not been called)."""
    return _PROBLEM[-1] if _PROBLEM else None
