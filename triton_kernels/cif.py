"""Fused CiF expansion (forward: to the packed bank in one kernel) and circulant
back-propagation (Eq. 8) with Triton; references: ``cbcn.onebit.backends.reference.cif_pack_bank_reference``,
``cbcn.nn.cif.cif_expand`` and ``cbcn.nn.cif.cif_backward``."""
from __future__ import annotations

import torch

from cbcn.nn.cif import check_orientations, inverse_transfer_matrix, transfer_matrix
from cbcn.onebit.backends.contract import check_cif_weight, num_words
from cbcn.onebit.backends.reference import cif_pack_bank_reference  # noqa: F401  (the reference beside the kernel)

from ._runtime import kernels_for

_BLOCK = 256


def triton_next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


_INDEX_CACHE: dict = {}


def _rotation_index(H: int, K: int, device, inverse: bool = False) -> torch.Tensor:
    """``M`` (or ``P``) as int32 on ``device``, cached per (H, K, device): no host-to-device copy
    per call (which would also break CUDA-graph capture of a model's forward)."""
    key = (H, K, str(device), inverse)
    index = _INDEX_CACHE.get(key)
    if index is None:
        table = inverse_transfer_matrix(H, K) if inverse else transfer_matrix(H, K)
        with torch.inference_mode(False):  # a normal tensor, whatever mode asks first
            index = _INDEX_CACHE[key] = table.to(device=device, dtype=torch.int32).contiguous()
    return index


def cif_pack_bank(W: torch.Tensor, K: int, in_channels: int | None = None, ksum: bool = False) -> torch.Tensor:
    """``(C_out, C_in, H, H)`` float W, or its packed signs ``(C_out, H, H, ceil(C_in/32))``
    (then ``in_channels=C_in``), to the packed bank ``(C_out*K, H, H, ceil(C_in*K/32))`` of
    ``cif_expand(sign(W), K)`` — sign, rotation, K-fold copy and packing fused in one kernel.
    With ``ksum`` the K-sum bank ``(C_out*K, H, H, ceil(C_in/32))`` of ``rotated_bank(sign(W), K)``
    (no input copies), for ``packed_conv2d(..., ksum=K)``."""
    C_in, H = check_cif_weight(W, K, in_channels)
    C_out = W.shape[0]
    packed_in = W.dtype == torch.int32
    HH = H * H
    copies = 1 if ksum else K
    out_words = num_words(C_in * copies)
    out = torch.empty((C_out * K, H, H, out_words), dtype=torch.int32, device=W.device)
    W = W.contiguous()
    M = _rotation_index(H, K, W.device)
    k = kernels_for("cif_kernels", W)
    BLOCK_T = min(triton_next_pow2(HH), 32)
    BLOCK_W = min(triton_next_pow2(out_words), 4)
    grid = (C_out * K, (HH + BLOCK_T - 1) // BLOCK_T, (out_words + BLOCK_W - 1) // BLOCK_W)
    k.cif_pack_bank_kernel[grid](
        W, M, out, C_in, HH, W.shape[-1] if packed_in else 0, out_words,
        K=K, COPIES=copies, FROM_PACKED=packed_in, BLOCK_T=BLOCK_T, BLOCK_W=BLOCK_W,
    )
    return out


def cif_expand(W: torch.Tensor, K: int) -> torch.Tensor:
    """Float CiF expansion ``(C_out, C_in, H, H) -> (C_out*K, C_in*K, H, H)`` (no autograd; see ``CiFExpand``)."""
    C_in, H = check_cif_weight(W, K, None)
    C_out = W.shape[0]
    W = W.contiguous()
    out = torch.empty((C_out * K, C_in * K, H, H), dtype=W.dtype, device=W.device)
    total = C_in * K * H * H
    k = kernels_for("cif_kernels", W)
    grid = (C_out * K, (total + _BLOCK - 1) // _BLOCK)
    k.cif_expand_kernel[grid](W, _rotation_index(H, K, W.device), out, C_in, H * H, total, K=K, BLOCK=_BLOCK)
    return out


def cif_backward(grad_G: torch.Tensor, K: int) -> torch.Tensor:
    """Circulant back-propagation (Eq. 8): ``(C_out*K, C_in*K, H, H) -> (C_out, C_in, H, H)``,
    equal to ``cbcn.nn.cif.cif_backward``."""
    check_orientations(K)
    if not isinstance(grad_G, torch.Tensor) or not grad_G.is_floating_point():
        raise TypeError("grad_G must be a floating tensor")
    if grad_G.dim() != 4 or grad_G.shape[0] % K or grad_G.shape[1] % K or grad_G.shape[2] != grad_G.shape[3]:
        raise ValueError(f"expected a (C_out*K, C_in*K, H, H) gradient for K={K}, got {tuple(grad_G.shape)}")
    CK_out, CK_in, H, _ = grad_G.shape
    C_out, C_in = CK_out // K, CK_in // K
    grad_G = grad_G.contiguous()
    out = torch.empty((C_out, C_in, H, H), dtype=grad_G.dtype, device=grad_G.device)
    total = C_in * H * H
    k = kernels_for("cif_kernels", grad_G)
    grid = (C_out, (total + _BLOCK - 1) // _BLOCK)
    P = _rotation_index(H, K, grad_G.device, inverse=True)
    k.cif_backward_kernel[grid](grad_G, P, out, C_in, H * H, total, K=K, BLOCK=_BLOCK)
    return out


class CiFExpand(torch.autograd.Function):
    """CiF expansion for training: Triton gather forward, Triton Eq. 8 backward."""

    @staticmethod
    def forward(ctx, W, K):
        ctx.K = K
        return cif_expand(W, K)

    @staticmethod
    def backward(ctx, grad_G):
        return cif_backward(grad_G, ctx.K), None


def cif_expand_autograd(W: torch.Tensor, K: int) -> torch.Tensor:
    """Differentiable ``cif_expand`` whose backward is the Triton Eq. 8 kernel."""
    return CiFExpand.apply(W, K)
