#!/usr/bin/env python
"""CPU training throughput of Table 2's MNIST models under the paper's recipe (images/s).

What a user waits for: one epoch of ``cbcn.training.train.train`` with the paper's MNIST recipe
(SGD, batch 128), data loading, augmentation-free MNIST transforms, forward, backward and the
optimiser step included, but not the evaluation. Each model trains one short epoch (``--images``
training images of the real MNIST) per round, the models in turn in every round (shuffled, as
``cbcn.harness.measure.interleaved_times`` does), and the median over ``--rounds`` rounds of the
epoch's own wall time is reported. One thread (``--threads``), as the reproduction runs.

``--compile`` measures every model twice in each round, eager and through ``torch.compile``
(``TrainConfig.compile``), side by side, and reports the ratio of the medians. Compiled graphs are
reused by later runs of the same model in the process, so each model's compile is paid once, in
an untimed warm-up epoch whose excess over a measured epoch is reported as ``compile_s``.

    python benchmarks/train_throughput.py --data-root ../shared/data/mnist [--rounds 3] [--compile] [--out DIR]
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


def epoch_seconds(method: str, K: int, stages, data_root: str, images: int, seed: int,
                  compile: bool = False) -> float:
    """Wall seconds of one training epoch on ``images`` MNIST images (the paper's MNIST recipe)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig.from_recipe("paper", "lenet", "mnist", method=method, K=K, stages=stages,
                                         data_root=data_root, epochs=1, max_train_samples=images,
                                         max_test_samples=256, seed=seed, progress="none", output_dir=tmp,
                                         compile=compile)
        return train(config).history[0]["seconds"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", required=True, help="folder of the MNIST idx files")
    ap.add_argument("--images", type=int, default=6400, help="training images per measured epoch")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="also measure training through torch.compile")
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json and results.md")
    args = ap.parse_args(argv)
    if not Path(args.data_root).is_dir():
        print(f"error: --data-root {args.data_root} is not a folder", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    modes = (False, True) if args.compile else (False,)
    runs = [(label, method, K, stages, compiled) for label, method, K, stages in MODELS for compiled in modes]
    times = {(label, compiled): [] for label, *_, compiled in runs}
    compile_s = {}
    t0 = time.time()
    for label, method, K, stages, compiled in runs:
        if compiled:  # untimed warm-up: compiles the model's graphs once for the whole process
            first = epoch_seconds(method, K, stages, args.data_root, args.images, seed=1000, compile=True)
            again = epoch_seconds(method, K, stages, args.data_root, args.images, seed=1000, compile=True)
            compile_s[label] = first - again
            print(f"[throughput] {label}: compiled in about {compile_s[label]:.0f} s", flush=True)
    order, rng = list(runs), random.Random(0)
    for r in range(args.rounds):
        rng.shuffle(order)
        for label, method, K, stages, compiled in order:
            times[label, compiled].append(epoch_seconds(method, K, stages, args.data_root, args.images, seed=r,
                                                        compile=compiled))
            print(f"[throughput] round {r + 1}/{args.rounds} {label}{' compiled' if compiled else ''}: "
                  f"{args.images / times[label, compiled][-1]:.0f} images/s ({time.time() - t0:.0f} s elapsed)",
                  flush=True)
    rows = []
    for label, *_ in MODELS:
        eager = times[label, False]
        row = {"model": label, "images_per_s": args.images / statistics.median(eager),
               "epoch_s_median": statistics.median(eager), "epoch_s_all": ", ".join(f"{t:.2f}" for t in eager)}
        if args.compile:
            fused = times[label, True]
            row.update(compiled_images_per_s=args.images / statistics.median(fused),
                       compiled_epoch_s_all=", ".join(f"{t:.2f}" for t in fused),
                       speedup=statistics.median(eager) / statistics.median(fused), compile_s=compile_s[label])
        rows.append(row)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": host_description(),
            "versions": package_versions(), "code": git_revision(), "threads": args.threads,
            "images_per_epoch": args.images, "rounds": args.rounds, "compile": args.compile, "data": f"MNIST (idx) from {args.data_root}",
            "recipe": "paper (SGD lr 0.01, momentum 0.9, wd 1e-4, batch 128)"}
    text = (f"# Training throughput, one thread\n\n- machine: {meta['machine']['cpu']}; torch "
            f"{meta['versions']['torch']}; code {meta['code']['revision']}"
            f"{' (uncommitted changes)' if meta['code'].get('dirty') else ''}\n- {meta['data']}, "
            f"{args.images} training images per epoch, {meta['recipe']}; median of {args.rounds} interleaved "
            f"rounds{', eager and torch.compile side by side (compile time excluded, listed)' if args.compile else ''}, "
            f"evaluation not included\n\n" + markdown_table(pd.DataFrame(rows), _fmt) + "\n")
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
