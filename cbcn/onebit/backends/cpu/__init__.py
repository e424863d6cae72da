"""The CPU engine: exact packed binary convolutions that run faster than float on a CPU.

The same operations as the reference backend (``pack_signs``, ``unpack_signs``,
``packed_conv2d``, ``fused_conv2d``, ``cif_pack_bank``), with bit-identical results, on the first
of these paths that works on this machine and is worth taking (``engine_path()``;
``$CBCN_CPU_PATH`` forces one):

- ``native``: XNOR + popcount over the packed words in C (``bconv.c`` over ``simd.h``, built on
  first use by ``native.py`` in the fastest instruction-set variant this CPU runs: AVX-512
  VPOPCNTDQ/BITALG, AVX-512BW, AVX2, NEON, scalar; ``$CBCN_CPU_VARIANT`` forces one), with the
  whole ``Epilogue`` fused — scale, bias, max-pool, ReLU, the batch-norm, the residual — and the
  next layer's packed signs written by the same pass. No im2col, no unpacking: the activations
  stay packed between binary layers. Called as the ``cbcn`` PyTorch operators
  (``cbcn::binary_conv2d``, ``cbcn::epilogue``, ``cbcn::pack_signs``: ``ops.cpp``, built by
  ``operators.py``), so ``torch.compile`` and ``torch.export`` see them as opaque nodes.
- ``intmm``: int8 im2col and ``torch._int_mm`` (``intmm.py``), where no C compiler is present and
  ``torch._int_mm`` is at least as fast as fp32 here (VNNI / AMX; measured once per process).
- ``reference``: ``cbcn.onebit.backends.reference``, otherwise (float arithmetic on ±1 values).

``describe()`` names the path and variant and says when the path is expected to be slower than
float. The batch-norm is fused only where the native kernel reproduces PyTorch's own batch-norm
arithmetic bit for bit on this machine (``fused_batchnorm_mode()``, checked once per process);
otherwise it runs as a PyTorch op after the kernel.
"""
from __future__ import annotations

import os

import torch

from cbcn.memo import memoize
from cbcn.onebit.backends import reference
from cbcn.onebit.backends.contract import check_conv_args
from cbcn.onebit.backends.cpu import intmm, native, operators
from cbcn.onebit.backends.epilogue import Epilogue, legacy_epilogue

PATHS = ("native", "intmm", "reference")
ENV_VAR = "CBCN_CPU_PATH"

unpack_signs = reference.unpack_signs
cif_pack_bank = reference.cif_pack_bank_reference


def _path_problem(path: str, auto: bool = False) -> str | None:
    """Why ``path`` cannot run here (``None`` if it can); with ``auto``, also why the automatic
    choice should pass it over (``intmm`` slower than float)."""
    if path == "native":
        return None if native.load() is not None else native.problem()
    if path == "intmm":
        if not intmm.available():
            return "torch._int_mm is missing or inexact on CPU tensors"
        return intmm.slow_reason() if auto else None
    return None


def engine_path(requested: str | None = None) -> str:
    """The path the engine runs: ``requested`` (or ``$CBCN_CPU_PATH``) if given, else the first of
    ``PATHS`` that works here and is worth taking. A requested path that cannot run is an error."""
    choice = requested if requested is not None else os.environ.get(ENV_VAR) or None
    if choice is not None:
        choice = str(choice).strip().lower()
        if choice not in PATHS:
            raise ValueError(f"unknown CPU engine path {choice!r} (${ENV_VAR} or path=); valid: {list(PATHS)}")
        problem = _path_problem(choice)
        if problem:
            raise RuntimeError(f"CPU engine path {choice!r} was requested but cannot run here: {problem}")
        return choice
    return _auto_path()


@memoize
def _auto_path() -> str:
    return next(p for p in PATHS if _path_problem(p, auto=True) is None)


def describe(requested: str | None = None) -> str:
    """Short text for reprs and reports, e.g. ``native[avx2, openmp]``, or the path with why the
    faster ones are not taken, e.g. ``reference (slower than float; no C compiler found ...)``."""
    path = engine_path(requested)
    if path == "native":
        return f"native[{native.load().describe()}]"
    passed_over = [why for p in PATHS[:PATHS.index(path)] if (why := _path_problem(p, auto=True))]
    slow = path == "reference" or intmm.slow_reason() is not None
    notes = (["slower than float"] if slow else []) + passed_over
    return path + (f" ({'; '.join(notes)})" if notes else "")


def prepare() -> None:
    """Resolve the engine's path, load its default engine and find its batch-norm mode now (each
    memoised), as a forward would on its first call."""
    if engine_path() == "native":
        fused_batchnorm_mode()


