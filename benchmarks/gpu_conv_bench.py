#!/usr/bin/env python
"""Packed binary convolution vs cuDNN at ResNet18 layer shapes — one run on one GPU.

For each ResNet18 3×3 conv shape (C 64…512, spatial 56…7, the four stride-1 convs and the three
stride-2 ones) at batch 256 (the target, timed first) and batch 1, this script

1. checks on the GPU that the Triton paths equal the exact reference bit for bit: ``F.conv2d`` of
   the ±1 tensors in **float64** (every partial sum is a small integer, so this is exact; rounded
   to the integer to be safe from any non-direct cuDNN algorithm), converted to fp32 and times α
   in fp32 — the kernels' epilogue order. (An fp32 cuDNN reference is *not* exact: with
   ``benchmark=True`` it picks Winograd/FFT for some stride-1 shapes.) Outputs checked: fp32,
   fp16 (the fp32 result rounded), and the re-binarised packed signs;
2. times, side by side: ``path="mma"`` — activation unpack (packed → int8 with zero halo,
   ``unpack_ms``) plus the int8 implicit GEMM, with fp32 / fp16 / packed 1-bit outputs, and the
   GEMM alone (``mma_conv_f16_ms``); the same for ``path="mma_fp8"`` (fp8 e4m3 operands,
   ``mma_fp8_*`` columns); ``path="popcount"``; cuDNN fp32 NCHW (TF32 as PyTorch
   defaults it), fp16 and bf16 channels-last; a cuBLAS int8 GEMM of the same M×K×N
   (``torch._int_mm``, no im2col: a ceiling for an int8 implicit GEMM);
3. reports binary MAC/s (``N·OH·OW·C_out·C_in·9`` per conv), int8-equivalent TOPS (2 ops per MAC)
   and the fraction of the int8 dense tensor-core peak — H100 SXM / H200 ≈ 1979 TOPS,
   H100 PCIe ≈ 1513 TOPS (detected by device name; the assumed peak is printed and written);
4. writes ``results.csv`` and ``results.md`` to ``--out`` (after every shape, so a cut-off run
   keeps what it measured).

What the times include: GPU time of one call, the median of a CUDA graph of back-to-back calls
replayed (``triton.testing.do_bench_cudagraph`` through ``cbcn.harness.measure.kernel_time_ms``, so
Python/launch overhead is excluded for every contender alike); ``mma_eager_ms`` is the eager
per-call time of the fp16-output call (``do_bench``), host overhead included. Packed-path times start
from packed activations and include their unpacking to int8 (not the packing of float input,
``pack_ms``); the int8 weight matrix is unpacked once and cached (inference weights are
constant). cuDNN times start from fp16/bf16/fp32 tensors (their conversion is not timed) and
write fp16/bf16/fp32 outputs — compare ``mma_f16_ms`` (same output type) with ``torch_fp16_cl_ms``.

Budget: ≈ 200 s on one H100 including Triton compilation and autotuning (``--budget-s`` stops
starting new shapes when spent and says so; elapsed time is printed per shape).

``--dry-run`` runs the same code paths on the CPU with tiny shapes (kernels in the Triton
interpreter if Triton is installed, else the reference only), for tests.

Usage (device machine):  python benchmarks/gpu_conv_bench.py --out benchmarks/results/h100
"""
from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cbcn.fileio import atomic_write_text  # noqa: E402
from cbcn.harness.markdown import markdown_table  # noqa: E402
from cbcn.harness.measure import kernel_time_ms  # noqa: E402
from cbcn.nn.binarize import sign  # noqa: E402
from cbcn.onebit.backends import reference  # noqa: E402
from cbcn.onebit.backends.contract import conv_output_size  # noqa: E402

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


def exact_reference(x, w, alpha, stride, pad):
    """``conv(sign x, sign w)`` computed exactly (float64, rounded to the integer it is), then to
    fp32 and ``· α`` in fp32 — the kernels' epilogue order. Returns the fp32 NCHW result."""
    prev = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        dot = F.conv2d(sign(x).double(), sign(w).double(), None, stride, pad).round_()
    finally:
        torch.backends.cudnn.benchmark = prev
    return dot.float() * alpha.view(1, -1, 1, 1)


