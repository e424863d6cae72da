"""ImageNet (ILSVRC-2012) from an ImageFolder layout, read with PIL.

Layout: ``root/train/<class>/<image>`` and ``root/val/<class>/<image>`` (class folders sorted
by name give the label indices, as torchvision's ImageFolder does). Preprocessing is the
standard ResNet one: training RandomResizedCrop(224, scale 0.08–1, ratio 3/4–4/3) + horizontal
flip; evaluation resize of the shorter side to 256 + centre crop 224.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from cbcn.data.base import DatasetCorrupt, DatasetError, DatasetNotFound, select_subset

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - pillow is a dependency
        raise DatasetError("ImageNet loading needs pillow: pip install pillow") from e
    return Image


def random_resized_crop_box(width: int, height: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                            generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """(left, top, w, h) as in Szegedy et al. / torchvision's RandomResizedCrop, from torch RNG."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=generator))
        aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return left, top, w, h
    # fallback: centre crop with the ratio clamped into range
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def pil_to_tensor(img) -> torch.Tensor:
    """PIL RGB image -> float tensor C×H×W in [0, 1]."""
    data = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return data.view(img.size[1], img.size[0], 3).permute(2, 0, 1).float().div_(255.0)


class ImageFolderDataset(Dataset):
    """Images in ``<split>/<class>/<file>`` folders; returns normalised 3×size×size tensors."""

    def __init__(self, root: str | os.PathLike, train: bool, image_size: int = 224,
                 max_samples: int | None = None, name: str = "imagenet"):
        root = Path(root).expanduser()
        base = root / "imagenet" if not (root / "train").is_dir() and (root / "imagenet").is_dir() else root
        split_dir = base / ("train" if train else "val")
        if not split_dir.is_dir():
            raise DatasetNotFound(f"{name}: no '{split_dir.name}' folder under {base}; expected the ImageFolder "
                               f"layout {base}/train/<class>/*.JPEG and {base}/val/<class>/*.JPEG "
                               f"(ImageNet cannot be downloaded automatically: it needs registration "
                               f"at https://image-net.org)")
        classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        if not classes:
            raise DatasetNotFound(f"{split_dir} holds no class folders; the validation images must be sorted "
                               f"into one folder per class (e.g. with the usual valprep.sh script)")
        samples = []
        for label, c in enumerate(classes):
            for p in sorted((split_dir / c).iterdir()):
                if p.suffix.lower() in IMAGE_EXTENSIONS:
                    samples.append((str(p), label))
        if not samples:
            raise DatasetNotFound(f"{split_dir}: class folders hold no images ({', '.join(IMAGE_EXTENSIONS)})")
        n_all = len(samples)
        sel = select_subset(n_all, max_samples, f"{name}:{'train' if train else 'val'}")
        if sel is not None:
            samples = [samples[i] for i in sel.tolist()]
        self.samples = samples
        self.targets = torch.tensor([s[1] for s in samples], dtype=torch.int64)
        self.classes = classes
        self.num_classes = len(classes)
        self.train = train
        self.name = name
        self.image_size = image_size
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.is_subset = sel is not None
        self.angles = None
        self.description = (
            f"ImageNet-style ImageFolder {split_dir} ({len(classes)} classes); {len(samples)} of {n_all} images"
            + (" (fixed random subset)" if sel is not None else "")
            + ("; RandomResizedCrop 224 + flip" if train else "; resize 256 + centre crop 224"))

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int) -> torch.Tensor:
        Image = _pil()
        path, _ = self.samples[index]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except OSError as e:
            raise DatasetCorrupt(f"cannot read image {path}: {e}") from e
        s = self.image_size
        if self.train:
            left, top, w, h = random_resized_crop_box(*img.size)
            img = img.resize((s, s), Image.BILINEAR, box=(left, top, left + w, top + h))
            x = pil_to_tensor(img)
            if torch.rand(1).item() < 0.5:
                x = x.flip(-1)
        else:
            short = round(s * 256 / 224)
            w, h = img.size
            scale = short / min(w, h)
            nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
            img = img.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - s) // 2, (nh - s) // 2
            x = pil_to_tensor(img.crop((left, top, left + s, top + s)))
        m = torch.tensor(self.mean).view(3, 1, 1)
        sd = torch.tensor(self.std).view(3, 1, 1)
        return (x - m) / sd

    def __getitem__(self, index: int):
        return self.load_image(index), self.samples[index][1]

    def label_counts(self) -> list[int]:
        return torch.bincount(self.targets, minlength=self.num_classes).tolist()
