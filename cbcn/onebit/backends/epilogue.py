"""The one output transform of a packed binary convolution, shared by every backend.

A binary conv produces exact integer sums. What a network does with them before the next binary
conv is plain float arithmetic, and it must be done in the training model's order and rounding
for the 1-bit model's logits to equal the training model's bit for bit. ``Epilogue`` lists those
steps as data, in the one order every backend applies them:

    v = sums · scale  (+ bias)       α ⊙ conv + b  (paper Eq. 4; ``BinaryConv2d.forward``)
    v = pool(v)                      "max2": MaxPool2d(2), LeNet units (conv → max-pool → ReLU);
                                     "avg2": AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
                                     the ResNet downsampling shortcut's pooling
    v = relu(v)
    v = batchnorm(v)                 an eval ``BatchNorm2d`` (``bn``), exactly as PyTorch computes it,
                                     or a folded affine ``v · mul`` then ``+ add`` (``affine``)
    v = v + residual                 ResNet shortcuts
    outputs: v (float) and/or its packed signs (the next binary layer's input)

Every step is rounded separately, as the separate PyTorch ops of the training model are.
``Epilogue.apply`` is the reference: PyTorch ops on an NCHW tensor (the batch-norm through
``F.batch_norm`` itself). Optimised backends (the CPU engine, the Triton kernels) fuse the steps
and are tested equal to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from cbcn.onebit.backends.contract import check_vector, derived

POOLS = ("", "max2", "avg2")  # none; MaxPool2d(2) (floor); AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)


@dataclass(frozen=True, eq=False)
class BatchNormEval:
    """An eval-mode ``BatchNorm2d`` as data (its running statistics, affine and eps)."""

    running_mean: torch.Tensor
    running_var: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    eps: float
    _affine: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_module(cls, bn: nn.BatchNorm2d) -> "BatchNormEval":
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None:
            raise ValueError(f"expected a BatchNorm2d with running statistics, got {bn!r}")
        return cls(bn.running_mean, bn.running_var, bn.weight if bn.affine else None,
                   bn.bias if bn.affine else None, float(bn.eps))

    @property
    def num_features(self) -> int:
        return self.running_mean.numel()

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        """``F.batch_norm`` in eval mode: the training model's own arithmetic (the oracle)."""
        return F.batch_norm(y, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mul, add)`` with ``bn(v) = fma(v, mul, add)`` where PyTorch's CPU batch-norm computes
        that way (checked by ``cbcn.onebit.backends.cpu``). Read from PyTorch itself rather than
        re-derived, so that its own rounding of ``weight / sqrt(var + eps)`` and
        ``bias − mean · mul`` is kept: ``mul = bn(1)`` with mean and bias 0, ``add = bn(0)``.
        Cached until one of the statistics changes."""
        tensors = [t for t in (self.running_mean, self.running_var, self.weight, self.bias) if t is not None]
        return derived(self._affine, tensors, self._compute_affine)

    def _compute_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            C, dev = self.num_features, self.running_mean.device
            zeros = torch.zeros(C, device=dev, dtype=self.running_mean.dtype)
            ones = torch.ones(1, C, 1, 1, device=dev, dtype=self.running_mean.dtype)
            mul = F.batch_norm(ones, zeros, self.running_var, self.weight, None, False, 0.0, self.eps)
            add = F.batch_norm(torch.zeros_like(ones), self.running_mean, self.running_var, self.weight,
                               self.bias, False, 0.0, self.eps)
        return mul.reshape(C).float().contiguous(), add.reshape(C).float().contiguous()


@dataclass(frozen=True, eq=False)
class Epilogue:
    """The steps after a binary conv's integer sums (see the module docstring for the order).

    ``real`` / ``packed`` choose the outputs: the float result (``out_dtype``, NCHW shape) and/or
    its packed signs ``(N, H, W, ceil(C/32))``.
    """

    scale: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    pool: str = ""
    relu: bool = False
    bn: BatchNormEval | None = None
    affine: tuple[torch.Tensor, torch.Tensor] | None = None
    residual: torch.Tensor | None = None
    real: bool = True
    packed: bool = False
    out_dtype: torch.dtype = torch.float32

    def __post_init__(self):
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS} (none, a 2x2 max-pool, a 2x2 average pool), got {self.pool!r}")
        if self.bn is not None and self.affine is not None:
            raise ValueError("give the batch-norm once: bn (exact) or affine (folded), not both")
        if not (self.real or self.packed):
            raise ValueError("an epilogue must produce the real output, the packed signs, or both")

    def with_(self, **changes) -> "Epilogue":
        return replace(self, **changes)

    def check(self, C_out: int, device) -> None:
        """Per-channel vectors of length ``C_out`` on ``device``."""
        check_vector(self.scale, C_out, "scale", device)
        check_vector(self.bias, C_out, "bias", device)
        if self.affine is not None:
            check_vector(self.affine[0], C_out, "bn_scale", device)
            check_vector(self.affine[1], C_out, "bn_shift", device)
        if self.bn is not None and self.bn.num_features != C_out:
            raise ValueError(f"batch-norm has {self.bn.num_features} channels, the conv {C_out}")

    def output_size(self, OH: int, OW: int) -> tuple[int, int]:
        """Spatial size after the optional pooling (max2: floor, as ``MaxPool2d(2)``; avg2: ceil)."""
        if self.pool == "max2":
            return OH // 2, OW // 2
        if self.pool == "avg2":
            return -(-OH // 2), -(-OW // 2)
        return OH, OW

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        """The reference transform of the conv sums ``y`` (float32, NCHW), each step a PyTorch op."""
        if self.scale is not None:
            y = y * self.scale.to(y.dtype).view(1, -1, 1, 1)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype).view(1, -1, 1, 1)
        if self.pool == "max2":
            y = F.max_pool2d(y, 2)
        elif self.pool == "avg2":
            y = F.avg_pool2d(y, 2, 2, ceil_mode=True, count_include_pad=False)
        if self.relu:
            y = F.relu(y)
        if self.bn is not None:
            y = self.bn.apply(y)
        if self.affine is not None:
            y = y * self.affine[0].to(y.dtype).view(1, -1, 1, 1)
            y = y + self.affine[1].to(y.dtype).view(1, -1, 1, 1)
        if self.residual is not None:
            y = y + self.residual
        return y

    def outputs(self, y: torch.Tensor, pack_signs) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(real, packed)`` of the finished result ``y`` (``None`` where not asked for)."""
        real = y.to(self.out_dtype) if self.real else None
        packed = pack_signs(y) if self.packed else None
        return real, packed


def legacy_epilogue(scale=None, bias=None, bn_scale=None, bn_shift=None, binarize_output=False,
                    out_dtype=torch.float32) -> Epilogue:
    """The ``packed_conv2d`` keyword form (scale, bias, folded batch-norm, re-binarisation) as an
    ``Epilogue``: one output transform behind both call forms."""
    affine = (bn_scale, bn_shift) if bn_scale is not None else None
    return Epilogue(scale=scale, bias=bias, affine=affine, real=not binarize_output,
                    packed=bool(binarize_output), out_dtype=out_dtype)


def fold_batchnorm(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch-norm as ``(bn_scale, bn_shift)`` for the folded form (``v·mul``, then
    ``+ add``, each rounded). Equal to ``bn(y)`` up to float rounding, not bit for bit; for the
    exact form use ``Epilogue(bn=BatchNormEval.from_module(bn))``."""
    std = torch.sqrt(bn.running_var + bn.eps)
    mul = bn.weight / std if bn.affine else 1.0 / std
    shift = -bn.running_mean * mul
    if bn.affine:
        shift = shift + bn.bias
    return mul.detach().float(), shift.detach().float()
