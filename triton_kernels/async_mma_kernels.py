"""Gluon device code: the int8 implicit GEMM of ``path="mma"`` with one wgmma kept in flight.

Triton's pipeliner makes a ``tl.dot`` asynchronous only when its accumulator is fp32, so the int8
GEMM of ``unpacked_conv_kernel`` waits for every wgmma before the next K-step (``wait_group 0``)
and relies on 2-4 resident CTAs per SM to hide the MMA latency. Gluon states the pipeline
explicitly: ``warpgroup_mma(..., is_async=True)`` then ``warpgroup_mma_wait(1)`` keeps one
int8 MMA running while the next operands arrive by ``cp.async``. This is the int8 candidate the
fp8 path (``mma_fp8``) is measured against (issue 13, item 1); ``path="mma_async"``.

Same operands as ``path="mma"``: the int8 ±1 activations with their zero halo
``(N, H+2p, W+2p, CP)`` (``conv.unpack_activations``) and the K-major weight matrix
``(C_out, KH·KW·CP)`` (``conv.unpack_weights``); the same integers, so the same exact result.
Epilogue: ``float(dot)·scale + bias``, then ``·bn_scale + bn_shift``, each rounded on its own
(``enable_fp_fusion=False`` at launch), stored channels-last; the fused layer's residual and
next int8 operand as ``unpacked_conv_kernel`` writes them, with its code. Packed signs stay with
``unpacked_conv_kernel``.

Gluon has no interpreter: this kernel runs on a Hopper GPU only. Without one, the tests compile it
for sm_90 and read its PTX (``tests/test_triton_compile.py``); its exactness is tested on a GPU
(``tests/test_kernels_gpu.py``) and checked at every benchmarked shape.
"""
from __future__ import annotations

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

from triton_kernels._runtime import load as _load

_conv = _load("conv_kernels", interpret=False)  # the Triton kernels' epilogue math, shared:
_affine_vectors, _apply_affine = _conv._affine_vectors, _conv._apply_affine
_operand_bytes, _store_operand = _conv._operand_bytes, _conv._store_operand

# cp.async into shared memory: ``async_load`` since Triton 3.7, ``async_copy_global_to_shared`` in
# 3.6 (the device image), which 3.7 turned into an error
copy_to_shared = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
# the CTA-wide barrier: ``gl.barrier`` since Triton 3.7, ``gl.thread_barrier`` in 3.6
cta_barrier = getattr(gl, "barrier", None) or gl.thread_barrier


@gluon.constexpr_function
def mma_warps(BLOCK_M, num_warps):
    """Warps along (M, N) for the wgmma layout: a warpgroup takes 64 rows, more warps go along
    M while the tile has rows left, then along N."""
    if num_warps % 4:
        raise ValueError(f"wgmma needs whole warpgroups: num_warps must be a multiple of 4, got {num_warps}")
    warps = [4, 1]
    while warps[0] * warps[1] < num_warps:
        if BLOCK_M > 16 * warps[0]:
            warps[0] *= 2
        else:
            warps[1] *= 2
    return warps


@gluon.constexpr_function
def mma_instr_n(BLOCK_M, BLOCK_N, num_warps):
    """The wgmma's N for int8 operands: a multiple of 16 (or 8) up to 224 that divides the
    warps' share of BLOCK_N (PTX ISA, wgmma ``.s8`` shapes)."""
    wm = mma_warps(BLOCK_M, num_warps)
    share = BLOCK_N // wm[1]
    for n in range(224, 7, -8):
        if share % n == 0 and (n % 16 == 0 or n < 16):
            return n
    raise ValueError(f"no int8 wgmma N for BLOCK_N={BLOCK_N}")


