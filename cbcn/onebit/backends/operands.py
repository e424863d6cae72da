"""The GPU engine's fused-layer interface: GEMM operands in halo buffers, and their reference.

In the fused mode (``cbcn.onebit.runner``) a binary conv hands the next one not packed signs but
that conv's GEMM operand itself, written by its epilogue (``triton_kernels`` ``unpacked_conv_kernel``
with ``OPERAND``), so no pack or unpack pass runs between layers.

Operand layout (``OperandLayout``): ``(N, H + 2·pad, W + 2·pad, CP)`` bytes, int8 or fp8 e4m3,
``CP`` = the conv's input maps rounded up to 32; ±1 signs (``sign(0) = +1``), or in CBConv's
K-sum form (SPEC §2) the sum of each map's K channel signs, an integer in [−K, K]; zero in the halo
(the conv's zero padding) and in the padding channels. A buffer is zeroed once when allocated and
producers write only its interior, so the halo stays zero across calls and CUDA-graph replays.

Fused arithmetic, per output channel (what the kernel does; it differs from the exact mode, which
keeps the training model's op order, so results agree with the training model only to rounding):

    y = float(dot) · A  +  B  (+ residual)        A = α·γ/√(var+ε)
    real = y in the activation dtype               B = (bias − mean)·γ/√(var+ε) + β
    operand = sign(y), or its K-sums               (folded in float64, rounded once to float32)

The functions here compute exactly that with PyTorch ops in the kernel's order and rounding (the
kernels launch with ``enable_fp_fusion=False``: no FMA contraction), so the kernels are tested
bit-exact against them; on the CPU they are the fused mode itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cbcn.onebit.backends.epilogue import BatchNormEval

# operand channels are padded to a multiple of 32 (not 64): CBCN's K-sum form runs its GEMM over
# the learned maps (16, 32, ...), and BLOCK_K = 32 tiles serve such channel counts
CHANNEL_MULTIPLE = 32
FP8 = torch.float8_e4m3fn


def padded_channels(channels: int) -> int:
    """``CP``: an operand's channel count, ``channels`` rounded up to a multiple of 32."""
    return -(-channels // CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE


@dataclass(frozen=True)
class OperandLayout:
    """Where a binary conv reads its input: ``maps`` operand channels (physical channels / ``ksum``),
    the conv's zero ``pad``, int8 or fp8 e4m3 bytes."""

    maps: int
    ksum: int = 1
    pad: int = 1
    fp8: bool = False

    @property
    def channels(self) -> int:
        return padded_channels(self.maps)

    @property
    def dtype(self) -> torch.dtype:
        return FP8 if self.fp8 else torch.int8

    def allocate(self, N: int, H: int, W: int, device) -> torch.Tensor:
        """A zeroed buffer ``(N, H + 2·pad, W + 2·pad, CP)`` of bytes (int8 storage; ``view`` reads it
        in the operand dtype)."""
        return torch.zeros((N, H + 2 * self.pad, W + 2 * self.pad, self.channels), dtype=torch.int8, device=device)

    def view(self, buffer: torch.Tensor) -> torch.Tensor:
        return buffer.view(self.dtype)


def fold_affine(scale: torch.Tensor | None, bias: torch.Tensor | None, bn: BatchNormEval | None,
                channels: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``bn(dot·α + bias) ≈ dot·A + B``, folded in float64 and rounded once to
    float32 (the fused mode's one approximation of the exact mode's separate steps)."""
    a = torch.ones(channels, dtype=torch.float64, device=device)
    b = torch.zeros(channels, dtype=torch.float64, device=device)
    if scale is not None:
        a = a * scale.detach().double()
    if bias is not None:
        b = b + bias.detach().double()
    if bn is not None:
        mul = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
        if bn.weight is not None:
            mul = mul * bn.weight.detach().double()
        a, b = a * mul, (b - bn.running_mean.detach().double()) * mul
        if bn.bias is not None:
            b = b + bn.bias.detach().double()
    return a.float().contiguous(), b.float().contiguous()


def operand_values(y: torch.Tensor, ksum: int = 1) -> torch.Tensor:
    """``sign(y)`` (``sign(0) = +1``, NaN → −1 as the packing maps it) of an NCHW tensor, summed over
    each group of ``ksum`` adjacent channels: float ``(N, C / ksum, H, W)``."""
    s = torch.where(y >= 0, 1.0, -1.0)
    if ksum > 1:
        N, C, H, W = s.shape
        s = s.reshape(N, C // ksum, ksum, H, W).sum(dim=2)
    return s


def write_operand_reference(y: torch.Tensor, layout: OperandLayout, buffer: torch.Tensor) -> torch.Tensor:
    """Write the operand of the real NCHW values ``y`` into ``buffer``'s interior (reference of the
    kernels' operand epilogue and of the stem's operand)."""
    v = operand_values(y, layout.ksum)
    N, C, H, W = v.shape
    p = layout.pad
    if C != layout.maps or tuple(buffer.shape) != (N, H + 2 * p, W + 2 * p, layout.channels):
        raise ValueError(f"operand buffer {tuple(buffer.shape)} does not hold {C} maps of {H}x{W} with pad {p}")
    layout.view(buffer)[:, p:p + H, p:p + W, :C] = v.permute(0, 2, 3, 1).to(layout.dtype)
    return buffer


def weight_matrix_reference(signs: torch.Tensor, fp8: bool = False) -> torch.Tensor:
    """±1 weights ``(C_out, C, KH, KW)`` (the packed bank unpacked) → the GEMM's weight bytes
    ``(C_out, KH·KW·CP)``, tap-major, padding channels 0 (``triton_kernels.conv.unpack_weights``)."""
    C_out, C, KH, KW = signs.shape
    w = torch.zeros(C_out, KH, KW, padded_channels(C), dtype=FP8 if fp8 else torch.int8, device=signs.device)
    w[..., :C] = signs.permute(0, 2, 3, 1).to(w.dtype)
    return w.reshape(C_out, -1).view(torch.int8)


def operand_conv_reference(x_buffer: torch.Tensor, layout: OperandLayout, w_mat: torch.Tensor, kernel_size: int,
                           stride: int, A: torch.Tensor, B: torch.Tensor, residual: torch.Tensor | None = None,
                           real_dtype: torch.dtype | None = torch.float32, next_layout: OperandLayout | None = None,
                           next_buffer: torch.Tensor | None = None) -> torch.Tensor | None:
    """One fused binary layer on operand buffers (see the module docstring): the conv of the halo
    operand with the weight bytes, ``· A + B (+ residual)``; returns the real output (NCHW values,
    channels-last, ``real_dtype``; None if ``real_dtype`` is None) and writes the next conv's
    operand into ``next_buffer`` if given. The sums are exact: integers below 2^24 in float32 on
    the CPU, float64 on CUDA (where cuDNN could use TF32 or Winograd for float32)."""
    acc = torch.float64 if x_buffer.device.type == "cuda" else torch.float32
    x = layout.view(x_buffer).to(acc).permute(0, 3, 1, 2)
    C_out = w_mat.shape[0]
    w = w_mat.view(layout.dtype).to(acc).reshape(C_out, kernel_size, kernel_size, -1).permute(0, 3, 1, 2)
    y = F.conv2d(x, w, None, stride).float()
    y = y * A.view(1, -1, 1, 1)
    y = y + B.view(1, -1, 1, 1)
    if residual is not None:
        y = y + residual.float()
    if next_buffer is not None:
        write_operand_reference(y, next_layout, next_buffer)
    if real_dtype is None:
        return None
    return y.to(real_dtype).contiguous(memory_format=torch.channels_last)
