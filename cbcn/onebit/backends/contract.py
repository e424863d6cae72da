"""What every 1-bit backend agrees on: the packing format and the argument checks.

Packing convention (docs/CONTRACTS.md): a bit is set where the value is negative, so that
``sign(0) = +1`` packs as 0; 32 channels go into one int32 word, channel ``c`` in word ``c // 32``
at bit ``c % 32``; channels are moved last, so activations ``(N, C, H, W)`` pack NHWC into
``(N, H, W, ceil(C/32))`` and weights ``(C_out, C_in, KH, KW)`` into ``(C_out, KH, KW, ceil(C_in/32))``.
Padding bits of the last word are 0.

The checks here are the only copies: the reference (``cbcn.onebit.backends.reference``), the CPU engine
(``cbcn.onebit.backends.cpu``) and the Triton kernels (``triton_kernels``) all call them, so a bad
argument gets the same one-line error on every backend.
"""
from __future__ import annotations

import torch

from cbcn.nn.cif import VALID_K, check_kernel_size, check_orientations

WORD_BITS = 32


def num_words(channels: int) -> int:
    """Words needed for ``channels`` packed channels, ``ceil(channels / 32)``."""
    return (channels + WORD_BITS - 1) // WORD_BITS


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def tensor_version(t: torch.Tensor) -> int:
    """``t._version``, the in-place-modification counter that keys the caches of derived data
    (banks, prepared weights, carried packed signs); inference-mode tensors have none (-1), nor
    have the tensors torch.compile traces (0: a traced forward modifies nothing in place)."""
    if torch.compiler.is_compiling():
        return 0
    return -1 if t.is_inference() else t._version


def derived(cache: dict, sources, compute, extra: tuple = ()):
    """``compute()`` — data derived from the tensors ``sources`` (a CBConv bank, a scale vector, a
    batch-norm affine) — kept in ``cache`` until a source changes (its data pointer or in-place
    version) or ``extra`` does.

    While torch.compile or torch.export traces, the sources are fake tensors without data: the
    value of the last eager call (same ``extra``) is then taken as a constant of the graph — a
    compiled or exported model is a snapshot, as ``cbcn.onebit.export.export_program`` makes it
    right after an eager call — and without one it is computed in the graph."""
    if torch.compiler.is_compiling():
        return cache["value"] if cache.get("extra") == extra and "value" in cache else compute()
    key = [(t.data_ptr(), -1 if t.is_inference() else t._version) for t in sources]  # tensor_version, inlined
    if cache.get("key") != key or cache.get("extra") != extra:
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable in a later trace
            cache.update(key=key, extra=extra, value=compute())
    return cache["value"]


def check_packed(t: torch.Tensor, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int32:
        raise TypeError(f"{what} must hold packed bits as torch.int32, got {t.dtype}")


def check_vector(v, C_out: int, what: str, device) -> None:
    """A per-output-channel epilogue vector: floating, shape ``(C_out,)``, on ``device`` (or None)."""
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
    if not isinstance(ksum, int) or isinstance(ksum, bool) or ksum not in VALID_K:
        raise ValueError(f"ksum must be 1 or a CBConv's K in {{2, 4, 8}}, got {ksum!r}")
    if in_channels % ksum:
        raise ValueError(f"ksum={ksum} must divide the {in_channels} input channels (maps x K)")
    return in_channels // ksum


def check_conv_args(x_packed, w_packed, in_channels, stride, padding, scale, bias, bn_scale, bn_shift, ksum=1):
    """Validate the arguments of ``packed_conv2d`` (every backend); returns ``(OH, OW)``."""
    check_packed(x_packed, "x_packed")
    check_packed(w_packed, "w_packed")
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
        check_vector(v, C_out, what, x_packed.device)
    _, H, Wd, _ = x_packed.shape
    _, KH, KW, _ = w_packed.shape
    OH, OW = conv_output_size(H, KH, stride, padding), conv_output_size(Wd, KW, stride, padding)
    if OH < 1 or OW < 1:
        raise ValueError(f"input {H}x{Wd} too small for a {KH}x{KW} kernel with padding {padding}")
    return OH, OW


def check_cif_weight(W: torch.Tensor, K: int, in_channels: int | None):
    """Validate a CiF source weight for ``cif_pack_bank`` (every backend): float
    ``(C_out, C_in, H, H)`` or packed ``(C_out, H, H, words)``; returns ``(C_in, H)``."""
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