def prefers_ksum(requested: str | None = None) -> bool:
    """Whether CBConv layers should hand this engine the K-sum bank (fewer multiply-adds on the
    integer-GEMM paths) rather than the full CiF bank (what XNOR + popcount needs)."""
    return engine_path(requested) != "native"


def _native_library(cpu_path: str | None, cpu_variant: str | None) -> native.NativeLibrary | None:
    """The native kernels to run: those of ``cpu_variant`` when one is forced, else of the
    engine's own variant when its path is ``native``, else ``None``."""
    if cpu_variant is not None:
        return native.load(cpu_variant)
    return native.load() if engine_path(cpu_path) == "native" else None


def pack_signs(x: torch.Tensor, cpu_variant: str | None = None) -> torch.Tensor:
    """``(N, C, H, W)`` -> ``(N, H, W, ceil(C/32))`` packed signs (as ``reference.pack_signs``),
    in one native pass (``cbcn::pack_signs``) for float32 CPU tensors of any layout."""
    lib = _native_library(None, cpu_variant)
    if lib is None or x.dtype != torch.float32 or x.dim() != 4 or x.device.type != "cpu" or x.shape[1] < 1:
        return reference.pack_signs(x)
    return pack_native(lib, x)


def pack_native(lib, x: torch.Tensor) -> torch.Tensor:
    """``pack_signs`` of a float32 CPU tensor ``(N, C, H, W)`` by ``lib``'s engine."""
    return torch.ops.cbcn.pack_signs(x, operators.engine_argument(lib.name))


# --- the fused batch-norm: only where it is bit-identical to PyTorch's ---------------------------
@memoize
def fused_batchnorm_mode() -> int | None:
    """How PyTorch's CPU batch-norm rounds on this machine, as the native kernel's ``bn_fma``
    flag: 1 (one fused multiply-add with ``BatchNormEval.affine()``), 0 (a multiply, then an
    add), or ``None`` (neither matches: the batch-norm then runs in PyTorch). Found by running the
    native kernel both ways against ``F.batch_norm`` on random layers."""
    if native.load() is None:
        return None
    with torch.inference_mode(False), torch.no_grad():
        return _find_batchnorm_mode()


def _find_batchnorm_mode() -> int | None:
    g = torch.Generator().manual_seed(1234)
    shapes = [(2, 37, 5, 7, 3), (3, 20, 1, 1, 1), (1, 64, 6, 6, 3), (2, 16, 9, 4, 3)]  # N, C, H, W, k
    for mode in (1, 0):
        if all(_batchnorm_probe(mode, shape, g) for shape in shapes):
            return mode
    return None


