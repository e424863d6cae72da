#!/usr/bin/env python
"""Where one 1-bit forward spends its time: a ``torch.profiler`` kernel table per model.

For the two ImageNet ResNet18s of ``gpu_model_bench.py`` (XNOR 64-128-256-512, CBCN K=4
16-32-64-128) at batch 256, builds ``OneBitRunner(mode="fused")`` in fp16 (the GPU engine's
entry point; ``graphs=False``, so every launch shows up with its host-side op), warms it up
(Triton compilation, autotuning), profiles one forward with CPU and CUDA activities and prints
``key_averages().table`` sorted by device time (25 rows) — the fused GEMMs against the stem,
shortcuts, pooling and classifier that stay in PyTorch. Writes the tables to ``--out`` and the
autotuner's chosen tiles beside it (``autotuned_tiles.json``).

``--dry-run``: the CPU, CPU activity only, the tiny model of ``gpu_model_bench.py`` (for tests).

Usage (device machine):  python benchmarks/gpu_profile.py --out profile.txt
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parent), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402
from gpu_conv_bench import gpu_device, report_tiles  # noqa: E402
from gpu_model_bench import DRY_MODELS, MODELS  # noqa: E402
from torch.autograd.profiler_util import FunctionEventAvg  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from cbcn.fileio import atomic_write_text  # noqa: E402
from cbcn.nn.models import build_model  # noqa: E402
from cbcn.onebit.convert import convert_to_onebit  # noqa: E402
from cbcn.onebit.runner import OneBitRunner  # noqa: E402

WARMUP_CALLS = 3
ROW_LIMIT = 25


def profile_model(label, kwargs, image, batch, path, device) -> str:
    """The profiler table of one fused forward of ``label`` at ``batch`` (see the module docstring)."""
    kwargs = dict(kwargs)
    torch.manual_seed(0)
    model = build_model(kwargs.pop("name"), image_size=image, **kwargs).eval()
    model16 = copy.deepcopy(model).to(device).half().to(memory_format=torch.channels_last)
    onebit = convert_to_onebit(model16, backend="triton" if device.type == "cuda" else None, path=path)
    x = torch.randn(batch, 3, image, image, generator=torch.Generator().manual_seed(0)).to(device)
    x16 = x.half().contiguous(memory_format=torch.channels_last)
    runner = OneBitRunner(onebit, x16, mode="fused", graphs=False)
    cuda = device.type == "cuda"
    for _ in range(WARMUP_CALLS):
        runner(x16)
    if cuda:
        torch.cuda.synchronize(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t = time.perf_counter()
    with profile(activities=activities) as prof:
        runner(x16)
        if cuda:
            torch.cuda.synchronize(device)
    wall_ms = 1e3 * (time.perf_counter() - t)
    averages = prof.key_averages()
    sort_by = "cpu_time_total"
    if cuda:  # "device_time_total" in current torch; "cuda_time_total" (deprecated alias) in older ones
        sort_by = "device_time_total" if hasattr(FunctionEventAvg(), "device_time_total") else "cuda_time_total"
    table = averages.table(sort_by=sort_by, row_limit=ROW_LIMIT)
    return (f"## {label}, batch {batch}, {runner!r}, path {path}\n"
            f"one profiled forward: {wall_ms:.2f} ms wall (profiler overhead included); sorted by {sort_by}\n\n"
            f"{table}\n")


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="file for the tables (autotuned_tiles.json goes beside it)")
    ap.add_argument("--dry-run", action="store_true", help="CPU activity only, tiny model (tests)")
    ap.add_argument("--batch", type=int, default=0, help="batch size (default 256; dry run 2)")
    ap.add_argument("--path", default="mma", choices=("mma", "mma_fp8"), help="operand type of the 1-bit layers")
    args = ap.parse_args(argv)
    if args.batch < 0:
        raise SystemExit(f"gpu_profile: --batch must be positive, got {args.batch}")
    device = gpu_device(args.dry_run)
    batch = args.batch or (2 if args.dry_run else 256)
    dev_name = "cpu (dry run)" if args.dry_run else torch.cuda.get_device_name(device)
    header = (f"# torch.profiler: one OneBitRunner(mode='fused') forward per model\n"
              f"device: {dev_name}; torch {torch.__version__}; "
              f"triton {getattr(sys.modules.get('triton'), '__version__', 'n/a')}\n"
              + ("DRY RUN: CPU activity only, tiny model; timings meaningless\n" if args.dry_run else "") + "\n")
    out = Path(args.out)
    sections = []
    for label, kwargs, image in (DRY_MODELS if args.dry_run else MODELS):
        section = profile_model(label, kwargs, image, batch, args.path, device)
        print(section, flush=True)
        sections.append(section)
        atomic_write_text(out, header + "\n".join(sections))  # a cut-off run keeps the finished models
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"[profile] wrote {out}")
    report_tiles(out.parent, "profile")
    return header + "\n".join(sections)


if __name__ == "__main__":
    main()
