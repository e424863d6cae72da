"""Device code: fused CiF expansion to the packed filter bank, float expansion, Eq. 8 backward.

Bank convention (SPEC §2): ``G[h*K + j, g*K + k] = rot_j(W[h, g])`` for every ``k``, with
``rot_j(w).flatten()[t] = w.flatten()[M[j, t]]`` (``M = cbcn.nn.cif.transfer_matrix``).
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
def cif_pack_bank_kernel(
    w_ptr, m_ptr, out_ptr,
    C_in, HH, IN_WORDS, OUT_WORDS,
    K: tl.constexpr, COPIES: tl.constexpr, FROM_PACKED: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """W ``(C_out, C_in, H, H)`` float — or its packed signs ``(C_out, H, H, IN_WORDS)`` — to the
    packed bank ``(C_out*K, H, H, OUT_WORDS)``: one program per (bank row, block of taps × words).
    ``COPIES`` input copies per learned map: K for the CiF bank, 1 for the K-sum bank."""
    o = tl.program_id(0)
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    pid_w = tl.program_id(2)
    h = o // K
    j = o % K
    t_ok = t < HH
    src = tl.load(m_ptr + j * HH + t, mask=t_ok, other=0)  # tap of W landing on tap t after rotation j
    words = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    lanes = tl.arange(0, 32)
    c = words[:, None] * 32 + lanes[None, :]  # bank input channel g*COPIES + k, (BLOCK_W, 32)
    ok = t_ok[:, None, None] & (c < C_in * COPIES)[None, :, :]
    g = (c // COPIES)[None, :, :]
    if FROM_PACKED:
        wd = tl.load(w_ptr + (h * HH + src[:, None, None]) * IN_WORDS + g // 32, mask=ok, other=0)
        neg = (wd >> (g % 32)) & 1
    else:
        v = tl.load(w_ptr + (h * C_in + g) * HH + src[:, None, None], mask=ok, other=0.0)
        neg = tl.where(v >= 0, 0, 1)
    neg = tl.where(ok, neg, 0).to(tl.uint32)
    word = tl.reduce(neg << lanes[None, None, :].to(tl.uint32), 2, _sum_combine)  # (BLOCK_T, BLOCK_W)
    ptrs = out_ptr + (o * HH + t[:, None]) * OUT_WORDS + words[None, :]
    tl.store(ptrs, word.to(tl.int32, bitcast=True), mask=t_ok[:, None] & (words < OUT_WORDS)[None, :])


@triton.jit
def cif_expand_kernel(w_ptr, m_ptr, out_ptr, C_in, HH, TOTAL, K: tl.constexpr, BLOCK: tl.constexpr):
    """Float CiF ``(C_out, C_in, H, H) -> (C_out*K, C_in*K, H, H)`` (a gather); grid (C_out*K, blocks)."""
    o = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # over C_in*K*HH of bank row o
    ok = offs < TOTAL
    c = offs // HH
    t = offs % HH
    h = o // K
    j = o % K
    src = tl.load(m_ptr + j * HH + t, mask=ok, other=0)
    v = tl.load(w_ptr + (h * C_in + c // K) * HH + src, mask=ok, other=0.0)
    tl.store(out_ptr + o.to(tl.int64) * TOTAL + offs, v, mask=ok)


@triton.jit
def cif_backward_kernel(g_ptr, p_ptr, out_ptr, C_in, HH, TOTAL, K: tl.constexpr, BLOCK: tl.constexpr):
    """Eq. 8: ``dW[h, g, q] = sum_j sum_k dG[h*K+j, g*K+k, P[j, q]]``; grid (C_out, blocks over C_in*HH).

    Summation order as ``cbcn.nn.cif.cif_backward``: over k first, then j = 0..K-1 onto 0.
    """
    h = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < TOTAL
    g = offs // HH
    q = offs % HH
    acc = tl.full((BLOCK,), 0.0, tl.float32)
    for j in tl.static_range(K):
        p = tl.load(p_ptr + j * HH + q, mask=ok, other=0)
        row = (h * K + j).to(tl.int64) * (C_in * K)
        s = tl.load(g_ptr + (row + g * K) * HH + p, mask=ok, other=0.0).to(tl.float32)
        for k in tl.static_range(1, K):
            s += tl.load(g_ptr + (row + g * K + k) * HH + p, mask=ok, other=0.0).to(tl.float32)
        acc += s
    tl.store(out_ptr + h.to(tl.int64) * TOTAL + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)
