"""One binary-convolution layer family for every method (SPEC §2–3), drop-in for ``nn.Conv2d``.

``BinaryConv2d(method=...)`` covers ``fp``, ``bnn``, ``bwn``, ``xnor``, ``bireal``, ``cbcn`` and
``abcnet`` (ABC-Net's M weight and N activation bases, ``cbcn.nn.bases``).
Its forward is (paper Eqs. 4–6 for CBConv)

    F_out = α ⊙ conv2d(sign(F_in), Ŵ) + bias,     Ŵ = sign(W) or CiF(sign(W))

with the parts switched on or off by the method. For circulant layers the sizes count feature
maps (each ``K`` physical channels wide) and the learned weight keeps the shape of an ordinary
convolution, ``(out_maps, in_maps, H, H)``.

Since the K input copies of a CiF are equal, ``conv2d(x, CiF(Ŵ))`` equals convolving the sum of
each input map's K sub-channels with the rotated bank (the K-sum identity of SPEC §2); the layer
uses that identity, which is exact for ±1 inputs (integer sums in float32) and K times cheaper.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from cbcn.nn.bases import initial_act_shifts, least_squares_alpha, shifted_activations, weight_bases
from cbcn.nn.binarize import binarize, get_surrogate
from cbcn.nn.cif import check_kernel_size, check_orientations, cif_expand, rotated_bank
from cbcn.nn.methods import MethodSpec, get_method
from cbcn.onebit.backends.epilogue import Epilogue


def _single(value, what: str) -> int:
    """Accept ``v`` or ``(v, v)`` — square kernels/strides/paddings only."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"BinaryConv2d supports only square {what}, got {value!r}")
        value = value[0]
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative int, got {value!r}")
    return value


