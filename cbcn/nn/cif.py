"""Circulant filters (CiFs): ring rotations, the transfer matrices M and P, CiF expansion and
the explicit circulant back-propagation (paper Eqs. 1, 2, 7 and 8; conventions in SPEC §2).

An ``H×H`` kernel (``H`` odd) is a centre plus rings; ring ``r`` holds the ``8r`` cells at
Chebyshev distance ``r``. One 45° step moves every cell of ring ``r`` by ``r`` places
counter-clockwise (as printed, row 0 on top), so 90° equals ``torch.rot90(w, 1, dims=(-2, -1))``.
Orientation ``j`` of ``K`` shifts ring ``r`` by ``r * 8j/K`` places.

Index conventions (flattened ``H*H`` positions):
- ``M = transfer_matrix(H, K)``: ``rot_j(w).flatten() == w.flatten()[M[j]]`` (a gather);
- ``P = inverse_transfer_matrix(H, K)``: ``w.flatten() == rot_j(w).flatten()[P[j]]``.
Row ``j`` here is the paper's column ``m_j`` / ``p_j``.
"""
from __future__ import annotations


import torch

from cbcn.memo import constant_tensor

VALID_K = (1, 2, 4, 8)


def check_orientations(K: int) -> int:
    """Validate the number of orientations (SPEC §2: K in {1, 2, 4, 8})."""
    if isinstance(K, bool) or not isinstance(K, int) or K not in VALID_K:
        raise ValueError(f"K (number of orientations) must be one of {VALID_K}, got {K!r}")
    return K


def check_kernel_size(H: int) -> int:
    if not isinstance(H, int) or H < 1 or H % 2 == 0:
        raise ValueError(
            f"circulant filters need an odd square kernel size (1, 3, 5, ...), got {H!r}: "
            "rotation rings are defined around a centre cell"
        )
    return H


def ring_cells(H: int, r: int) -> list[tuple[int, int]]:
    """Cells of ring ``r`` in counter-clockwise order (as printed), starting at the top-right corner."""
    c = H // 2
    top, bottom, left, right = c - r, c + r, c - r, c + r
    cells = [(top, col) for col in range(right, left, -1)]  # top row, right -> left
    cells += [(row, left) for row in range(top, bottom)]  # left column, top -> bottom
    cells += [(bottom, col) for col in range(left, right)]  # bottom row, left -> right
    cells += [(row, right) for row in range(bottom, top, -1)]  # right column, bottom -> top
    return cells


_TRANSFER: dict[tuple[int, int], tuple[tuple[int, ...], ...]] = {}


def _transfer_matrix(H: int, K: int) -> tuple[tuple[int, ...], ...]:
    """Memoised in a plain dict, not ``functools.lru_cache``: ``torch.compile`` traces through a
    dict but warns about (and ignores) an ``lru_cache`` wrapper."""
    if (H, K) not in _TRANSFER:
        _TRANSFER[H, K] = _build_transfer_matrix(H, K)
    return _TRANSFER[H, K]