def _batchnorm_probe(mode: int, shape, g) -> bool:
    from cbcn.onebit.backends.epilogue import BatchNormEval

    N, C, H, W, k = shape
    C_in = 33
    x = reference.pack_signs(torch.randn(N, C_in, H, W, generator=g))
    w = reference.pack_signs(torch.randn(C, C_in, k, k, generator=g))
    bn = torch.nn.BatchNorm2d(C).eval()
    with torch.no_grad():
        bn.running_mean.normal_(generator=g)
        bn.running_var.uniform_(0.05, 3.0, generator=g)
        bn.weight.normal_(generator=g)
        bn.bias.normal_(generator=g)
    ep = Epilogue(scale=torch.rand(C, generator=g) + 0.1, bn=BatchNormEval.from_module(bn))
    expected, _ = reference.fused_conv2d_reference(x, w, C_in, 1, k // 2, ep)
    got, _ = run_native(native.load(), ep, torch.contiguous_format, mode, conv=(x, w, C_in, 1, k // 2, 1))
    return torch.equal(expected, got)


# --- the convolution ---------------------------------------------------------------------------------
def run_native(lib, ep: Epilogue, memory_format, bn_mode: int | None, conv=None, src: torch.Tensor | None = None):
    """The ``cbcn`` operators on ``lib``'s engine (a ``native.NativeLibrary``): a binary conv
    (``conv = (x_packed, w_packed, in_channels, stride, padding, ksum)``, ``cbcn::binary_conv2d``)
    or the values of a float tensor ``src`` (N, C, H, W) (``cbcn::epilogue``), with as much of
    ``ep`` fused as is exact; the rest runs in PyTorch after it."""
    fuse_bn = ep.bn is None or bn_mode is not None
    # what PyTorch finishes when the batch-norm cannot be fused: the batch-norm, then the residual
    tail = None if fuse_bn else Epilogue(bn=ep.bn, residual=ep.residual, real=ep.real, packed=ep.packed,
                                         out_dtype=ep.out_dtype)
    if ep.bn is not None and fuse_bn:
        (bn_mul, bn_add), fma = ep.bn.affine(), bool(bn_mode)
    elif ep.affine is not None:
        bn_mul, bn_add, fma = ep.affine[0], ep.affine[1], False
    else:
        bn_mul = bn_add = None
        fma = False
    epilogue_args = (ep.scale, ep.bias, operators.POOL_CODES[ep.pool], ep.relu, bn_mul, bn_add, fma,
                     ep.residual if tail is None else None, ep.real or tail is not None, ep.packed and tail is None,
                     memory_format == torch.channels_last, operators.engine_argument(lib.name))
    if conv is not None:
        x_packed, w_packed, in_channels, stride, padding, ksum = conv
        real, packed = torch.ops.cbcn.binary_conv2d(x_packed, w_packed, in_channels, stride, padding, ksum,
                                                    *epilogue_args)
    else:
        real, packed = torch.ops.cbcn.epilogue(src, *epilogue_args)
    if tail is not None:
        return tail.outputs(tail.apply(real), pack_signs)
    if ep.real and ep.out_dtype != torch.float32:
        real = real.to(ep.out_dtype)
    return (real if ep.real else None), (packed if ep.packed else None)


def run_epilogue(x: torch.Tensor, epilogue: Epilogue, memory_format=torch.channels_last, cpu_path: str | None = None,
                 cpu_variant: str | None = None):
    """``epilogue`` applied to the values of a float tensor ``x`` (N, C, H, W) — e.g. the output of
    a full-precision first layer, pooled, batch-normed and packed for the first binary conv in
    one pass: ``(real, packed)`` as ``reference.run_epilogue``."""
    epilogue.check(x.shape[1], x.device)
    lib = _native_library(cpu_path, cpu_variant)
    if lib is not None and x.device.type == "cpu" and x.dim() == 4 and x.is_floating_point():
        return run_native(lib, epilogue, memory_format, fused_batchnorm_mode(), src=x)
    return reference.run_epilogue(x, epilogue, memory_format)


def fused_conv2d(x_packed, w_packed, in_channels: int, stride: int = 1, padding: int = 0,
                 epilogue: Epilogue = Epilogue(), ksum: int = 1, memory_format=torch.channels_last,
                 path: str | None = None, cpu_path: str | None = None, cpu_variant: str | None = None):
    """A binary conv with its whole ``Epilogue``: ``(real, packed)`` as
    ``reference.fused_conv2d_reference``, the real output in ``memory_format``
    (``cpu_path`` forces one of ``PATHS``, ``cpu_variant`` one of ``native.VARIANTS``). ``path`` (the layer's GEMM path, which picks a Triton kernel) does not change the integers, so it is not used here."""
    check_conv_args(x_packed, w_packed, in_channels, stride, padding, None, None, None, None, ksum)
    epilogue.check(w_packed.shape[0], x_packed.device)
    chosen = "native" if cpu_variant is not None else engine_path(cpu_path)
    on_cpu = x_packed.device.type == "cpu"
    if chosen == "native" and on_cpu:
        return run_native(native.load(cpu_variant), epilogue, memory_format, fused_batchnorm_mode(),
                       conv=(x_packed, w_packed, in_channels, stride, padding, ksum))
    if chosen in ("native", "intmm") and on_cpu and intmm.available():
        sums = intmm.conv_sums_intmm(x_packed, w_packed, in_channels, stride, padding, ksum)
        real, packed = epilogue.outputs(epilogue.apply(sums), pack_signs)
        return (None if real is None else real.contiguous(memory_format=memory_format)), packed
    return reference.fused_conv2d_reference(x_packed, w_packed, in_channels, stride, padding, epilogue, ksum,
                                            memory_format)


def packed_conv2d(x_packed, w_packed, in_channels: int, stride: int = 1, padding: int = 0, scale=None, bias=None,
                  bn_scale=None, bn_shift=None, binarize_output: bool = False, out_dtype=torch.float32, ksum: int = 1,
                  path: str | None = None, cpu_path: str | None = None, cpu_variant: str | None = None):
    """``reference.packed_conv2d_reference``'s signature and results, on the engine's path
    (``cpu_path``: force one of ``PATHS``, ``cpu_variant`` a native variant). ``path`` (the layer's GEMM path, which picks a Triton kernel) does not change the integers, so it is not used here."""
    check_conv_args(x_packed, w_packed, in_channels, stride, padding, scale, bias, bn_scale, bn_shift, ksum)
    epilogue = legacy_epilogue(scale, bias, bn_scale, bn_shift, binarize_output, out_dtype)
    real, packed = fused_conv2d(x_packed, w_packed, in_channels, stride, padding, epilogue, ksum, cpu_path=cpu_path,
                                cpu_variant=cpu_variant)
    return packed if binarize_output else real
