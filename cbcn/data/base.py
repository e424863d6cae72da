"""The in-memory image dataset shared by MNIST, CIFAR and their rotated variants.

Why one class: these data sets are small enough to hold as uint8 tensors; preprocessing
(float conversion, normalisation, optional CIFAR augmentation) is then a few batched tensor ops.
``__getitems__`` lets ``torch.utils.data.DataLoader`` fetch a whole batch at once (PyTorch ≥ 2.0)
while ``__getitem__`` keeps the ordinary ``(image, label)`` Dataset contract.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from cbcn.data.transforms import normalize, random_crop_flip, rotate


class DatasetError(RuntimeError):
    """A data set could not be found, read, downloaded or verified; the message says which and why."""


class DatasetNotFound(DatasetError):
    """The data set's files or folders are not where they were looked for."""


class DatasetCorrupt(DatasetError):
    """The data set's files are there but unreadable: truncated, not in the published format, or
    with the wrong shapes, labels or counts."""


class TensorImageDataset(Dataset):
    """uint8 images ``N×C×H×W`` and int64 labels, returned as normalised float tensors.

    ``augment="crop_flip"`` applies random crop (padding 4) + horizontal flip on every access;
    ``rotation_range=(low, high)`` turns each image by a new angle uniform in it (degrees) on
    every access, before any other augmentation, so a training image gets a new rotation every
    epoch. Both draw from the global torch generator, so that seeding torch (and restoring its
    state) reproduces them.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, name: str, train: bool,
                 mean: Sequence[float], std: Sequence[float], num_classes: int,
                 description: str, augment: str | None = None, classes: Sequence[str] | None = None,
                 angles: torch.Tensor | None = None, is_subset: bool = False,
                 files: Sequence[str] = (), indices: torch.Tensor | None = None,
                 rotation_range: tuple[float, float] | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{labels.shape[0]} labels for {images.shape[0]} images")
        if augment not in (None, "crop_flip"):
            raise ValueError(f"unknown augmentation {augment!r}; valid: None, 'crop_flip'")
        self.images = images
        self.targets = labels.to(torch.int64)
        self.name = name
        self.train = train
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.num_classes = num_classes
        self.description = description
        self.augment = augment
        self.rotation_range = rotation_range
        self.classes = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
        self.angles = angles
        self.is_subset = is_subset
        self.files = list(files)
        #: position of each sample in the full official split (for per-sample angles, reports)
        self.indices = indices if indices is not None else torch.arange(images.shape[0])

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def transform_batch(self, images_u8: torch.Tensor) -> torch.Tensor:
        """uint8 batch -> float batch: [0, 1], optional rotation and augmentation, normalisation."""
        x = images_u8.float().div_(255.0)
        if self.rotation_range is not None:
            lo, hi = self.rotation_range
            x = rotate(x, lo + (hi - lo) * torch.rand(x.shape[0], dtype=torch.float64))
        if self.augment == "crop_flip":
            x = random_crop_flip(x, padding=4, flip=True)
        return normalize(x, self.mean, self.std)

    def __getitem__(self, index: int):
        x = self.transform_batch(self.images[index:index + 1] if index >= 0 else self.images[[index]])
        return x[0], int(self.targets[index])

    def __getitems__(self, indices: list[int]):
        idx = torch.as_tensor(indices, dtype=torch.int64)
        x = self.transform_batch(self.images[idx])
        return list(zip(x.unbind(0), self.targets[idx].tolist()))

    def label_counts(self) -> list[int]:
        return torch.bincount(self.targets, minlength=self.num_classes).tolist()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {'train' if self.train else 'test'} n={len(self)}: {self.description}>"


def select_subset(n: int, max_samples: int | None, key: str) -> torch.Tensor | None:
    """Indices of a fixed, seed-independent random subset of size ``max_samples`` (sorted), or
    None for all. A fixed permutation (not the first N) keeps every class represented even for
    files sorted by label, and runs with different training seeds see the same samples."""
    if max_samples is None or max_samples >= n:
        return None
    if max_samples <= 0:
        raise ValueError(f"max_samples must be positive, got {max_samples}")
    import zlib
    g = torch.Generator().manual_seed(zlib.crc32(f"cbcn-subset:{key}".encode()))
    return torch.randperm(n, generator=g)[:max_samples].sort().values
