"""CIFAR-10 and CIFAR-100 from the official python pickles (Krizhevsky 2009).

Why the subset handling: a loader written for the full set must also read a partial copy (fewer
batches, fewer images — e.g. the 4000/1000 test subset) when asked to, and must then say so in
its description, so that no number trained on a subset is reported as full CIFAR.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch

from cbcn.data.base import DatasetCorrupt, DatasetError, DatasetNotFound, TensorImageDataset, select_subset

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

#: per variant: folder name, training files, test files, label key, meta file, names key, classes, sizes
CIFAR_LAYOUT = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], label_key=b"labels", meta="batches.meta",
                    names_key=b"label_names", classes=10, sizes=(50000, 10000), per_file=10000),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"],
                     label_key=b"fine_labels", meta="meta", names_key=b"fine_label_names",
                     classes=100, sizes=(50000, 10000), per_file=None),
}


def find_cifar_dir(root: Path, variant: str) -> Path | None:
    """The folder holding the pickles: ``root`` itself, ``root/<official folder>``, or
    ``root/<anything>/<official folder>`` (e.g. ``data/cifar10-subset/cifar-10-batches-py``)."""
    lay = CIFAR_LAYOUT[variant]
    marker = lay["meta"]
    cands = [root, root / lay["folder"]] + sorted(root.glob(f"*/{lay['folder']}"))
    for d in cands:
        if (d / marker).is_file() or any((d / f).is_file() for f in lay["train"] + lay["test"]):
            return d
    return None


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, OSError) as e:
        raise DatasetCorrupt(f"{path}: not a readable CIFAR python pickle ({e})") from e


def load_cifar(variant: str, root: str | os.PathLike, train: bool, max_samples: int | None = None,
               subset: bool | None = None, name: str | None = None,
               augment: bool | None = None) -> TensorImageDataset:
    """CIFAR ``variant`` ('cifar10' | 'cifar100'). ``subset``: None accepts and labels a partial
    copy, False requires the full official split, True requires nothing more than one batch.
    Training data gets the standard augmentation (pad 4 + random crop 32 + horizontal flip)
    unless ``augment=False``."""
    lay = CIFAR_LAYOUT[variant]
    name = name or variant
    root = Path(root).expanduser()
    d = find_cifar_dir(root, variant)
    if d is None:
        raise DatasetNotFound(f"{variant}: no '{lay['folder']}' folder with the official python pickles under "
                           f"{root}; pass the folder that holds it, or add --download to fetch it (from Python: download=True)")
    wanted = lay["train"] if train else lay["test"]
    present = [f for f in wanted if (d / f).is_file()]
    if not present:
        raise DatasetNotFound(f"{variant}: none of {wanted} found in {d}")
    xs, ys = [], []
    for f in present:
        entry = _unpickle(d / f)
        if b"data" not in entry or lay["label_key"] not in entry:
            raise DatasetCorrupt(f"{d / f}: missing keys b'data'/{lay['label_key']!r}; keys are {list(entry)}")
        data = np.asarray(entry[b"data"], dtype=np.uint8)
        labels = np.asarray(entry[lay["label_key"]], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
            raise DatasetCorrupt(f"{d / f}: expected N×3072 pixels and N labels, read {data.shape} and {labels.shape}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(labels)
    x = torch.from_numpy(np.concatenate(xs))
    y = torch.from_numpy(np.concatenate(ys))
    if y.min() < 0 or y.max() >= lay["classes"]:
        raise DatasetCorrupt(f"{variant}: labels outside 0..{lay['classes'] - 1} (read {int(y.min())}..{int(y.max())})")
    expected = lay["sizes"][0 if train else 1]
    partial = len(present) < len(wanted) or x.shape[0] != expected
    if partial and subset is False:
        raise DatasetError(
            f"{variant} {'train' if train else 'test'} in {d} is incomplete: found {present} "
            f"({x.shape[0]} images) of {wanted} ({expected} images). Pass subset=True (--subset) "
            f"to train on this subset knowingly, or provide the full data set")
    classes = None
    if (d / lay["meta"]).is_file():
        meta = _unpickle(d / lay["meta"])
        if lay["names_key"] in meta:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[lay["names_key"]]]
    n_read = x.shape[0]
    sel = select_subset(n_read, max_samples, f"{name}:{'train' if train else 'test'}")
    if sel is not None:
        x, y = x[sel], y[sel]
    what = (f"SUBSET of {variant} ({n_read} of the {expected} official "
            f"{'training' if train else 'test'} images, files {present})" if partial
            else f"{variant} (official python pickles {present})")
    aug = train if augment is None else augment
    desc = (f"{what} in {d}; {x.shape[0]} of {n_read} images loaded"
            + (" (fixed random subset)" if sel is not None else "")
            + ("; augmentation: pad 4 + random crop 32 + horizontal flip" if aug else "; no augmentation"))
    mean, std = CIFAR_STATS[variant]
    return TensorImageDataset(x, y, name=name, train=train, mean=mean, std=std,
                              num_classes=lay["classes"], description=desc,
                              augment="crop_flip" if aug else None, classes=classes,
                              is_subset=partial or sel is not None, indices=sel,
                              files=[str(d / f) for f in present])
