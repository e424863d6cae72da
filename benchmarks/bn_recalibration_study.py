#!/usr/bin/env python
"""How much the BatchNorm re-estimation's choice of training images moves a final test error.

Before every evaluation, training re-estimates each BatchNorm's statistics on a fixed random
sample of training batches (``cbcn.training.train.recalibrate_batchnorm``; 50 batches, sample 0).
A binary network turns a small error of a BatchNorm mean into flipped signs, so the sample could
matter. For each trained checkpoint this study re-estimates with ``--sample-seeds`` different
samples of each size in ``--batches`` (a size that covers the whole training split is run once:
every sample is then the same set) and evaluates on the test split. Reported per checkpoint and
size: the mean, standard deviation, min and max of the test error over the samples, and the
training's own setting (50 batches, sample 0), which must reproduce the record's final error.

    python benchmarks/bn_recalibration_study.py RUN/last.pt [...] [--batches 50 200 469]
        [--sample-seeds 5] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from cbcn.data import load_dataset  # noqa: E402
from cbcn.fileio import atomic_write_text  # noqa: E402
from cbcn.harness.machine import host_description  # noqa: E402
from cbcn.harness.markdown import markdown_table  # noqa: E402
from cbcn.harness.provenance import git_revision, package_versions  # noqa: E402
from cbcn.training.train import evaluate, load_trained_model, recalibrate_batchnorm  # noqa: E402


def study(checkpoint: Path, batches: list[int], sample_seeds: int, data_root: str | None) -> list[dict]:
    """One row per (size, sample): the test error after re-estimating on that sample."""
    model, config, ckpt = load_trained_model(checkpoint)
    data = dict(root=data_root or config.data_root, seed=config.data_seed, subset=config.subset)
    train_ds = load_dataset(config.dataset, train=True, max_samples=config.max_train_samples, **data)
    test_ds = load_dataset(config.dataset, train=False, max_samples=config.max_test_samples, **data)
    name = checkpoint.parent.name
    rows = []
    for n_batches in batches:
        covers_all = n_batches * config.batch_size >= len(train_ds)
        for sample in range(1 if covers_all else sample_seeds):
            t0 = time.time()
            images = recalibrate_batchnorm(model, train_ds, n_batches, config.batch_size, "cpu", sample_seed=sample)
            error = evaluate(model, test_ds, batch_size=config.eval_batch_size, device="cpu")["error"]
            rows.append(dict(run=name, epoch=ckpt["epoch"], batches=n_batches, images=images, sample=sample,
                             test_error=error))
            print(f"[bn-study] {name}: {n_batches} batches ({images} images), sample {sample}: "
                  f"test error {error:.2f}% ({time.time() - t0:.0f} s)", flush=True)
    return rows


def summarise(rows: list[dict]) -> pd.DataFrame:
    out = []
    for (run, n_batches), g in pd.DataFrame(rows).groupby(["run", "batches"], sort=False):
        errors = list(g["test_error"])
        out.append({"run": run, "batches": n_batches, "images": int(g["images"].iloc[0]), "samples": len(errors),
                    "mean_error": statistics.mean(errors),
                    "std_error": statistics.stdev(errors) if len(errors) > 1 else None,
                    "min_error": min(errors), "max_error": max(errors),
                    "sample_0_error": float(g.loc[g["sample"] == 0, "test_error"].iloc[0])})
    return pd.DataFrame(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path, help="training checkpoints (runs/<run>/last.pt)")
    ap.add_argument("--batches", type=int, nargs="+", default=[50, 200, 469],
                    help="re-estimation sizes in training batches (default: %(default)s; 469 x 128 = all of MNIST)")
    ap.add_argument("--sample-seeds", type=int, default=5, help="samples per size (default: %(default)s)")
    ap.add_argument("--data-root", default=None, help="data folder (default: the training run's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json and results.md")
    args = ap.parse_args(argv)
    missing = [str(p) for p in args.checkpoints if not p.is_file()]
    if missing:
        print(f"error: no checkpoint at {', '.join(missing)}", file=sys.stderr)
        return 2
    if any(b <= 0 for b in args.batches) or args.sample_seeds < 1:
        print("error: --batches must be positive and --sample-seeds at least 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rows = [row for ckpt in args.checkpoints for row in study(ckpt, args.batches, args.sample_seeds, args.data_root)]
    table = summarise(rows)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": host_description(),
            "versions": package_versions(), "code": git_revision(), "threads": args.threads,
            "checkpoints": [str(p) for p in args.checkpoints], "batches": args.batches,
            "sample_seeds": args.sample_seeds}
    text = (f"# BatchNorm re-estimation: test error against the choice of training images\n\n"
            f"- machine: {meta['machine']['cpu']}; torch {meta['versions']['torch']}; code "
            f"{meta['code']['revision']}\n- per run and size: {args.sample_seeds} random samples of training "
            f"batches (one when a size covers the whole split); training itself uses 50 batches, sample 0\n\n"
            + markdown_table(table, _fmt) + "\n")
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "results.json", json.dumps({**meta, "rows": rows,
                                                                 "summary": table.to_dict("records")},
                                                                indent=1, default=str))
        atomic_write_text(args.out / "results.md", text)
    return 0


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return ""
    return f"{v:.2f}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    sys.exit(main())