@gluon.constexpr_function
def copy_layout(BLOCK_K, num_warps):
    """Registers of one (rows, BLOCK_K) int8 tile in flight to shared memory: 16 bytes per thread
    along K, so every ``cp.async`` moves 16 bytes."""
    across = BLOCK_K // 16
    return gl.BlockedLayout([1, 16], [32 // across, across], [num_warps, 1], [1, 0])


@gluon.constexpr_function
def store_layout(BLOCK_N, num_warps):
    """Registers of the output tile for coalesced channels-last stores: 8 channels per thread."""
    across = min(BLOCK_N // 8, 32)
    return gl.BlockedLayout([1, 8], [32 // across, across], [num_warps, 1], [1, 0])


EPILOGUE_ROWS = gl.constexpr(32)  # rows of the output tile per epilogue step (every BLOCK_M is a multiple)


@gluon.constexpr_function
def epilogue_smem_layout():
    """Shared memory of the tile's int32 sums between the wgmma layout and the store layout:
    16-byte units swizzled over 8 rows, so the wgmma layout's 8 rows per warp hit 8 different
    bank groups."""
    return gl.SwizzledSharedLayout(4, 1, 8, [1, 0])


@gluon.jit
def _copy_step(a_dst, b_dst, a_ptrs, b_ptrs, a_rows, b_rows, kk, steps, csteps, WP, CP, KW: gl.constexpr,
               BLOCK_K: gl.constexpr):
    """Start the ``cp.async`` copies of K-step ``kk``: tap ``kk // csteps``, channel block
    ``kk % csteps``; the activation rows move by the tap's offset in the halo tensor. Past the
    last step the copies are predicated off (no global read; the slot, already retired, is
    zero-filled). ``a_rows`` / ``b_rows``: all-true row vectors that give the predicate the
    tiles' row layout, so that each copy stays one 16-byte ``cp.async``."""
    live = kk < steps
    kk = gl.minimum(kk, steps - 1)
    tap = kk // csteps
    kh = tap // KW
    a_off = ((kh * WP + (tap - kh * KW)) * CP) + (kk - tap * csteps) * BLOCK_K
    copy_to_shared(a_dst, a_ptrs + gl.multiple_of(a_off, 16), mask=(a_rows & live)[:, None])
    copy_to_shared(b_dst, b_ptrs + kk * BLOCK_K, mask=(b_rows & live)[:, None])


@gluon.jit(do_not_specialize=["M", "HP", "WP", "OH", "OW", "stride", "OPH", "OPW", "OPAD"])
def async_mma_conv_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, mul_ptr, add_ptr, out_ptr, res_ptr, op_ptr,
    M, HP, WP, OH, OW, C_out, stride, CP, KTOT, OPH, OPW, OPAD, OPC,
    KH: gl.constexpr, KW: gl.constexpr,
    HAS_SCALE: gl.constexpr, HAS_BIAS: gl.constexpr, HAS_AFFINE: gl.constexpr,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, STAGES: gl.constexpr,
    num_warps: gl.constexpr,
    HAS_RESIDUAL: gl.constexpr = False, STORE_OUT: gl.constexpr = True, OPERAND: gl.constexpr = False,
    OP_KSUM: gl.constexpr = 1,
):
    """One ``(BLOCK_M, BLOCK_N)`` output tile: rows are output pixels, columns output channels.

    Pipeline over ``STAGES`` (≥ 2) shared-memory slots, K-step ``kk`` copied ``STAGES - 1`` steps
    ahead. Each step waits for its own copies (``cp.async.wait_group``), meets the CTA barrier
    (every thread's copies have landed), fences them for the async proxy, issues wgmma ``kk`` and
    waits until at most one wgmma is outstanding (``kk`` itself: ``kk - 1`` has retired); a second
    barrier proves that for every warpgroup (Gluon's wait is per warpgroup), and the copies of
    step ``kk + STAGES - 1`` go into the slot wgmma ``kk - 1`` has left. Two barriers per step:
    Triton's barrier pass adds none (a barrier directly follows the wait, and the copies follow
    the wgmma). The order wait, barrier, fence, wgmma is that of Triton 3.9's own pipelined loop
    (``unpacked_conv_kernel``'s PTX); Triton 3.6's has no proxy fence at all, and ran exactly on
    an H100 (``path="mma"``, 2026-11-26).

    Fused layer, as ``unpacked_conv_kernel``'s (int8 operands only): ``HAS_RESIDUAL`` adds the
    channels-last residual ``(M, C_out)`` after the affine steps, ``STORE_OUT = False`` skips the
    real output, ``OPERAND`` writes the next conv's int8 operand (``sign(y)``, or with
    ``OP_KSUM = K`` the K-sums of adjacent channels) into its pre-zeroed halo buffer
    ``(N, OPH, OPW, OPC)`` at pixel ``(n, oh + OPAD, ow + OPAD)``. The bytes and their store are
    the Triton kernels' own code (``_operand_bytes``, ``_store_operand``).
    """
    gl.static_assert(STAGES >= 2, "one slot being read by the wgmma in flight, one being filled")
    pid = gl.program_id(0)
    num_n = gl.cdiv(C_out, BLOCK_N)
    pid_m = pid // num_n
    pid_n = pid - pid_m * num_n

    copy: gl.constexpr = copy_layout(BLOCK_K, num_warps)
    offs_m = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, copy))
    ow = offs_m % OW
    t = offs_m // OW
    oh = t % OH
    nb = t // OH
    # halo pixel of tap (0, 0); rows past M read pixel 0 (in bounds), the masked store drops them
    pix = (nb.to(gl.int64) * HP + oh * stride) * WP + ow * stride
    row = gl.multiple_of(gl.where(offs_m < M, pix * CP, 0), 16)
    offs_k = gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, copy))
    a_ptrs = x_ptr + row[:, None] + offs_k[None, :]
    offs_w = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, copy))
    col = gl.minimum(offs_w, C_out - 1).to(gl.int64) * KTOT
    b_ptrs = w_ptr + col[:, None] + offs_k[None, :]

    a_bufs = gl.allocate_shared_memory(gl.int8, [STAGES, BLOCK_M, BLOCK_K],
                                       gl.NVMMASharedLayout.get_default_for([BLOCK_M, BLOCK_K], gl.int8))
    b_bufs = gl.allocate_shared_memory(gl.int8, [STAGES, BLOCK_N, BLOCK_K],
                                       gl.NVMMASharedLayout.get_default_for([BLOCK_N, BLOCK_K], gl.int8))
    csteps = CP // BLOCK_K
    steps = KH * KW * csteps
    a_rows = offs_m >= 0  # all true (see _copy_step)
    b_rows = offs_w >= 0
    for s in gl.static_range(STAGES - 1):
        _copy_step(a_bufs.index(s), b_bufs.index(s), a_ptrs, b_ptrs, a_rows, b_rows, s, steps, csteps, WP, CP,
                   KW, BLOCK_K)
        async_copy.commit_group()

    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=mma_warps(BLOCK_M, num_warps),
                                                  instr_shape=[16, mma_instr_n(BLOCK_M, BLOCK_N, num_warps), 32])
    acc = gl.zeros([BLOCK_M, BLOCK_N], gl.int32, layout=mma)
    for kk in range(steps):
        async_copy.wait_group(STAGES - 2)  # step kk's copies have landed (this thread's)
        cta_barrier()  # ... every thread's
        fence_async_shared()
        a = a_bufs.index(kk % STAGES)
        b = b_bufs.index(kk % STAGES)
        acc = warpgroup_mma(a, b.permute((1, 0)), acc, is_async=True)
        acc, a, b = warpgroup_mma_wait(num_outstanding=1, deps=(acc, a, b))  # wgmma kk - 1 retired
        cta_barrier()  # ... in every warpgroup: its slot is free
        ahead = kk + STAGES - 1
        slot = ahead % STAGES
        _copy_step(a_bufs.index(slot), b_bufs.index(slot), a_ptrs, b_ptrs, a_rows, b_rows, ahead, steps, csteps,
                   WP, CP, KW, BLOCK_K)
        async_copy.commit_group()
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    async_copy.wait_group(0)

    # epilogue, in BinaryConv2d.forward's order, each op rounded on its own, over EPILOGUE_ROWS rows
    # at a time: the sums go to shared memory (the ring's space, no longer used) and come back in
    # the store layout, where a thread holds 8 adjacent channels, so a K-sum group (K ≤ 8) is one
    # thread's. A whole 128x128 tile at once held 64 sums, 64 residuals and their row addresses
    # per thread: 160 registers under Triton 3.6 with a residual and an operand, against 120 for
    # the K-loop.
    sums = gl.allocate_shared_memory(gl.int32, [BLOCK_M, BLOCK_N], epilogue_smem_layout(), acc)
    store: gl.constexpr = store_layout(BLOCK_N, num_warps)
    offs_n = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, store))
    n_ok = offs_n < C_out
    scale, bias, mul, add = _affine_vectors(offs_n, n_ok, scale_ptr, bias_ptr, mul_ptr, add_ptr, HAS_SCALE, HAS_BIAS,
                                            HAS_AFFINE)
    for r in gl.static_range(0, BLOCK_M, EPILOGUE_ROWS):
        y = sums.slice(r, EPILOGUE_ROWS).load(store)
        y = _apply_affine(y, scale, bias, mul, add, HAS_SCALE, HAS_BIAS, HAS_AFFINE)
        rows = pid_m * BLOCK_M + r + gl.arange(0, EPILOGUE_ROWS, layout=gl.SliceLayout(1, store))
        mask = (rows < M)[:, None] & n_ok[None, :]
        flat = rows.to(gl.int64)[:, None] * C_out + offs_n[None, :]  # channels-last (M, C_out)
        if HAS_RESIDUAL:
            y = y + gl.load(res_ptr + flat, mask=mask, other=0.0).to(gl.float32)
        if STORE_OUT:
            gl.store(out_ptr + flat, y.to(out_ptr.dtype.element_ty), mask=mask)
        if OPERAND:
            v = _operand_bytes(y, n_ok, OP_KSUM, False, EPILOGUE_ROWS, BLOCK_N)
            # the K-sums' layout is the reduction's: index vectors in that layout
            op_rows = pid_m * BLOCK_M + r + gl.arange(0, EPILOGUE_ROWS, layout=gl.SliceLayout(1, v.type.layout))
            offs_c = pid_n * (BLOCK_N // OP_KSUM) + gl.arange(0, BLOCK_N // OP_KSUM,
                                                               layout=gl.SliceLayout(0, v.type.layout))
            _store_operand(v, op_rows, offs_c, op_rows < M, op_ptr, OH, OW, C_out, OPH, OPW, OPAD, OPC, OP_KSUM)


def _tile(m, n, k, warps, stages):
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "STAGES": stages}, num_warps=warps)


# ptxas -v for sm_90a: see tests/test_triton_compile.py::test_async_mma_keeps_one_wgmma_in_flight
ASYNC_MMA_CONFIGS = [
    _tile(128, 128, 64, 8, 4), _tile(128, 64, 64, 4, 4), _tile(64, 128, 64, 4, 4), _tile(64, 64, 64, 4, 4),
    _tile(128, 128, 128, 8, 3), _tile(128, 128, 32, 8, 5), _tile(128, 64, 32, 4, 5), _tile(64, 64, 32, 4, 5),
]
