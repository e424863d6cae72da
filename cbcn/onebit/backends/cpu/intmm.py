"""The CPU engine's pure-PyTorch integer path: int8 im2col and ``torch._int_mm``.

Used where the native kernels cannot be built (no C compiler): the packed signs are unpacked to
int8 ±1 NHWC (or, in CBConv's K-sum form, to the per-map sums in [−K, K]), laid out as an
im2col matrix with the zero padding as 0, and multiplied by the int8 weight matrix with
``torch._int_mm`` (int32 accumulators; VNNI / AMX through oneDNN where the CPU has them). The sums
are exact integers, so the result equals ``cbcn.onebit.backends.reference.conv_sums_reference``.
"""
from __future__ import annotations

import functools
import time

import torch
import torch.nn.functional as F

from cbcn.onebit.backends.contract import WORD_BITS
from cbcn.onebit.backends.reference import _bytes_from_words

_INT8_SIGNS: dict = {}  # (256, 8) int8 table: the ±1 of each bit of each byte value


def _sign_table_int8() -> torch.Tensor:
    if "t" not in _INT8_SIGNS:
        with torch.inference_mode(False):  # a normal tensor, whatever mode asks first
            bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
            _INT8_SIGNS["t"] = (1 - 2 * bits).to(torch.int8)
    return _INT8_SIGNS["t"]


@functools.lru_cache(maxsize=None)
def available() -> bool:
    """Whether ``torch._int_mm`` exists and is exact on CPU tensors here."""
    if not hasattr(torch, "_int_mm"):
        return False
    try:
        a = torch.tensor([[1, -1] * 4] * 17, dtype=torch.int8)
        b = torch.tensor([[1] * 8] * 8, dtype=torch.int8)
        return bool(torch.equal(torch._int_mm(a, b), torch.zeros(17, 8, dtype=torch.int32)))
    except (RuntimeError, NotImplementedError, TypeError):
        return False


@functools.lru_cache(maxsize=None)
def speed_vs_float() -> tuple[float, float]:
    """GMAC/s of ``torch._int_mm`` and of an fp32 ``torch.mm`` on the same product — one binary
    layer's im2col GEMM, 512 × 576 × 64 — best of three each, on the current threads. Without
    VNNI or AMX, oneDNN's int8 path is far slower than fp32 (0.8–1.5 against 24–36 GMAC/s on an AVX2
    EPYC), and the engine must not pick it there."""
    M, K, N = 512, 576, 64
    g = torch.Generator().manual_seed(0)
    a8, b8 = torch.randint(-1, 2, (M, K), generator=g, dtype=torch.int8), torch.randint(-1, 2, (K, N), generator=g,
                                                                                            dtype=torch.int8)
    a, b = a8.float(), b8.float()
    rates = []
    for fn in (lambda: torch._int_mm(a8, b8), lambda: torch.mm(a, b)):
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        rates.append(M * K * N / best / 1e9)
    return rates[0], rates[1]


def slow_reason() -> str | None:
    """Why the ``intmm`` path is not worth taking here (``None`` if ``torch._int_mm`` is at least
    as fast as fp32)."""
    int8, fp32 = speed_vs_float()
    if int8 >= fp32:
        return None
    return f"torch._int_mm runs at {int8:.1f} GMAC/s here against {fp32:.1f} for fp32 (no VNNI/AMX int8 path)"


def unpack_int8_nhwc(packed: torch.Tensor, channels: int, ksum: int = 1) -> torch.Tensor:
    """``(N, H, W, words)`` -> ``(N, H, W, channels // ksum)`` int8: ±1, or the sums of each
    group of ``ksum`` consecutive channels' signs."""
    b = _bytes_from_words(packed)
    signs = _sign_table_int8().index_select(0, b.reshape(-1).to(torch.int64))
    signs = signs.reshape(*packed.shape[:-1], packed.shape[-1] * WORD_BITS)[..., :channels]
    if ksum > 1:
        signs = signs.reshape(*signs.shape[:-1], channels // ksum, ksum).sum(dim=-1, dtype=torch.int8)
    return signs


def conv_sums_intmm(x_packed, w_packed, in_channels: int, stride: int, padding: int, ksum: int = 1) -> torch.Tensor:
    """Exact conv sums as float32 ``(N, C_out, OH, OW)`` (channels-last memory)."""
    maps = in_channels // ksum
    x = unpack_int8_nhwc(x_packed, in_channels, ksum)  # (N, H, W, maps)
    if padding:
        x = F.pad(x, (0, 0, padding, padding, padding, padding))
    C_out, KH, KW, _ = w_packed.shape
    N = x.shape[0]
    cols = x.unfold(1, KH, stride).unfold(2, KW, stride)  # (N, OH, OW, maps, KH, KW)
    OH, OW = cols.shape[1], cols.shape[2]
    A = cols.permute(0, 1, 2, 4, 5, 3).reshape(N * OH * OW, KH * KW * maps)
    B = unpack_int8_nhwc(w_packed, maps).reshape(C_out, KH * KW * maps).t()
    sums = torch._int_mm(A, B.contiguous())  # (N·OH·OW, C_out) int32
    return sums.to(torch.float32).view(N, OH, OW, C_out).permute(0, 3, 1, 2)
