"""Packed binary convolution with Triton; same signature and results as
``cbcn.onebit.backends.reference.packed_conv2d_reference`` (the plain reference beside it).

``path="mma"`` (default) unpacks the activations once into an int8 ±1 NHWC tensor with the zero
padding baked in as a halo (``unpack_activations``), the weights into an int8
``(C_out, KH*KW*CP)`` matrix (``unpack_weights``, cached per weight tensor), and runs a mask-free
int8 implicit GEMM on the tensor cores (``unpacked_conv2d``). ``path="mma_fp8"`` is the same with
fp8 e4m3 operands (±1 and 0 are exact in e4m3) and an fp32 accumulator: Triton pipelines float
wgmma across K-steps but not int8 wgmma, and the fp8 peak equals the int8 peak on Hopper — a
candidate to beat the int8 GEMM, pending a GPU measurement; ``path="mma_async"`` is ``mma`` with its
GEMM written in Gluon to keep one int8 wgmma in flight (Hopper only, ``async_mma.py``), the other
candidate. ``path="popcount"`` is the XOR+popcount
kernel on the packed words; ``path="mma_regs"`` the first tensor-core kernel, which unpacks the
packed words in registers inside its K-loop (kept for comparison). On CUDA tensors the tile
configuration is autotuned; on CPU tensors the kernels run in the Triton interpreter with one
small fixed tile (for tests).
"""
from __future__ import annotations

import weakref

import torch

from cbcn.onebit.backends.contract import check_conv_args, check_ksum, num_words
from cbcn.onebit.backends.operands import CHANNEL_MULTIPLE, padded_channels  # noqa: F401  (the operands' layout)
from cbcn.onebit.backends.reference import packed_conv2d_reference  # noqa: F401  (the reference beside the kernels)

from ._runtime import kernels_for, use_interpreter

PATHS = ("mma", "popcount")
# accepted too, for comparison: the first tensor-core kernel, fp8 operands, the int8 GEMM reading packed bits
# and the int8 GEMM keeping one wgmma in flight (Gluon, Hopper only: async_mma.py)
EXTRA_PATHS = ("mma_regs", "mma_fp8", "mma_packed", "mma_async")
# operand dtype of the two-stage paths (the paths that accept ksum > 1: their operands hold small
# integers, not just signs)
OPERAND_DTYPES = {"mma": torch.int8, "mma_fp8": torch.float8_e4m3fn, "mma_async": torch.int8}
KSUM_PATHS = tuple(OPERAND_DTYPES)  # the paths whose operands may hold the K-sums of CBConv inputs
# Hopper's fp8 wgmma accumulates with reduced precision (reported: about 14 significant bits), so
# the fp8 GEMM keeps its fast accumulation only while every partial sum stays below 2**13 in
# magnitude; beyond, each K-step's partial sum is promoted to fp32 (PRECISE_FP8)
FP8_FAST_ACC_LIMIT = 2**13
# fixed tiles for the interpreter: large tiles mean few (slow, Python-level) programs
INTERPRET_TILES = {
    "mma": dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=32),
    "mma_fp8": dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=32),
    "mma_regs": dict(BLOCK_M=64, BLOCK_N=32, BLOCK_W=2),
    "mma_packed": dict(BLOCK_M=64, BLOCK_N=32),
    "popcount": dict(BLOCK_M=64, BLOCK_N=32),
}
# output bytes per program of unpack_halo_kernel (BLOCK_P pixels x BLOCK_C channels): every K-sum
# size expands by SWAR on whole words, 16-byte stores per thread at 4 warps
UNPACK_BYTES = 8192


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


_DUMMY: dict = {}


def _dummy(device, dtype=torch.float32) -> torch.Tensor:
    """A placeholder for absent pointer arguments (allocated once per device and dtype)."""
    key = (str(device), dtype)
    if key not in _DUMMY:
        _DUMMY[key] = torch.zeros(1, dtype=dtype, device=device)
    return _DUMMY[key]


def _output(N: int, C_out: int, OH: int, OW: int, out_dtype, binarize_output: bool, device) -> torch.Tensor:
    """The conv output: packed signs ``(N, OH, OW, words)`` or channels-last ``(N, C_out, OH, OW)``."""
    if binarize_output:
        return torch.empty((N, OH, OW, num_words(C_out)), dtype=torch.int32, device=device)
    return torch.empty((N, C_out, OH, OW), dtype=out_dtype, device=device, memory_format=torch.channels_last)


