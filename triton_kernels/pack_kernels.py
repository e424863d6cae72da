"""Device code: pack signs into 32-bit words along channels, and unpack (see ``pack.py``).

Loaded by ``_runtime.load`` in compiled and interpreted mode; plain ops only, so the interpreter
runs it. Word bit ``b`` of word ``w`` is channel ``32 w + b``; set iff the value is not ``>= 0``.
"""
import triton
import triton.language as tl

INTERPRET = globals().get("INTERPRET", False)  # set by _runtime.load before this module runs

# Triton's own tl.sum is a @jit function built in whatever mode Triton was first imported in;
# a reduction with a combine function of this module's mode works in both. The interpreter
# recognises tl.standard._sum_combine and reduces with numpy (its generic reduce is per element).
if INTERPRET:
    _sum_combine = tl.standard._sum_combine
else:

    @triton.jit
    def _sum_combine(a, b):
        return a + b


@triton.jit
def pack_signs_kernel(
    x_ptr, out_ptr,
    C, P, WORDS,
    stride_n, stride_c, stride_p,
    BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """x viewed as (N, C, P) with strides -> out (N, P, WORDS) contiguous int32."""
    pid_p = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    pid_w = tl.program_id(2)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    words = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    lanes = tl.arange(0, 32)
    c = words[:, None] * 32 + lanes[None, :]  # (BW, 32)
    p_ok = offs_p < P
    mask = p_ok[:, None, None] & (c < C)[None, :, :]
    ptrs = x_ptr + n * stride_n + c[None, :, :].to(tl.int64) * stride_c + offs_p[:, None, None].to(tl.int64) * stride_p
    v = tl.load(ptrs, mask=mask, other=0)
    neg = tl.where(v >= 0, 0, 1)
    neg = tl.where(mask, neg, 0).to(tl.uint32)
    bits = neg << lanes[None, None, :].to(tl.uint32)
    word = tl.reduce(bits, 2, _sum_combine)  # distinct bits: the sum is the OR
    out = out_ptr + (n * P + offs_p[:, None].to(tl.int64)) * WORDS + words[None, :]
    tl.store(out, word.to(tl.int32, bitcast=True), mask=p_ok[:, None] & (words < WORDS)[None, :])


@triton.jit
def unpack_signs_kernel(
    packed_ptr, out_ptr,
    C, P, WORDS,
    stride_n, stride_c, stride_p,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """packed (N, P, WORDS) int32 -> out viewed as (N, C, P) with strides, ±1."""
    pid_p = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    pid_c = tl.program_id(2)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (offs_p < P)[:, None] & (c < C)[None, :]
    words = tl.load(packed_ptr + (n * P + offs_p[:, None].to(tl.int64)) * WORDS + c[None, :] // 32, mask=mask, other=0)
    bit = (words >> (c[None, :] % 32)) & 1
    val = 1 - 2 * bit
    ptrs = out_ptr + n * stride_n + c[None, :].to(tl.int64) * stride_c + offs_p[:, None].to(tl.int64) * stride_p
    tl.store(ptrs, val.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def interpreter_probe_kernel(out_ptr, n):
    """Stores ``n`` counted by a loop with a runtime bound, as the convolution K-loops are built;
    ``_runtime.interpreter_problem`` runs it once to check that this Triton's interpreter can."""
    count = tl.full((1,), 0, tl.int32)
    for _ in range(0, n):
        count += 1
    tl.store(out_ptr + tl.arange(0, 1), count)