class BinaryConv2d(nn.Module):
    """Convolution of the chosen ``method``; ``binary=False`` keeps a layer full precision
    (first layers), while still circulant for ``cbcn``."""

    def __init__(
        self,
        in_maps: int,
        out_maps: int,
        kernel_size,
        stride=1,
        padding=0,
        bias: bool = False,
        method: str | MethodSpec = "xnor",
        K: int = 1,
        cbconv: bool | None = None,
        act_surrogate: str | None = None,
        weight_surrogate: str | None = None,
        binary: bool = True,
        dilation=1,
        groups: int = 1,
        padding_mode: str = "zeros",
        weight_bases: int = 1,
        act_bases: int = 1,
    ):
        super().__init__()
        if _single(dilation, "dilation") != 1 or groups != 1 or padding_mode != "zeros":
            raise ValueError(
                "BinaryConv2d supports dilation=1, groups=1 and padding_mode='zeros' only "
                f"(got dilation={dilation!r}, groups={groups!r}, padding_mode={padding_mode!r})"
            )
        for name, v in (("in_maps", in_maps), ("out_maps", out_maps)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        spec = method if isinstance(method, MethodSpec) else get_method(method)
        spec = spec.with_switches(cbconv=cbconv, act_surrogate=act_surrogate, weight_surrogate=weight_surrogate)
        self.spec = spec
        self.method = spec.name
        self.K = check_orientations(K)
        self.cbconv = spec.cbconv
        if self.K != 1 and not self.cbconv:
            raise ValueError(f"K={K} needs circulant layers (method 'cbcn' or cbconv=True); plain layers use K=1")
        self.kernel_size = _single(kernel_size, "kernel_size")
        if self.cbconv:
            check_kernel_size(self.kernel_size)
        elif self.kernel_size < 1:
            raise ValueError("kernel_size must be >= 1")
        self.stride = _single(stride, "stride")
        if self.stride < 1:
            raise ValueError("stride must be >= 1")
        self.padding = _single(padding, "padding")
        self.binary = binary
        self.binary_weights = binary and spec.binary_weights
        self.binary_acts = binary and spec.binary_acts
        self.scaled = binary and spec.scaled
        self.act_surrogate = get_surrogate(spec.act_surrogate) if self.binary_acts else None
        self.weight_surrogate = get_surrogate(spec.weight_surrogate) if self.binary_weights else None
        self.in_maps, self.out_maps = in_maps, out_maps
        k = self.K if self.cbconv else 1
        self.physical_in_channels = in_maps * k
        self.physical_out_channels = out_maps * k
        self.weight = nn.Parameter(torch.empty(out_maps, in_maps, self.kernel_size, self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(self.physical_out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default
        self._init_bases(spec, weight_bases, act_bases)

    def _init_bases(self, spec: MethodSpec, M: int, N: int) -> None:
        """ABC-Net (``spec.bases``): M weight bases, N activation bases with learned shifts
        ``act_shift`` (v_n) and scales ``act_scale`` (β_n); every other method has M = N = 1."""
        for what, v in (("weight_bases", M), ("act_bases", N)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{what} must be a positive int, got {v!r}")
        if not spec.bases and (M, N) != (1, 1):
            raise ValueError(f"weight_bases/act_bases are ABC-Net's (method 'abcnet'); method {spec.name!r} "
                             f"has one base each, got M={M}, N={N}")
        if spec.bases and self.cbconv:
            raise ValueError("ABC-Net's bases do not combine with circulant layers (cbconv)")
        self.bases = spec.bases and self.binary
        self.weight_bases, self.act_bases = (M, N) if self.bases else (1, 1)
        if self.bases:
            self.act_shift = nn.Parameter(initial_act_shifts(N))
            self.act_scale = nn.Parameter(torch.full((N,), 1.0 / N))

    # --- the pieces, exposed so that tests and the 1-bit conversion can check them ---------
    def binarized_weight(self) -> torch.Tensor:
        """The learned weight after the method's binarization, ``(out_maps, in_maps, H, H)``:
        ``sign(W)``; for ABC-Net with one base ``B_1 = sign(W − mean W)`` (its α is in ``scale``),
        with M > 1 bases ``Σ_m α_m B_m``."""
        if self.bases:
            B = weight_bases(self.weight, self.weight_bases, self.weight_surrogate)
            if self.weight_bases == 1:
                return B[0]
            alpha = least_squares_alpha(self.weight, B)
            return (alpha.view(-1, 1, 1, 1, 1) * B).sum(dim=0)
        if self.binary_weights:
            return binarize(self.weight, self.weight_surrogate)
        return self.weight

    def weight_alphas(self) -> torch.Tensor:
        """ABC-Net's least-squares ``α_m`` of the M weight bases (M values, no gradient)."""
        return least_squares_alpha(self.weight, weight_bases(self.weight, self.weight_bases, self.weight_surrogate))

    def activation_bases(self, x: torch.Tensor) -> torch.Tensor:
        """ABC-Net's ``A_n = H_{v_n}(x)``, ``(N, *x.shape)``."""
        return shifted_activations(x, self.act_shift, self.act_surrogate)

    def effective_weight(self) -> torch.Tensor:
        """The bank actually convolved with the ``physical_in_channels`` input (CiF for CBConv)."""
        w = self.binarized_weight()
        return cif_expand(w, self.K) if self.cbconv else w

    def scale(self) -> torch.Tensor | None:
        """α per physical output channel: ``mean|W[h]|`` (XNOR-Net), shared by a map's K orientations;
        for ABC-Net with M = N = 1, ``α_1·β_1`` for every channel (with more bases the scales are
        inside the sum, ``forward``)."""
        if self.bases:
            if self.weight_bases * self.act_bases > 1:
                return None
            return (self.weight_alphas() * self.act_scale).expand(self.out_maps)
        if not self.scaled:
            return None
        alpha = self.weight.abs().mean(dim=(1, 2, 3))
        return alpha.repeat_interleave(self.K) if self.cbconv else alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.physical_in_channels:
            raise ValueError(
                f"{self.method} conv expects input (N, {self.physical_in_channels}, H, W)"
                + (f" = {self.in_maps} maps x K={self.K}" if self.cbconv else "")
                + f", got {tuple(x.shape)}"
            )
        if self.bases:
            return self._forward_bases(x)
        if self.binary_acts:
            x = binarize(x, self.act_surrogate)
        w = self.binarized_weight()
        if self.cbconv:
            if self.K > 1:  # K-sum identity: the CiF's K input copies are equal
                n, _, h, wd = x.shape
                x = x.reshape(n, self.in_maps, self.K, h, wd).sum(dim=2)
            w = rotated_bank(w, self.K)
        out = F.conv2d(x, w, None, self.stride, self.padding)
        return self.output_transform().apply(out)

    def _forward_bases(self, x: torch.Tensor) -> torch.Tensor:
        """ABC-Net's ``Σ_m Σ_n α_m β_n conv(A_n, B_m)`` (their Eq. 9). With M = N = 1 it is one
        binary conv and its scale ``α_1·β_1``, as the 1-bit backends run it; with more bases the
        double sum is computed as ``conv(Σ_n β_n A_n, Σ_m α_m B_m)`` (bilinearity: one conv)."""
        A = self.activation_bases(x)
        B = weight_bases(self.weight, self.weight_bases, self.weight_surrogate)
        if self.weight_bases * self.act_bases == 1:
            return self.output_transform().apply(F.conv2d(A[0], B[0], None, self.stride, self.padding))
        a = (self.act_scale.view(-1, 1, 1, 1, 1) * A).sum(dim=0)
        w = (least_squares_alpha(self.weight, B).view(-1, 1, 1, 1, 1) * B).sum(dim=0)
        return self.output_transform().apply(F.conv2d(a, w, None, self.stride, self.padding))

    def output_transform(self) -> Epilogue:
        """``α ⊙ conv + bias`` (Eq. 4) as the one output transform every 1-bit backend applies
        after its integer sums (``cbcn.onebit.backends.epilogue``), so the two cannot drift apart."""
        return Epilogue(scale=self.scale(), bias=self.bias)

    def extra_repr(self) -> str:
        parts = [
            f"{self.in_maps}, {self.out_maps}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}",
            f"method={self.method}",
        ]
        if self.cbconv:
            parts.append(f"K={self.K}, physical={self.physical_in_channels}->{self.physical_out_channels}")
        if not self.binary:
            parts.append("binary=False")
        if self.binary_acts:
            parts.append(f"act_grad={self.act_surrogate.name}")
        if self.binary_weights:
            parts.append(f"weight_grad={self.weight_surrogate.name}")
        if self.bases:
            parts.append(f"weight_bases={self.weight_bases}, act_bases={self.act_bases}")
        if self.bias is not None:
            parts.append("bias=True")
        return ", ".join(parts)


def reference_forward(layer: BinaryConv2d, x: torch.Tensor) -> torch.Tensor:
    """Plain oracle: ``F.conv2d`` on the binarized input and the full effective bank, times α.

    Used by tests and benchmarks (and as the model of what the packed kernels compute); no K-sum
    shortcut. The input goes through ``binarize`` (forward = ``sign``) so that input gradients
    can be checked against it too.
    """
    if layer.bases:  # ABC-Net: the M·N binary convs, summed with their scales α_m β_n
        A, alphas = layer.activation_bases(x), layer.weight_alphas()
        B = weight_bases(layer.weight, layer.weight_bases, layer.weight_surrogate)
        out = sum(alphas[m] * layer.act_scale[n] * F.conv2d(A[n], B[m], None, layer.stride, layer.padding)
                  for m in range(layer.weight_bases) for n in range(layer.act_bases))
        return Epilogue(bias=layer.bias).apply(out)
    xb = binarize(x, layer.act_surrogate) if layer.binary_acts else x
    out = F.conv2d(xb, layer.effective_weight(), None, layer.stride, layer.padding)
    return layer.output_transform().apply(out)
