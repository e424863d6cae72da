"""(a) CiF expansion and circulant back-propagation: reference PyTorch vs fused Triton kernel.

Groups ``cif-expand``, ``cif-backward`` and ``cif-pack-bank`` per weight shape and K; paths:
``reference`` (``cbcn.nn.cif``, full ``(C_out*K, C_in*K)`` bank), ``layer-bank`` (what
``BinaryConv2d`` computes: the ``(C_out*K, C_in)`` rotated bank of the K-sum identity),
``eq8`` (explicit Eq. 8) and ``kernel`` (``triton_kernels.cif``, GPU only). Every result is
checked against an independent formulation built from ``cbcn.nn.cif.rotate``.
"""
from __future__ import annotations

import pytest
import torch

import optional
import settings
import workloads
from cbcn.nn.binarize import sign
from cbcn.nn.cif import cif_backward, cif_expand, rotate, rotated_bank

SIZE = settings.bench_size()
CASES = [(s, K) for s in workloads.CIF_SHAPES[SIZE] for K in workloads.ORIENTATIONS[SIZE]]
IDS = [f"{co}x{ci}x{h}x{h}-K{K}" for (co, ci, h), K in CASES]


def expected_bank(W: torch.Tensor, K: int) -> torch.Tensor:
    """``G[h*K+j, g*K+k] = rot_j(W[h, g])``, one rotation at a time (Eq. 2)."""
    C_out, C_in, H, _ = W.shape
    rotated = torch.stack([rotate(W, j, K) for j in range(K)], dim=1)  # (C_out, K, C_in, H, H)
    return rotated.reshape(C_out * K, C_in, H, H).repeat_interleave(K, dim=1)


def expected_grad(grad: torch.Tensor, K: int, copies: int) -> torch.Tensor:
    """Eq. 8 by its definition: the gradients of the ``copies`` equal input copies summed, each
    orientation's gradient rotated back by ``-j``, the K orientations summed."""
    CK_out, CK_in, H, _ = grad.shape
    g = grad.reshape(CK_out // K, K, CK_in // copies, copies, H, H).sum(dim=3)
    return sum(rotate(g[:, j], (K - j) % K, K) for j in range(K))


def _weight(shape, device, requires_grad=False):
    C_out, C_in, H = shape
    return torch.randn(C_out, C_in, H, H, device=device, requires_grad=requires_grad)


# path -> (function, whether it builds the full (C_out*K, C_in*K) bank or the layer's rotated bank)
EXPAND_PATHS = {"reference": (cif_expand, True), "layer-bank": (rotated_bank, False), "kernel": (None, True)}


@pytest.mark.parametrize("path", list(EXPAND_PATHS))
@pytest.mark.parametrize("shape,K", CASES, ids=IDS)
def test_cif_expand(benchmark, record, device, shape, K, path):
    fn, full = EXPAND_PATHS[path]
    if path == "kernel":
        optional.require_cuda(device, "the fused CiF kernel")
        fn = optional.function("triton_kernels.cif", "cif_expand")
    W = _weight(shape, device)
    record("cif-expand", f"{shape[0]}x{shape[1]}x{shape[2]}x{shape[2]} K={K}", shape=list(shape), K=K, path=path,
           baseline=path == "reference", items=W.numel() * K * (K if full else 1), unit="weights")
    G = benchmark(fn, W, K)
    expected = expected_bank(W, K)
    assert torch.equal(G, expected if full else expected[:, ::K])


BACKWARD_PATHS = ("autograd", "eq8", "layer-bank", "kernel")


@pytest.mark.parametrize("path", BACKWARD_PATHS)
@pytest.mark.parametrize("shape,K", CASES, ids=IDS)
def test_cif_backward(benchmark, record, device, shape, K, path):
    """Gradient of the learned W from the bank's gradient (Eq. 8); ``layer-bank`` is the backward of
    the rotated bank that ``BinaryConv2d`` actually runs in training."""
    C_out, C_in, H = shape
    W = _weight(shape, device, requires_grad=True)
    copies = 1 if path == "layer-bank" else K
    grad = torch.randn(C_out * K, C_in * copies, H, H, device=device)
    if path == "autograd":
        fn = lambda: torch.autograd.grad(cif_expand(W, K), W, grad)[0]  # noqa: E731
    elif path == "layer-bank":
        fn = lambda: torch.autograd.grad(rotated_bank(W, K), W, grad)[0]  # noqa: E731
    elif path == "eq8":
        fn = lambda: cif_backward(grad, K)  # noqa: E731
    else:
        optional.require_cuda(device, "the Triton Eq. 8 kernel")
        kernel = optional.function("triton_kernels.cif", "cif_backward")
        fn = lambda: kernel(grad, K)  # noqa: E731
    record("cif-backward", f"{C_out}x{C_in}x{H}x{H} K={K}", shape=list(shape), K=K, path=path,
           baseline=path == "autograd", items=grad.numel(), unit="weights")
    dW = benchmark(fn)
    torch.testing.assert_close(dW, expected_grad(grad, K, copies), rtol=1e-5, atol=1e-5)


PACK_PATHS = {"reference": ("cbcn.onebit.backends.reference", "cif_pack_bank_reference"), "kernel": ("triton_kernels.cif", "cif_pack_bank")}


@pytest.mark.parametrize("path", list(PACK_PATHS))
@pytest.mark.parametrize("shape,K", CASES, ids=IDS)
def test_cif_pack_bank(benchmark, record, device, shape, K, path):
    """Learned float W to the packed 1-bit CiF bank a 1-bit model convolves with."""
    if path == "kernel":
        optional.require_cuda(device, "the fused CiF packing kernel")
    fn = optional.function(*PACK_PATHS[path])
    unpack = optional.function("cbcn.onebit.backends.reference", "unpack_signs")
    W = _weight(shape, device)
    record("cif-pack-bank", f"{shape[0]}x{shape[1]}x{shape[2]}x{shape[2]} K={K}", shape=list(shape), K=K, path=path,
           baseline=path == "reference", items=W.numel() * K * K, unit="bits")
    packed = benchmark(fn, W, K)
    assert torch.equal(unpack(packed, shape[1] * K), sign(expected_bank(W, K)))
