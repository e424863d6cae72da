"""Fetch MNIST and CIFAR from their official sources, verifying what arrives.

Why verification by content: MNIST archives are re-compressed by mirrors, so each MNIST file is
checked by the sha256 of its uncompressed bytes; CIFAR archives are checked by the md5 the
authors publish. Files are written to a temporary name and moved into place, so an interrupted
download never leaves a half file that looks complete. ImageNet needs registration and is not
downloaded.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from cbcn.data.base import DatasetError
from cbcn.data.mnist import MNIST_FILES, find_mnist_file
from cbcn.fileio import atomic_path

MNIST_MIRRORS = ("https://yann.lecun.com/exdb/mnist/",                  # official
                 "https://ossci-datasets.s3.amazonaws.com/mnist/")      # PyTorch's mirror of it
CIFAR_ARCHIVES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a",
                "cifar-10-batches-py"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85",
                 "cifar-100-python"),
}


def fetch(url: str, dest: Path, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically (tmp + os.replace)."""
    with atomic_path(dest) as tmp:
        req = urllib.request.Request(url, headers={"User-Agent": "cbcn-downloader"})
        with urllib.request.urlopen(req, timeout=timeout) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
    return dest


def download_mnist(root: str | os.PathLike) -> Path:
    """Put the four official MNIST idx .gz files into ``root/mnist`` (skipping present ones)."""
    target = Path(root).expanduser() / "mnist"
    errors = []
    for stem, (_, sha) in MNIST_FILES.items():
        if find_mnist_file(Path(root).expanduser(), stem) is not None:
            continue
        for base in MNIST_MIRRORS:
            dest = target / f"{stem}.gz"
            try:
                fetch(base + stem + ".gz", dest)
            except (urllib.error.URLError, OSError, TimeoutError) as e:
                errors.append(f"{base}{stem}.gz: {e}")
                continue
            if hashlib.sha256(gzip.decompress(dest.read_bytes())).hexdigest() != sha:
                dest.unlink()
                errors.append(f"{base}{stem}.gz: content does not match the official sha256")
                continue
            break
        else:
            raise DatasetError(f"could not download MNIST file {stem}; tried {len(MNIST_MIRRORS)} sources:\n  "
                               + "\n  ".join(errors) + "\n(no network? copy the idx files into "
                               f"{target} by hand)")
    return target


def download_cifar(variant: str, root: str | os.PathLike) -> Path:
    """Download and unpack the official CIFAR python archive into ``root``."""
    url, md5, folder = CIFAR_ARCHIVES[variant]
    root = Path(root).expanduser()
    if (root / folder).is_dir():
        return root / folder
    archive = root / url.rsplit("/", 1)[1]
    if not archive.is_file():
        try:
            fetch(url, archive, timeout=120)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise DatasetError(f"could not download {variant} from {url}: {e} (no network? put the "
                               f"extracted '{folder}' folder under {root} by hand)") from e
    h = hashlib.md5()
    with open(archive, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    if h.hexdigest() != md5:
        archive.unlink()
        raise DatasetError(f"{archive}: md5 {h.hexdigest()} is not the published {md5}; deleted, retry")
    with tarfile.open(archive, "r:gz") as tar:
        try:
            tar.extractall(root, filter="data")
        except TypeError:  # Python without extraction filters
            tar.extractall(root)
    return root / folder
