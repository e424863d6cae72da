#!/usr/bin/env python
"""A 1-bit CBCN model's forward on the CPU reference path: the K-sum form vs the full CiF bank.

ResNet18 16-16-32-64 CBCN K=4 (the paper's CIFAR model, random weights), batch 64 at 32×32, one
thread, median of 9 forwards after one warm-up, the three models timed in turn in each round with the float training
model; all three give identical logits (checked). The 1-bit model convolves in the K-sum form on
path "mma" (``OneBitConv2d.ksum``) and with the full bank on path "popcount"; on the CPU both run
``cbcn.backends.reference``'s reference (float ``F.conv2d`` of unpacked signs, plus packing and unpacking), so
this measures the K-sum form's saving in convolution work, not a packed CPU kernel.

Usage: python benchmarks/cpu_onebit_forward.py
"""
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cbcn.models import build_model  # noqa: E402
from cbcn.onebit import convert_to_onebit  # noqa: E402


def interleaved_median_ms(models, x, repeats=9):
    """Median ms of one forward per model, the models timed in turn in every round (drift on a
    shared machine hits them alike)."""
    times = {name: [] for name in models}
    with torch.no_grad():
        for fn in models.values():
            fn(x)  # warm-up
        for _ in range(repeats):
            for name, fn in models.items():
                t0 = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) * 1e3 for name, ts in times.items()}


def main():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("resnet18", method="cbcn", stages=(16, 16, 32, 64), K=4).eval()
    x = torch.randn(64, 3, 32, 32)
    ksum = convert_to_onebit(model, backend="reference", path="mma")
    full = convert_to_onebit(model, backend="reference", path="popcount")
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(ksum(x), expected) and torch.equal(full(x), expected), "logits differ"
    ms = interleaved_median_ms({
        "training model (float, K-sum identity)": model,
        "1-bit, full CiF bank (path popcount)": full,
        "1-bit, K-sum form (path mma)": ksum,
    }, x)
    rows = list(ms.items())
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 1 thread, batch 64, 32x32")
    for name, ms in rows:
        print(f"{name:40s} {ms:8.1f} ms")
    print(f"K-sum form vs full bank: {rows[1][1] / rows[2][1]:.2f}x faster")


if __name__ == "__main__":
    main()
