"""Builds and loads the CPU engine's C kernels (``bconv.c`` over ``simd.h``), one build per
instruction-set variant.

``VARIANTS`` lists the builds, fastest first. Each names the compiler flags that enable its
instructions and the CPU features it executes, so a build never depends on the machine that
compiled it (no ``-march=native``) and a CPU never runs instructions it lacks. ``load()`` takes,
in order, the first variant this CPU runs and the compiler builds — a compiler that rejects one
variant's flags falls through to the next, and ``fallbacks`` says so — or the variant
``$CBCN_CPU_VARIANT`` (or ``load(variant=...)``) forces, which fails with one line
(``VariantError``) if it is unknown, if this CPU cannot execute it (never a ``SIGILL``) or if it
does not build.

Built on first use, no extra install step: ``cc`` (``$CC``) with ``-O3``, the variant's flags,
OpenMP where the compiler has it, and ``-ffp-contract=off`` so that every float step rounds as the
separate PyTorch ops do. The shared library is cached under ``$CBCN_CACHE_DIR`` (default
``~/.cache/cbcn``) in a folder named by a hash of the sources, the compiler, its flags and the
variant, and written atomically, so concurrent first uses are safe. A build is loaded into the
``cbcn`` PyTorch operators (``operators.py``, ``ops.cpp``), which call it through ``bconv.h``.

No compiler, or no variant that builds: ``load()`` returns ``None`` with the reason in
``problem()``, and the engine takes its next path (``cbcn.onebit.backends.cpu``).
``CBCN_NATIVE=0`` skips the native kernels.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cbcn.fileio import atomic_path
from cbcn.memo import memoize

FOLDER = Path(__file__).parent
SOURCES = (FOLDER / "bconv.c", FOLDER / "bconv.h", FOLDER / "simd.h")
COMPILE_TIMEOUT_S = 120
BASE_FLAGS = ("-O3", "-std=gnu11", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno")
VARIANT_ENV = "CBCN_CPU_VARIANT"


class VariantError(ValueError):
    """A forced variant that cannot run here (one line; the CLI prints it and exits 2)."""


@dataclass(frozen=True)
class Variant:
    """One instruction-set build of the kernels (the table in ``simd.h`` says what each does).

    ``flags`` enable its instructions; ``cpu_features`` are the ``/proc/cpuinfo`` flags the CPU
    needs to execute them; ``object_code`` / ``not_in_object_code`` are regular expressions over
    ``objdump -d`` of the build, checked by the tests (the instructions the variant exists for)."""

    name: str
    arch: str  # "x86_64", "aarch64" or "any"
    flags: tuple[str, ...]
    cpu_features: tuple[str, ...]
    object_code: tuple[str, ...] = ()
    not_in_object_code: tuple[str, ...] = ()

    @property
    def define(self) -> str:
        return "-DCBCN_VARIANT_" + self.name.upper().replace("-", "_")


_AVX512 = ("-mavx512f", "-mavx512bw", "-mfma", "-mpopcnt")
VARIANTS = (  # fastest first
    Variant("avx512-bitalg", "x86_64", _AVX512 + ("-mavx512vpopcntdq", "-mavx512bitalg"),
            ("avx512f", "avx512bw", "fma", "popcnt", "avx512_vpopcntdq", "avx512_bitalg"),
            (r"vpopcntd\s+%zmm", r"vpopcntw\s+%zmm")),
    Variant("avx512-vpopcnt", "x86_64", _AVX512 + ("-mavx512vpopcntdq",),
            ("avx512f", "avx512bw", "fma", "popcnt", "avx512_vpopcntdq"),
            (r"vpopcntd\s+%zmm",), (r"vpopcntw",)),
    Variant("avx512bw", "x86_64", _AVX512, ("avx512f", "avx512bw", "fma", "popcnt"),
            (r"vpshufb\s+%zmm", r"vpmaddubsw\s+%zmm"), (r"vpopcnt[dwbq]",)),
    Variant("avx2", "x86_64", ("-mavx2", "-mfma", "-mpopcnt"), ("avx2", "fma", "popcnt"),
            (r"vpshufb\s+%ymm", r"vpmaddubsw\s+%ymm", r"vmovmskps\s+%ymm"), (r"%zmm",)),
    Variant("neon", "aarch64", (), ("asimd",), (r"\bcnt\s+v\d+\.16b", r"\buaddlp\s+v\d+\.8h")),
    Variant("scalar", "x86_64", ("-mpopcnt",), ("popcnt",), (r"\bpopcnt\b",), (r"%[yz]mm",)),
    Variant("portable", "any", (), ()),
)
VARIANT_NAMES = tuple(v.name for v in VARIANTS)
SIMD_VARIANTS = VARIANT_NAMES[:-2]  # the rest loop over one word at a time


def variant(name: str) -> Variant:
    """The variant called ``name`` (a ``VariantError`` listing the valid names otherwise)."""
    for v in VARIANTS:
        if v.name == name:
            return v
    raise VariantError(f"unknown CPU engine variant {name!r} (${VARIANT_ENV}); valid: {', '.join(VARIANT_NAMES)}")


# --- this machine ---------------------------------------------------------------------------------
def machine_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(m, m)


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or machine_arch()


@functools.lru_cache(maxsize=None)
def cpu_features() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (``flags`` on x86, ``Features`` on ARM)."""
    features = set()
    for line in _cpuinfo().splitlines():
        if line.startswith(("flags", "Features")):
            features |= set(line.split(":", 1)[1].split())
    if machine_arch() == "aarch64":
        features.add("asimd")  # NEON is part of every AArch64 CPU (macOS has no /proc/cpuinfo)
    return frozenset(features)


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cannot_run(v: Variant) -> str | None:
    """Why this CPU cannot execute variant ``v`` (``None`` if it can)."""
    arch = machine_arch()
    if v.arch not in ("any", arch):
        return f"variant {v.name!r} is for {v.arch}, this machine is {arch}"
    missing = [f for f in v.cpu_features if f not in cpu_features()]
    if missing:
        return f"variant {v.name!r} needs CPU features {', '.join(missing)}, which this CPU ({cpu_model()}) lacks"
    return None


