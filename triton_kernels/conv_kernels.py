"""Device code: packed binary 2-D convolution as an implicit GEMM (see ``conv.py``).

GEMM view: rows = output pixels ``M = N*OH*OW``, columns = output channels, reduction over
taps × packed words. Two kernels share the tiling and the epilogue:

- ``packed_conv_mma_kernel``: each K-step loads ``BLOCK_W`` packed words per pixel and per
  output channel, unpacks them in registers to int8 ±1 (0 for zero-padded taps and for the
  padding bits past ``C_in``) and accumulates ``tl.dot`` in int32 on the tensor cores
  (``mma``/``wgmma`` ``.s8``);
- ``packed_conv_popcount_kernel``: ``dot = n_valid - 2 * popcount(a XOR w)``, counting only
  valid taps and valid channels (padding bits are 0 in both operands, so their XOR is 0).

The popcount is plain integer ops (SWAR), which the interpreter runs and LLVM folds into one
``popc.b32``; ``USE_ASM_POPC`` selects inline PTX instead (device only).

Epilogue, in ``BinaryConv2d.forward``'s order, each op rounded separately (launch with
``enable_fp_fusion=False``): ``y = float(dot) * scale + bias``, then ``y * bn_scale + bn_shift``,
then either a store of ``y`` or its re-binarised, packed signs.
"""
import triton
import triton.language as tl

INTERPRET = globals().get("INTERPRET", False)  # set by _runtime.load before this module runs

if INTERPRET:
    _sum_combine = tl.standard._sum_combine  # numpy fast path in the interpreter
else:

    @triton.jit
    def _sum_combine(a, b):
        return a + b


@triton.jit
def popcount32(v, USE_ASM: tl.constexpr):
    """Number of set bits of each int32 (SWAR; ``USE_ASM`` emits ``popc.b32`` directly)."""
    if USE_ASM:
        return tl.inline_asm_elementwise("popc.b32 $0, $1;", "=r,r", [v], dtype=tl.int32, is_pure=True, pack=1)
    else:
        u = v.to(tl.uint32, bitcast=True)
        u = u - ((u >> 1) & 0x55555555)
        u = (u & 0x33333333) + ((u >> 2) & 0x33333333)
        u = (u + (u >> 4)) & 0x0F0F0F0F
        u = (u * 0x01010101) >> 24
        return u.to(tl.int32, bitcast=True)


