"""ABC-Net's binary bases (Lin, Zhao and Pan, "Towards Accurate Binary Convolutional Neural
Network", NIPS 2017): weights and activations as linear combinations of shifted binary tensors.

- Weights (their Eqs. 1-4): ``W ≈ Σ_m α_m B_m`` with ``B_m = sign(W̄ + u_m·std(W))``,
  ``W̄ = W − mean(W)`` (mean and std over the whole layer), the shifts ``u_m`` spread evenly over
  [−1, 1] (``u = 0`` for M = 1), and ``α`` the least-squares fit
  ``α* = argmin_α ‖vec(W) − [vec(B_1) … vec(B_M)]·α‖²``. Gradient straight-through:
  ``∂c/∂W = Σ_m α_m ∂c/∂B_m`` (α, the mean and the std are not differentiated).
- Activations (their Eqs. 6-8): ``R ≈ Σ_n β_n A_n`` with
  ``A_n = H_{v_n}(R) = 2·1{clip(R + v_n, 0, 1) ≥ 0.5} − 1``; the shifts ``v_n`` and the
  scales ``β_n`` are learned. ``clip(R + v, 0, 1) ≥ 0.5`` is ``R + v ≥ 0.5``, and here it is
  computed as ``sign(2(R + v) − 1)`` (``sign(0) = +1``): the same bits, exactly, for every float
  (``2a`` is exact and ``2a − 1 ≥ 0 ⇔ a ≥ 0.5``), so a 1-bit model can pack the same signs.
  With the ``ste`` surrogate its gradient is ``2·1{0 ≤ R + v ≤ 1}``: the derivative of
  ``2·clip(R + v, 0, 1) − 1``, the straight-through estimate of ``H``.
- The convolution (their Eq. 9): ``Σ_m Σ_n α_m β_n conv(A_n, B_m)``.
"""
from __future__ import annotations

import torch

from cbcn.nn.binarize import Surrogate, binarize

#: the paper's numbers of bases (M, N each 1, 3 or 5)
PAPER_BASES = (1, 3, 5)


def weight_shifts(M: int) -> torch.Tensor:
    """``u_m``, m = 1..M: evenly spread over [−1, 1]; ``u = 0`` for M = 1."""
    if M < 1:
        raise ValueError(f"the number of weight bases must be >= 1, got {M}")
    return torch.zeros(1) if M == 1 else torch.linspace(-1.0, 1.0, M)


def weight_bases(w: torch.Tensor, M: int, surrogate: Surrogate | str = "ste") -> torch.Tensor:
    """``B_m = sign(W − mean(W) + u_m·std(W))``, stacked as ``(M, *w.shape)``; the surrogate
    gradient reaches ``w`` straight through (mean and std are constants of the step)."""
    mean, std = w.detach().mean(), w.detach().std()
    shifts = weight_shifts(M).to(w)
    return torch.stack([binarize(w - mean + u * std, surrogate) for u in shifts])


def least_squares_alpha(w: torch.Tensor, bases: torch.Tensor) -> torch.Tensor:
    """``α* = argmin ‖vec(W) − B·α‖²`` for ``B = [vec(B_1) … vec(B_M)]`` (M values, no gradient)."""
    with torch.no_grad():
        B = bases.detach().reshape(bases.shape[0], -1).T.to(torch.float64)
        return torch.linalg.lstsq(B, w.detach().reshape(-1, 1).to(torch.float64)).solution.reshape(-1).to(w.dtype)


def shifted_activations(x: torch.Tensor, shifts: torch.Tensor, surrogate: Surrogate | str = "ste") -> torch.Tensor:
    """``A_n = H_{v_n}(x) = sign(2(x + v_n) − 1)``, stacked as ``(N, *x.shape)`` (module docstring)."""
    return torch.stack([binarize(2 * (x + v) - 1, surrogate) for v in shifts])


def initial_act_shifts(N: int) -> torch.Tensor:
    """``v_n`` at initialisation: ``0.5`` for N = 1, so that ``H_v(x) = sign(x)`` (XNOR-Net's
    activation) at the start; for N > 1 the thresholds ``0.5 − v_n`` spread evenly over [−1, 1]."""
    if N < 1:
        raise ValueError(f"the number of activation bases must be >= 1, got {N}")
    return torch.full((1,), 0.5) if N == 1 else 0.5 - torch.linspace(-1.0, 1.0, N)
