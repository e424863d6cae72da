"""Image transforms in plain torch (no torchvision).

Why here: the package must not depend on torchvision. Every transform works on whole batches
(``N×C×H×W``) so that a data loader can fetch a batch with one call instead of per-sample
Python work; the randomness comes from the global torch generator (or an explicit one), so that
seeding torch and restoring its state reproduces augmentation exactly.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def pad_to(x: torch.Tensor, size: int, value: float = 0.0) -> torch.Tensor:
    """Zero-pad the last two dims symmetrically to ``size×size`` (MNIST 28 -> 32)."""
    h, w = x.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"cannot pad a {h}x{w} image to {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(x, (left, size - w - left, top, size - h - top), value=value)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x − mean) / std`` per channel for a batch in [0, 1]."""
    m = torch.as_tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def random_crop_flip(x: torch.Tensor, padding: int = 4, flip: bool = True,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard CIFAR augmentation for a batch: zero-pad by ``padding``, take a random crop of
    the original size, mirror horizontally with probability 1/2 (He et al. 2016)."""
    n, c, h, w = x.shape
    xp = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    out = xp[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if flip:
        mirror = torch.rand(n, generator=generator) < 0.5
        out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
    return out


def rotate(x: torch.Tensor, angles_deg: torch.Tensor | Sequence[float] | float,
           mode: str = "bilinear", fill: float = 0.0) -> torch.Tensor:
    """Rotate each image of a batch about its centre by its angle, counter-clockwise as printed
    (row 0 at the top) — the same sense as ``torch.rot90(x, 1, dims=(-2, -1))`` and as the
    CiF orientations (SPEC §2). Pixels coming from outside the image get ``fill``.
    """
    squeeze = x.dim() == 3
    if squeeze:
        x = x.unsqueeze(0)
    n = x.shape[0]
    a = torch.as_tensor(angles_deg, dtype=torch.float64).reshape(-1)
    if a.numel() == 1 and n != 1:
        a = a.expand(n)
    if a.numel() != n:
        raise ValueError(f"{a.numel()} angles for {n} images")
    t = a * (math.pi / 180.0)
    cos, sin = torch.cos(t), torch.sin(t)
    # affine_grid maps output coordinates (x right, y down, in [-1, 1]) to input coordinates.
    # A counter-clockwise turn on screen (y down) samples the input at R(-θ) in these axes.
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin, cos
    xf = x if x.is_floating_point() else x.float()
    grid = F.affine_grid(theta.to(xf.dtype), list(xf.shape), align_corners=False)
    if fill != 0.0:
        # grid_sample pads with zeros; shift so that the padding value equals ``fill``.
        out = F.grid_sample(xf - fill, grid, mode=mode, padding_mode="zeros", align_corners=False) + fill
    else:
        out = F.grid_sample(xf, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out[0] if squeeze else out
