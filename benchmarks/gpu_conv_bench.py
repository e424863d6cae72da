#!/usr/bin/env python
"""Packed binary convolution vs cuDNN at ResNet18 layer shapes — one run on one GPU.

For each ResNet18 3×3 conv shape (C 64…512, spatial 56…7, the four stride-1 convs and the three
stride-2 ones) and batch 1 and 256, this script

1. checks on the GPU that both Triton paths (int8 tensor cores ``mma``, XOR+``popcount``) equal
   the reference (``F.conv2d`` on ±1 tensors in fp32, TF32 off, times α) exactly;
2. times, side by side in one run: the packed kernels (on pre-packed operands; the activation
   packing is timed separately), ``torch.conv2d`` fp32 NCHW (cuDNN, TF32 as PyTorch defaults it)
   and fp16 / bf16 channels-last (cuDNN);
3. reports binary MAC/s (``N·OH·OW·C_out·C_in·9`` per conv), int8-equivalent TOPS (2 ops per MAC)
   and the fraction of the int8 dense tensor-core peak — H100 SXM / H200 ≈ 1979 TOPS,
   H100 PCIe ≈ 1513 TOPS (detected by device name; the assumed peak is printed and written);
4. writes ``results.csv`` and ``results.md`` to ``--out``.

Budget: sized for ≈10 minutes of one H100 including Triton compilation and autotuning
(``--budget-s`` stops timing new shapes when the budget is spent and says so).

``--dry-run`` runs the same code paths on the CPU with tiny shapes (kernels in the Triton
interpreter if Triton is installed, else the reference only), for tests.

Usage (device machine):  python benchmarks/gpu_conv_bench.py --out benchmarks/results/h100
"""
from __future__ import annotations

import argparse
import csv
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cbcn import bitpack  # noqa: E402
from cbcn.binarize import sign  # noqa: E402

# (name, C_in, C_out, H_in, stride): ResNet18 3×3 convs (ImageNet widths)
RESNET18_SHAPES = [
    ("conv2_x", 64, 64, 56, 1),
    ("conv3_1", 64, 128, 56, 2),
    ("conv3_x", 128, 128, 28, 1),
    ("conv4_1", 128, 256, 28, 2),
    ("conv4_x", 256, 256, 14, 1),
    ("conv5_1", 256, 512, 14, 2),
    ("conv5_x", 512, 512, 7, 1),
]
DRY_SHAPES = [("tiny_a", 40, 33, 7, 1), ("tiny_b", 70, 64, 5, 2)]
INT8_PEAK_TOPS = {"H100 SXM": 1979.0, "H100 PCIe": 1513.0, "H100 NVL": 1671.0, "H200": 1979.0}


def int8_peak(device_name: str) -> tuple[float | None, str]:
    """Dense int8 tensor-core peak (TOPS) assumed for a device name, and what was assumed."""
    name = device_name.upper()
    if "H200" in name:
        return INT8_PEAK_TOPS["H200"], "H200 dense int8 1979 TOPS"
    if "H100" in name:
        if "PCIE" in name:
            return INT8_PEAK_TOPS["H100 PCIe"], "H100 PCIe dense int8 1513 TOPS"
        if "NVL" in name:
            return INT8_PEAK_TOPS["H100 NVL"], "H100 NVL dense int8 1671 TOPS"
        return INT8_PEAK_TOPS["H100 SXM"], "H100 SXM dense int8 1979 TOPS"
    return None, f"unknown int8 peak for {device_name!r}: fraction of peak not reported"


