"""Bit-packing of signs with Triton; same signatures and results as ``cbcn.onebit.backends.reference``."""
from __future__ import annotations

import torch

from cbcn.onebit.backends.contract import \
    num_words  # the reference: cbcn.onebit.backends.reference.pack_signs / unpack_signs

from ._runtime import kernels_for


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _launch_pack(x3: torch.Tensor, out: torch.Tensor) -> None:
    N, C, P = x3.shape
    W = out.shape[-1]
    k = kernels_for("pack_kernels", x3)
    BLOCK_P, BLOCK_W = (64, 1) if k.INTERPRET else (128, 1)
    grid = (triton_cdiv(P, BLOCK_P), N, triton_cdiv(W, BLOCK_W))
    k.pack_signs_kernel[grid](
        x3, out, C, P, W, x3.stride(0), x3.stride(1), x3.stride(2), BLOCK_P=BLOCK_P, BLOCK_W=BLOCK_W
    )


def pack_signs(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, *S) -> (N, *S, ceil(C/32))`` int32 packed signs (see ``cbcn.onebit.backends.reference.pack_signs``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"pack_signs expects a torch.Tensor, got {type(x).__name__}")
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"pack_signs expects a floating or signed integer tensor, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"pack_signs packs dim 1 of an (N, C, ...) tensor, got shape {tuple(x.shape)}")
    N, C = x.shape[:2]
    spatial = tuple(x.shape[2:])
    out = torch.empty((N, *spatial, num_words(C)), dtype=torch.int32, device=x.device)
    if out.numel() == 0:
        return out
    _launch_pack(x.reshape(N, C, -1), out.view(N, -1, num_words(C)))
    return out


def unpack_signs(packed: torch.Tensor, channels: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of ``pack_signs``: ``(N, *S, W) -> (N, channels, *S)`` of ±1 in ``dtype``."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.int32:
        raise TypeError(f"packed must be a torch.int32 tensor, got {getattr(packed, 'dtype', type(packed))}")
    if packed.dim() < 2:
        raise ValueError(f"packed tensor must be (N, ..., words), got shape {tuple(packed.shape)}")
    if not isinstance(channels, int) or channels < 1 or num_words(channels) != packed.shape[-1]:
        raise ValueError(
            f"channels={channels!r} does not match {packed.shape[-1]} packed words (needs ceil(channels/32) == words)"
        )
    N, W = packed.shape[0], packed.shape[-1]
    spatial = tuple(packed.shape[1:-1])
    k = kernels_for("pack_kernels", packed)
    if k.INTERPRET and dtype == torch.bfloat16:  # the interpreter (numpy) has no bfloat16: ±1 is exact in fp32
        return unpack_signs(packed, channels, torch.float32).to(dtype)
    out = torch.empty((N, channels, *spatial), dtype=dtype, device=packed.device)
    if out.numel() == 0:
        return out
    p3 = packed.contiguous().view(N, -1, W)
    o3 = out.view(N, channels, -1)
    P = p3.shape[1]
    BLOCK_P, BLOCK_C = (64, 32) if k.INTERPRET else (64, 64)
    grid = (triton_cdiv(P, BLOCK_P), N, triton_cdiv(channels, BLOCK_C))
    k.unpack_signs_kernel[grid](
        p3, o3, channels, P, W, o3.stride(0), o3.stride(1), o3.stride(2), BLOCK_P=BLOCK_P, BLOCK_C=BLOCK_C
    )
    return out
