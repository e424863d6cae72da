"""Per-sample rotation angles for MNIST-rot and CIFAR10-rot.

Why Python's ``random.Random``: its ``random()`` sequence for an integer seed is guaranteed by
the Python documentation not to change across versions and platforms, so the angle of sample
``i`` is the same on every machine, in every epoch, and does not depend on torch, numpy, the
device, or on how many samples a run loads (angles are drawn for the full split, then indexed).
"""

from __future__ import annotations

import random
import zlib

import torch

from cbcn.data.transforms import rotate

#: rotation range in degrees per rotated dataset, and whether the upper end is included
ROTATION_RANGES = {
    "mnist-rot": (-45.0, 45.0),     # paper §4: "randomly rotated in [−45°, 45°]"
    "cifar10-rot": (0.0, 360.0),    # paper §4: "between [0, 360°]"; 360° ≡ 0°, so [0, 360)
}

#: how a rotated data set's training images get their angles: ``fixed`` — one seeded angle per
#: image, drawn once (a published rotated data set; the test split is always this); ``per-epoch`` —
#: a new uniform angle every time an image is drawn (rotation as augmentation). The paper (§4)
#: says only "randomly rotated"; SPEC's reading is ``fixed``.
ROTATION_DRAWS = ("fixed", "per-epoch")


def stream_seed(dataset: str, train: bool, seed: int) -> int:
    """A stable integer seed per (dataset, split, user seed): train and test get independent
    angle streams, and the stream does not depend on Python's salted ``hash``."""
    return zlib.crc32(f"cbcn-rotation:{dataset}:{'train' if train else 'test'}:{int(seed)}".encode())


def rotation_angles(dataset: str, n: int, train: bool, seed: int = 0) -> torch.Tensor:
    """``n`` angles in degrees (float64), uniform in the dataset's range, fixed by the seed."""
    if dataset not in ROTATION_RANGES:
        raise ValueError(f"no rotation range for {dataset!r}; rotated datasets: {sorted(ROTATION_RANGES)}")
    lo, hi = ROTATION_RANGES[dataset]
    rng = random.Random(stream_seed(dataset, train, seed))
    return torch.tensor([lo + (hi - lo) * rng.random() for _ in range(n)], dtype=torch.float64)


def rotate_uint8(images: torch.Tensor, angles_deg: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Rotate stored uint8 images ``N×C×H×W`` once (bilinear, black fill) and keep them uint8,
    as a published rotated data set would be stored."""
    out = torch.empty_like(images)
    for s in range(0, images.shape[0], chunk):
        x = images[s:s + chunk].float()
        y = rotate(x, angles_deg[s:s + chunk])
        out[s:s + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out
