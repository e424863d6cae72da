"""The two overhead targets of issue 6, measured side by side and printed as Markdown tables.

1. CiF share of a training step: the CiF expansion that ``BinaryConv2d`` runs in training (the
   rotated bank of every circulant conv, forward and its Eq. 8 backward) against one whole training
   step of ResNet18 16-16-32-64, CBCN K=4 (target: under 5 %). The full ``cif_expand`` (what a
   layer without the K-sum identity would build) is shown beside it.
2. CBCN layer forward against ``nn.Conv2d`` with the same physical channels (target: <= 1.1x),
   with autograd on (a training forward) and under ``torch.no_grad`` (inference).

The machine is assumed shared and noisy, so the contenders run interleaved, round by round, and a
ratio is the median over rounds of the per-round ratio (not a ratio of two separate medians).

    python benchmarks/overhead.py [--batch 4 8 16 32 128] [--threads 1|all] [--rounds 15] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import settings  # noqa: E402
import workloads  # noqa: E402

from cbcn.harness.markdown import markdown_table  # noqa: E402
from cbcn.harness.measure import interleaved_times  # noqa: E402
from cbcn.nn.binarize import sign  # noqa: E402
from cbcn.nn.cif import cif_expand, rotated_bank  # noqa: E402
from cbcn.nn.layers import BinaryConv2d  # noqa: E402

TARGET_CIF_SHARE = 0.05
TARGET_LAYER_RATIO = 1.1
# the later stages of ResNet18 16-16-32-64 on CIFAR (stage 1 is in workloads.LAYER_SHAPES)
LATER_CIFAR_STAGES = [("cifar-resnet18 stage3", 32, 8), ("cifar-resnet18 stage4", 64, 4)]


def interleaved(fns: dict, rounds: int) -> dict[str, list[float]]:
    """``rounds`` samples of each function's seconds per call, interleaved (``cbcn.harness.measure``), each
    sample about 20 ms long, on ``settings.bench_timer_name()``'s clock (CPU time for one thread)."""
    return interleaved_times(fns, rounds=rounds, clock=settings.bench_timer_name(), min_sample_s=0.02)


def median_ratio(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b))


def ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:.3f}"


def cif_share(batch: int, K: int, rounds: int, device) -> dict:
    """Training step of ResNet18 16-16-32-64, CBCN, vs the CiF work inside it."""
    shape = workloads.TrainShape("resnet18", "resnet18", "16-16-32-64", batch)
    step = workloads.TrainStep(shape, "cbcn", K, device)
    convs = [m for m in step.model.modules() if isinstance(m, BinaryConv2d) and m.cbconv]
    weights = [m.binarized_weight().detach().requires_grad_() for m in convs]
    grads = [torch.randn_like(rotated_bank(w, K)) for w in weights]
    full_grads = [torch.randn_like(cif_expand(w, K)) for w in weights]

    def layer_cif():  # what the layers run: rotated bank forward + backward (Eq. 8 through autograd)
        return torch.autograd.grad([rotated_bank(w, K) for w in weights], weights, grads)

    def full_cif():  # a layer without the K-sum identity would expand the full bank
        return torch.autograd.grad([cif_expand(w, K) for w in weights], weights, full_grads)

    s = interleaved({"step": step, "layer_cif": layer_cif, "full_cif": full_cif}, rounds)
    return {
        "batch": batch,
        "circulant convs": len(convs),
        "step ms": ms(s["step"]),
        "CiF (layer path) ms": ms(s["layer_cif"]),
        "CiF share": f"{median_ratio(s['layer_cif'], s['step']):.2%}",
        "full cif_expand ms": ms(s["full_cif"]),
        "full share": f"{median_ratio(s['full_cif'], s['step']):.2%}",
        "target": f"< {TARGET_CIF_SHARE:.0%}",
        "met": "yes" if median_ratio(s["layer_cif"], s["step"]) < TARGET_CIF_SHARE else "NO",
    }


