#!/usr/bin/env python
"""A/B of CPU-engine kernel builds on whole 1-bit models, in one process, interleaved.

On a shared machine the speed drifts by tens of percent from one minute to the next, so a kernel
change is judged by timing the builds side by side: each round runs the model once per build in
a shuffled order, and the medians (and minima) of the rounds are compared. Builds are the
working tree's kernels and those of git revisions (``--rev``), each compiled with the same flags
as ``cbcn.onebit.backends.cpu.native`` for one variant; a revision whose kernels do not match
this Python side's ABI is refused with the reason. The 1-bit logits are checked ``torch.equal`` to
the training model's for every build.

Usage: python benchmarks/native_ab.py --rev HEAD~1 [--rev REV ...] [--models xnor cbcn lenet]
       [--batch 64] [--rounds 15] [--variant avx2]
"""
from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cpu_engine_bench import CASES, IMAGE, keep_freed_memory

from cbcn.onebit.backends.cpu import native
from cbcn.onebit.convert import convert_to_onebit

ROOT = Path(__file__).resolve().parents[1]


class BuildError(Exception):
    """A revision that cannot be built here (one line, exit status 2)."""


def build_revision(rev: str, v: native.Variant, folder: Path) -> Path:
    """The kernels of git revision ``rev`` built for variant ``v`` (``native.build`` on a copy of
    the revision's sources in ``folder``)."""
    for source in native.SOURCES:
        rel = source.relative_to(ROOT)
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{rel}"], capture_output=True, text=True)
        if text.returncode != 0:
            raise BuildError(f"{rev} has no {rel} ({text.stderr.strip().splitlines()[-1]})")
        (folder / source.name).write_text(text.stdout)
    try:
        return native.build(v, openmp=False, folder=folder)
    except native.CompileFailed as exc:
        raise BuildError(f"{rev} does not build as {v.name}: {exc}") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", action="append", default=[], help="a git revision to compare with the working tree")
    ap.add_argument("--models", nargs="+", choices=sorted(CASES), default=["xnor", "cbcn", "lenet"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--variant", default=None, help="the variant to build (default: the engine's own)")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.rounds < 1:
        print("error: --batch and --rounds must be positive", file=sys.stderr)
        return 2
    keep_freed_memory()
    torch.set_num_threads(1)
    try:
        own = native.load(args.variant)
    except native.VariantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if own is None:
        print(f"error: no native kernels here: {native.problem()}", file=sys.stderr)
        return 2
    v = native.variant(own.variant)
    builds = {"working tree": own}
    with tempfile.TemporaryDirectory() as tmp:
        for rev in args.rev:
            folder = Path(tmp) / rev.replace("/", "_")
            folder.mkdir()
            try:
                builds[rev] = native.NativeLibrary(build_revision(rev, v, folder), v, openmp=False,
                                                   name=f"{v.name}@{rev}")
            except (BuildError, OSError, RuntimeError) as exc:  # RuntimeError: the operators refused it (ABI)
                print(f"error: {rev}: {str(exc).splitlines()[0]}", file=sys.stderr)
                return 2
        print(f"[ab] {native.cpu_model()}, variant {v.name}, batch {args.batch}, {args.rounds} rounds, one thread")
        for key in args.models:
            case = CASES[key]
            trained = case.build()
            model = convert_to_onebit(trained, backend="cpu")
            x = torch.randn(args.batch, case.in_channels, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
            times = {name: [] for name in builds}
            real_load = native.load
            try:
                with torch.inference_mode():
                    expected = trained(x)
                    for name, lib in builds.items():
                        native.load = lambda *_, lib=lib: lib
                        if not torch.equal(model(x), expected):
                            print(f"[ab] {case.label}: {name} is NOT exact")
                    order, rng = list(builds), random.Random(0)
                    for _ in range(args.rounds):
                        rng.shuffle(order)
                        for name in order:
                            native.load = lambda *_, lib=builds[name]: lib
                            t0 = time.process_time()
                            model(x)
                            times[name].append(time.process_time() - t0)
            finally:
                native.load = real_load
            base = statistics.median(times["working tree"])
            for name, ts in times.items():
                med = statistics.median(ts)
                print(f"[ab] {case.label:32s} {name:14s} median {med * 1e3:8.2f} ms  min {min(ts) * 1e3:8.2f} ms  "
                      f"{med / base:5.2f}x the working tree's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