@dataclass
class Timer:
    device: torch.device
    warmup: int
    reps: int

    def __call__(self, fn) -> float:
        """Median milliseconds of ``fn()`` (CUDA events on a GPU, perf_counter on the CPU)."""
        for _ in range(self.warmup):
            fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            times = []
            for _ in range(self.reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            return statistics.median(times)
        times = []
        for _ in range(self.reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def run(args) -> list[dict]:
    dry = args.dry_run
    device = torch.device("cpu" if dry else "cuda")
    if not dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run on a CPU")
    torch.backends.cudnn.benchmark = True
    try:
        import triton_kernels as tk

        have_triton = True
    except Exception as exc:  # Triton missing: reference only
        tk, have_triton = None, False
        print(f"[bench] Triton kernels unavailable ({exc}); timing the reference path only")
    shapes = DRY_SHAPES if dry else RESNET18_SHAPES
    if args.max_shapes:
        shapes = shapes[: args.max_shapes]
    batches = [int(b) for b in (args.batches or ("1,2" if dry else "1,256")).split(",")]
    paths = [p for p in args.paths.split(",") if p] if have_triton else []
    dev_name = "cpu (dry run)" if dry else torch.cuda.get_device_name(device)
    peak, peak_note = (None, "dry run: no peak") if dry else int8_peak(dev_name)
    print(f"[bench] device: {dev_name}; torch {torch.__version__}; "
          f"triton {getattr(sys.modules.get('triton'), '__version__', 'n/a')}; peak: {peak_note}")
    warmup, reps = (1, 2) if dry else (args.warmup, args.reps)
    timer = Timer(device, warmup, reps)
    t_start = time.time()
    rows = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    for batch in batches:
        for name, C_in, C_out, H, stride in shapes:
            if time.time() - t_start > args.budget_s:
                print(f"[bench] budget of {args.budget_s:.0f}s spent: skipping {name} batch {batch} and later shapes")
                rows.append(dict(layer=name, batch=batch, note="skipped: time budget spent"))
                continue
            pad = 1
            x = torch.randn(batch, C_in, H, H, generator=gen).to(device)
            w = torch.randn(C_out, C_in, 3, 3, generator=gen).to(device)
            alpha = w.abs().mean(dim=(1, 2, 3))
            OH = bitpack.conv_output_size(H, 3, stride, pad)
            macs = batch * OH * OH * C_out * C_in * 9
            xp, wp = bitpack.pack_signs(x), bitpack.pack_signs(w)
            # reference: fp32 conv of ±1 (exact: TF32 off), times α
            prev_tf32 = torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = False
            ref = F.conv2d(sign(x), sign(w), None, stride, pad) * alpha.view(1, -1, 1, 1)
            torch.backends.cudnn.allow_tf32 = prev_tf32
            row = dict(layer=name, batch=batch, C_in=C_in, C_out=C_out, H=H, stride=stride, OH=OH,
                       binary_MACs=macs, device=dev_name, peak_assumed=peak_note)
            for path in paths:
                try:
                    out = tk.packed_conv2d(xp, wp, C_in, stride, pad, scale=alpha, path=path)
                    row[f"{path}_exact"] = bool(torch.equal(out, ref))
                    ms = timer(lambda: tk.packed_conv2d(xp, wp, C_in, stride, pad, scale=alpha, path=path))
                    row[f"{path}_ms"] = ms
                    row[f"{path}_GMACs"] = macs / ms / 1e6
                    row[f"{path}_TOPS"] = 2 * macs / ms / 1e9
                    if peak:
                        row[f"{path}_peak_frac"] = row[f"{path}_TOPS"] / peak
                except Exception as exc:  # report, keep benchmarking the rest
                    row[f"{path}_error"] = f"{type(exc).__name__}: {exc}"[:200]
                    print(f"[bench] {name} b{batch} {path}: {row[f'{path}_error']}")
            if have_triton:
                row["pack_ms"] = timer(lambda: tk.pack_signs(x))
            else:
                row["reference_ms"] = timer(lambda: bitpack.packed_conv2d_reference(xp, wp, C_in, stride, pad, scale=alpha))
                row["reference_exact"] = bool(torch.equal(bitpack.packed_conv2d_reference(xp, wp, C_in, stride, pad, scale=alpha), ref))
                row["pack_ms"] = timer(lambda: bitpack.pack_signs(x))
            # cuDNN baselines on the same ±1 data
            xs, ws = sign(x), sign(w)
            row["torch_fp32_ms"] = timer(lambda: F.conv2d(xs, ws, None, stride, pad))
            for dt, label in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
                if dry and dt == torch.float16:
                    continue  # CPU fp16 conv is not a meaningful baseline
                xl = xs.to(dt).contiguous(memory_format=torch.channels_last)
                wl = ws.to(dt).contiguous(memory_format=torch.channels_last)
                row[f"torch_{label}_cl_ms"] = timer(lambda: F.conv2d(xl, wl, None, stride, pad))
            for path in paths:
                for label in ("fp16", "bf16"):
                    if f"{path}_ms" in row and f"torch_{label}_cl_ms" in row:
                        row[f"{path}_speedup_vs_{label}cl"] = row[f"torch_{label}_cl_ms"] / row[f"{path}_ms"]
            rows.append(row)
            print(_line(row, paths), flush=True)
            del x, w, xp, wp, ref
            if device.type == "cuda":
                torch.cuda.empty_cache()
    write_results(rows, Path(args.out), dev_name, peak_note, paths, dry)
    return rows


def _fmt(v, digits=3):
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


def _line(row, paths):
    parts = [f"{row['layer']:8s} b{row['batch']:<3d} C{row['C_in']}->{row['C_out']} {row['H']}x{row['H']}/s{row['stride']}"]
    for p in paths:
        if f"{p}_ms" in row:
            frac = f" {100 * row[p + '_peak_frac']:.1f}%pk" if f"{p}_peak_frac" in row else ""
            parts.append(f"{p} {row[p + '_ms']:.3f}ms exact={row[p + '_exact']}{frac}")
    parts.append(f"fp32 {row['torch_fp32_ms']:.3f}ms")
    for label in ("fp16", "bf16"):
        if f"torch_{label}_cl_ms" in row:
            parts.append(f"{label}-cl {row[f'torch_{label}_cl_ms']:.3f}ms")
    return " | ".join(parts)


COLUMNS = ["layer", "batch", "C_in", "C_out", "H", "stride", "OH", "binary_MACs",
           "mma_exact", "popcount_exact", "reference_exact",
           "mma_ms", "popcount_ms", "reference_ms", "pack_ms", "torch_fp32_ms", "torch_fp16_cl_ms", "torch_bf16_cl_ms",
           "mma_speedup_vs_fp16cl", "popcount_speedup_vs_fp16cl", "mma_speedup_vs_bf16cl", "popcount_speedup_vs_bf16cl",
           "mma_TOPS", "popcount_TOPS", "mma_peak_frac", "popcount_peak_frac", "mma_GMACs", "popcount_GMACs",
           "mma_error", "popcount_error", "note", "device", "peak_assumed"]


def write_results(rows, out: Path, dev_name, peak_note, paths, dry):
    out.mkdir(parents=True, exist_ok=True)
    cols = [c for c in COLUMNS if any(c in r for r in rows)]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    md_cols = [c for c in cols if c not in ("device", "peak_assumed", "binary_MACs", "OH")]
    lines = [
        "# Packed binary convolution vs cuDNN (ResNet18 3×3 shapes)",
        "",
        f"- device: {dev_name}; torch {torch.__version__}; python {platform.python_version()}",
        f"- int8 tensor-core peak assumed: {peak_note}",
        f"- mode: {'DRY RUN (CPU, tiny shapes, interpreter/reference: timings meaningless)' if dry else 'GPU'}",
        "- packed times exclude activation packing (column pack_ms); binary MACs = N·OH·OW·C_out·C_in·9;"
        " TOPS = 2·MACs/s; *_exact = bit-identical to F.conv2d(±1)·α in fp32",
        "",
        "| " + " | ".join(md_cols) + " |",
        "|" + "---|" * len(md_cols),
    ]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in md_cols) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"[bench] wrote {out / 'results.csv'} and {out / 'results.md'}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latest"), help="folder for results.csv / results.md")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, interpreter or reference (for tests)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,256; dry run 1,2)")
    ap.add_argument("--max-shapes", type=int, default=0, help="only the first N layer shapes (0: all)")
    ap.add_argument("--paths", default="mma,popcount", help="packed kernel paths to time: mma,popcount")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--budget-s", type=float, default=480.0, help="stop starting new shapes after this many seconds")
    args = ap.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    main()
