#!/usr/bin/env python
"""CPU training throughput of Table 2's MNIST models under the paper's recipe (images/s).

What a user waits for: one epoch of ``cbcn.training.train.train`` with the paper's MNIST recipe
(SGD, batch 128), data loading, augmentation-free MNIST transforms, forward, backward and the
optimiser step included, but not the evaluation. Each model trains one short epoch (``--images``
training images of the real MNIST) per round, the models in turn in every round (shuffled, as
``cbcn.harness.measure.interleaved_times`` does), and the median over ``--rounds`` rounds of the
epoch's own wall time is reported. One thread (``--threads``), as the reproduction runs.

    python benchmarks/train_throughput.py --data-root ../shared/data/mnist [--rounds 3] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from cbcn.fileio import atomic_write_text  # noqa: E402
from cbcn.harness.machine import host_description  # noqa: E402
from cbcn.harness.markdown import markdown_table  # noqa: E402
from cbcn.harness.provenance import git_revision, package_versions  # noqa: E402
from cbcn.training.train import TrainConfig, train  # noqa: E402

# (label, method, K, stages): Table 2's LeNets
MODELS = [(f"{method}{f' K={K}' if K > 1 else ''} {'-'.join(map(str, stages))}", method, K, stages)
          for stages in ((5, 10, 20, 40), (10, 20, 40, 80))
          for method, K in (("fp", 1), ("xnor", 1), ("cbcn", 4))]


def epoch_seconds(method: str, K: int, stages, data_root: str, images: int, seed: int) -> float:
    """Wall seconds of one training epoch on ``images`` MNIST images (the paper's MNIST recipe)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig.from_recipe("paper", "lenet", "mnist", method=method, K=K, stages=stages,
                                         data_root=data_root, epochs=1, max_train_samples=images,
                                         max_test_samples=256, seed=seed, progress="none", output_dir=tmp)
        return train(config).history[0]["seconds"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", required=True, help="folder of the MNIST idx files")
    ap.add_argument("--images", type=int, default=6400, help="training images per measured epoch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json and results.md")
    args = ap.parse_args(argv)
    if not Path(args.data_root).is_dir():
        print(f"error: --data-root {args.data_root} is not a folder", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    times = {label: [] for label, *_ in MODELS}
    order, rng = list(MODELS), random.Random(0)
    t0 = time.time()
    for r in range(args.rounds):
        rng.shuffle(order)
        for label, method, K, stages in order:
            times[label].append(epoch_seconds(method, K, stages, args.data_root, args.images, seed=r))
            print(f"[throughput] round {r + 1}/{args.rounds} {label}: {args.images / times[label][-1]:.0f} images/s "
                  f"({time.time() - t0:.0f} s elapsed)", flush=True)
    rows = [{"model": label, "images_per_s": args.images / statistics.median(ts),
             "epoch_s_median": statistics.median(ts), "epoch_s_all": ", ".join(f"{t:.2f}" for t in ts)}
            for label, ts in times.items()]
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": host_description(),
            "versions": package_versions(), "code": git_revision(), "threads": args.threads,
            "images_per_epoch": args.images, "rounds": args.rounds, "data": f"MNIST (idx) from {args.data_root}",
            "recipe": "paper (SGD lr 0.01, momentum 0.9, wd 1e-4, batch 128)"}
    text = (f"# Training throughput, one thread\n\n- machine: {meta['machine']['cpu']}; torch "
            f"{meta['versions']['torch']}; code {meta['code']['revision']}"
            f"{' (uncommitted changes)' if meta['code'].get('dirty') else ''}\n- {meta['data']}, "
            f"{args.images} training images per epoch, {meta['recipe']}; median of {args.rounds} interleaved "
            f"rounds, evaluation not included\n\n" + markdown_table(pd.DataFrame(rows), _fmt) + "\n")
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "results.json", json.dumps({**meta, "rows": rows}, indent=1, default=str))
        atomic_write_text(args.out / "results.md", text)
    return 0


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.0f}" if v >= 100 else f"{v:.3f}"
    return str(v)


if __name__ == "__main__":
    sys.exit(main())