def layer_ratio(shape: workloads.ConvShape, K: int, rounds: int, device) -> dict:
    """CBCN layer forward vs nn.Conv2d with the same physical channels, with and without autograd."""
    layer = workloads.make_layer("cbcn", K, shape, device)
    conv = workloads.make_layer("conv2d", K, shape, device)
    row = {"layer": shape.name, "shape (maps)": str(shape), "K": K}
    for mode in ("train", "no_grad"):  # train: the input carries autograd history, as inside a network
        x = workloads.layer_input(conv, shape, device, requires_grad=mode == "train")
        with torch.enable_grad() if mode == "train" else torch.no_grad():
            s = interleaved({"cbcn": lambda: layer(x), "conv": lambda: conv(x)}, rounds)
        ratio = median_ratio(s["cbcn"], s["conv"])
        row.update({f"{mode}: cbcn ms": ms(s["cbcn"]), f"{mode}: conv2d ms": ms(s["conv"]), f"{mode}: ratio": f"{ratio:.2f}"})
    ratio = float(row["train: ratio"])
    row["target"] = f"<= {TARGET_LAYER_RATIO}"
    row["met"] = "yes" if ratio <= TARGET_LAYER_RATIO else "NO"
    return row


def layer_breakdown(shape: workloads.ConvShape, K: int, rounds: int, device) -> dict:
    """Where a CBCN training forward spends its time, piece by piece (ms, medians)."""
    layer = workloads.make_layer("cbcn", K, shape, device)
    x = torch.randn(shape.batch, shape.in_maps * K, shape.hw, shape.hw, device=device)
    xb = sign(x)
    xs = xb.reshape(shape.batch, shape.in_maps, K, shape.hw, shape.hw).sum(dim=2)
    bank = rotated_bank(layer.binarized_weight(), K)
    out = F.conv2d(xs, bank, None, 1, 1)
    alpha = layer.scale().view(1, -1, 1, 1)
    pieces = {
        "whole layer": lambda: layer(x),
        "sign(x)": lambda: sign(x),
        "K-sum": lambda: xb.reshape(shape.batch, shape.in_maps, K, shape.hw, shape.hw).sum(dim=2),
        "bank": lambda: rotated_bank(layer.binarized_weight(), K),
        "conv (K-sum)": lambda: F.conv2d(xs, bank, None, 1, 1),
        "alpha*out": lambda: out * alpha,
    }
    with torch.no_grad():
        s = interleaved(pieces, rounds)
    return {"layer": shape.name, **{k: ms(v) for k, v in s.items()}}


def markdown(rows: list[dict]) -> str:
    return markdown_table(pd.DataFrame(rows).fillna(""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[4, 8, 16, 32, 128],
                        help="training-step batch sizes (128: the CIFAR recipe)")
    parser.add_argument("--layer-batch", type=int, default=None, help="batch of the layer shapes (default: the size's)")
    parser.add_argument("--threads", default=None, help="torch threads (default CBCN_BENCH_THREADS, else 1; 'all')")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--K", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="also write the tables to this Markdown file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        os.environ["CBCN_BENCH_THREADS"] = args.threads
    torch.set_num_threads(settings.bench_threads())
    torch.manual_seed(0)
    device = settings.bench_device()
    env = settings.environment(device)
    size = settings.bench_size()
    shapes = workloads.LAYER_SHAPES[size]
    cifar = next(s for s in shapes if s.name == "cifar-resnet18")
    shapes = shapes + [replace(cifar, name=n, in_maps=m, out_maps=m, hw=hw) for n, m, hw in LATER_CIFAR_STAGES]
    if args.layer_batch:
        shapes = [replace(s, batch=args.layer_batch) for s in shapes]

    out = [f"# CBCN overhead targets (issue 6)\n\n{', '.join(f'{k}={v}' for k, v in env.items())}, "
           f"loadavg={os.getloadavg()[0]:.2f}, rounds={args.rounds}\n"]
    out.append(f"## 1. CiF expansion share of a training step (ResNet18 16-16-32-64, CBCN K={args.K}, CIFAR 32x32)\n")
    out.append(markdown([cif_share(b, args.K, args.rounds, device) for b in args.batch]))
    out.append(f"\n## 2. CBCN layer forward vs nn.Conv2d with the same physical channels (K={args.K})\n")
    out.append(markdown([layer_ratio(s, args.K, args.rounds, device) for s in shapes]))
    out.append("\n### Where a CBCN layer forward spends its time (no_grad, ms)\n")
    out.append(markdown([layer_breakdown(s, args.K, args.rounds, device) for s in shapes]))
    text = "\n".join(out) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