def _build_transfer_matrix(H: int, K: int) -> tuple[tuple[int, ...], ...]:
    rows = []
    for j in range(K):
        src = list(range(H * H))
        for r in range(1, H // 2 + 1):
            cells = ring_cells(H, r)
            n = len(cells)
            shift = r * 8 * j // K
            for i, (row, col) in enumerate(cells):
                from_row, from_col = cells[(i - shift) % n]
                src[row * H + col] = from_row * H + from_col
        rows.append(tuple(src))
    return tuple(rows)


def transfer_matrix(H: int, K: int) -> torch.Tensor:
    """Circulant transfer matrix M (Eq. 1) as a ``(K, H*H)`` gather index."""
    check_kernel_size(H)
    check_orientations(K)
    return torch.tensor(_transfer_matrix(H, K), dtype=torch.long)


_GATHER_INDEX: dict[tuple[int, int, str], torch.Tensor] = {}


def _bank_gather_index(H: int, K: int, device: torch.device) -> torch.Tensor:
    """``M`` flattened to ``(K*H*H,)`` on ``device``, built once per (H, K, device): every
    circulant layer calls this in every forward, and a host-to-device copy per call is waste."""
    return constant_tensor(_GATHER_INDEX, (H, K, str(device)),
                           lambda: transfer_matrix(H, K).reshape(-1).to(device))


def inverse_transfer_matrix(H: int, K: int) -> torch.Tensor:
    """Inverse circulant transfer matrix P (Eq. 7): ``P[j]`` is the inverse permutation of ``M[j]``."""
    M = transfer_matrix(H, K)
    return torch.argsort(M, dim=1)


def rotate(w: torch.Tensor, j: int, K: int) -> torch.Tensor:
    """Orientation ``j`` (rotation by ``j*360/K`` degrees) of the last two (square, odd) dims."""
    H = w.shape[-1]
    if w.shape[-2] != H:
        raise ValueError(f"rotation needs square kernels, got {tuple(w.shape[-2:])}")
    M = transfer_matrix(H, K)[j % K].to(w.device)
    return w.reshape(*w.shape[:-2], H * H)[..., M].reshape(w.shape)


def rotated_bank(W: torch.Tensor, K: int) -> torch.Tensor:
    """``(C_out, C_in, H, H) -> (C_out*K, C_in, H, H)`` with row ``h*K + j = rot_j(W[h])``.

    This is the CiF with the K identical input copies folded away (the K-sum identity, SPEC §2).
    """
    if W.dim() != 4:
        raise ValueError(f"expected a (C_out, C_in, H, H) weight, got shape {tuple(W.shape)}")
    C_out, C_in, H, H2 = W.shape
    if H != H2:
        raise ValueError(f"circulant filters need square kernels, got {H}x{H2}")
    index = _bank_gather_index(H, K, W.device)  # M flattened: (K*HH,)
    # torch.gather (one kernel; ~2x faster forward and backward than advanced indexing)
    flat = W.reshape(C_out, C_in, H * H)
    rotated = torch.gather(flat, 2, index.expand(C_out, C_in, K * H * H))  # (C_out, C_in, K*HH)
    return rotated.reshape(C_out, C_in, K, H * H).permute(0, 2, 1, 3).reshape(C_out * K, C_in, H, H)


def cif_expand(W: torch.Tensor, K: int) -> torch.Tensor:
    """CiF expansion (Eq. 2, Fig. 4): ``G[h*K + j, g*K + k] = rot_j(W[h, g])`` for every ``k``."""
    return rotated_bank(W, K).repeat_interleave(K, dim=1)


def cif_backward(grad_G: torch.Tensor, K: int) -> torch.Tensor:
    """Circulant back-propagation, Eq. 8, written out explicitly.

    ``delta_W[h, g, q] = sum_j sum_k dL/dG[h*K+j, g*K+k, P[j][q]]``: each rotated copy's
    gradient is brought back through the inverse rotation ``P`` and the K orientations (and the
    K identical input copies) are summed. Equals autograd through ``cif_expand``.
    """
    if grad_G.dim() != 4 or grad_G.shape[0] % K or grad_G.shape[1] % K:
        raise ValueError(f"expected a (C_out*K, C_in*K, H, H) gradient for K={K}, got {tuple(grad_G.shape)}")
    CK_out, CK_in, H, _ = grad_G.shape
    C_out, C_in = CK_out // K, CK_in // K
    P = inverse_transfer_matrix(H, K).to(grad_G.device)  # (K, HH)
    g = grad_G.reshape(C_out, K, C_in, K, H * H).sum(dim=3)  # sum over input copies k
    grad_W = torch.zeros(C_out, C_in, H * H, dtype=grad_G.dtype, device=grad_G.device)
    for j in range(K):
        grad_W += g[:, j, :, :][..., P[j]]
    return grad_W.reshape(C_out, C_in, H, H)
