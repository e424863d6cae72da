"""Bit-packing of signs and the packed binary convolution — the pure-PyTorch reference path.

Packing convention (docs/CONTRACTS.md): a bit is set where the value is negative, so that
``sign(0) = +1`` packs as 0; 32 channels go into one int32 word, channel ``c`` in word ``c // 32``
at bit ``c % 32``; channels are moved last, so activations ``(N, C, H, W)`` pack NHWC into
``(N, H, W, ceil(C/32))`` and weights ``(C_out, C_in, KH, KW)`` into ``(C_out, KH, KW, ceil(C_in/32))``.
Padding bits of the last word are 0.

A bit is set exactly where ``cbcn.binarize.sign`` gives −1 (``not x >= 0``, so NaN packs as −1,
as ``sign`` maps it), which keeps the packed path bit-identical to the float training path.

This module is the oracle for ``triton_kernels`` (same signatures, bit-identical results) and the
path used where no GPU or no Triton is present. It imports no Triton.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

WORD_BITS = 32
_BYTE_WEIGHTS: dict = {}  # device -> the uint8 weights 1, 2, ..., 128 of a byte's bits
_SIGN_TABLES: dict = {}  # (dtype, device) -> (256, 8) table: the ±1 of each bit of each byte value


def _byte_weights(device) -> torch.Tensor:
    key = str(device)
    if key not in _BYTE_WEIGHTS:  # made once per device: no host-to-device copy per call
        _BYTE_WEIGHTS[key] = (2 ** torch.arange(8)).to(dtype=torch.uint8, device=device)
    return _BYTE_WEIGHTS[key]


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
    key = (dtype, str(device))
    if key not in _SIGN_TABLES:
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        _SIGN_TABLES[key] = (1 - 2 * bits).to(dtype=dtype, device=device)
    return _SIGN_TABLES[key]


def num_words(channels: int) -> int:
    """Words needed for ``channels`` packed channels, ``ceil(channels / 32)``."""
    return (channels + WORD_BITS - 1) // WORD_BITS


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _check_packed(t: torch.Tensor, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int32:
        raise TypeError(f"{what} must hold packed bits as torch.int32, got {t.dtype}")


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
    _check_packed(packed, "packed")
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


def _check_vector(v, C_out: int, what: str, device) -> None:
    if v is None:
        return
    if not isinstance(v, torch.Tensor) or not v.is_floating_point():
        raise TypeError(f"{what} must be a floating tensor of shape ({C_out},)")
    if tuple(v.shape) != (C_out,):
        raise ValueError(f"{what} must have shape ({C_out},) (one per output channel), got {tuple(v.shape)}")
    if v.device != device:
        raise ValueError(f"{what} is on {v.device}, the packed tensors on {device}")


def check_ksum(in_channels, ksum) -> int:
    """Validate the K-sum group size of a packed convolution; returns the filters' input maps."""
    if not isinstance(ksum, int) or isinstance(ksum, bool) or ksum not in (1, 2, 4, 8):
        raise ValueError(f"ksum must be 1 or a CBConv's K in {{2, 4, 8}}, got {ksum!r}")
    if in_channels % ksum:
        raise ValueError(f"ksum={ksum} must divide the {in_channels} input channels (maps x K)")
    return in_channels // ksum


def check_conv_args(x_packed, w_packed, in_channels, stride, padding, scale, bias, bn_scale, bn_shift, ksum=1):
    """Validate the arguments shared by the reference and the Triton packed convolutions."""
    _check_packed(x_packed, "x_packed")
    _check_packed(w_packed, "w_packed")
    if x_packed.dim() != 4:
        raise ValueError(f"x_packed must be NHWC-packed (N, H, W, words), got shape {tuple(x_packed.shape)}")
    if w_packed.dim() != 4:
        raise ValueError(f"w_packed must be packed (C_out, KH, KW, words), got shape {tuple(w_packed.shape)}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    W, WW = num_words(in_channels), num_words(check_ksum(in_channels, ksum))
    if x_packed.shape[-1] != W or w_packed.shape[-1] != WW:
        raise ValueError(
            f"channel count mismatch: in_channels={in_channels} (ksum={ksum}) needs {W} activation words and "
            f"{WW} weight words, x_packed has {x_packed.shape[-1]}, w_packed has {w_packed.shape[-1]}"
        )
    if x_packed.device != w_packed.device:
        raise ValueError(f"x_packed on {x_packed.device} but w_packed on {w_packed.device}")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride!r}")
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")
    if (bn_scale is None) != (bn_shift is None):
        raise ValueError("the fused batch-norm needs both bn_scale and bn_shift")
    C_out = w_packed.shape[0]
    for v, what in ((scale, "scale"), (bias, "bias"), (bn_scale, "bn_scale"), (bn_shift, "bn_shift")):
        _check_vector(v, C_out, what, x_packed.device)
    _, H, Wd, _ = x_packed.shape
    _, KH, KW, _ = w_packed.shape
    OH, OW = conv_output_size(H, KH, stride, padding), conv_output_size(Wd, KW, stride, padding)
    if OH < 1 or OW < 1:
        raise ValueError(f"input {H}x{Wd} too small for a {KH}x{KW} kernel with padding {padding}")
    return OH, OW