@triton.jit
def _output_coords(pid_m, pid_n, M, C_out, OH, OW, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ow = offs_m % OW
    t = offs_m // OW
    oh = t % OH
    nb = t // OH
    return offs_m, offs_n, offs_m < M, offs_n < C_out, nb, oh, ow


@triton.jit
def _epilogue(
    dot, offs_m, offs_n, m_ok, n_ok, nb, oh, ow, pid_n,
    scale_ptr, bias_ptr, mul_ptr, add_ptr, out_ptr,
    OWORDS, so_n, so_c, so_h, so_w,
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AFFINE: tl.constexpr, BINARIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    y = dot.to(tl.float32)
    if HAS_SCALE:
        y = y * tl.load(scale_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    if HAS_AFFINE:
        y = y * tl.load(mul_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
        y = y + tl.load(add_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    if BINARIZE:
        # pack sign(y) along channels: BLOCK_N is a multiple of 32, so tile words are whole words
        neg = tl.where(y >= 0, 0, 1)
        neg = tl.where(n_ok[None, :], neg, 0).to(tl.uint32)
        bits = neg << (offs_n % 32).to(tl.uint32)[None, :]
        words = tl.reduce(tl.reshape(bits, (BLOCK_M, BLOCK_N // 32, 32)), 2, _sum_combine)
        offs_w = pid_n * (BLOCK_N // 32) + tl.arange(0, BLOCK_N // 32)
        ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * OWORDS + offs_w[None, :]
        tl.store(ptrs, words.to(tl.int32, bitcast=True), mask=m_ok[:, None] & (offs_w < OWORDS)[None, :])
    else:
        row = nb.to(tl.int64) * so_n + oh.to(tl.int64) * so_h + ow.to(tl.int64) * so_w
        ptrs = out_ptr + row[:, None] + offs_n.to(tl.int64)[None, :] * so_c
        tl.store(ptrs, y.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


# integer arguments are not specialised (on value 1 / divisibility by 16): one compilation per
# tile configuration serves every layer shape, which keeps autotuning a whole network short
_NO_SPEC = ["M", "IH", "IW", "OH", "OW", "C_in", "C_out", "XW", "OWORDS", "stride", "pad",
            "so_n", "so_c", "so_h", "so_w"]


@triton.jit(do_not_specialize=_NO_SPEC)
def packed_conv_mma_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, mul_ptr, add_ptr, out_ptr,
    M, IH, IW, OH, OW, C_in, C_out, XW, OWORDS, stride, pad,
    so_n, so_c, so_h, so_w,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AFFINE: tl.constexpr, BINARIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Tensor-core path: unpack packed words to int8 ±1 in registers, int32 ``tl.dot``.

    Zero padding: a tap outside the image unpacks to 0 (``a = valid - 2*bit``, its word loaded
    as 0). Channel padding (bits past ``C_in``, and words past ``XW`` in the last K-step) unpacks
    to +1 in both operands; each valid tap thus adds exactly ``BLOCK_W*32*wsteps - C_in``, which is
    subtracted per output pixel at the end — no per-channel mask in the K-loop.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m, offs_n, m_ok, n_ok, nb, oh, ow = _output_coords(pid_m, pid_n, M, C_out, OH, OW, BLOCK_M, BLOCK_N)
    ih0 = oh * stride - pad
    iw0 = ow * stride - pad
    x_img = nb.to(tl.int64) * IH
    lanes = tl.arange(0, 32)
    wsteps = (XW + BLOCK_W - 1) // BLOCK_W
    w_base = w_ptr + offs_n.to(tl.int64) * (KH * KW * XW)
    acc = tl.full((BLOCK_M, BLOCK_N), 0, tl.int32)
    taps = tl.full((BLOCK_M,), 0, tl.int32)
    for kk in range(0, KH * KW * wsteps):
        tap = kk // wsteps
        words = (kk - tap * wsteps) * BLOCK_W + tl.arange(0, BLOCK_W)
        kh = tap // KW
        ih = ih0 + kh
        iw = iw0 + (tap - kh * KW)
        valid = m_ok & (ih >= 0) & (ih < IH) & (iw >= 0) & (iw < IW)
        w_ok = words < XW
        x_row = ((x_img + ih) * IW + iw) * XW
        aw = tl.load(x_ptr + x_row[:, None] + words[None, :], mask=valid[:, None] & w_ok[None, :], other=0)
        a = valid.to(tl.int32)[:, None, None] - 2 * ((aw[:, :, None] >> lanes[None, None, :]) & 1)
        a = tl.reshape(a.to(tl.int8), (BLOCK_M, BLOCK_W * 32))
        bw = tl.load(w_base[None, :] + tap * XW + words[:, None], mask=w_ok[:, None], other=0)
        b = 1 - 2 * ((bw[:, None, :] >> lanes[None, :, None]) & 1)
        b = tl.reshape(b.to(tl.int8), (BLOCK_W * 32, BLOCK_N))
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        taps += valid.to(tl.int32)
    # remove the +1·+1 products of the padding channels of every valid tap
    pad_channels = wsteps * BLOCK_W * 32 - C_in
    acc = acc - (taps // wsteps * pad_channels)[:, None]
    _epilogue(acc, offs_m, offs_n, m_ok, n_ok, nb, oh, ow, pid_n,
              scale_ptr, bias_ptr, mul_ptr, add_ptr, out_ptr, OWORDS, so_n, so_c, so_h, so_w,
              HAS_SCALE, HAS_BIAS, HAS_AFFINE, BINARIZE, BLOCK_M, BLOCK_N)


@triton.jit(do_not_specialize=_NO_SPEC)
def packed_conv_popcount_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, mul_ptr, add_ptr, out_ptr,
    M, IH, IW, OH, OW, C_in, C_out, XW, OWORDS, stride, pad,
    so_n, so_c, so_h, so_w,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AFFINE: tl.constexpr, BINARIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, USE_ASM_POPC: tl.constexpr,
):
    """XOR + popcount path: ``dot = (#valid taps·channels) - 2 * popcount(a ^ w)``."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m, offs_n, m_ok, n_ok, nb, oh, ow = _output_coords(pid_m, pid_n, M, C_out, OH, OW, BLOCK_M, BLOCK_N)
    ih0 = oh * stride - pad
    iw0 = ow * stride - pad
    w_row = offs_n.to(tl.int64) * (KH * KW)
    acc = tl.full((BLOCK_M, BLOCK_N), 0, tl.int32)
    count = tl.full((BLOCK_M,), 0, tl.int32)
    for kk in range(0, KH * KW * XW):
        tap = kk // XW
        w = kk - tap * XW
        kh = tap // KW
        kw = tap - kh * KW
        ih = ih0 + kh
        iw = iw0 + kw
        valid = m_ok & (ih >= 0) & (ih < IH) & (iw >= 0) & (iw < IW)
        x_row = ((nb * IH + ih) * IW + iw).to(tl.int64) * XW
        a = tl.load(x_ptr + x_row + w, mask=valid, other=0)
        b = tl.load(w_ptr + (w_row + tap) * XW + w, mask=n_ok, other=0)
        pc = popcount32(a[:, None] ^ b[None, :], USE_ASM_POPC)
        acc += tl.where(valid[:, None], pc, 0)
        count += tl.where(valid, tl.minimum(C_in - w * 32, 32), 0)
    dot = count[:, None] - 2 * acc
    _epilogue(dot, offs_m, offs_n, m_ok, n_ok, nb, oh, ow, pid_n,
              scale_ptr, bias_ptr, mul_ptr, add_ptr, out_ptr, OWORDS, so_n, so_c, so_h, so_w,
              HAS_SCALE, HAS_BIAS, HAS_AFFINE, BINARIZE, BLOCK_M, BLOCK_N)


# Autotuned launchers for the GPU (the interpreter uses one small fixed tile instead).
# Chosen from ptxas -v reports for sm_90 (255-register cap; configs that spilled were dropped).
MMA_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_W": 1}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_W": 1}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_W": 2}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_W": 1}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_W": 2}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_W": 1}, num_warps=4, num_stages=4),
]
POPCOUNT_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=4, num_stages=3),
]
_KEY = ["M", "C_out", "XW", "OH", "OW", "KH", "KW"]

if not INTERPRET:
    packed_conv_mma_tuned = triton.autotune(configs=MMA_CONFIGS, key=_KEY)(packed_conv_mma_kernel)
    packed_conv_popcount_tuned = triton.autotune(configs=POPCOUNT_CONFIGS, key=_KEY)(packed_conv_popcount_kernel)