# --- the build ----------------------------------------------------------------------------------
def cache_dir() -> Path:
    return Path(os.environ.get("CBCN_CACHE_DIR") or Path.home() / ".cache" / "cbcn")


def compiler() -> str | None:
    for name in filter(None, (os.environ.get("CC"), "cc", "gcc", "clang")):
        found = shutil.which(name)
        if found:
            return found
    return None


class CompileFailed(Exception):
    """The compiler's complaint; raised inside ``atomic_path`` so the target is left untouched."""


def build(v: Variant, openmp: bool = True, cc: str | None = None, isa_flags: tuple[str, ...] | None = None,
          folder: Path = FOLDER) -> Path:
    """The shared library of variant ``v`` (compiled unless cached); ``CompileFailed`` with the
    compiler's last line if it does not build. ``cc`` (a cross-compiler), ``isa_flags`` (instead
    of ``v.flags``, e.g. ``-DCBCN_SIMDE`` for an emulated build) and ``folder`` (another copy of
    ``bconv.c`` and ``simd.h``, e.g. a git revision's) serve the tests and benchmarks."""
    sources = [folder / p.name for p in SOURCES if (folder / p.name).exists()]  # older revisions: no bconv.h
    cc = cc or compiler()
    if cc is None:
        raise CompileFailed("no C compiler found (cc, gcc, clang or $CC)")
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise CompileFailed(f"C compiler {cc} does not run: {exc}") from None
    flags = [*BASE_FLAGS, *(v.flags if isa_flags is None else isa_flags), *(("-fopenmp",) if openmp else ()), v.define]
    key = hashlib.sha256(b"\0".join([*(p.read_bytes() for p in sources), version.encode(), cc.encode(),
                                     " ".join(flags).encode()])).hexdigest()[:16]
    target = cache_dir() / "native" / f"{v.name}-{key}" / "libcbcn_bconv.so"
    if target.exists():
        return target
    try:
        with atomic_path(target) as tmp:
            cmd = [cc, *flags, "-o", str(tmp), str(sources[0]), "-lm"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
            if proc.returncode != 0:
                lines = (proc.stderr or proc.stdout).strip().splitlines()
                raise CompileFailed(lines[-1] if lines else f"exit status {proc.returncode}")
    except (OSError, subprocess.SubprocessError) as exc:
        raise CompileFailed(str(exc)) from None
    return target


# --- the loaded engine ---------------------------------------------------------------------------
class NativeLibrary:
    """One variant's build, loaded into the ``cbcn`` operators under ``name`` (its variant name,
    or e.g. ``avx512-bitalg (SIMDe)`` for a test build): pass ``name`` as the operators' ``engine``
    to run it rather than the default engine."""

    def __init__(self, path: Path, v: Variant, openmp: bool, fallbacks: tuple[str, ...] = (), name: str | None = None):
        from cbcn.onebit.backends.cpu import operators

        self.path, self.openmp, self.fallbacks = path, openmp, fallbacks
        self.variant, self.name = v.name, name or v.name
        self.lanes = operators.load_engine(self.name, path)
        self.simd = v.name in SIMD_VARIANTS

    def describe(self) -> str:
        """e.g. ``avx2, openmp``; with the variants skipped because they did not build, and a
        note where no SIMD variant runs (those loops may be slower than float)."""
        parts = [self.variant] + (["openmp"] if self.openmp else [])
        notes = [] if self.simd else ["no SIMD variant for this CPU: may be slower than float"]
        notes += [f"{f.split(':', 1)[0]} did not build" for f in self.fallbacks]
        return ", ".join(parts) + ("; " + "; ".join(notes) if notes else "")

    def popcount_peak_gmacs(self, seconds: float = 0.2) -> float:
        """This variant's peak binary GMAC/s for the kernel's XOR + popcount arithmetic on one
        thread (its own inner loop in registers, no memory traffic): the ceiling the per-layer
        tables use."""
        import time

        import torch

        iters = 1 << 16
        while True:
            t0 = time.perf_counter()
            macs = torch.ops.cbcn.popcount_peak(iters, self.name)
            dt = time.perf_counter() - t0
            if dt >= seconds:
                return macs / dt / 1e9
            iters *= 2


def _load_variant(v: Variant, fallbacks: tuple[str, ...] = ()) -> tuple[NativeLibrary | None, str | None]:
    """``v`` built (with OpenMP where the compiler has it) and loaded, or ``None`` and the complaint."""
    from cbcn.onebit.backends.cpu.operators import OperatorsUnavailable

    complaints = []
    for openmp in (True, False):
        try:
            return NativeLibrary(build(v, openmp), v, openmp, fallbacks), None
        except OperatorsUnavailable:
            raise  # not this variant's fault: the engine cannot run any
        except CompileFailed as exc:
            complaints.append(str(exc))
        except (OSError, RuntimeError) as exc:  # RuntimeError: the operators refused it (ABI, dlopen)
            complaints.append(f"cannot load the build: {str(exc).splitlines()[0]}")
    return None, complaints[-1]


_PROBLEM: list[str] = []


@memoize
def load(variant_name: str | None = None) -> NativeLibrary | None:
    """The kernels of ``variant_name`` (else ``$CBCN_CPU_VARIANT``, else the fastest this machine
    runs and builds), built on first use and loaded into the ``cbcn`` operators (without
    ``variant_name``: as their default engine); ``None`` with the reason in ``problem()`` when none
    builds. A forced variant that cannot run or build raises ``VariantError``."""
    from cbcn.onebit.backends.cpu import operators

    if os.environ.get("CBCN_NATIVE", "1") == "0":
        _PROBLEM.append("disabled by CBCN_NATIVE=0")
        return None
    forced = variant_name or os.environ.get(VARIANT_ENV) or None
    if compiler() is None and forced is None:
        _PROBLEM.append("no C compiler found (cc, gcc, clang or $CC)")
        return None
    try:
        lib = _load_forced(forced.strip().lower()) if forced is not None else _load_fastest()
    except operators.OperatorsUnavailable as exc:
        if forced is not None:
            raise VariantError(f"CPU engine variant {forced!r} was requested but {exc}") from None
        _PROBLEM.append(str(exc))
        return None
    if lib is not None and variant_name is None:
        operators.set_default_engine(lib.name)
    return lib


def _load_forced(name: str) -> NativeLibrary:
    v = variant(name)
    why = cannot_run(v)
    if why:
        raise VariantError(f"CPU engine variant {v.name!r} was requested but cannot run here: {why}")
    lib, complaint = _load_variant(v)
    if lib is None:
        raise VariantError(f"CPU engine variant {v.name!r} was requested but does not build: {complaint}")
    return lib


def _load_fastest() -> NativeLibrary | None:
    fallbacks: list[str] = []
    for v in VARIANTS:
        if cannot_run(v):
            continue
        lib, complaint = _load_variant(v, tuple(fallbacks))
        if lib is not None:
            return lib
        fallbacks.append(f"{v.name}: {complaint}")
    _PROBLEM.append("could not build the native kernels: " + "; ".join(fallbacks))
    return None


def problem() -> str | None:
    """Why ``load()`` returned ``None`` (``None`` if it has not, or has not been called)."""
    return _PROBLEM[-1] if _PROBLEM else None