def exact_reference_ksum(x, w_rot, alpha, stride, pad, K):
    """The K-sum form's exact result: the conv of each map's K-channel sign sum with the rotated
    bank's signs (float64, exact), to fp32, ``· α`` — equal to the conv of the physical ±1
    channels with the full CiF bank."""
    N, C, H, W = x.shape
    summed = sign(x).double().reshape(N, C // K, K, H, W).sum(dim=2)
    prev = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        dot = F.conv2d(summed, sign(w_rot).double(), None, stride, pad).round_()
    finally:
        torch.backends.cudnn.benchmark = prev
    return dot.float() * alpha.view(1, -1, 1, 1)


def _rate(row, label, ms, macs, peak):
    row[f"{label}_ms"] = ms
    row[f"{label}_TOPS"] = 2 * macs / ms / 1e9
    if peak:
        row[f"{label}_peak_frac"] = row[f"{label}_TOPS"] / peak


def _try(row, label, fn):
    """Run ``fn()``; on error record ``{label}_error`` and go on with the rest."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - report, keep benchmarking the rest
        row[f"{label}_error"] = f"{type(exc).__name__}: {exc}"[:300]
        print(f"[bench] {row['layer']} b{row['batch']} {label}: {row[f'{label}_error']}", flush=True)
        return None


def gpu_device(dry: bool) -> torch.device:
    """The GPU (cuDNN autotuning on), or the CPU for ``--dry-run``; without a GPU, one clear line.
    Shared with ``gpu_model_bench.py``."""
    if not dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run on a CPU")
    torch.backends.cudnn.benchmark = True
    return torch.device("cpu" if dry else "cuda")


def run(args) -> list[dict]:
    dry = args.dry_run
    device = gpu_device(dry)
    try:
        import triton_kernels as tk
        from triton_kernels import conv as tkconv

        have_triton = True
    except Exception as exc:  # Triton missing: reference only
        tk, tkconv, have_triton = None, None, False
        print(f"[bench] Triton kernels unavailable ({exc}); timing the reference path only")
    shapes = DRY_SHAPES if dry else RESNET18_SHAPES
    if args.only_layers:
        wanted = set(args.only_layers.split(","))
        shapes = [s_ for s_ in shapes if s_[0] in wanted]
    if args.max_shapes:
        shapes = shapes[: args.max_shapes]
    if args.only_batch:
        batches = [int(args.only_batch)]
    else:
        batches = [int(b) for b in (args.batches or ("1,2" if dry else "256,1")).split(",")]
    paths = [p for p in args.paths.split(",") if p] if have_triton else []
    dev_name = "cpu (dry run)" if dry else torch.cuda.get_device_name(device)
    peak, peak_note = (None, "dry run: no peak") if dry else int8_peak(dev_name)
    print(f"[bench] device: {dev_name}; torch {torch.__version__}; "
          f"triton {getattr(sys.modules.get('triton'), '__version__', 'n/a')}; peak: {peak_note}", flush=True)
    timer = gpu_timer(device, args.rep_ms, graph=not args.no_graphs)
    t_start = time.time()
    rows = []
    gen = torch.Generator(device="cpu").manual_seed(0)
    for batch in batches:
        for name, C_in, C_out, H, stride in shapes:
            elapsed = time.time() - t_start
            if elapsed > args.budget_s:
                print(f"[bench] budget of {args.budget_s:.0f}s spent ({elapsed:.0f}s): skipping {name} batch {batch}")
                rows.append(dict(layer=name, batch=batch, note="skipped: time budget spent"))
                continue
            pad = 1
            x = torch.randn(batch, C_in, H, H, generator=gen).to(device)
            w = torch.randn(C_out, C_in, 3, 3, generator=gen).to(device)
            alpha = w.abs().mean(dim=(1, 2, 3))
            OH = conv_output_size(H, 3, stride, pad)
            macs = batch * OH * OH * C_out * C_in * 9
            xp, wp = reference.pack_signs(x), reference.pack_signs(w)
            ref = exact_reference(x, w, alpha, stride, pad)
            row = dict(layer=name, batch=batch, C_in=C_in, C_out=C_out, H=H, stride=stride, OH=OH,
                       binary_MACs=macs, device=dev_name, peak_assumed=peak_note)
            for path in paths:
                def conv(out_dtype=torch.float32, binarize=False, path=path):
                    return tk.packed_conv2d(xp, wp, C_in, stride, pad, scale=alpha, path=path,
                                            out_dtype=out_dtype, binarize_output=binarize)

                out = _try(row, path, conv)
                if out is None:
                    continue
                row[f"{path}_exact"] = bool(torch.equal(out, ref))
                del out
                ms = _try(row, path, lambda: timer(conv))
                if ms is not None:
                    _rate(row, path, ms, macs, peak)
                if path not in ("mma", "mma_fp8"):
                    continue
                # the two-stage paths: fp16 and packed outputs, unpack alone, GEMM alone, eager call
                dtype = tkconv.OPERAND_DTYPES[path]
                f16 = _try(row, f"{path}_f16", lambda: conv(torch.float16))
                if f16 is not None:
                    row[f"{path}_f16_exact"] = bool(torch.equal(f16, ref.half()))
                    del f16
                    ms = _try(row, f"{path}_f16", lambda: timer(lambda: conv(torch.float16)))
                    if ms is not None:
                        _rate(row, f"{path}_f16", ms, macs, peak)
                    row[f"{path}_eager_ms"] = _try(row, f"{path}_eager", lambda: timer.eager(lambda: conv(torch.float16)))
                packed = _try(row, f"{path}_bin", lambda: conv(binarize=True))
                if packed is not None:
                    row[f"{path}_bin_exact"] = bool(torch.equal(packed, reference.pack_signs(ref)))
                    del packed
                    ms = _try(row, f"{path}_bin", lambda: timer(lambda: conv(binarize=True)))
                    if ms is not None:
                        _rate(row, f"{path}_bin", ms, macs, peak)
                unpack_label = "unpack" if path == "mma" else f"{path}_unpack"
                row[f"{unpack_label}_ms"] = _try(
                    row, unpack_label, lambda: timer(lambda: tkconv.unpack_activations(xp, C_in, pad, dtype)))
                xh = tkconv.unpack_activations(xp, C_in, pad, dtype)
                wm = tkconv.unpack_weights(wp, C_in, dtype=dtype)

                def gemm():
                    return tkconv.unpacked_conv2d(xh, wm, (3, 3), stride, (OH, OH), scale=alpha, out_dtype=torch.float16)

                ms = _try(row, f"{path}_conv_f16", lambda: timer(gemm))
                if ms is not None:
                    _rate(row, f"{path}_conv_f16", ms, macs, peak)
                del xh, wm
            K = args.ksum
            if have_triton and K > 1 and C_in % K == 0:
                # CBConv's K-sum form of the same physical layer (C_in = maps·K): the GEMM runs over
                # C_in/K summed channels with the rotated bank (up to K× fewer multiply-adds)
                row["ksum"] = K
                w_rot = torch.randn(C_out, C_in // K, 3, 3, generator=gen).to(device)
                wrp = reference.pack_signs(w_rot)
                ref_k = exact_reference_ksum(x, w_rot, alpha, stride, pad, K)
                for path in ("mma", "mma_fp8"):
                    if path not in paths:
                        continue
                    label = f"{path}_ksum_f16"

                    def ksum_conv(path=path):
                        return tk.packed_conv2d(xp, wrp, C_in, stride, pad, scale=alpha, path=path,
                                                out_dtype=torch.float16, ksum=K)

                    out = _try(row, label, ksum_conv)
                    if out is None:
                        continue
                    row[f"{label}_exact"] = bool(torch.equal(out, ref_k.half()))
                    del out
                    ms = _try(row, label, lambda: timer(ksum_conv))
                    if ms is not None:  # the GEMM's actual multiply-adds: maps padded to a multiple of 32
                        _rate(row, label, ms, batch * OH * OH * C_out * 9 * tkconv.padded_channels(C_in // K), peak)
                del w_rot, wrp, ref_k
            if have_triton:
                row["pack_ms"] = timer(lambda: tk.pack_signs(x))
            else:
                row["reference_ms"] = timer(lambda: reference.packed_conv2d_reference(xp, wp, C_in, stride, pad, scale=alpha))
                row["reference_exact"] = bool(torch.equal(reference.packed_conv2d_reference(xp, wp, C_in, stride, pad, scale=alpha), ref))
                row["pack_ms"] = timer(lambda: reference.pack_signs(x))
            # cuDNN baselines on the same ±1 data (inputs already converted: conversion not timed)
            xs, ws = sign(x), sign(w)
            row["torch_fp32_ms"] = timer(lambda: F.conv2d(xs, ws, None, stride, pad))
            for dt, label in ((torch.float16, "fp16"), (torch.bfloat16, "bf16")):
                if dry and dt == torch.float16:
                    continue  # CPU fp16 conv is not a meaningful baseline
                xl = xs.to(dt).contiguous(memory_format=torch.channels_last)
                wl = ws.to(dt).contiguous(memory_format=torch.channels_last)
                row[f"torch_{label}_cl_ms"] = timer(lambda: F.conv2d(xl, wl, None, stride, pad))
                del xl, wl
            if not dry and batch >= 16 and not args.no_cublas:
                # ceiling: a dense cuBLAS int8 GEMM of the implicit GEMM's M x K x N (no im2col)
                Mg, Kg = batch * OH * OH, 9 * C_in
                a8 = torch.randint(-1, 2, (Mg, Kg), dtype=torch.int8, device=device)
                b8 = torch.randint(-1, 2, (C_out, Kg), dtype=torch.int8, device=device).t()
                ms = _try(row, "cublas_i8_gemm", lambda: timer(lambda: torch._int_mm(a8, b8)))
                if ms is not None:
                    _rate(row, "cublas_i8_gemm", ms, macs, peak)
                del a8, b8
            for label in TIMED_LABELS:
                for base in ("fp16", "bf16"):
                    if f"{label}_ms" in row and f"torch_{base}_cl_ms" in row:
                        row[f"{label}_speedup_vs_{base}cl"] = row[f"torch_{base}_cl_ms"] / row[f"{label}_ms"]
            row["elapsed_s"] = time.time() - t_start
            rows.append(row)
            print(_line(row, paths), flush=True)
            del x, w, xp, wp, ref, xs, ws
            if device.type == "cuda":
                torch.cuda.empty_cache()
            write_results(rows, Path(args.out), dev_name, peak_note, paths, dry, quiet=True)
    write_results(rows, Path(args.out), dev_name, peak_note, paths, dry)
    print(f"[bench] total {time.time() - t_start:.0f}s", flush=True)
    return rows


def _fmt(v, digits=3):
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


def _line(row, paths):
    parts = [f"[{row.get('elapsed_s', 0):5.0f}s] {row['layer']:8s} b{row['batch']:<3d} "
             f"C{row['C_in']}->{row['C_out']} {row['H']}x{row['H']}/s{row['stride']}"]
    for label in TIMED_LABELS + ("cublas_i8_gemm",):
        if f"{label}_ms" in row:
            frac = f" {100 * row[label + '_peak_frac']:.1f}%pk" if f"{label}_peak_frac" in row else ""
            ok = f" exact={row[label + '_exact']}" if f"{label}_exact" in row else ""
            parts.append(f"{label} {row[label + '_ms']:.3f}ms{ok}{frac}")
    for label in ("unpack", "mma_fp8_unpack"):
        if row.get(f"{label}_ms") is not None:
            parts.append(f"{label} {row[f'{label}_ms']:.3f}ms")
    parts.append(f"fp32 {row['torch_fp32_ms']:.3f}ms")
    for label in ("fp16", "bf16"):
        if f"torch_{label}_cl_ms" in row:
            parts.append(f"{label}-cl {row[f'torch_{label}_cl_ms']:.3f}ms")
    for label in ("mma_f16", "mma_fp8_f16", "mma_ksum_f16"):
        if f"{label}_speedup_vs_fp16cl" in row:
            parts.append(f"{label} x{row[f'{label}_speedup_vs_fp16cl']:.2f} vs fp16-cl")
    return " | ".join(parts)


# timed packed-kernel labels: path="mma" and "mma_fp8" with fp32 / fp16 / packed outputs and the
# GEMM alone, then the one-kernel paths
TIMED_LABELS = ("mma", "mma_f16", "mma_bin", "mma_conv_f16",
                "mma_fp8", "mma_fp8_f16", "mma_fp8_bin", "mma_fp8_conv_f16",
                "mma_ksum_f16", "mma_fp8_ksum_f16", "popcount", "mma_regs")
COLUMNS = (
    ["layer", "batch", "C_in", "C_out", "H", "stride", "OH", "binary_MACs", "ksum"]
    + [f"{label}_exact" for label in TIMED_LABELS if "conv" not in label] + ["reference_exact"]
    + [f"{label}_ms" for label in TIMED_LABELS]
    + ["unpack_ms", "mma_fp8_unpack_ms", "mma_eager_ms", "mma_fp8_eager_ms", "reference_ms", "pack_ms",
       "torch_fp16_cl_ms", "torch_bf16_cl_ms", "torch_fp32_ms", "cublas_i8_gemm_ms"]
    + [f"{label}_speedup_vs_fp16cl" for label in TIMED_LABELS]
    + [f"{label}_speedup_vs_bf16cl" for label in TIMED_LABELS]
    + [f"{label}_TOPS" for label in TIMED_LABELS + ("cublas_i8_gemm",)]
    + [f"{label}_peak_frac" for label in TIMED_LABELS + ("cublas_i8_gemm",)]
    + [f"{label}_error" for label in TIMED_LABELS + ("unpack", "mma_fp8_unpack", "mma_eager", "mma_fp8_eager",
                                                      "cublas_i8_gemm")]
    + ["note", "elapsed_s", "device", "peak_assumed"]
)


def gpu_timer(device: torch.device, rep_ms: float, graph: bool = True):
    """``timer(fn)``: median ms of one call (``cbcn.harness.measure.kernel_time_ms``: a replayed CUDA graph,
    or eager calls without ``graph``); ``timer.eager(fn)``: eager calls, host overhead included.
    Shared with ``gpu_model_bench.py``."""
    timer = partial(kernel_time_ms, device=device, graph=graph, rep_ms=rep_ms)
    timer.eager = partial(kernel_time_ms, device=device, graph=False, rep_ms=rep_ms)
    return timer


def write_tables(out: Path, rows, columns, hidden, title, notes, key, tag, quiet=False):
    """``results.csv`` (every column of ``columns`` some row has) and ``results.md`` (``title``, the
    software versions, ``notes``, a table of those columns except ``hidden`` and ``*_error``, then
    the errors, each named by the row's ``key`` and batch) under ``out``, each written atomically.
    Shared with ``gpu_model_bench.py``."""
    out.mkdir(parents=True, exist_ok=True)
    cols = [c for c in columns if any(c in r for r in rows)]
    table = pd.DataFrame(rows).reindex(columns=cols)
    atomic_write_text(out / "results.csv", table.to_csv(index=False))
    md_cols = [c for c in cols if c not in hidden and not c.endswith("_error")]
    errors = [f"- {r[key]} b{r['batch']} {c}: {r[c]}" for r in rows for c in cols if c.endswith("_error") and r.get(c)]
    lines = [
        f"# {title}",
        "",
        f"- torch {torch.__version__}; triton {getattr(sys.modules.get('triton'), '__version__', 'n/a')}; "
        f"python {platform.python_version()}",
        *notes,
        "",
        markdown_table(table[md_cols], _fmt),
    ]
    if errors:
        lines += ["", "## Errors", ""] + errors
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    if not quiet:
        print(f"[{tag}] wrote {out / 'results.csv'} and {out / 'results.md'}")


def write_results(rows, out: Path, dev_name, peak_note, paths, dry, quiet=False):
    notes = [
        f"- device: {dev_name}",
        f"- int8 tensor-core peak assumed: {peak_note}",
        f"- mode: {'DRY RUN (CPU, tiny shapes, interpreter/reference: timings meaningless)' if dry else 'GPU'}",
        "- *_exact: bit-identical to the exact reference: F.conv2d of the ±1 tensors in float64 (exact integers,"
        " rounded), to fp32, times α in fp32 (the kernels' epilogue order); fp16 / packed outputs compared with"
        " that result rounded to fp16 / re-binarised. (An fp32 cuDNN reference is not exact: Winograd/FFT.)",
        "- times: GPU ms of one call, median of CUDA graph replays (triton.testing.do_bench_cudagraph; launch/Python"
        " overhead excluded for all); mma_eager_ms = eager fp16-output call incl. host overhead (do_bench).",
        "- mma_f16 / mma_bin / mma: path='mma' from packed activations to fp16 / packed 1-bit / fp32 output,"
        " *including* the activation unpack (unpack_ms: packed -> int8 NHWC with zero halo); int8 weights unpacked"
        " once and cached. mma_conv_f16: the int8 implicit GEMM alone (fp16 out). pack_ms (float -> packed) not"
        " included anywhere. cuDNN (torch_*): inputs already fp16/bf16/fp32 (conversion not timed), output same type;"
        " the like-for-like comparison is mma_f16_ms vs torch_fp16_cl_ms.",
        "- mma_fp8*: path='mma_fp8', the same two stages with fp8 e4m3 operands (±1/0 exact) and an fp32"
        " accumulator (Triton keeps fp8 wgmma in flight across K-steps, int8 wgmma not); fp8 dense peak = int8"
        " dense peak on H100/H200, so peak_frac uses the same peak.",
        "- *_ksum_f16: CBConv's K-sum form of the same physical layer (C_in = maps·ksum; rotated bank over the"
        " maps, each map's ksum channel signs summed while unpacking, fp16 output), from packed activations; exact"
        " against the float64 conv of the sums. Its TOPS / peak_frac count the GEMM's actual multiply-adds"
        " (binary_MACs·CP/C_in, CP = C_in/ksum rounded up to 32); its speed-up is against the same physical"
        " cuDNN fp16 conv.",
        "- binary MACs = N·OH·OW·C_out·C_in·9; TOPS = 2·MACs/s; peak_frac = TOPS / int8 dense peak;"
        " cublas_i8_gemm: torch._int_mm of the same M×K×N (no im2col), a ceiling.",
    ]
    write_tables(out, rows, COLUMNS, ("device", "peak_assumed", "binary_MACs", "OH", "elapsed_s"),
                 "Packed binary convolution vs cuDNN (ResNet18 3×3 shapes)", notes, "layer", "bench", quiet)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latest"), help="folder for results.csv / results.md")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, interpreter or reference (for tests)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes, in order (default 256,1; dry run 1,2)")
    ap.add_argument("--only-batch", type=int, default=0, help="time this batch size only (overrides --batches)")
    ap.add_argument("--only-layers", default="", help="comma-separated layer names (e.g. conv4_x,conv5_x)")
    ap.add_argument("--max-shapes", type=int, default=0, help="only the first N layer shapes (0: all)")
    ap.add_argument("--paths", default="mma,mma_fp8,popcount", help="packed kernel paths: mma,mma_fp8,popcount[,mma_regs]")
    ap.add_argument("--ksum", type=int, default=4,
                    help="also time CBConv's K-sum form with this K (the paper's K=4); 1 = skip")
    ap.add_argument("--rep-ms", type=float, default=20.0,
                    help="milliseconds of calls per timing (triton.testing.do_bench_cudagraph / do_bench's rep)")
    ap.add_argument("--no-graphs", action="store_true", help="time eager calls instead of CUDA graph replays")
    ap.add_argument("--no-cublas", action="store_true", help="skip the cuBLAS int8 GEMM ceiling")
    ap.add_argument("--budget-s", type=float, default=200.0, help="stop starting new shapes after this many seconds")
    args = ap.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    main()
