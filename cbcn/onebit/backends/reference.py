"""The 1-bit operations in plain PyTorch: the reference backend, and the oracle of the others.

``pack_signs`` / ``unpack_signs`` implement the packing format of ``cbcn.onebit.backends.contract``;
``packed_conv2d_reference`` is ``F.conv2d`` on the unpacked ±1 operands followed by the
``Epilogue`` (``cbcn.onebit.backends.epilogue``); ``cif_pack_bank_reference`` expands a CBConv's bank.
A bit is set exactly where ``cbcn.nn.binarize.sign`` gives −1 (``not x >= 0``, so NaN packs as −1,
as ``sign`` maps it), which keeps the packed path bit-identical to the float training path.

The CPU engine (``cbcn.onebit.backends.cpu``) and the Triton kernels (``triton_kernels``) have the same
signatures and are tested bit-identical to these functions. This module imports no Triton.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from cbcn.memo import constant_tensor
from cbcn.onebit.backends.contract import WORD_BITS, check_cif_weight, check_conv_args, check_packed, num_words
from cbcn.onebit.backends.epilogue import Epilogue, legacy_epilogue

_BYTE_WEIGHTS: dict = {}  # device -> the uint8 weights 1, 2, ..., 128 of a byte's bits
_SIGN_TABLES: dict = {}  # (dtype, device) -> (256, 8) table: the ±1 of each bit of each byte value


def _byte_weights(device) -> torch.Tensor:
    return constant_tensor(_BYTE_WEIGHTS, str(device), lambda: (2 ** torch.arange(8)).to(dtype=torch.uint8, device=device))


def _words_from_bytes(b: torch.Tensor) -> torch.Tensor:
    """``(..., 4·W)`` uint8, little-endian per word -> ``(..., W)`` int32 (the same bits)."""
    if sys.byteorder != "little":
        b = b.reshape(*b.shape[:-1], -1, 4).flip(-1).reshape(b.shape)
    return b.contiguous().view(torch.int32)


def _bytes_from_words(words: torch.Tensor) -> torch.Tensor:
    """``(..., W)`` int32 -> ``(..., 4·W)`` uint8, little-endian per word."""
    b = words.contiguous().view(torch.uint8)
    if sys.byteorder != "little":
        b = b.reshape(*b.shape[:-1], -1, 4).flip(-1).reshape(b.shape)
    return b


def _sign_table(dtype: torch.dtype, device) -> torch.Tensor:
    def make():
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        return (1 - 2 * bits).to(dtype=dtype, device=device)

    return constant_tensor(_SIGN_TABLES, (dtype, str(device)), make)


def pack_signs(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, *S) -> (N, *S, ceil(C/32))`` int32: bit ``c % 32`` of word ``c // 32`` is set iff ``x[:, c] < 0``.

    Works for activations ``(N, C, H, W)`` and weights ``(C_out, C_in, KH, KW)`` alike (dim 1 is packed).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"pack_signs expects a torch.Tensor, got {type(x).__name__}")
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)):
        raise TypeError(f"pack_signs expects a floating or signed integer tensor, got {x.dtype}")
    if x.dim() < 2:
        raise ValueError(f"pack_signs packs dim 1 of an (N, C, ...) tensor, got shape {tuple(x.shape)}")
    C = x.shape[1]
    W = num_words(C)
    neg = ~(x >= 0)  # bit set <=> sign(x) == -1 (sign(0) = +1)
    if W * WORD_BITS != C:
        neg = F.pad(neg.movedim(1, -1), (0, W * WORD_BITS - C)).movedim(-1, 1)
    # 8 channels per byte (bit i of byte j = channel 8j + i), 4 bytes per little-endian word
    neg = neg.movedim(1, -1).reshape(*x.shape[:1], *x.shape[2:], W * 4, 8).to(torch.uint8)
    return _words_from_bytes((neg * _byte_weights(x.device)).sum(dim=-1, dtype=torch.uint8))


def unpack_signs(packed: torch.Tensor, channels: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of ``pack_signs``: ``(N, *S, W) -> (N, channels, *S)`` of ±1 in ``dtype``."""
    check_packed(packed, "packed")
    if packed.dim() < 2:
        raise ValueError(f"packed tensor must be (N, ..., words), got shape {tuple(packed.shape)}")
    if not isinstance(channels, int) or channels < 1 or num_words(channels) != packed.shape[-1]:
        raise ValueError(
            f"channels={channels!r} does not match {packed.shape[-1]} packed words "
            f"(needs ceil(channels/32) == words)"
        )
    # each byte value looked up in a (256, 8) table of ±1: one gather instead of shifts and masks
    b = _bytes_from_words(packed)
    signs = _sign_table(dtype, packed.device).index_select(0, b.reshape(-1).to(torch.int64))
    signs = signs.reshape(*packed.shape[:-1], packed.shape[-1] * WORD_BITS)[..., :channels]
    return signs.movedim(-1, 1).contiguous()


