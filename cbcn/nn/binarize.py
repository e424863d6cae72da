"""Binarization: sign with a selectable surrogate gradient.

The forward is always ``sign`` with ``sign(0) = +1`` (SPEC §2), so that packed bits are well
defined. The backward replaces the (zero almost everywhere) derivative of sign by a surrogate:

- ``ste``    clipped straight-through, ``1{|x| <= 1}`` (BinaryNet, XNOR-Net)
- ``approx`` Bi-Real Net's piecewise polynomial, ``2 - 2|x|`` for ``|x| <= 1`` else 0
- ``gauss``  the paper's Eq. 10, ``A / (sigma * sqrt(pi)) * exp(-x^2 / sigma^2)``
             with the paper's defaults ``sigma = 1``, ``A = 3 * sqrt(2 * pi)`` (Section 4.1)
- ``identity`` plain straight-through (gradient passed unchanged), used nowhere by default

Surrogates are registered by short name (as larq does for quantizers) in ``SURROGATES``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


def sign(x: torch.Tensor) -> torch.Tensor:
    """±1 of ``x``'s dtype with ``sign(0) = +1``; no gradient semantics (use ``binarize``).

    Written as ``2·[x >= 0] − 1`` (NaN gives −1): one comparison and an in-place affine, about
    8× faster than ``torch.where`` with two filled tensors, and sign() is ~half a binary layer's time.
    """
    return (x >= 0).to(x.dtype).mul_(2).sub_(1)


@dataclass(frozen=True)
class Surrogate:
    """A named surrogate for d sign(x)/dx: ``derivative(x)`` gives the gradient factor."""

    name: str
    derivative: Callable[[torch.Tensor], torch.Tensor]
    formula: str


def _ste(x: torch.Tensor) -> torch.Tensor:
    return (x.abs() <= 1).to(x.dtype)


def _approx(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(2 - 2 * x.abs(), min=0)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(x)


def gauss_surrogate(sigma: float = 1.0, amplitude: float = 3 * math.sqrt(2 * math.pi)) -> Surrogate:
    """Paper Eq. 10 with amplitude ``A`` and width ``sigma`` (defaults from Section 4.1)."""
    if sigma <= 0:
        raise ValueError(f"gauss surrogate needs sigma > 0, got {sigma}")
    coeff = amplitude / (sigma * math.sqrt(math.pi))

    def derivative(x: torch.Tensor) -> torch.Tensor:
        return coeff * torch.exp(-(x / sigma) ** 2)

    return Surrogate("gauss", derivative, f"{amplitude:.4g}/({sigma:g}*sqrt(pi))*exp(-x^2/{sigma:g}^2)")


SURROGATES: dict[str, Callable[..., Surrogate]] = {
    "ste": lambda: Surrogate("ste", _ste, "1{|x|<=1}"),
    "approx": lambda: Surrogate("approx", _approx, "max(0, 2-2|x|)"),
    "gauss": gauss_surrogate,
    "identity": lambda: Surrogate("identity", _identity, "1"),
}


def get_surrogate(surrogate: str | Surrogate, **params) -> Surrogate:
    """Look a surrogate up by short name (``params`` go to its factory, e.g. ``sigma``)."""
    if isinstance(surrogate, Surrogate):
        if params:
            raise ValueError("parameters can only be given with a surrogate name")
        return surrogate
    try:
        factory = SURROGATES[surrogate]
    except KeyError:
        raise ValueError(
            f"unknown surrogate gradient {surrogate!r}; valid choices: {sorted(SURROGATES)}"
        ) from None
    try:
        return factory(**params)
    except TypeError as exc:
        raise ValueError(f"surrogate {surrogate!r} does not take parameters {sorted(params)}: {exc}") from None


class _SignWithSurrogate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, surrogate):
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return sign(x)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * ctx.surrogate.derivative(x), None


def binarize(x: torch.Tensor, surrogate: str | Surrogate = "ste", **params) -> torch.Tensor:
    """``sign(x)`` forward (sign(0)=+1), surrogate-gradient backward."""
    return _SignWithSurrogate.apply(x, get_surrogate(surrogate, **params))
