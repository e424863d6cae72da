"""``cbcn export``: a 1-bit model as an AOTInductor package (the export itself: ``cbcn.onebit.export``)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cbcn.cli.options import Formatter
from cbcn.errors import CLIError
from cbcn.onebit.convert import OneBitConv2d
from cbcn.onebit.export import DEFAULT_MAX_BATCH, agreement, load_for_export, random_batches, write_package


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="write a 1-bit model as an AOTInductor package (.pt2) that runs without cbcn's model code",
        formatter_class=Formatter,
        description="Convert CHECKPOINT (a 1-bit checkpoint, or a training checkpoint of a binary method) to the CPU "
                    "engine's operators, export it with a dynamic batch dimension (torch.export) and compile it with "
                    "AOTInductor into OUT.pt2. Then load the package back and compare its logits with the eager 1-bit "
                    "model's on random inputs. Load it with: import cbcn.onebit.ops as ops; "
                    "model = ops.load_package('OUT.pt2') (docs/DEPLOY.md).")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a 1-bit checkpoint or a training checkpoint (last.pt)")
    p.add_argument("out", metavar="OUT.pt2", help="the package to write (atomically)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help="largest batch the package accepts (default: %(default)s)")
    p.add_argument("--check-inputs", type=int, default=1000, metavar="N",
                   help="random inputs on which the package is compared with the eager model (0: skip; "
                        "default: %(default)s)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from cbcn.onebit import ops

    if not str(args.out).endswith(".pt2"):
        raise CLIError(f"the package name must end in .pt2, got {args.out}")
    if args.max_batch < 1 or args.check_inputs < 0:
        raise CLIError("--max-batch must be positive and --check-inputs non-negative")
    model, shape, title = load_for_export(args.checkpoint)
    try:
        engine = ops.load()
    except ops.OperatorsUnavailable as exc:
        raise CLIError(str(exc)) from None
    print(f"[export] {title}: {sum(isinstance(m, OneBitConv2d) for m in model.modules())} binary layers, "
          f"input {shape}, engine {engine}", flush=True)
    print("[export] torch.export + AOTInductor (a minute or two) ...", flush=True)
    write_package(model, torch.zeros(2, *shape), args.out, args.max_batch)
    print(f"[export] wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB)", flush=True)
    if args.check_inputs:
        package = ops.load_package(args.out)
        print(f"[export] the package against the eager 1-bit model: "
              f"{agreement(model, package, random_batches(shape, args.check_inputs))}")
    print(f"[export] load it with: import cbcn.onebit.ops as ops; model = ops.load_package({str(args.out)!r})")
    return 0

