"""Device code: packed binary 2-D convolution as an implicit GEMM (see ``conv.py``).

GEMM view: rows = output pixels ``M = N*OH*OW``, columns = output channels, reduction over
taps × channels. Three kernels share the epilogue:

- ``unpacked_conv_kernel`` (``path="mma"``; ``"mma_fp8"`` with fp8 e4m3 operands): a plain int8
  implicit GEMM on operands unpacked once
  beforehand by ``unpack_halo_kernel``: activations ``(N, H+2p, W+2p, CP)`` int8 ±1 with the zero
  padding baked in as a zero halo (and zero channels up to ``CP``, a multiple of 32), weights
  ``(C_out, KH*KW*CP)`` int8 (cached per weight tensor by ``conv.py``). The K-loop has no masks and
  no unpacking: per step one ``(BLOCK_M, BLOCK_K)`` activation tile (rows at a fixed per-pixel
  offset plus a per-tap scalar) and one K-major ``(BLOCK_K, BLOCK_N)`` weight tile, both copied
  asynchronously into shared memory by Triton's software pipeline and fed to ``wgmma ... .s8``;
- ``packed_conv_mma_kernel`` (``path="mma_regs"``, the first version, kept for comparison): each K-step loads ``BLOCK_W`` packed words per pixel and per
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
    y = _affine(dot, offs_n, n_ok, scale_ptr, bias_ptr, mul_ptr, add_ptr, HAS_SCALE, HAS_BIAS, HAS_AFFINE)
    if BINARIZE:
        _store_packed_signs(y, offs_m, offs_n, m_ok, n_ok, pid_n, out_ptr, OWORDS, BLOCK_M, BLOCK_N)
    else:
        row = nb.to(tl.int64) * so_n + oh.to(tl.int64) * so_h + ow.to(tl.int64) * so_w
        ptrs = out_ptr + row[:, None] + offs_n.to(tl.int64)[None, :] * so_c
        tl.store(ptrs, y.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _affine(dot, offs_n, n_ok, scale_ptr, bias_ptr, mul_ptr, add_ptr,
            HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AFFINE: tl.constexpr):
    """``float(dot) * scale + bias``, then ``* bn_scale + bn_shift``, each op rounded separately."""
    scale, bias, mul, add = _affine_vectors(offs_n, n_ok, scale_ptr, bias_ptr, mul_ptr, add_ptr,
                                            HAS_SCALE, HAS_BIAS, HAS_AFFINE)
    return _apply_affine(dot, scale, bias, mul, add, HAS_SCALE, HAS_BIAS, HAS_AFFINE)


@triton.jit
def _affine_vectors(offs_n, n_ok, scale_ptr, bias_ptr, mul_ptr, add_ptr,
                    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AFFINE: tl.constexpr):
    """``_affine``'s per-channel vectors as ``(1, BLOCK_N)`` rows (0.0 where a flag is off), loaded
    once by a kernel that applies them to several row blocks (the Gluon kernel's epilogue)."""
    scale = 0.0
    bias = 0.0
    mul = 0.0
    add = 0.0
    if HAS_SCALE:
        scale = tl.load(scale_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    if HAS_AFFINE:
        mul = tl.load(mul_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
        add = tl.load(add_ptr + offs_n, mask=n_ok, other=0.0)[None, :]
    return scale, bias, mul, add


@triton.jit
def _apply_affine(dot, scale, bias, mul, add, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                  HAS_AFFINE: tl.constexpr):
    """``_affine`` with its vectors given (``_affine_vectors``)."""
    y = dot.to(tl.float32)
    if HAS_SCALE:
        y = y * scale
    if HAS_BIAS:
        y = y + bias
    if HAS_AFFINE:
        y = y * mul
        y = y + add
    return y


@triton.jit
def _store_packed_signs(y, offs_m, offs_n, m_ok, n_ok, pid_n, out_ptr, OWORDS,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Re-binarise: pack sign(y) along channels into ``out[m, word]`` (row stride ``OWORDS``).
    BLOCK_N is a multiple of 32, so the tile's words are whole words."""
    neg = tl.where(y >= 0, 0, 1)
    neg = tl.where(n_ok[None, :], neg, 0).to(tl.uint32)
    bits = neg << (offs_n % 32).to(tl.uint32)[None, :]
    words = tl.reduce(tl.reshape(bits, (BLOCK_M, BLOCK_N // 32, 32)), 2, _sum_combine)
    offs_w = pid_n * (BLOCK_N // 32) + tl.arange(0, BLOCK_N // 32)
    ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * OWORDS + offs_w[None, :]
    tl.store(ptrs, words.to(tl.int32, bitcast=True), mask=m_ok[:, None] & (offs_w < OWORDS)[None, :])


@triton.jit
def _operand_bytes(y, n_ok, OP_KSUM: tl.constexpr, OP_FP8: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr):
    """The next conv's operand bytes from a ``(BLOCK_M, BLOCK_N)`` tile ``y``: ``sign(y)``, or the
    sums of ``OP_KSUM`` adjacent channels' signs, ``(BLOCK_M, BLOCK_N // OP_KSUM)`` int8 (or the
    e4m3 bytes of the same integers). Channels past ``C_out`` (``n_ok`` false) count 0. No index
    vector is built here, so Gluon kernels share it (their ``arange`` needs a layout)."""
    s = tl.where(y >= 0, 1, -1)  # sign(0) = +1; NaN -> -1, as the packing maps it
    s = tl.where(n_ok[None, :], s, 0)
    if OP_KSUM > 1:
        s = tl.reduce(tl.reshape(s, (BLOCK_M, BLOCK_N // OP_KSUM, OP_KSUM)), 2, _sum_combine)
    if OP_FP8:
        v = s.to(tl.float32).to(tl.float8e4nv).to(tl.int8, bitcast=True)
    else:
        v = s.to(tl.int8)
    return v


@triton.jit
def _store_operand(v, offs_m, offs_c, m_ok, op_ptr, OH, OW, C_out, OPH, OPW, OPAD, OPC, OP_KSUM: tl.constexpr):
    """Store ``_operand_bytes``' tile ``v`` (rows ``offs_m``: output pixels; columns ``offs_c``:
    operand channels, in ``v``'s layout) at the interior pixel ``(n, oh + OPAD, ow + OPAD)`` of the
    halo buffer ``(N, OPH, OPW, OPC)``; the halo and the channels past ``C_out / OP_KSUM`` are left
    as they are (zero). ``BLOCK_N`` is a multiple of ``OP_KSUM`` (32 ≥ 8), so a tile holds whole
    groups."""
    ow = offs_m % OW
    t = offs_m // OW
    pix = ((t // OH).to(tl.int64) * OPH + t % OH + OPAD) * OPW + ow + OPAD
    ptrs = op_ptr + pix[:, None] * OPC + offs_c[None, :]
    tl.store(ptrs, v, mask=m_ok[:, None] & (offs_c < C_out // OP_KSUM)[None, :])


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


@triton.jit(do_not_specialize=["P", "IH", "IW", "HP", "WP", "XW", "C_in", "pad"])
def unpack_halo_kernel(
    x_ptr, out_ptr, P, IH, IW, HP, WP, XW, C_in, CP, pad,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, KSUM: tl.constexpr, FP8: tl.constexpr,
):
    """Packed NHWC words ``(N, IH, IW, XW)`` -> GEMM operand bytes ``(N, HP, WP, CP)``,
    ``HP = IH + 2*pad``: ``1 - 2*bit`` inside the image for channels ``< C_in``, 0 in the halo and
    the padding channels.

    ``KSUM > 1`` (CBConv's K-sum form): output channel ``c`` is the sum of the KSUM signs of input
    channels ``c*KSUM .. c*KSUM + KSUM-1`` (an integer in [-KSUM, KSUM]), so the GEMM runs over
    ``C_in / KSUM`` maps. Bytes are int8, or with ``FP8`` the e4m3 encoding of the same integers
    (exact for |v| ≤ 16; 0 is the byte 0 in both).

    Also unpacks weights ``(C_out, KH, KW, XW)`` (``pad = 0``, ``KSUM = 1``) to the
    ``(C_out, KH*KW*CP)`` matrix. ``BLOCK_C`` divides ``CP`` (a multiple of 32), so the tile needs
    no channel mask.

    ``KSUM = 1`` expands the bits by SWAR, four channels per 32-bit word: a nibble times
    ``0x00204081`` puts its bit ``j`` at bit ``8j`` (the four partial products do not overlap), and
    ``& 0x01010101`` keeps those bits, one per byte; the byte ``1 − 2·bit`` is then ``0x01 | e·0xFE``
    (int8 ±1) or, in e4m3, ``0x38 | e << 7`` (``0x38`` = +1, ``0xB8`` = −1). About 7 integer ops per
    4 output bytes instead of ~4 per byte, and 16-byte stores of whole words. ``KSUM > 1`` is SWAR
    too: a bit-parallel popcount of each group (``_unpack_halo_ksum``).
    """
    if KSUM == 1:
        _unpack_halo_swar(x_ptr, out_ptr, P, IH, IW, HP, WP, XW, C_in, CP, pad, BLOCK_P, BLOCK_C, FP8)
    else:
        _unpack_halo_ksum(x_ptr, out_ptr, P, IH, IW, HP, WP, XW, C_in, CP, pad, BLOCK_P, BLOCK_C, KSUM, FP8)


@triton.jit
def _halo_pixels(P, IH, IW, HP, WP, pad, BLOCK_P: tl.constexpr):
    """This program's halo pixels: their indices, whether they exist, whether they are inside the
    image (not the halo), and the offset of their packed words' row ``(n, ih, iw)``."""
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = offs_p < P
    wp = offs_p % WP
    t = offs_p // WP
    hp = t % HP
    n = t // HP
    ih = hp - pad
    iw = wp - pad
    inside = p_ok & (ih >= 0) & (ih < IH) & (iw >= 0) & (iw < IW)
    return offs_p, p_ok, inside, (n.to(tl.int64) * IH + ih) * IW + iw


@triton.jit
def _unpack_halo_swar(x_ptr, out_ptr, P, IH, IW, HP, WP, XW, C_in, CP, pad,
                      BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, FP8: tl.constexpr):
    """``unpack_halo_kernel`` for ``KSUM = 1``: each packed word becomes 8 output words (SWAR)."""
    offs_p, p_ok, inside, src_row = _halo_pixels(P, IH, IW, HP, WP, pad, BLOCK_P)
    words = tl.program_id(1) * (BLOCK_C // 32) + tl.arange(0, BLOCK_C // 32)
    wv = tl.load(x_ptr + src_row[:, None] * XW + words[None, :], mask=inside[:, None] & (words < XW)[None, :],
                 other=0)
    quads = tl.arange(0, 8)  # nibble q of word w holds channels w*32 + 4q .. w*32 + 4q + 3
    nibble = (wv[:, :, None] >> (4 * quads)[None, None, :]) & 0xF
    e = (nibble * 0x00204081) & 0x01010101
    if FP8:
        v = 0x38383838 | (e << 7)
    else:
        v = 0x01010101 | (e * 0xFE)
    # channels past C_in (the last word's padding bits) and the halo are 0
    valid = tl.minimum(tl.maximum(C_in - (words[:, None] * 32 + 4 * quads[None, :]), 0), 4)
    keep = tl.where(valid >= 4, -1, (1 << (8 * valid)) - 1)
    v = tl.where(inside[:, None, None], v & keep[None, :, :], 0)
    v = tl.reshape(v, (BLOCK_P, BLOCK_C // 4))
    offs_w = tl.program_id(1) * (BLOCK_C // 4) + tl.arange(0, BLOCK_C // 4)
    out_words = out_ptr.to(tl.pointer_type(tl.int32), bitcast=True)
    tl.store(out_words + offs_p.to(tl.int64)[:, None] * (CP // 4) + offs_w[None, :], v, mask=p_ok[:, None])


@triton.jit
def _unpack_halo_ksum(x_ptr, out_ptr, P, IH, IW, HP, WP, XW, C_in, CP, pad,
                      BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr, KSUM: tl.constexpr, FP8: tl.constexpr):
    """``unpack_halo_kernel`` for ``KSUM > 1``, by SWAR on whole words: a group of ``KSUM`` sign
    bits sums to ``KSUM − 2·popcount``. The classic bit-parallel popcount steps (``0x55555555``,
    ``0x33333333``, ``0x0F0F0F0F``) leave every group's count in its own ``KSUM``-bit field; two
    shift-or-mask steps move four consecutive fields into the four bytes of an output word; then
    ``((KSUM + 0x80)·0x01010101 − 2·counts) ^ 0x80808080`` gives the int8 bytes ``KSUM − 2·count``
    (each byte ≥ 2·count before the subtraction, so no borrow crosses bytes; xor 0x80 subtracts
    128 mod 256). ``check_ksum`` makes ``C_in`` a multiple of ``KSUM``, so groups never straddle
    ``C_in``. fp8: the four bytes of each word go through the hardware e4m3 conversion."""
    offs_p, p_ok, inside, src_row = _halo_pixels(P, IH, IW, HP, WP, pad, BLOCK_P)
    pid_c = tl.program_id(1)
    # the tile's BLOCK_C output channels read BLOCK_C*KSUM input channels: BLOCK_C*KSUM/32 words
    words = pid_c * (BLOCK_C * KSUM // 32) + tl.arange(0, BLOCK_C * KSUM // 32)
    wv = tl.load(x_ptr + src_row[:, None] * XW + words[None, :], mask=inside[:, None] & (words < XW)[None, :],
                 other=0).to(tl.uint32, bitcast=True)
    counts = wv - ((wv >> 1) & 0x55555555)  # 2-bit fields: popcounts of bit pairs
    if KSUM >= 4:
        counts = (counts & 0x33333333) + ((counts >> 2) & 0x33333333)  # nibbles
    if KSUM == 8:
        counts = (counts + (counts >> 4)) & 0x0F0F0F0F  # bytes
    # output word q of an input word holds groups 4q .. 4q+3 (4·KSUM bits)
    quads = tl.arange(0, 8 // KSUM)
    field = (counts[:, :, None] >> (4 * KSUM * quads).to(tl.uint32)[None, None, :])
    if KSUM < 8:  # spread four KSUM-bit fields to the four bytes
        field = field & ((1 << (4 * KSUM)) - 1)
        field = (field | (field << (16 - 2 * KSUM))) & (((1 << (2 * KSUM)) - 1) * 0x00010001)
        field = (field | (field << (8 - KSUM))) & (((1 << KSUM) - 1) * 0x01010101)
    v = (((KSUM + 0x80) * 0x01010101) - 2 * field) ^ 0x80808080
    # maps past C_in / KSUM (the padding channels) and the halo are 0
    maps = C_in // KSUM
    first = words[:, None] * (32 // KSUM) + 4 * quads[None, :]  # the map of byte 0 of each output word
    valid = tl.minimum(tl.maximum(maps - first, 0), 4)
    keep = tl.where(valid >= 4, -1, (1 << (8 * valid)) - 1).to(tl.uint32, bitcast=True)
    v = tl.where(inside[:, None, None], v & keep[None, :, :], 0)
    v = tl.reshape(v, (BLOCK_P, BLOCK_C // 4)).to(tl.int32, bitcast=True)
    if FP8:
        lanes = tl.arange(0, 4)
        b = ((v[:, :, None] << (24 - 8 * lanes)[None, None, :]) >> 24)  # byte j, sign-extended
        b = tl.reshape(b, (BLOCK_P, BLOCK_C)).to(tl.float32).to(tl.float8e4nv).to(tl.int8, bitcast=True)
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        tl.store(out_ptr + offs_p.to(tl.int64)[:, None] * CP + offs_c[None, :], b, mask=p_ok[:, None])
    else:
        offs_w = pid_c * (BLOCK_C // 4) + tl.arange(0, BLOCK_C // 4)
        out_words = out_ptr.to(tl.pointer_type(tl.int32), bitcast=True)
        tl.store(out_words + offs_p.to(tl.int64)[:, None] * (CP // 4) + offs_w[None, :], v, mask=p_ok[:, None])


# CP (channels padded to a multiple of 32) and KTOT = KH*KW*CP stay specialised: they are always
# multiples of 16, and Triton must know it to copy 16-byte vectors (cp.async ... 16)
# (C_out too: the output row stride, so the epilogue's stores can be vectorised)
_NO_SPEC_I8 = ["M", "HP", "WP", "OH", "OW", "OWORDS", "stride", "OPH", "OPW", "OPAD"]  # OPC: a multiple of 32


@triton.jit(do_not_specialize=_NO_SPEC_I8)
def unpacked_conv_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, mul_ptr, add_ptr, out_ptr, res_ptr, op_ptr, ws_ptr, cnt_ptr,
    M, HP, WP, OH, OW, C_out, OWORDS, stride, CP, KTOT, OPH, OPW, OPAD, OPC,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AFFINE: tl.constexpr, BINARIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FP8: tl.constexpr,
    PRECISE_FP8: tl.constexpr, HAS_RESIDUAL: tl.constexpr = False, STORE_OUT: tl.constexpr = True,
    OPERAND: tl.constexpr = False, OP_KSUM: tl.constexpr = 1, OP_FP8: tl.constexpr = False,
    SWAP_AB: tl.constexpr = False, SPLIT_K: tl.constexpr = 1, PERSISTENT: tl.constexpr = False,
    TMA_STORE: tl.constexpr = False,
):
    """Implicit GEMM on pre-unpacked operands (zero halo, zero channel padding): int8 operands
    with an int32 accumulator, or (``FP8``) fp8 e4m3 operands with an fp32 accumulator. Both are
    exact: the operands are small integers (±1/0, or K-sums in [−8, 8]), exact in e4m3, and every
    partial sum is an integer of magnitude at most ``KH·KW·C_in`` (physical input channels).
    Hopper's fp8 wgmma accumulates with reduced precision (reported ≈ 14 bits), so where that bound
    exceeds 2**13 the caller sets ``PRECISE_FP8`` and each K-step's partial sum (≤ 8·BLOCK_K) is
    promoted into the fp32 accumulator (``max_num_imprecise_acc``). The fp8 variant exists because
    Triton keeps float wgmma in flight across K-steps but waits for each int8 one (see the
    launchers' comment).

    ``x``: ``(N, HP, WP, CP)`` bytes (``HP = IH + 2*pad``), ``w``: ``(C_out, KTOT)`` bytes with
    ``KTOT = KH*KW*CP`` ordered (tap, channel). Output pixel ``(n, oh, ow)`` reads tap ``(kh, kw)``
    at halo pixel ``(n, oh*stride + kh, ow*stride + kw)``. The halo and padding channels are 0, so
    the K-loop has no masks; rows past ``M`` / columns past ``C_out`` read row 0 / the last
    column (in bounds) and are dropped by the epilogue's masked store. ``BLOCK_K`` divides ``CP``.
    Programs are ordered with the ``C_out`` tiles of one pixel block adjacent (shared A in L2).

    Shape variants (tile parameters, chosen by the autotuner; the arithmetic is the same integers):

    - ``SWAP_AB``: the MMA computes ``outᵀ = W · Xᵀ``, so output channels are the MMA's M side
      and pixels its wide N side (wgmma ``m64nBLOCK_M``). With C_out = 64 the normal orientation
      is limited to ``n64`` instructions, which re-read the A tile from shared memory for every
      64 columns; swapped, one ``n128``/``n256`` instruction covers the tile.
    - ``SPLIT_K > 1`` (small M, e.g. batch 1, where one wave of tiles leaves SMs idle): program
      ``pid`` computes part ``pid % SPLIT_K`` of the K-loop of tile ``pid // SPLIT_K`` and adds it
      into an int32 workspace ``ws`` with atomics (integer sums: exact for fp8's fp32 sums too); the last part to arrive
      (``cnt[tile]``) takes the sum back with atomic exchanges — leaving ``ws`` and ``cnt`` zero
      again for the next launch — and runs the epilogue. Exact: integer sums in any order.
    - ``PERSISTENT``: a grid of about one program per SM slot, each walking the output tiles
      (``tile = pid, pid + programs, ...``): no tail wave of partly idle SMs, one launch's worth of
      program set-up. ``TMA_STORE``: the real output tile leaves through a TMA store (a 2-D tensor
      descriptor over ``(M, C_out)``; needs ``C_out`` × element size a multiple of 16 bytes)
      instead of per-thread stores.

    Fused layer (the GPU engine's fused mode, ``cbcn.onebit.runner``): ``HAS_RESIDUAL`` adds the
    channels-last ``residual`` ``(M, C_out)`` after the affine steps; ``STORE_OUT = False`` skips
    the real output (a conv whose result only feeds the next conv); ``OPERAND`` writes the next
    conv's operand straight into its pre-zeroed halo buffer ``(N, OPH, OPW, OPC)`` at pixel
    ``(n, oh + OPAD, ow + OPAD)``: ``sign(y)`` (±1, ``sign(0) = +1``), or with ``OP_KSUM = K``
    the sum of the signs of channels ``c·K … c·K+K−1`` in channel ``c`` (CBConv's K-sum form), as
    int8 or (``OP_FP8``) e4m3 bytes. That removes the pack and unpack passes between layers.
    """
    pid = tl.program_id(0)
    if TMA_STORE:  # the real output as a 2-D (M, C_out) tensor for TMA stores of whole tiles
        out = tl.make_tensor_descriptor(out_ptr, shape=[M, C_out], strides=[C_out, 1], block_shape=[BLOCK_M, BLOCK_N])
    else:
        out = out_ptr
    if PERSISTENT:  # one program per SM slot, walking the tiles (no split-K)
        num_tiles = ((M + BLOCK_M - 1) // BLOCK_M) * ((C_out + BLOCK_N - 1) // BLOCK_N)
        for tile in range(pid, num_tiles, tl.num_programs(0)):
            _conv_tile(tile, 0, x_ptr, w_ptr, scale_ptr, bias_ptr, mul_ptr, add_ptr, out, res_ptr, op_ptr, ws_ptr,
                       cnt_ptr, M, HP, WP, OH, OW, C_out, OWORDS, stride, CP, KTOT, OPH, OPW, OPAD, OPC, KH, KW,
                       HAS_SCALE, HAS_BIAS, HAS_AFFINE, BINARIZE, BLOCK_M, BLOCK_N, BLOCK_K, FP8, PRECISE_FP8,
                       HAS_RESIDUAL, STORE_OUT, OPERAND, OP_KSUM, OP_FP8, SWAP_AB, 1, TMA_STORE)
    else:
        tile = pid // SPLIT_K
        _conv_tile(tile, pid - tile * SPLIT_K, x_ptr, w_ptr, scale_ptr, bias_ptr, mul_ptr, add_ptr, out, res_ptr,
                   op_ptr, ws_ptr, cnt_ptr, M, HP, WP, OH, OW, C_out, OWORDS, stride, CP, KTOT, OPH, OPW, OPAD, OPC,
                   KH, KW, HAS_SCALE, HAS_BIAS, HAS_AFFINE, BINARIZE, BLOCK_M, BLOCK_N, BLOCK_K, FP8, PRECISE_FP8,
                   HAS_RESIDUAL, STORE_OUT, OPERAND, OP_KSUM, OP_FP8, SWAP_AB, SPLIT_K, TMA_STORE)


@triton.jit
def _conv_tile(
    tile, part, x_ptr, w_ptr, scale_ptr, bias_ptr, mul_ptr, add_ptr, out, res_ptr, op_ptr, ws_ptr, cnt_ptr,
    M, HP, WP, OH, OW, C_out, OWORDS, stride, CP, KTOT, OPH, OPW, OPAD, OPC,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AFFINE: tl.constexpr, BINARIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FP8: tl.constexpr,
    PRECISE_FP8: tl.constexpr, HAS_RESIDUAL: tl.constexpr, STORE_OUT: tl.constexpr,
    OPERAND: tl.constexpr, OP_KSUM: tl.constexpr, OP_FP8: tl.constexpr,
    SWAP_AB: tl.constexpr, SPLIT_K: tl.constexpr, TMA_STORE: tl.constexpr,
):
    """Part ``part`` of the K-loop of output tile ``tile``, then (alone, or as the last part of a
    split-K tile) its epilogue: the body of ``unpacked_conv_kernel``."""
    num_n = (C_out + BLOCK_N - 1) // BLOCK_N
    pid_m = tile // num_n
    pid_n = tile - pid_m * num_n
    offs_m, offs_n, m_ok, n_ok, nb, oh, ow = _output_coords(pid_m, pid_n, M, C_out, OH, OW, BLOCK_M, BLOCK_N)
    # halo pixel of tap (0, 0); int64: N*HP*WP*CP may pass 2**31
    pix = (nb.to(tl.int64) * HP + oh * stride) * WP + ow * stride
    row = tl.multiple_of(tl.where(m_ok, pix * CP, 0), 16)
    offs_k = tl.arange(0, BLOCK_K)
    col = tl.minimum(offs_n, C_out - 1).to(tl.int64) * KTOT
    if SWAP_AB:  # W tile (BLOCK_N, BLOCK_K) and X tile (BLOCK_K, BLOCK_M), both K-contiguous
        a_ptrs = x_ptr + row[None, :] + offs_k[:, None]
        b_ptrs = w_ptr + col[:, None] + offs_k[None, :]
    else:  # X tile (BLOCK_M, BLOCK_K) and W tile (BLOCK_K, BLOCK_N)
        a_ptrs = x_ptr + row[:, None] + offs_k[None, :]
        b_ptrs = w_ptr + col[None, :] + offs_k[:, None]
    csteps = CP // BLOCK_K
    steps = KH * KW * csteps
    k_first = part * steps // SPLIT_K
    k_last = (part + 1) * steps // SPLIT_K
    ACC: tl.constexpr = tl.float32 if FP8 else tl.int32
    if SWAP_AB:
        acc = tl.full((BLOCK_N, BLOCK_M), 0, ACC)
    else:
        acc = tl.full((BLOCK_M, BLOCK_N), 0, ACC)
    for kk in range(k_first, k_last):
        tap = kk // csteps
        kh = tap // KW
        a_off = ((kh * WP + (tap - kh * KW)) * CP) + (kk - tap * csteps) * BLOCK_K
        a = tl.load(a_ptrs + tl.multiple_of(a_off, 16))
        b = tl.load(b_ptrs + kk * BLOCK_K)
        if SWAP_AB:
            a, b = b, a  # the weights are the MMA's left operand
        if FP8:
            if PRECISE_FP8:  # promote each K-step's partial sum into the fp32 accumulator
                acc = tl.dot(a, b, acc, out_dtype=tl.float32, max_num_imprecise_acc=BLOCK_K)
            else:
                acc = tl.dot(a, b, acc, out_dtype=tl.float32)
        else:
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
    if SWAP_AB:
        acc = tl.trans(acc)
    # epilogue on flat rows: the output is channels-last, pixel m's channels at m*C_out
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < C_out
    rows = offs_m.to(tl.int64)[:, None] * C_out + offs_n[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if SPLIT_K > 1:  # the sums are integers below 2**24, exact in int32 also from an fp32 accumulator
        sums = acc.to(tl.int32)
        tl.atomic_add(ws_ptr + rows, sums, mask=mask, sem="relaxed")
        tl.debug_barrier()  # every thread's partial sums are issued before the release below
        arrived = tl.atomic_add(cnt_ptr + tile, 1, sem="acq_rel")
        if arrived == SPLIT_K - 1:  # the last part: take the sum, leave zeros behind
            tl.debug_barrier()
            sums = tl.atomic_xchg(ws_ptr + rows, sums * 0, mask=mask, sem="relaxed")
            tl.atomic_xchg(cnt_ptr + tile, 0, sem="relaxed")
            _conv_epilogue(sums, offs_m, offs_n, m_ok, n_ok, rows, mask, pid_n, scale_ptr, bias_ptr, mul_ptr,
                           add_ptr, out, res_ptr, op_ptr, OH, OW, C_out, OWORDS, OPH, OPW, OPAD, OPC,
                           HAS_SCALE, HAS_BIAS, HAS_AFFINE, BINARIZE, HAS_RESIDUAL, STORE_OUT, OPERAND, OP_KSUM,
                           OP_FP8, TMA_STORE, pid_m, BLOCK_M, BLOCK_N)
    else:
        _conv_epilogue(acc, offs_m, offs_n, m_ok, n_ok, rows, mask, pid_n, scale_ptr, bias_ptr, mul_ptr,
                       add_ptr, out, res_ptr, op_ptr, OH, OW, C_out, OWORDS, OPH, OPW, OPAD, OPC,
                       HAS_SCALE, HAS_BIAS, HAS_AFFINE, BINARIZE, HAS_RESIDUAL, STORE_OUT, OPERAND, OP_KSUM,
                       OP_FP8, TMA_STORE, pid_m, BLOCK_M, BLOCK_N)


@triton.jit
def _conv_epilogue(acc, offs_m, offs_n, m_ok, n_ok, rows, mask, pid_n, scale_ptr, bias_ptr, mul_ptr, add_ptr,
                   out, res_ptr, op_ptr, OH, OW, C_out, OWORDS, OPH, OPW, OPAD, OPC,
                   HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AFFINE: tl.constexpr,
                   BINARIZE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, STORE_OUT: tl.constexpr,
                   OPERAND: tl.constexpr, OP_KSUM: tl.constexpr, OP_FP8: tl.constexpr, TMA_STORE: tl.constexpr,
                   pid_m, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """``unpacked_conv_kernel``'s epilogue on the ``(BLOCK_M, BLOCK_N)`` sums of one tile: the
    affine steps, the residual, then the real output (or its packed signs) and the next operand.
    ``out`` is the output pointer, or with ``TMA_STORE`` its 2-D tensor descriptor (the TMA unit
    drops the rows and columns past the tensor's edge)."""
    y = _affine(acc, offs_n, n_ok, scale_ptr, bias_ptr, mul_ptr, add_ptr, HAS_SCALE, HAS_BIAS, HAS_AFFINE)
    if HAS_RESIDUAL:
        y = y + tl.load(res_ptr + rows, mask=mask, other=0.0).to(tl.float32)
    if BINARIZE:
        _store_packed_signs(y, offs_m, offs_n, m_ok, n_ok, pid_n, out, OWORDS, BLOCK_M, BLOCK_N)
    elif STORE_OUT:
        if TMA_STORE:
            out.store([pid_m * BLOCK_M, pid_n * BLOCK_N], y.to(out.dtype))
        else:
            tl.store(out + rows, y.to(out.dtype.element_ty), mask=mask)
    if OPERAND:
        v = _operand_bytes(y, n_ok, OP_KSUM, OP_FP8, BLOCK_M, BLOCK_N)
        offs_c = pid_n * (BLOCK_N // OP_KSUM) + tl.arange(0, BLOCK_N // OP_KSUM)
        _store_operand(v, offs_m, offs_c, m_ok, op_ptr, OH, OW, C_out, OPH, OPW, OPAD, OPC, OP_KSUM)


@triton.jit(do_not_specialize=["M", "IH", "IW", "OH", "OW", "OWORDS", "stride", "pad", "XW"])
def packed_input_conv_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, mul_ptr, add_ptr, out_ptr,
    M, IH, IW, OH, OW, C_out, OWORDS, stride, pad, XW, KTOT,
    KH: tl.constexpr, KW: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_AFFINE: tl.constexpr, BINARIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """``path="mma_packed"``: the int8 implicit GEMM reading the packed activations ``(N, IH, IW, XW)``
    directly, with no unpacking pass before it. Each K-step loads one word (32 channels) per output
    pixel for one tap (masked to 0 outside the image: the zero padding) and expands its bits to
    int8 ±1 in registers before the MMA (wider K-steps need more registers than fit: 255 and
    spills at 128×64×64 with 4 warps); the padding bits past ``C_in`` decode as
    +1 and meet the weight matrix's zero columns. The weights are ``unpacked_conv_kernel``'s
    ``(C_out, KTOT)`` matrix. Meant for stride-2 layers, where the unpacking pass writes a full
    input-sized int8 tensor for a GEMM a quarter as long; the per-bit expansion costs ALU work in
    the K-loop instead (what made ``mma_regs`` slow), so it is measured against ``mma`` per layer
    (``benchmarks/gpu_conv_bench.py``), not chosen blindly. Same epilogue as ``unpacked_conv_kernel``.
    """
    pid = tl.program_id(0)
    num_n = (C_out + BLOCK_N - 1) // BLOCK_N
    pid_m = pid // num_n
    pid_n = pid - pid_m * num_n
    offs_m, offs_n, m_ok, n_ok, nb, oh, ow = _output_coords(pid_m, pid_n, M, C_out, OH, OW, BLOCK_M, BLOCK_N)
    ih0 = oh * stride - pad
    iw0 = ow * stride - pad
    image = nb * IH  # int32 word offsets (the launcher checks N·IH·IW·XW < 2**31): 64-bit ones cost
    lanes = tl.arange(0, 32)  # Triton 3.6 up to 255 registers and spills
    b_ptrs = w_ptr + tl.minimum(offs_n, C_out - 1).to(tl.int64)[None, :] * KTOT + lanes[:, None]
    acc = tl.full((BLOCK_M, BLOCK_N), 0, tl.int32)
    for kk in range(0, KH * KW * XW):  # KTOT = KH·KW·CP with CP = 32·XW: one word per K-step
        tap = kk // XW
        kh = tap // KW
        ih = ih0 + kh
        iw = iw0 + (tap - kh * KW)
        valid = m_ok & (ih >= 0) & (ih < IH) & (iw >= 0) & (iw < IW)
        word = tl.load(x_ptr + ((image + ih) * IW + iw) * XW + (kk - tap * XW), mask=valid, other=0)
        bits = (word[:, None] >> lanes[None, :]) & 1
        a = tl.where(valid[:, None], 1 - 2 * bits, 0).to(tl.int8)
        acc = tl.dot(a, tl.load(b_ptrs + kk * 32), acc, out_dtype=tl.int32)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < C_out
    rows = offs_m.to(tl.int64)[:, None] * C_out + offs_n[None, :]
    _conv_epilogue(acc, offs_m, offs_n, m_ok, n_ok, rows, m_ok[:, None] & n_ok[None, :], pid_n, scale_ptr, bias_ptr,
                   mul_ptr, add_ptr, out_ptr, out_ptr, out_ptr, OH, OW, C_out, OWORDS, 0, 0, 0, 32,
                   HAS_SCALE, HAS_BIAS, HAS_AFFINE, BINARIZE, False, True, False, 1, False, False, pid_m,
                   BLOCK_M, BLOCK_N)


# Autotuned launchers for the GPU (the interpreter uses one small fixed tile instead).
#
# int8 implicit GEMM (path "mma"): ptxas -v for sm_90a (Triton's PTX, enable_fp_fusion=False,
# fp32 store epilogue) — registers / spills / shared memory:
#   128x128x128 w8 s3: 115 regs, 0 spills, 96 KiB  -> 2 CTAs/SM
#   128x128x64  w8 s4: 122 regs, 0 spills, 64 KiB  -> 2 CTAs/SM
#   256x64x64   w8 s4: 114 regs, 0 spills, 80 KiB  -> 2 CTAs/SM
#   128x64x64   w4 s4: 118 regs, 0 spills, 48 KiB  -> 4 CTAs/SM
#   64x128x64   w4 s4: 152 regs, 0 spills, 48 KiB  -> 3 CTAs/SM
#   64x64x64    w4 s4:  64 regs, 0 spills, 32 KiB  (small grids: batch 1)
# BLOCK_K = 32, only for CP not a multiple of 64 (the K-sum form over 32, 96, ... maps), int8 and
# fp8 alike: 128x128x32 w8 s4 113 regs; 128x64x32 w4 s4 96; 64x64x32 w4 s4 64; no spills.
# Dropped: 128x128 w4, 128x256 w8, 256x128 w8 (207-255 regs, spills at 255). Triton issues the
# int8 wgmma with a wait of 0 after each K-step (it keeps only float wgmma in flight across
# iterations), so latency is hidden by 2-4 resident CTAs per SM, not within one CTA.
# Swapped operands (SWAP_AB, for C_out <= 64; wgmma m64n128 for int8, m64n256 for fp8 at 256x64
# with 4 warps): 93-112 regs for the four swapped tiles (int8 and fp8), no spills.
# Split-K (SPLIT_K, small M): 64x64x64 / 64x64x32 w4 s4: 127-138 regs (the epilogue is compiled
# into the last-arrival branch), no spills.
# Persistent with TMA store (fp16 out): 128x128x64 w8: 128 regs (171 without the TMA store, hence
# always both); 128x64x64 w4: 118; 256x64x64 w8 swapped: 120; no spills.


def _tile(m, n, k, warps, stages, **variant):
    return triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, **variant}, num_warps=warps, num_stages=stages)


I8_CONFIGS = [
    _tile(128, 128, 128, 8, 3), _tile(128, 128, 64, 8, 4), _tile(256, 64, 64, 8, 4), _tile(128, 64, 64, 4, 4),
    _tile(64, 128, 64, 4, 4), _tile(64, 64, 64, 4, 4),
    _tile(128, 128, 32, 8, 4), _tile(128, 64, 32, 4, 4), _tile(64, 64, 32, 4, 4),
    # pixels on the MMA's wide side (C_out <= 64)
    _tile(256, 64, 64, 8, 4, SWAP_AB=True), _tile(128, 64, 64, 4, 4, SWAP_AB=True),
    _tile(256, 64, 32, 8, 4, SWAP_AB=True), _tile(128, 64, 32, 4, 4, SWAP_AB=True),
    # split-K (fewer tiles than SMs)
    *[_tile(64, 64, k, 4, 4, SPLIT_K=split) for k in (64, 32) for split in (2, 4, 8, 16)],
    # persistent grids with TMA-store epilogues (>= 2 waves of tiles, real outputs)
    _tile(128, 128, 64, 8, 4, PERSISTENT=True, TMA_STORE=True), _tile(128, 64, 64, 4, 4, PERSISTENT=True, TMA_STORE=True),
    _tile(256, 64, 64, 8, 4, SWAP_AB=True, PERSISTENT=True, TMA_STORE=True),
    _tile(128, 64, 32, 4, 4, PERSISTENT=True, TMA_STORE=True),
    _tile(256, 64, 32, 8, 4, SWAP_AB=True, PERSISTENT=True, TMA_STORE=True),
]
I8_CHANNEL_MULTIPLE = 32  # CP = C_in rounded up to a multiple of 32: BLOCK_K 32 always divides it
# split-K launches add into one int32 workspace per device (``conv.split_k_workspace``): at most this
# many output sums (batch-1 layers: ResNet18's largest is 56·56·64 = 200,704) and tiles
SPLIT_K_MAX_SUMS = 1 << 20
SPLIT_K_MAX_TILES = 4096


PERSISTENT_PROGRAMS_PER_SM = 2  # persistent grids: programs per SM (two CTAs of <= 128 registers fit)


def tma_store_allowed(store_out, binarize, C_out, element_size):
    """Whether a launch's real output can leave through TMA stores: a real output (not packed
    signs) whose rows (``C_out`` values) are a multiple of 16 bytes, as TMA strides must be."""
    return bool(store_out) and not binarize and (C_out * element_size) % 16 == 0


def may_split_k(M, C_out, tiles=0):
    """Whether a launch of ``M`` pixels × ``C_out`` channels (in ``tiles`` tiles) fits the split-K
    workspace."""
    return M * C_out <= SPLIT_K_MAX_SUMS and tiles <= SPLIT_K_MAX_TILES


def select_i8_configs(configs, CP, C_out, M, taps, sms, tma=True):
    """The autotuner's candidates for one GEMM shape (``taps`` = KH·KW, ``sms`` = the GPU's SMs,
    ``tma``: whether the launch's output allows TMA stores, ``tma_store_allowed``):

    - tiles whose BLOCK_K divides CP (each K-step is BLOCK_K channels of one tap; 32 only where 64
      does not divide it) and whose BLOCK_N is at
      most one tile past C_out; swapped tiles only for C_out <= 64; TMA-store tiles only with ``tma``;
    - of those, the large tiles with ≥ 2 waves of programs (persistent ones included), else the
      two smallest plain tiles;
    - when even those leave SMs idle (< 1 wave) and the sums fit the workspace, the split-K tiles
      whose parts keep ≥ 2 K-steps each and make at most 4 waves."""
    def kw(c, name, default=None):
        return c.kwargs.get(name, default)

    def tiles(c):
        return ((M + kw(c, "BLOCK_M") - 1) // kw(c, "BLOCK_M")) * ((C_out + kw(c, "BLOCK_N") - 1) // kw(c, "BLOCK_N"))

    block_k = tuple(b for b in (64, 128) if CP % b == 0) or (32,)
    fit = [c for c in configs if kw(c, "BLOCK_K") in block_k and kw(c, "BLOCK_N") <= max(64, C_out)
           and (C_out <= 64 or not kw(c, "SWAP_AB", False)) and (tma or not kw(c, "TMA_STORE", False))]
    plain = [c for c in fit if kw(c, "SPLIT_K", 1) == 1]
    split = [c for c in fit if kw(c, "SPLIT_K", 1) > 1]
    chosen = [c for c in plain if kw(c, "BLOCK_M") * kw(c, "BLOCK_N") > 64 * 64 and tiles(c) >= 2 * sms]
    if not chosen:
        chosen = [c for c in plain if not (kw(c, "SWAP_AB", False) or kw(c, "PERSISTENT", False))][-2:]
    if min((tiles(c) for c in chosen), default=sms) < sms:
        steps = taps * CP // block_k[0]
        chosen += [c for c in split if may_split_k(M, C_out, tiles(c)) and steps >= 2 * kw(c, "SPLIT_K")
                   and tiles(c) * kw(c, "SPLIT_K") <= 4 * sms]
    return chosen or plain[-1:]


_SMS: dict = {}


def sm_count(device=None):
    """Streaming multiprocessors of a CUDA device (default: the current one; 132 on an H100 SXM /
    H200; asked once per device), 1 for the CPU, where the interpreter runs a persistent kernel's
    loop with a small grid."""
    import torch

    device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
    if device.type != "cuda":
        return 1
    if device not in _SMS:
        _SMS[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return _SMS[device]


def _prune_i8(configs, named_args, **kwargs):
    """``select_i8_configs`` for one launch."""
    C_out = named_args["C_out"]
    tma = tma_store_allowed(kwargs.get("STORE_OUT", True), kwargs.get("BINARIZE", False), C_out,
                            named_args["out_ptr"].element_size())
    return select_i8_configs(configs, named_args["CP"], C_out, named_args["M"],
                             kwargs.get("KH", 3) * kwargs.get("KW", 3), sm_count(), tma)


# first version of the tensor-core path (path "mma_regs"): unpacking in registers in the K-loop
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
# path "mma_packed" (packed activations read by the GEMM, one word per K-step), ptxas -v for sm_90a,
# Triton 3.6 (the device image) / 3.9: 128x128 w8 189 / 181 regs, 128x64 w8 163 / 139, 64x128 w4
# 192 / 170, 64x64 w4 142 / 128; no spills. (With 64-bit word offsets Triton 3.6 needed 214-255
# registers and spilled the 128-wide tiles, hence the int32 offsets.)
PACKED_INPUT_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
]


def _prune_packed_input(configs, named_args, **kwargs):
    """At most one BLOCK_N past C_out."""
    return [c for c in configs if c.kwargs["BLOCK_N"] <= max(64, named_args["C_out"])]


_FLAGS = ["KH", "KW", "HAS_SCALE", "HAS_BIAS", "HAS_AFFINE", "BINARIZE"]
_KEY = ["M", "C_out", "XW", "OH", "OW"] + _FLAGS
_FUSED_FLAGS = ["HAS_RESIDUAL", "STORE_OUT", "OPERAND", "OP_KSUM", "OP_FP8"]
_KEY_I8 = ["M", "C_out", "CP", "OH", "OW", "stride", "FP8", "PRECISE_FP8"] + _FLAGS + _FUSED_FLAGS


def _quick_bench(kernel_call, quantiles):
    """Autotuning benchmark: 2 ms warm-up, 10 ms of repetitions (Triton's default is 25/100). Ranking
    tiles needs few calls (at least 10 of any kernel up to 1 ms), and a whole network autotunes
    hundreds of (shape, tile) pairs, each benchmark flushing the L2 before every call."""
    return triton.testing.do_bench(kernel_call, warmup=2, rep=10, quantiles=quantiles)


def _autotune(configs, key, **extra):
    try:
        return triton.autotune(configs=configs, key=key, do_bench=_quick_bench, **extra)
    except TypeError:  # a Triton without the do_bench argument
        return triton.autotune(configs=configs, key=key, **extra)


if not INTERPRET:
    import triton.testing  # noqa: E402

    unpacked_conv_tuned = _autotune(I8_CONFIGS, _KEY_I8, prune_configs_by={"early_config_prune": _prune_i8})(
        unpacked_conv_kernel)
    packed_input_conv_tuned = _autotune(PACKED_INPUT_CONFIGS, ["M", "C_out", "XW", "OH", "OW", "stride"] + _FLAGS,
                                        prune_configs_by={"early_config_prune": _prune_packed_input})(
        packed_input_conv_kernel)
    packed_conv_mma_tuned = _autotune(MMA_CONFIGS, _KEY)(packed_conv_mma_kernel)
    packed_conv_popcount_tuned = _autotune(POPCOUNT_CONFIGS, _KEY)(packed_conv_popcount_kernel)