def conv_sums_reference(x_packed, w_packed, in_channels: int, stride: int = 1, padding: int = 0, ksum: int = 1):
    """The exact integer sums of a packed binary convolution, as float32 ``(N, C_out, OH, OW)``:
    ``F.conv2d`` on the unpacked ±1 operands, zero-padded (not −1). Exact in float32
    (|sums| ≤ C_in·KH·KW < 2^24).

    ``ksum = K`` is CBConv's K-sum form (SPEC §2): the full CiF bank repeats each rotated filter
    over the K channels ``c·K + k`` of input map ``c``, so ``w_packed`` may hold only the rotated
    bank over the ``in_channels // K`` maps (``cif_pack_bank_reference(..., ksum=True)``) and the
    activations' K channels of each map are summed first — the same integers with K× fewer
    multiply-adds (the training layer computes it this way too)."""
    x = unpack_signs(x_packed, in_channels)
    if ksum > 1:
        N, _, H, W = x.shape
        x = x.reshape(N, in_channels // ksum, ksum, H, W).sum(dim=2)
    w = unpack_signs(w_packed, in_channels // ksum)
    return F.conv2d(x, w, None, stride, padding)


def fused_conv2d_reference(x_packed, w_packed, in_channels: int, stride: int = 1, padding: int = 0,
                           epilogue: Epilogue = Epilogue(), ksum: int = 1, memory_format=torch.contiguous_format,
                           path: str | None = None):
    """A binary conv and its whole ``Epilogue``: returns ``(real, packed)`` (``None`` where the
    epilogue does not ask for it), the real output in ``memory_format``. ``path`` (the layer's GEMM path, which picks a Triton kernel) does not change the integers, so it is not used here."""
    check_conv_args(x_packed, w_packed, in_channels, stride, padding, None, None, None, None, ksum)
    epilogue.check(w_packed.shape[0], x_packed.device)
    y = epilogue.apply(conv_sums_reference(x_packed, w_packed, in_channels, stride, padding, ksum))
    real, packed = epilogue.outputs(y, pack_signs)
    return (None if real is None else real.contiguous(memory_format=memory_format)), packed


def run_epilogue(x: torch.Tensor, epilogue: Epilogue, memory_format=torch.contiguous_format):
    """``epilogue`` applied to the values of a float tensor ``x`` (N, C, H, W) instead of conv
    sums (e.g. a full-precision layer's output on its way to the first binary conv):
    ``(real, packed)``."""
    epilogue.check(x.shape[1], x.device)
    real, packed = epilogue.outputs(epilogue.apply(x), pack_signs)
    return (None if real is None else real.contiguous(memory_format=memory_format)), packed


def packed_conv2d_reference(
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
    ksum: int = 1,
    path: str | None = None,
) -> torch.Tensor:
    """Binary convolution of packed operands with the keyword epilogue (``legacy_epilogue``):
    ``conv · scale + bias``, then the folded batch-norm ``· bn_scale + bn_shift``.

    Returns ``(N, C_out, OH, OW)`` in ``out_dtype``, or with ``binarize_output`` the packed signs
    of the result ``(N, OH, OW, ceil(C_out/32))``. ``ksum``: see ``conv_sums_reference``.
    Extra keywords of the Triton version (``path``, ...) are accepted and ignored.
    """
    check_conv_args(x_packed, w_packed, in_channels, stride, padding, scale, bias, bn_scale, bn_shift, ksum)
    epilogue = legacy_epilogue(scale, bias, bn_scale, bn_shift, binarize_output, out_dtype)
    real, packed = fused_conv2d_reference(x_packed, w_packed, in_channels, stride, padding, epilogue, ksum)
    return packed if binarize_output else real


def cif_pack_bank_reference(W: torch.Tensor, K: int, in_channels: int | None = None, ksum: bool = False) -> torch.Tensor:
    """Packed CiF bank ``(C_out*K, H, H, ceil(C_in*K/32))`` = ``pack_signs(cif_expand(sign(W), K))``,
    or with ``ksum`` the K-sum bank ``(C_out*K, H, H, ceil(C_in/32))`` =
    ``pack_signs(rotated_bank(sign(W), K))`` (the K identical input copies folded away; for
    ``packed_conv2d_reference(..., ksum=K)``).

    ``W`` is the learned ``(C_out, C_in, H, H)`` float weight, or its packed signs
    ``(C_out, H, H, ceil(C_in/32))`` with ``in_channels = C_in`` (what a 1-bit model stores).
    """
    from cbcn.nn.binarize import sign
    from cbcn.nn.cif import cif_expand, rotated_bank

    C_in, _ = check_cif_weight(W, K, in_channels)
    signs = unpack_signs(W, C_in) if W.dtype == torch.int32 else sign(W)
    return pack_signs(rotated_bank(signs, K) if ksum else cif_expand(signs, K))