def apply_epilogue(y, scale=None, bias=None, bn_scale=None, bn_shift=None):
    """``y * scale + bias``, then the fused batch-norm ``* bn_scale + bn_shift`` — each op separately
    rounded, in this order (the order of ``BinaryConv2d.forward``; kernels must not fuse into FMAs)."""
    if scale is not None:
        y = y * scale.to(y.dtype).view(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.to(y.dtype).view(1, -1, 1, 1)
    if bn_scale is not None:
        y = y * bn_scale.to(y.dtype).view(1, -1, 1, 1)
        y = y + bn_shift.to(y.dtype).view(1, -1, 1, 1)
    return y


def fold_batchnorm(bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch-norm as ``(bn_scale, bn_shift)`` for the fused epilogue.

    Equal to ``bn(y)`` up to float rounding (not bit-identical: BatchNorm2d divides by the std).
    """
    std = torch.sqrt(bn.running_var + bn.eps)
    mul = bn.weight / std if bn.affine else 1.0 / std
    shift = -bn.running_mean * mul
    if bn.affine:
        shift = shift + bn.bias
    return mul.detach().float(), shift.detach().float()


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
    **_ignored,
) -> torch.Tensor:
    """Binary convolution of packed operands: ``F.conv2d`` on ±1 tensors, zero-padded (not −1).

    Returns ``(N, C_out, OH, OW)`` in ``out_dtype``, or with ``binarize_output`` the packed signs
    of the result ``(N, OH, OW, ceil(C_out/32))``. The integer convolution is exact in float32
    (|sums| ≤ C_in·KH·KW < 2^24); the epilogue is ``apply_epilogue`` in float32.

    ``ksum = K`` is CBConv's K-sum form (SPEC §2): the full CiF bank repeats each rotated filter
    over the K channels ``c·K + k`` of input map ``c``, so ``w_packed`` may hold only the rotated
    bank over the ``in_channels // K`` maps (``cif_pack_bank_reference(..., ksum=True)``) and the
    activations' K channels of each map are summed first — the same integers with K× fewer
    multiply-adds (the training layer computes it this way too).
    Extra keywords of the Triton version (``path``, ...) are accepted and ignored.
    """
    check_conv_args(x_packed, w_packed, in_channels, stride, padding, scale, bias, bn_scale, bn_shift, ksum)
    x = unpack_signs(x_packed, in_channels)
    if ksum > 1:
        N, _, H, W = x.shape
        x = x.reshape(N, in_channels // ksum, ksum, H, W).sum(dim=2)
    w = unpack_signs(w_packed, in_channels // ksum)
    y = F.conv2d(x, w, None, stride, padding)
    y = apply_epilogue(y, scale, bias, bn_scale, bn_shift)
    if binarize_output:
        return pack_signs(y)
    return y.to(out_dtype)


def _check_cif_weight(W: torch.Tensor, K: int, in_channels: int | None):
    """Validate W (float ``(C_out, C_in, H, H)`` or packed ``(C_out, H, H, words)``); returns C_in, H."""
    from .cif import check_kernel_size, check_orientations

    check_orientations(K)
    if not isinstance(W, torch.Tensor) or W.dim() != 4:
        raise ValueError(f"expected a 4-D weight tensor, got {getattr(W, 'shape', type(W))}")
    if W.dtype == torch.int32:
        if not isinstance(in_channels, int) or in_channels < 1 or num_words(in_channels) != W.shape[-1]:
            raise ValueError(
                f"packed W {tuple(W.shape)} needs in_channels (the learned in-maps) with "
                f"ceil(in_channels/32) == {W.shape[-1]}, got {in_channels!r}"
            )
        H, H2, C_in = W.shape[1], W.shape[2], in_channels
    elif W.is_floating_point():
        if in_channels is not None and in_channels != W.shape[1]:
            raise ValueError(f"in_channels={in_channels} does not match W's {W.shape[1]} input maps")
        C_in, H, H2 = W.shape[1], W.shape[2], W.shape[3]
    else:
        raise TypeError(f"W must be floating (learned weights) or int32 (packed signs), got {W.dtype}")
    if H != H2:
        raise ValueError(f"circulant filters need square kernels, got {H}x{H2}")
    check_kernel_size(H)
    return C_in, H


def cif_pack_bank_reference(W: torch.Tensor, K: int, in_channels: int | None = None, ksum: bool = False) -> torch.Tensor:
    """Packed CiF bank ``(C_out*K, H, H, ceil(C_in*K/32))`` = ``pack_signs(cif_expand(sign(W), K))``,
    or with ``ksum`` the K-sum bank ``(C_out*K, H, H, ceil(C_in/32))`` =
    ``pack_signs(rotated_bank(sign(W), K))`` (the K identical input copies folded away; for
    ``packed_conv2d_reference(..., ksum=K)``).

    ``W`` is the learned ``(C_out, C_in, H, H)`` float weight, or its packed signs
    ``(C_out, H, H, ceil(C_in/32))`` with ``in_channels = C_in`` (what a 1-bit model stores).
    """
    from .binarize import sign
    from .cif import cif_expand, rotated_bank

    C_in, _ = _check_cif_weight(W, K, in_channels)
    signs = unpack_signs(W, C_in) if W.dtype == torch.int32 else sign(W)
    return pack_signs(rotated_bank(signs, K) if ksum else cif_expand(signs, K))
