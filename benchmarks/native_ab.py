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
       [--batch 64] [--rounds 15] [--variant avx2] [--per-layer]
"""
from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cpu_engine_bench import CASES, IMAGE, keep_freed_memory, record_binary_calls

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


@contextlib.contextmanager
def engine(lib: native.NativeLibrary):
    """The 1-bit models run on ``lib`` (its name is what ``native.load()`` answers) inside."""
    real_load = native.load
    native.load = lambda *_: lib
    try:
        yield
    finally:
        native.load = real_load


def interleaved(builds: dict, fn, rounds: int) -> dict[str, list[float]]:
    """Process-CPU seconds of ``fn()`` per build, each round in a shuffled order of the builds."""
    times = {name: [] for name in builds}
    order, rng = list(builds), random.Random(0)
    with torch.inference_mode():
        for _ in range(rounds):
            rng.shuffle(order)
            for name in order:
                with engine(builds[name]):
                    t0 = time.process_time()
                    fn()
                    times[name].append(time.process_time() - t0)
    return times


def report(label: str, times: dict[str, list[float]]) -> None:
    base = statistics.median(times["working tree"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"[ab] {label:32s} {name:14s} median {med * 1e3:8.3f} ms  min {min(ts) * 1e3:8.3f} ms  "
              f"{med / base:5.2f}x the working tree's time", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rev", action="append", default=[], help="a git revision to compare with the working tree")
    ap.add_argument("--models", nargs="+", choices=sorted(CASES), default=["xnor", "cbcn", "lenet"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--variant", default=None, help="the variant to build (default: the engine's own)")
    ap.add_argument("--per-layer", action="store_true", help="also each binary layer alone (its fused call)")
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
    with tempfile.TemporaryDirectory() as tmp:
        # every build without OpenMP, so that they differ only in their kernels
        builds = {"working tree": native.NativeLibrary(native.build(v, openmp=False), v, openmp=False,
                                                       name=f"{v.name}@working-tree")}
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
            with torch.inference_mode():
                expected = trained(x)
                for name, lib in builds.items():
                    with engine(lib):
                        if not torch.equal(model(x), expected):
                            print(f"[ab] {case.label}: {name} is NOT exact")
            report(case.label, interleaved(builds, lambda: model(x), args.rounds))
            if args.per_layer:
                for layer_name, layer, xp, ep, fmt in record_binary_calls(model, x):
                    label = f"  {layer_name} {layer.physical_in_channels}->{layer.physical_out_channels} {xp.shape[1]}x{xp.shape[2]}"
                    report(label, interleaved(builds, lambda l=layer, xp=xp, ep=ep, fmt=fmt: l.run(xp, ep, fmt), args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