def _epilogue_vectors(device, *vectors) -> tuple:
    """Per-channel epilogue operands as contiguous fp32, a placeholder where absent."""
    dummy = _dummy(device)
    return tuple(dummy if v is None else v.detach().to(torch.float32).contiguous() for v in vectors)


def unpack_tile(CP: int) -> tuple[int, int]:
    """``(BLOCK_P, BLOCK_C)`` of ``unpack_halo_kernel`` for ``CP`` output channels: ``BLOCK_C``
    divides ``CP``; ``BLOCK_P·BLOCK_C`` = ``UNPACK_BYTES`` for signs and K-sums alike (a program
    reads ``ksum`` bits per output byte)."""
    BLOCK_C = 128 if CP % 128 == 0 else 64 if CP % 64 == 0 else 32
    return max(8, UNPACK_BYTES // BLOCK_C), BLOCK_C


def _unpack_halo(packed: torch.Tensor, in_channels: int, pad: int, dtype=torch.int8, ksum: int = 1,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, H, W, words)`` packed -> ``(N, H+2·pad, W+2·pad, CP)`` in ``dtype`` (int8 or fp8 e4m3):
    ±1 (with ``ksum`` > 1: the sum of each group of ``ksum`` channels' signs), 0 in the halo and
    the padding channels; ``CP`` = ``in_channels // ksum`` rounded up to 32. ``out``: an int8
    buffer of that shape to write into (every byte is written, halo included)."""
    if dtype not in OPERAND_DTYPES.values():
        raise TypeError(f"unpacked operands are int8 or float8_e4m3fn, got {dtype}")
    N, H, W, XW = packed.shape
    CP = padded_channels(check_ksum(in_channels, ksum))
    HP, WP = H + 2 * pad, W + 2 * pad
    if out is None:
        out = torch.empty((N, HP, WP, CP), dtype=torch.int8, device=packed.device)
    elif tuple(out.shape) != (N, HP, WP, CP) or out.dtype != torch.int8 or not out.is_contiguous():
        raise ValueError(f"operand buffer must be contiguous int8 {(N, HP, WP, CP)}, got {tuple(out.shape)} {out.dtype}")
    P = N * HP * WP
    if P == 0:
        return out.view(dtype)
    k = kernels_for("conv_kernels", packed)
    BLOCK_P, BLOCK_C = unpack_tile(CP)
    launch = {} if k.INTERPRET else dict(num_warps=4)
    grid = (_cdiv(P, BLOCK_P), CP // BLOCK_C)
    k.unpack_halo_kernel[grid](packed.contiguous(), out, P, H, W, HP, WP, XW, in_channels, CP, pad,
                               BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C, KSUM=ksum, FP8=dtype == torch.float8_e4m3fn,
                               **launch)
    return out.view(dtype)  # the same bytes, read as fp8 e4m3 when dtype is fp8


def unpack_activations(x_packed: torch.Tensor, in_channels: int, padding: int, dtype=torch.int8,
                       ksum: int = 1, out: torch.Tensor | None = None) -> torch.Tensor:
    """Packed NHWC activations -> ``(N, H+2·padding, W+2·padding, CP)`` int8 (or fp8 e4m3) for
    ``unpacked_conv2d``: ±1 for the ``in_channels`` channels, 0 in the zero-padding halo and the
    padding channels. With ``ksum = K`` (CBConv's K-sum form), channel ``c`` holds the sum of the
    signs of channels ``c·K … c·K+K−1`` and ``CP`` covers ``in_channels // K`` maps. ``out``: an
    int8 buffer to write into (``cbcn.onebit.backends.operands.OperandLayout.allocate``)."""
    return _unpack_halo(x_packed, in_channels, padding, dtype, ksum, out)


_SPLIT_K_WORKSPACE: dict = {}


def split_k_workspace(k, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The zeroed int32 workspace (``SPLIT_K_MAX_SUMS`` sums) and tile counters of the split-K GEMM
    (``unpacked_conv_kernel`` with ``SPLIT_K > 1``; ``k`` its kernel module), one pair per device. A
    split-K launch leaves both zero again (the last part of each tile exchanges the sums for
    zeros), so they are allocated once — before a CUDA graph is captured, by the warm-up calls —
    and never cleared. Launches that run concurrently on several streams must not share them:
    split-K tiles are for one inference stream at a time."""
    key = str(device)
    if key not in _SPLIT_K_WORKSPACE:
        _SPLIT_K_WORKSPACE[key] = (torch.zeros(k.SPLIT_K_MAX_SUMS, dtype=torch.int32, device=device),
                                   torch.zeros(k.SPLIT_K_MAX_TILES, dtype=torch.int32, device=device))
    return _SPLIT_K_WORKSPACE[key]


# (weight tensor id, dtype) -> (weakref, version, in_channels, matrix): weights are constant at inference
_W_CACHE: dict = {}
_W_CACHE_MAX = 256


def unpack_weights(w_packed: torch.Tensor, in_channels: int, cache: bool = True, dtype=torch.int8) -> torch.Tensor:
    """Packed weights ``(C_out, KH, KW, words)`` -> int8 (or fp8 e4m3) ``(C_out, KH·KW·CP)``
    (tap-major, ±1, padding channels 0). Cached per weight tensor and dtype (identity and in-place
    version), so a constant weight is unpacked once."""
    if not cache:
        return _unpack_halo(w_packed, in_channels, 0, dtype).reshape(w_packed.shape[0], -1)
    key = (id(w_packed), dtype)
    hit = _W_CACHE.get(key)
    if hit is not None:
        ref, version, c_in, wmat = hit
        if ref() is w_packed and version == w_packed._version and c_in == in_channels:
            return wmat
    wmat = _unpack_halo(w_packed, in_channels, 0, dtype).reshape(w_packed.shape[0], -1)
    if len(_W_CACHE) >= _W_CACHE_MAX:
        for k_ in list(_W_CACHE)[: _W_CACHE_MAX // 2]:
            _W_CACHE.pop(k_, None)

    def _drop(ref, key=key):  # the weight tensor died: free its unpacked copy now
        entry = _W_CACHE.get(key)
        if entry is not None and entry[0] is ref:
            del _W_CACHE[key]

    try:
        _W_CACHE[key] = (weakref.ref(w_packed, _drop), w_packed._version, in_channels, wmat)
    except TypeError:  # not weak-referenceable: do not cache
        pass
    return wmat


def unpacked_conv2d(
    x_halo: torch.Tensor,
    w_mat: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: int,
    out_size: tuple[int, int],
    scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    bn_scale: torch.Tensor | None = None,
    bn_shift: torch.Tensor | None = None,
    binarize_output: bool = False,
    out_dtype: torch.dtype = torch.float32,
    config: dict | None = None,
    max_abs_dot: int | None = None,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    store_out: bool = True,
    operand: torch.Tensor | None = None,
    operand_pad: int = 0,
    operand_ksum: int = 1,
    checked: bool = False,
) -> torch.Tensor | None:
    """The convolution of ``path="mma"`` / ``"mma_fp8"`` on unpacked operands (both int8, or both
    fp8 e4m3): ``x_halo`` from ``unpack_activations`` (the padding is its halo), ``w_mat`` from
    ``unpack_weights``; same output and epilogue as ``packed_conv2d``. Exposed so the GEMM can be
    timed without the unpacking.

    ``max_abs_dot``: the largest |sum| the operands allow (``KH·KW·C_in`` physical channels;
    default ``KTOT``, right for ±1 operands). Above ``FP8_FAST_ACC_LIMIT`` fp8 operands promote
    each K-step's partial sum to fp32 (exactness on Hopper's reduced-precision fp8 accumulation).

    The fused layer (``cbcn.onebit.backends.operands``; reference ``operand_conv_reference``):
    ``residual`` (channels-last ``(N, C_out, OH, OW)``) is added after the affine steps; ``out``
    is a preallocated real output (channels-last), ``store_out=False`` writes none (returns
    None); ``operand`` is the next conv's pre-zeroed halo buffer ``(N, OH+2·operand_pad,
    OW+2·operand_pad, CP)`` (int8, or its fp8 view for fp8 bytes), filled with ``sign(y)`` or,
    with ``operand_ksum = K``, the K-sums of adjacent channel groups. ``checked=True`` skips the
    argument checks (the caller validated this exact call once: ``cbcn.onebit.runner``)."""
    N, HP, WP, CP = x_halo.shape
    C_out, KTOT = w_mat.shape
    KH, KW = kernel_size
    OH, OW = out_size
    if not checked:
        _check_unpacked(x_halo, w_mat, kernel_size, stride, out_size, residual, out, out_dtype, binarize_output,
                        operand, operand_pad, operand_ksum)
    device = x_halo.device
    M = N * OH * OW
    if binarize_output or store_out:
        out = _output(N, C_out, OH, OW, out_dtype, binarize_output, device) if out is None else out
        if out.numel() == 0:
            return out
    else:
        out = None
    k = kernels_for("conv_kernels", x_halo, w_mat)
    dummy = _dummy(device)
    op = dummy if operand is None else operand.view(torch.int8)
    fp8 = x_halo.dtype == torch.float8_e4m3fn
    ws, counters = split_k_workspace(k, device) if k.may_split_k(M, C_out) else (_dummy(device, torch.int32),) * 2
    args = (x_halo, w_mat, *_epilogue_vectors(device, scale, bias, bn_scale, bn_shift),
            dummy if out is None else out, dummy if residual is None else residual, op, ws, counters,
            M, HP, WP, OH, OW, C_out, num_words(C_out), stride, CP, KTOT,
            op.shape[1] if operand is not None else 0, op.shape[2] if operand is not None else 0, operand_pad,
            op.shape[3] if operand is not None else 32)
    flags = dict(KH=KH, KW=KW, HAS_SCALE=scale is not None, HAS_BIAS=bias is not None,
                 HAS_AFFINE=bn_scale is not None, BINARIZE=bool(binarize_output), FP8=fp8,
                 PRECISE_FP8=fp8 and (KTOT if max_abs_dot is None else max_abs_dot) > FP8_FAST_ACC_LIMIT,
                 HAS_RESIDUAL=residual is not None, STORE_OUT=out is not None, OPERAND=operand is not None,
                 OP_KSUM=operand_ksum, OP_FP8=operand is not None and operand.dtype == torch.float8_e4m3fn)
    if k.INTERPRET or config is not None:
        tile = dict(INTERPRET_TILES["mma"] if config is None else config)
        launch = {key: tile.pop(key) for key in ("num_warps", "num_stages", "maxnreg") if key in tile}
        if not k.INTERPRET:
            launch["enable_fp_fusion"] = False
        if CP % tile["BLOCK_K"]:
            raise ValueError(f"BLOCK_K={tile['BLOCK_K']} does not divide the {CP} padded channels")
        tiles = _cdiv(M, tile["BLOCK_M"]) * _cdiv(C_out, tile["BLOCK_N"])
        if tile.get("SPLIT_K", 1) > 1 and not k.may_split_k(M, C_out, tiles):
            raise ValueError(f"SPLIT_K={tile['SPLIT_K']} needs at most {k.SPLIT_K_MAX_SUMS} output sums and "
                             f"{k.SPLIT_K_MAX_TILES} tiles, this launch has {M * C_out} and {tiles}")
        if tile.get("TMA_STORE") and not k.tma_store_allowed(flags["STORE_OUT"], flags["BINARIZE"], C_out,
                                                             out.element_size()):
            raise ValueError("TMA_STORE needs a real (not packed) output whose rows are a multiple of 16 bytes")
        if tile.get("PERSISTENT") and tile.get("SPLIT_K", 1) > 1:
            raise ValueError("PERSISTENT and SPLIT_K do not combine")
        _ensure_allocator(device)
        k.unpacked_conv_kernel[_gemm_grid(k, M, C_out, device)(tile)](*args, **flags, **tile, **launch)
    else:
        _ensure_allocator(device)
        k.unpacked_conv_tuned[_gemm_grid(k, M, C_out, device)](*args, **flags, enable_fp_fusion=False)
    return out


def gemm_function(path: str):
    """The GEMM stage of a two-stage path (``OPERAND_DTYPES``) on unpacked operands:
    ``unpacked_conv2d`` (``mma``, ``mma_fp8``), or ``async_mma.async_mma_conv2d`` (``mma_async``),
    which takes the same leading arguments."""
    if path == "mma_async":
        from .async_mma import async_mma_conv2d

        return async_mma_conv2d
    if path not in OPERAND_DTYPES:
        raise ValueError(f"path {path!r} has no separate GEMM stage; two-stage paths: {tuple(OPERAND_DTYPES)}")
    return unpacked_conv2d


def _gemm_grid(k, M: int, C_out: int, device):
    """The launch grid of ``unpacked_conv_kernel`` for a tile configuration: one program per tile
    (per part of a tile with split-K), or for a persistent kernel one per SM slot at most."""
    def grid(meta):
        tiles = _cdiv(M, meta["BLOCK_M"]) * _cdiv(C_out, meta["BLOCK_N"])
        if meta.get("PERSISTENT"):
            return (min(tiles, k.PERSISTENT_PROGRAMS_PER_SM * k.sm_count(device)),)
        return (tiles * meta.get("SPLIT_K", 1),)

    return grid


def _ensure_allocator(device) -> None:
    """TMA-store tiles build their tensor descriptor on the device, in global scratch memory that
    Triton asks a registered allocator for at launch. Register PyTorch's unless one is registered;
    a CUDA graph captures those allocations from its private pool. Checked on every launch: Triton
    keeps the allocator in a context variable, so each thread needs its own registration."""
    if torch.device(device).type != "cuda":
        return
    import triton
    from triton.runtime import _allocation

    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))


def packed_input_conv2d(x_packed, w_mat, in_channels, kernel_size, stride, padding, out_size, scale=None, bias=None,
                        bn_scale=None, bn_shift=None, binarize_output=False, out_dtype=torch.float32,
                        config=None) -> torch.Tensor:
    """``path="mma_packed"``: the int8 GEMM on packed activations ``(N, H, W, words)`` read directly
    (``packed_input_conv_kernel``: bits expanded in registers per K-step, zero padding by masks),
    with ``unpack_weights``' matrix; same output and epilogue as ``packed_conv2d``. Arguments are
    those ``packed_conv2d`` checked."""
    N, IH, IW, XW = x_packed.shape
    C_out, KTOT = w_mat.shape
    KH, KW = kernel_size
    OH, OW = out_size
    if x_packed.numel() >= 2**31:
        raise ValueError(f"path 'mma_packed' addresses the packed input with int32 offsets: {x_packed.numel()} words "
                         "is 2**31 or more; use path 'mma'")
    device = x_packed.device
    out = _output(N, C_out, OH, OW, out_dtype, binarize_output, device)
    M = N * OH * OW
    if out.numel() == 0:
        return out
    k = kernels_for("conv_kernels", x_packed, w_mat)
    args = (x_packed, w_mat, *_epilogue_vectors(device, scale, bias, bn_scale, bn_shift), out,
            M, IH, IW, OH, OW, C_out, num_words(C_out), stride, padding, XW, KTOT)
    flags = dict(KH=KH, KW=KW, HAS_SCALE=scale is not None, HAS_BIAS=bias is not None,
                 HAS_AFFINE=bn_scale is not None, BINARIZE=bool(binarize_output))
    if k.INTERPRET or config is not None:
        tile = dict(INTERPRET_TILES["mma_packed"] if config is None else config)
        launch = {key: tile.pop(key) for key in ("num_warps", "num_stages") if key in tile}
        if not k.INTERPRET:
            launch["enable_fp_fusion"] = False
        grid = (_cdiv(M, tile["BLOCK_M"]) * _cdiv(C_out, tile["BLOCK_N"]),)
        k.packed_input_conv_kernel[grid](*args, **flags, **tile, **launch)
    else:
        def grid(meta):
            return (_cdiv(M, meta["BLOCK_M"]) * _cdiv(C_out, meta["BLOCK_N"]),)

        k.packed_input_conv_tuned[grid](*args, **flags, enable_fp_fusion=False)
    return out


def _check_unpacked(x_halo, w_mat, kernel_size, stride, out_size, residual, out, out_dtype, binarize_output,
                    operand, operand_pad, operand_ksum) -> None:
    """The argument checks of ``unpacked_conv2d`` (one clear error per bad argument)."""
    N, HP, WP, CP = x_halo.shape
    C_out, KTOT = w_mat.shape
    KH, KW = kernel_size
    OH, OW = out_size
    if KTOT != KH * KW * CP or x_halo.dtype != w_mat.dtype or x_halo.dtype not in OPERAND_DTYPES.values():
        raise ValueError(f"unpacked operands (both int8 or both float8_e4m3fn) do not match: x {tuple(x_halo.shape)} {x_halo.dtype}, "
                         f"w {tuple(w_mat.shape)} {w_mat.dtype}, kernel {KH}x{KW}")
    for t, what in ((x_halo, "x_halo"), (w_mat, "w_mat")):  # the kernels derive strides from shapes
        if not t.is_contiguous() or t.data_ptr() % 16:
            raise ValueError(f"{what} must be contiguous and 16-byte aligned, as unpack_activations / "
                             f"unpack_weights make it; got strides {t.stride()}, address % 16 = {t.data_ptr() % 16}")
    if (OH - 1) * stride + KH > HP or (OW - 1) * stride + KW > WP:
        raise ValueError(f"output {OH}x{OW} with stride {stride} reads past the {HP}x{WP} halo image")
    real_shape = (N, C_out, OH, OW)
    for t, what in ((residual, "residual"), (out, "out")):
        if t is not None and (tuple(t.shape) != real_shape or not t.is_contiguous(memory_format=torch.channels_last)
                              or t.device != x_halo.device):
            raise ValueError(f"{what} must be a channels-last {real_shape} tensor on {x_halo.device}, "
                             f"got {tuple(t.shape)} on {t.device}")
    if out is not None and residual is not None and out.data_ptr() == residual.data_ptr():
        raise ValueError("out must not be the residual tensor: the autotuner runs each candidate tile several "
                         "times, so an in-place residual add would be applied more than once")
    if operand is not None and operand.data_ptr() == x_halo.data_ptr():
        raise ValueError("operand must not be the input operand buffer x_halo: other tiles still read it")
    if out is not None and (binarize_output or out.dtype != out_dtype):
        raise ValueError(f"out must have out_dtype {out_dtype} (and no binarize_output), got {out.dtype}")
    if operand is not None:
        maps = check_ksum(C_out, operand_ksum)
        shape = (N, OH + 2 * operand_pad, OW + 2 * operand_pad, padded_channels(maps))
        if tuple(operand.shape) != shape or operand.dtype not in OPERAND_DTYPES.values() or not operand.is_contiguous():
            raise ValueError(f"operand buffer must be a contiguous int8/fp8 {shape} tensor, got "
                             f"{tuple(operand.shape)} {operand.dtype}")


def packed_conv2d(
    x_packed: torch.Tensor,
    w_packed: torch.Tensor,
    in_channels: int,
    stride: int = 1,
    padding: int = 0,
    scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    bn_scale: torch.Tensor | None = None,
    bn_shift: torch.Tensor | None = None,
    binarize_output: bool = False,
    out_dtype: torch.dtype = torch.float32,
    path: str = "mma",
    config: dict | None = None,
    use_asm_popcount: bool = False,
    ksum: int = 1,
) -> torch.Tensor:
    """Binary convolution of NHWC-packed activations ``(N, H, W, ceil(C_in/32))`` with packed
    weights ``(C_out, KH, KW, ceil(C_in/32))``; zero padding counts as 0 (not −1).

    ``ksum = K``: CBConv's K-sum form (``cbcn.onebit.backends.reference.packed_conv2d_reference``): ``w_packed`` is the
    K-sum bank over ``C_in // K`` maps (``cif_pack_bank(..., ksum=True)``), each map's K activation
    channels are summed while unpacking, and the GEMM runs over the maps (rounded up to 32)
    instead of the physical channels. Paths ``mma``,
    ``mma_fp8`` and ``mma_async`` only (the sums are integers in [−K, K], not signs).

    Returns ``(N, C_out, OH, OW)`` (stored channels-last) in ``out_dtype``, or the packed signs
    ``(N, OH, OW, ceil(C_out/32))`` of the result with ``binarize_output``.
    ``config`` fixes the tile (``BLOCK_M``, ``BLOCK_N``, and ``BLOCK_K`` for ``"mma"`` and ``"mma_fp8"`` / ``BLOCK_W`` for
    ``"mma_regs"``, ``num_warps``, ``num_stages``) instead of autotuning; ``use_asm_popcount``
    selects inline ``popc.b32`` (GPU only).
    """
    OH, OW = check_conv_args(x_packed, w_packed, in_channels, stride, padding, scale, bias, bn_scale, bn_shift, ksum)
    if path not in PATHS + EXTRA_PATHS:
        raise ValueError(f"unknown packed-conv path {path!r}; valid: {PATHS}")
    if ksum > 1 and path not in OPERAND_DTYPES:
        raise ValueError(f"ksum={ksum} (the K-sum form) needs an unpacking path {tuple(OPERAND_DTYPES)}, got {path!r}")
    if out_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    if use_interpreter(x_packed, w_packed) and out_dtype == torch.bfloat16 and not binarize_output:
        # the interpreter (numpy) cannot store bfloat16: compute fp32, round like the GPU cast (RNE)
        return packed_conv2d(
            x_packed, w_packed, in_channels, stride, padding, scale, bias, bn_scale, bn_shift,
            binarize_output=False, out_dtype=torch.float32, path=path, config=config,
            use_asm_popcount=use_asm_popcount, ksum=ksum,
        ).to(torch.bfloat16)
    if use_asm_popcount and use_interpreter(x_packed, w_packed):
        raise ValueError("use_asm_popcount emits inline PTX, which the Triton interpreter cannot run")
    if path in OPERAND_DTYPES:  # "mma", "mma_fp8", "mma_async" (use_asm_popcount does not apply)
        dtype = OPERAND_DTYPES[path]
        if path == "mma_async":  # before unpacking: one clear line where it cannot run
            from .async_mma import async_mma_problem

            problem = async_mma_problem(x_packed.device)
            if problem:
                raise RuntimeError(problem)
        extra = {} if path == "mma_async" else dict(max_abs_dot=w_packed.shape[1] * w_packed.shape[2] * in_channels)
        return gemm_function(path)(
            unpack_activations(x_packed, in_channels, padding, dtype, ksum),
            unpack_weights(w_packed, in_channels // ksum, dtype=dtype),
            tuple(w_packed.shape[1:3]), stride, (OH, OW), scale, bias, bn_scale, bn_shift,
            binarize_output, out_dtype, config, **extra,
        )
    if path == "mma_packed":
        return packed_input_conv2d(x_packed.contiguous(), unpack_weights(w_packed, in_channels), in_channels,
                                   tuple(w_packed.shape[1:3]), stride, padding, (OH, OW), scale, bias, bn_scale,
                                   bn_shift, binarize_output, out_dtype, config)
    N, IH, IW, XW = x_packed.shape
    C_out, KH, KW, _ = w_packed.shape
    device = x_packed.device
    x_packed = x_packed.contiguous()
    w_packed = w_packed.contiguous()
    out = _output(N, C_out, OH, OW, out_dtype, binarize_output, device)
    so = (0, 0, 0, 0) if binarize_output else out.stride()
    M = N * OH * OW
    if out.numel() == 0:
        return out

    k = kernels_for("conv_kernels", x_packed, w_packed)
    interpret = k.INTERPRET
    args = (
        x_packed, w_packed, *_epilogue_vectors(device, scale, bias, bn_scale, bn_shift), out,
        M, IH, IW, OH, OW, in_channels, C_out, XW, num_words(C_out), stride, padding,
        *so,
    )
    flags = dict(
        KH=KH, KW=KW, HAS_SCALE=scale is not None, HAS_BIAS=bias is not None,
        HAS_AFFINE=bn_scale is not None, BINARIZE=bool(binarize_output),
    )
    if path == "popcount":
        flags["USE_ASM_POPC"] = bool(use_asm_popcount)
    if interpret or config is not None:
        tile = dict(INTERPRET_TILES[path] if config is None else config)
        launch = {key: tile.pop(key) for key in ("num_warps", "num_stages") if key in tile}
        if not interpret:
            launch["enable_fp_fusion"] = False
        kernel = k.packed_conv_mma_kernel if path == "mma_regs" else k.packed_conv_popcount_kernel
        grid = (_cdiv(M, tile["BLOCK_M"]), _cdiv(C_out, tile["BLOCK_N"]))
        kernel[grid](*args, **flags, **tile, **launch)
    else:
        kernel = k.packed_conv_mma_tuned if path == "mma_regs" else k.packed_conv_popcount_tuned

        def grid(meta):
            return (_cdiv(M, meta["BLOCK_M"]), _cdiv(C_out, meta["BLOCK_N"]))

        kernel[grid](*args, **flags, enable_fp_fusion=False)
    return out


# --- ahead-of-time compilation of the two-stage paths (no GPU needed), for tests and ptxas reports ---
_I8_INTS = ["M", "HP", "WP", "OH", "OW", "C_out", "OWORDS", "stride", "CP", "KTOT", "OPH", "OPW", "OPAD", "OPC"]
_I8_ALIGNED = ["x_ptr", "w_ptr", "scale_ptr", "bias_ptr", "mul_ptr", "add_ptr", "out_ptr", "res_ptr", "op_ptr",
               "ws_ptr", "cnt_ptr", "CP", "KTOT", "C_out", "OPC"]


def compile_unpacked_conv(target=None, num_warps: int = 8, num_stages: int = 3, out_type: str = "*fp32",
                          operand: str = "i8", residual_type: str = "*fp16", **constexprs):
    """Compile ``unpacked_conv_kernel`` for ``target`` (default Hopper ``cuda:90``) as a launch on
    ResNet-like shapes would specialise it (pointers, ``CP``, ``KTOT``, ``C_out`` divisible by 16).
    Keyword arguments set the constexprs (default 128x128x128 tile, 3x3, scale only, float store);
    ``out_type`` is the output pointer type (``*fp32``, ``*fp16``, ``*bf16``, ``*i32`` with BINARIZE);
    ``operand`` the operands' type: ``i8`` (``path="mma"``) or ``fp8e4nv`` (``path="mma_fp8"``);
    ``residual_type`` the residual's pointer type (used with ``HAS_RESIDUAL=True``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ._runtime import load

    if operand not in ("i8", "fp8e4nv"):
        raise ValueError(f"operand must be 'i8' or 'fp8e4nv', got {operand!r}")
    fn = load("conv_kernels", interpret=False).unpacked_conv_kernel
    consts = dict(KH=3, KW=3, HAS_SCALE=True, HAS_BIAS=False, HAS_AFFINE=False, BINARIZE=False,
                  BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, FP8=operand == "fp8e4nv", PRECISE_FP8=False,
                  HAS_RESIDUAL=False, STORE_OUT=True, OPERAND=False, OP_KSUM=1, OP_FP8=False, SWAP_AB=False,
                  SPLIT_K=1, PERSISTENT=False, TMA_STORE=False)
    consts.update(constexprs)
    sig = {"x_ptr": f"*{operand}", "w_ptr": f"*{operand}", "scale_ptr": "*fp32", "bias_ptr": "*fp32",
           "mul_ptr": "*fp32", "add_ptr": "*fp32", "out_ptr": out_type, "res_ptr": residual_type, "op_ptr": "*i8",
           "ws_ptr": "*i32", "cnt_ptr": "*i32",
           **{k: "i32" for k in _I8_INTS}, **{k: "constexpr" for k in consts}}
    sig = {a: sig[a] for a in fn.arg_names}
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in _I8_ALIGNED}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    options = dict(num_warps=num_warps, num_stages=num_stages, enable_fp_fusion=False)
    return triton.compile(src, target=target or GPUTarget("cuda", 90, 32), options=options)


def ptxas_report(ptx: str, arch: str = "sm_90a") -> dict | None:
    """``ptxas -v`` on ``ptx`` with a ptxas shipped with Triton (the newest that accepts the PTX
    version): ``{"registers", "spill_stores", "spill_loads", "ptxas"}``, or None if none works."""
    import os
    import re
    import subprocess
    import tempfile

    import triton

    bindir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for name in ("ptxas-blackwell", "ptxas"):
        exe = os.path.join(bindir, name)
        if not os.path.exists(exe):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "k.ptx")
            with open(src, "w") as f:
                f.write(ptx)
            res = subprocess.run([exe, "-v", f"--gpu-name={arch}", src, "-o", os.path.join(tmp, "k.cubin")],
                                 capture_output=True, text=True)
        regs = re.search(r"Used (\d+) registers", res.stderr)
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", res.stderr)
        if res.returncode == 0 and regs and spill:
            return dict(registers=int(regs.group(1)), spill_stores=int(spill.group(1)),
                        spill_loads=int(spill.group(2)), ptxas=name)
    return None


def autotuned_tiles() -> list[dict]:
    """The tiles the autotuner chose so far in this process, one entry per autotuned kernel and
    shape key: ``{"kernel", "key" (name -> value of the autotuning key), "config"}``. Empty before
    any GPU launch (the interpreter does not autotune). For benchmark logs."""
    from ._runtime import _CACHE

    module = _CACHE.get(("conv_kernels", False))
    if module is None:
        return []
    rows = []
    from . import async_mma

    tuners = {name: getattr(module, name, None) for name in ("unpacked_conv_tuned", "packed_input_conv_tuned",
                                                             "packed_conv_mma_tuned", "packed_conv_popcount_tuned")}
    if async_mma._TUNED:
        tuners["async_mma_conv_tuned"] = async_mma._TUNED[0]
    for name, tuner in tuners.items():
        for key, config in dict(getattr(tuner, "cache", {}) or {}).items():
            names = list(getattr(tuner, "keys", []))
            rows.append(dict(kernel=name.removesuffix("_tuned"), key=dict(zip(names, key)), config=str(config)))
    return rows
