#!/usr/bin/env python
"""The GPU training path, exercised: ``cbcn train`` (``cbcn.training.train.train``) of a
CIFAR-shaped ResNet18 CBCN K=4 16-16-32-64 on a GPU, for a few hundred steps on synthetic data.

Why synthetic data in the published format: the device machine has no data set and no network;
random pixels written as a one-batch ``cifar-10-batches-py`` copy go through the same loader,
augmentation, training loop, evaluation and checkpointing as a real run. Records, in
``OUT/train.json`` and a printed table:

- images per second of the training epochs (the epoch's own wall time, evaluation excluded), the
  first epoch (cuDNN autotuning, allocation) apart from the later ones;
- peak GPU memory of the run (``torch.cuda.max_memory_allocated``);
- whether a run stopped after its first epoch and resumed equals an uninterrupted one (final
  metrics and every weight, bitwise), with cuDNN's deterministic algorithms on, and the largest
  weight difference if not.

    python benchmarks/gpu_train_check.py --out DIR [--steps 300] [--batch 128] [--dry-run]

``--dry-run`` runs on the CPU with a handful of steps (the file format is the same).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, before CUDA starts

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cbcn.fileio import atomic_write_text  # noqa: E402
from cbcn.harness.provenance import git_revision, package_versions  # noqa: E402
from cbcn.training.train import TrainConfig, train  # noqa: E402


def write_synthetic_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random pixels and labels in the official ``cifar-10-batches-py`` layout (one training batch)."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("data_batch_1", n_train), ("test_batch", n_test)):
        with open(d / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, n).tolist()}, f)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f)
    return root


def run(out: Path, steps: int, batch: int, dry: bool) -> dict:
    device = "cpu" if dry else "cuda"
    if not dry and not torch.cuda.is_available():
        raise SystemExit("gpu_train_check: no CUDA device (use --dry-run on a CPU)")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    epochs = 2
    per_epoch = max(1, steps // epochs)
    stages = (2, 2, 4, 4) if dry else (16, 16, 32, 64)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic_cifar10(tmp / "data", n_train=per_epoch * batch, n_test=4 * batch)

        def config(folder: str, **kw) -> TrainConfig:
            return TrainConfig.from_recipe(
                "paper", "resnet18", "cifar10", method="cbcn", K=4, stages=stages, data_root=str(tmp / "data"),
                subset=True, epochs=epochs, batch_size=batch, eval_batch_size=4 * batch, device=device,
                bn_recalibration_batches=2, progress="none", output_dir=str(tmp / folder), seed=0, **kw)

        if not dry:
            torch.cuda.reset_peak_memory_stats()
        full = train(config("full"))
        peak = torch.cuda.max_memory_allocated() if not dry else None
        train(config("cut", stop_after_epoch=1))
        resumed = train(config("cut", resume=True))
    diffs = [(k, (a.float() - b.float()).abs().max().item()) for (k, a), b in
             zip(full.model.state_dict().items(), resumed.model.state_dict().values()) if a.is_floating_point()]
    worst = max(diffs, key=lambda kv: kv[1]) if diffs else ("", 0.0)
    images = per_epoch * batch
    result = dict(
        device=torch.cuda.get_device_name() if not dry else "cpu (dry run)",
        model=f"resnet18 cbcn K=4 {'-'.join(map(str, stages))} (physical {'-'.join(str(4 * s) for s in stages)})",
        data=f"synthetic CIFAR-10 shape, {images} training images per epoch, {epochs} epochs, batch {batch}",
        steps=epochs * per_epoch,
        images_per_s_first_epoch=images / full.history[0]["seconds"],
        images_per_s_later_epochs=images / full.history[-1]["seconds"],
        peak_memory_bytes=peak,
        peak_memory_unavailable=None if peak is not None else "CPU dry run: no CUDA memory counter",
        resumed_equals_uninterrupted=bool(resumed.final == full.final and worst[1] == 0.0),
        resumed_final_metrics_equal=resumed.final == full.final,
        resumed_max_abs_weight_diff=worst[1], resumed_max_diff_tensor=worst[0],
        deterministic="cudnn.deterministic=True, cudnn.benchmark=False, CUBLAS_WORKSPACE_CONFIG=:4096:8",
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        git=git_revision(), versions=package_versions(),
    )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "train.json", json.dumps(result, indent=1, default=str) + "\n")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for train.json")
    ap.add_argument("--steps", type=int, default=300, help="training steps in all, over 2 epochs (default: %(default)s)")
    ap.add_argument("--batch", type=int, default=128, help="batch size (default: %(default)s, the paper's)")
    ap.add_argument("--dry-run", action="store_true", help="on the CPU, tiny model, 8 steps")
    args = ap.parse_args(argv)
    steps, batch = (8, 8) if args.dry_run else (args.steps, args.batch)
    r = run(Path(args.out), steps, batch, args.dry_run)
    for k in ("device", "model", "data", "images_per_s_first_epoch", "images_per_s_later_epochs", "peak_memory_bytes",
              "resumed_equals_uninterrupted", "resumed_max_abs_weight_diff"):
        print(f"[train] {k}: {r[k]}")
    return 0 if r["resumed_equals_uninterrupted"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
