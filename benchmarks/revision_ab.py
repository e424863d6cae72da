#!/usr/bin/env python
"""The eager 1-bit models of a git revision timed beside the working tree's, whole package and all
(Python path, dispatch, kernels): where ``native_ab.py`` swaps only the kernel build, this runs
each checkout in its own process, alternating, so a change of the Python side or of the entry
point (ctypes -> PyTorch operators) is measured too.

Each round runs one process per checkout (in a shuffled order) that builds the model (random
weights, seed 0), warms up, and reports the median process CPU time per forward over
``--seconds``, one thread; the table gives the medians over rounds.

Usage: python benchmarks/revision_ab.py --rev 6792a3d [--models xnor cbcn] [--batches 1 64] [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"xnor": ("resnet18", "xnor", (16, 16, 32, 64), 1, 3), "cbcn": ("resnet18", "cbcn", (16, 16, 32, 64), 4, 3),
          "lenet": ("lenet", "cbcn", (10, 20, 40, 80), 4, 1)}
CHILD = """
import json, statistics, sys, time, torch
torch.set_num_threads(1)
from cbcn.nn.models import build_model
from cbcn.onebit.convert import convert_to_onebit
name, method, stages, K, in_ch, batch, seconds = json.loads(sys.argv[1])
torch.manual_seed(0)
model = convert_to_onebit(build_model(name, method=method, stages=tuple(stages), K=K, in_channels=in_ch).eval(),
                          backend="cpu")
x = torch.randn(batch, in_ch, 32, 32, generator=torch.Generator().manual_seed(1))
with torch.inference_mode():
    for _ in range(5):
        model(x)
    times, end = [], time.time() + seconds
    while time.time() < end:
        t0 = time.process_time()
        model(x)
        times.append(time.process_time() - t0)
print(json.dumps(statistics.median(times)))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", required=True, help="the git revision to compare with the working tree")
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["xnor", "cbcn"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0 or any(b < 1 for b in args.batches):
        print("error: --rounds, --seconds and --batches must be positive", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "rev"
        made = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.rev],
                              capture_output=True, text=True)
        if made.returncode != 0:
            print(f"error: {args.rev}: {made.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            return 2
        try:
            checkouts = {args.rev: tree, "working tree": ROOT}
            print(f"[revision-ab] {args.rev} vs the working tree, one thread, {args.rounds} rounds of "
                  f"{args.seconds:g} s per process", flush=True)
            for key in args.models:
                for batch in args.batches:
                    spec = json.dumps([*MODELS[key], batch, args.seconds])
                    times = {name: [] for name in checkouts}
                    order, rng = list(checkouts), random.Random(0)
                    for _ in range(args.rounds):
                        rng.shuffle(order)
                        for name in order:
                            out = subprocess.run([sys.executable, "-c", CHILD, spec], capture_output=True, text=True,
                                                 cwd=checkouts[name], env={**os.environ, "OMP_NUM_THREADS": "1",
                                                                           "PYTHONPATH": str(checkouts[name])})
                            if out.returncode != 0:
                                print(f"error: {name}: {out.stderr.strip().splitlines()[-1]}", file=sys.stderr)
                                return 1
                            times[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
                    base = statistics.median(times["working tree"])
                    for name, ts in times.items():
                        med = statistics.median(ts)
                        print(f"[revision-ab] {key:5s} batch {batch:3d} {name:14s} median {med * 1e3:8.3f} ms per "
                              f"forward  ({med / base:5.2f}x the working tree's time)", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
