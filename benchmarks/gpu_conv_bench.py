#!/usr/bin/env python
"""Packed binary convolution vs cuDNN at ResNet18 layer shapes — one run on one GPU.

For each ResNet18 3×3 conv shape (C 64…512, spatial 56…7, the four stride-1 convs and the three
stride-2 ones) at batch 256 (the target, timed first) and batch 1, this script

1. checks on the GPU that the Triton paths equal the exact reference bit for bit: ``F.conv2d`` of
   the ±1 tensors in **float64** (every partial sum is a small integer, so this is exact; rounded
   to the integer to be safe from any non-direct cuDNN algorithm), converted to fp32 and times α
   in fp32 — the kernels' epilogue order. (An fp32 cuDNN reference is *not* exact: with
   ``benchmark=True`` it picks Winograd/FFT for some stride-1 shapes.) Outputs checked: fp16 (the
   fp32 result rounded); with ``--all-outputs`` also fp32 and the re-binarised packed signs;
2. times, side by side:
   - ``path="mma"``: activation unpack (packed → int8 with zero halo, ``unpack_ms``) plus the int8
     implicit GEMM with fp16 output (``mma_f16``), and the GEMM alone (``mma_conv_f16``); the same
     for ``path="mma_fp8"`` (fp8 e4m3 operands, ``mma_fp8_*``); fp32 and packed 1-bit outputs
     only with ``--all-outputs`` (``tests/test_kernels_gpu.py`` checks them); ``path="mma_packed"``
     (the int8 GEMM reading packed activations, no unpack pass) and ``path="popcount"`` (known to
     be slow) only when ``--paths`` names them;
   - CBConv's K-sum form of the same physical layer (``*_ksum_f16``, ``--ksum``);
   - the **fused layer** as the GPU engine's fused mode runs it (``cbcn.onebit.runner``): the
     operand in its halo buffer → one GEMM kernel that applies the folded affine ``y = dot·A + B``,
     adds an fp16 channels-last residual (stride-1 layers), writes the fp16 real output and the
     next conv's operand into its pre-zeroed halo buffer — ``fused_f16`` (int8),
     ``fused_fp8_f16`` (fp8), ``fused_async_f16`` (int8, the Gluon GEMM of ``mma_async``, where
     ``--paths`` names it and the GPU is a Hopper), and the K-sum form ``fused_ksum_f16`` /
     ``fused_fp8_ksum_f16`` / ``fused_async_ksum_f16`` (operands hold per-map sums in and out); exact against
     ``cbcn.onebit.backends.operands.operand_conv_reference`` on the same device (real output and
     operand bytes bit-equal);
   - cuDNN fp32 NCHW (TF32 as PyTorch defaults it), fp16 and bf16 channels-last; a cuBLASLt fp8
     GEMM of the same M×K×N (``torch._scaled_mm``, fp16 out, no im2col: what a vendor GEMM of
     this size reaches, not a ceiling);
3. reports binary MAC/s (``N·OH·OW·C_out·C_in·9`` per conv), int8-equivalent TOPS (2 ops per MAC)
   and the fraction of the int8 dense tensor-core peak — H100 SXM / H200 ≈ 1979 TOPS,
   H100 PCIe ≈ 1513 TOPS (detected by device name; the assumed peak is printed and written);
   and item 1's decision: fp8 operands become the default if the fp8 GEMM beats the int8 GEMM
   by ≥ 10 % (median over the layers at batch 256; ``fp8_decision``);
4. writes ``results.csv`` and ``results.md`` to ``--out`` (after every shape, so a cut-off run
   keeps what it measured), and at the end the autotuner's chosen tiles (``autotuned_tiles.json``).

What the times include: GPU time of one call, the median of a CUDA graph of back-to-back calls
replayed (``triton.testing.do_bench_cudagraph`` through ``cbcn.harness.measure.kernel_time_ms``, so
Python/launch overhead is excluded for every contender alike); ``mma_eager_ms`` is the eager
per-call time of the fp16-output call (``do_bench``), host overhead included. Packed-path times start
from packed activations and include their unpacking to int8 (not the packing of float input,
``pack_ms``); the int8 weight matrix is unpacked once and cached (inference weights are
constant). The fused layer starts from its operand (the previous fused layer wrote it). cuDNN
times start from fp16/bf16/fp32 tensors (their conversion is not timed) and write
fp16/bf16/fp32 outputs — compare ``mma_f16_ms`` / ``fused_f16_ms`` with ``torch_fp16_cl_ms``.

Budget: ``--budget-s`` stops starting new shapes when spent and says so; elapsed time is printed
per shape. ``benchmarks/device_check.sh`` runs it as its first measurement.

``--dry-run`` runs the same code paths on the CPU with tiny shapes (kernels in the Triton
interpreter if Triton is installed, else the reference only), for tests.

Usage (device machine):  python benchmarks/gpu_conv_bench.py --out benchmarks/results/h100
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
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
from cbcn.onebit.backends.contract import VALID_K, conv_output_size  # noqa: E402
from cbcn.onebit.backends.operands import OperandLayout, operand_conv_reference, padded_channels  # noqa: E402

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
# channel counts that are not multiples of 32 (padding) but divisible by K = 4 (the K-sum form)
DRY_SHAPES = [("tiny_a", 40, 36, 7, 1), ("tiny_b", 72, 64, 5, 2)]
INT8_PEAK_TOPS = {"H100 SXM": 1979.0, "H100 PCIe": 1513.0, "H100 NVL": 1671.0, "H200": 1979.0, "H200 NVL": 1671.0}
PATH_CHOICES = ("mma", "mma_fp8", "mma_async", "mma_packed", "popcount", "mma_regs")
F16_PATHS = ("mma", "mma_fp8", "mma_async", "mma_packed")  # timed with fp16 output; the others with fp32
FP8_DEFAULT_MIN_GAIN = 0.10  # item 1: fp8 becomes the default if its GEMM beats int8's by >= 10 %
# the same bar for the other way to keep an int8 MMA in flight (path mma_async, Gluon)


def int8_peak(device_name: str) -> tuple[float | None, str]:
    """Dense int8 tensor-core peak (TOPS) assumed for a device name, and what was assumed."""
    name = device_name.upper()
    if "H200" in name:
        if "NVL" in name:
            return INT8_PEAK_TOPS["H200 NVL"], "H200 NVL dense int8 1671 TOPS"
        return INT8_PEAK_TOPS["H200"], "H200 dense int8 1979 TOPS"
    if "H100" in name:
        if "PCIE" in name:
            return INT8_PEAK_TOPS["H100 PCIe"], "H100 PCIe dense int8 1513 TOPS"
        if "NVL" in name:
            return INT8_PEAK_TOPS["H100 NVL"], "H100 NVL dense int8 1671 TOPS"
        return INT8_PEAK_TOPS["H100 SXM"], "H100 SXM dense int8 1979 TOPS"
    return None, f"unknown int8 peak for {device_name!r}: fraction of peak not reported"


@contextlib.contextmanager
def _fixed_cudnn_algorithm():
    """cuDNN without algorithm search, for the float64 references (direct algorithms only)."""
    prev = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = prev


def exact_reference(x, w, alpha, stride, pad):
    """``conv(sign x, sign w)`` computed exactly (float64, rounded to the integer it is), then to
    fp32 and ``· α`` in fp32 — the kernels' epilogue order. Returns the fp32 NCHW result."""
    with _fixed_cudnn_algorithm():
        dot = F.conv2d(sign(x).double(), sign(w).double(), None, stride, pad).round_()
    return dot.float() * alpha.view(1, -1, 1, 1)


def exact_reference_ksum(x, w_rot, alpha, stride, pad, K):
    """The K-sum form's exact result: the conv of each map's K-channel sign sum with the rotated
    bank's signs (float64, exact), to fp32, ``· α`` — equal to the conv of the physical ±1
    channels with the full CiF bank."""
    N, C, H, W = x.shape
    summed = sign(x).double().reshape(N, C // K, K, H, W).sum(dim=2)
    with _fixed_cudnn_algorithm():
        dot = F.conv2d(summed, sign(w_rot).double(), None, stride, pad).round_()
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
    Shared with ``gpu_model_bench.py`` and ``gpu_profile.py``."""
    if not dry and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --dry-run on a CPU")
    torch.backends.cudnn.benchmark = True
    return torch.device("cpu" if dry else "cuda")


def _time_path(row, path, tk, tkconv, timer, xp, wp, C_in, stride, pad, OH, alpha, ref, macs, peak, all_outputs):
    """One ``path`` of ``packed_conv2d`` from packed activations: exactness and time of the fp16
    output (the like-for-like one with cuDNN fp16; ``F16_PATHS``), for the two-stage paths also the
    unpack alone, the GEMM alone and the eager call; the fp32 and packed outputs with
    ``all_outputs`` (each output type is one more kernel variant to compile and autotune;
    ``tests/test_kernels_gpu.py`` checks them all). popcount and mma_regs: the fp32 output."""
    def conv(out_dtype=torch.float32, binarize=False):
        return tk.packed_conv2d(xp, wp, C_in, stride, pad, scale=alpha, path=path,
                                out_dtype=out_dtype, binarize_output=binarize)

    if path == "mma_async":
        from triton_kernels.async_mma import async_mma_problem

        problem = async_mma_problem(xp.device)
        if problem:  # e.g. the dry run's CPU: Gluon has no interpreter
            row[f"{path}_unavailable"] = problem
            return
    two_stage = path in tkconv.OPERAND_DTYPES
    fp16_out = path in F16_PATHS
    outputs = [(f"{path}_f16", dict(out_dtype=torch.float16), ref.half())] if fp16_out else []
    if all_outputs or not fp16_out:
        outputs.append((path, dict(), ref))
    if all_outputs and fp16_out and path != "mma_async":  # mma_async writes real outputs only
        outputs.append((f"{path}_bin", dict(binarize=True), reference.pack_signs(ref)))
    for label, kwargs, expected in outputs:
        out = _try(row, label, lambda: conv(**kwargs))
        if out is None:
            continue
        row[f"{label}_exact"] = bool(torch.equal(out, expected))
        del out
        ms = _try(row, label, lambda: timer(lambda: conv(**kwargs)))
        if ms is not None:
            _rate(row, label, ms, macs, peak)
    if not two_stage:
        return
    row[f"{path}_eager_ms"] = _try(row, f"{path}_eager", lambda: timer.eager(lambda: conv(torch.float16)))
    dtype = tkconv.OPERAND_DTYPES[path]
    unpack_label = "unpack" if path == "mma" else f"{path}_unpack"
    row[f"{unpack_label}_ms"] = _try(row, unpack_label, lambda: timer(lambda: tkconv.unpack_activations(xp, C_in, pad, dtype)))
    operands = _try(row, f"{path}_conv_f16", lambda: (tkconv.unpack_activations(xp, C_in, pad, dtype),
                                                      tkconv.unpack_weights(wp, C_in, dtype=dtype),
                                                      tkconv.gemm_function(path)))
    if operands is None:
        return
    xh, wm, gemm = operands
    ms = _try(row, f"{path}_conv_f16", lambda: timer(
        lambda: gemm(xh, wm, (3, 3), stride, (OH, OH), scale=alpha, out_dtype=torch.float16)))
    if ms is not None:
        _rate(row, f"{path}_conv_f16", ms, macs, peak)


def _time_fused(row, label, tkconv, timer, xp, w_packed, C_in, ksum, path, stride, OH, A, B, residual, macs, peak):
    """The GPU engine's fused layer (``cbcn.onebit.runner``, fused mode) from its input operand: one
    kernel (``path``'s GEMM: ``unpacked_conv2d``, or the Gluon one of ``mma_async``) applies
    ``dot·A + B``, adds ``residual`` (or none), writes the fp16
    real output and the next conv's operand (``ksum`` sums per map, pad 1) into a pre-zeroed halo
    buffer. ``w_packed``: the packed weights over the operand's maps (``C_in // ksum``). Exact when
    the real output and the operand bytes equal ``operand_conv_reference`` on the same device."""
    N, H, device = xp.shape[0], xp.shape[1], xp.device
    C_out, fp8, gemm = w_packed.shape[0], path == "mma_fp8", tkconv.gemm_function(path)
    layout, next_layout = OperandLayout(C_in // ksum, ksum, 1, fp8), OperandLayout(C_out // ksum, ksum, 1, fp8)

    def buffers():
        x_buf = layout.allocate(N, H, H, device)
        tkconv.unpack_activations(xp, C_in, 1, layout.dtype, ksum, out=x_buf)  # what the previous fused layer wrote
        w_mat = tkconv.unpack_weights(w_packed, layout.maps, dtype=layout.dtype)
        real = torch.empty((N, C_out, OH, OH), dtype=torch.float16, device=device, memory_format=torch.channels_last)
        return x_buf, w_mat, real, next_layout.allocate(N, OH, OH, device)

    made = _try(row, label, buffers)
    if made is None:
        return
    x_buf, w_mat, real, next_buf = made

    def fused():
        return gemm(layout.view(x_buf), w_mat, (3, 3), stride, (OH, OH), scale=A, bias=B, out_dtype=torch.float16,
                    max_abs_dot=9 * C_in, residual=residual, out=real, operand=next_layout.view(next_buf),
                    operand_pad=1, operand_ksum=ksum)

    if _try(row, label, fused) is None:
        return
    expected_op = next_layout.allocate(N, OH, OH, device)
    with _fixed_cudnn_algorithm():
        expected = operand_conv_reference(x_buf, layout, w_mat, 3, stride, A, B, residual, torch.float16,
                                          next_layout, expected_op)
    row[f"{label}_exact"] = bool(torch.equal(real, expected) and torch.equal(next_buf, expected_op))
    del expected, expected_op
    ms = _try(row, label, lambda: timer(fused))
    if ms is not None:
        _rate(row, label, ms, macs, peak)


def _time_scaled_mm(row, timer, device, M, K, N, macs, peak):
    """``torch._scaled_mm`` of fp8 e4m3 ±1/0 operands (a: (M, K) row-major, b: (K, N) column-major),
    unit scales, fp16 out, fast accumulation (as Triton's fp8 GEMM on sm_90 uses it; the sums,
    integers of at most 9·512, accumulate exactly): the cuBLASLt fp8 GEMM of the implicit GEMM's
    M×K×N (no im2col)."""
    fp8 = torch.float8_e4m3fn
    a = torch.randint(-1, 2, (M, K), dtype=torch.float16, device=device).to(fp8)
    b = torch.randint(-1, 2, (N, K), dtype=torch.float16, device=device).to(fp8).t()
    one = torch.tensor(1.0, device=device)
    ms = _try(row, "scaled_mm_fp8", lambda: timer(
        lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.float16, use_fast_accum=True)))
    if ms is not None:
        _rate(row, "scaled_mm_fp8", ms, macs, peak)


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
    batches = [args.only_batch] if args.only_batch else args.batches or ([2, 1] if dry else [256, 1])
    paths = args.paths if have_triton else []
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
                _time_path(row, path, tk, tkconv, timer, xp, wp, C_in, stride, pad, OH, alpha, ref, macs, peak,
                                args.all_outputs)
            fused_paths = [p for p in FUSED_LABELS if p in paths and not row.get(f"{p}_unavailable")]
            # the fused layer: folded affine (A = α·BN scale, B = BN shift) and, at stride 1, the block's residual
            B = torch.randn(C_out, generator=gen).mul_(0.1).to(device)
            residual = None if stride != 1 else torch.randn(batch, C_out, OH, OH, generator=gen).to(
                device, torch.float16).contiguous(memory_format=torch.channels_last)
            if fused_paths:
                row["fused_residual"] = residual is not None
            for path in fused_paths:
                _time_fused(row, f"{FUSED_LABELS[path]}_f16", tkconv, timer, xp, wp, C_in, 1, path, stride, OH, alpha,
                            B, residual, macs, peak)
            K = args.ksum
            if have_triton and K > 1 and C_in % K == 0:
                # CBConv's K-sum form of the same physical layer (C_in = maps·K): the GEMM runs over
                # C_in/K summed channels with the rotated bank (up to K× fewer multiply-adds)
                row["ksum"] = K
                w_rot = torch.randn(C_out, C_in // K, 3, 3, generator=gen).to(device)
                wrp = reference.pack_signs(w_rot)
                ref_k = exact_reference_ksum(x, w_rot, alpha, stride, pad, K)
                ksum_macs = batch * OH * OH * C_out * 9 * padded_channels(C_in // K)  # the GEMM's actual MACs
                for path in fused_paths:
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
                    if ms is not None:
                        _rate(row, label, ms, ksum_macs, peak)
                    if C_out % K == 0:  # the fused layer writes the next conv's K-sums too
                        _time_fused(row, f"{FUSED_LABELS[path]}_ksum_f16", tkconv, timer, xp, wrp, C_in, K, path,
                                    stride, OH, alpha, B, residual, ksum_macs, peak)
                del w_rot, wrp, ref_k
            if have_triton:
                row["pack_ms"] = _try(row, "pack", lambda: timer(lambda: tk.pack_signs(x)))
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
            if dry:
                row["scaled_mm_fp8_skipped"] = "dry run: torch._scaled_mm needs an fp8 GPU (sm_89+)"
            elif batch >= 16 and not args.no_scaled_mm:
                _time_scaled_mm(row, timer, device, batch * OH * OH, 9 * C_in, C_out, macs, peak)
            for candidate, gain in (("mma_fp8", "fp8_gemm_gain"), ("mma_async", "async_gemm_gain")):
                if row.get("mma_conv_f16_ms") and row.get(f"{candidate}_conv_f16_ms"):
                    row[gain] = row["mma_conv_f16_ms"] / row[f"{candidate}_conv_f16_ms"] - 1
            for label in TIMED_LABELS:
                for base in ("fp16", "bf16"):
                    if f"{label}_ms" in row and f"torch_{base}_cl_ms" in row:
                        row[f"{label}_speedup_vs_{base}cl"] = row[f"torch_{base}_cl_ms"] / row[f"{label}_ms"]
            row["elapsed_s"] = time.time() - t_start
            rows.append(row)
            print(_line(row), flush=True)
            del x, w, xp, wp, ref, xs, ws, residual
            if device.type == "cuda":
                torch.cuda.empty_cache()
            write_results(rows, Path(args.out), dev_name, peak_note, dry, quiet=True)
    write_results(rows, Path(args.out), dev_name, peak_note, dry)
    print(f"[bench] {_decision_line(fp8_decision(rows))}", flush=True)
    report_tiles(Path(args.out), "bench")
    print(f"[bench] total {time.time() - t_start:.0f}s", flush=True)
    return rows


def _number(v) -> float | None:
    """``v`` as a float, or None for a missing value (None, NaN, empty CSV cell)."""
    if v is None or v == "" or isinstance(v, bool):
        return None
    v = float(v)
    return None if math.isnan(v) else v


def _gains_at_batch(rows, column):
    """The rows at batch 256 (a dry run: its largest batch) that have ``column``, and its median."""
    measured = [r for r in rows if _number(r.get(column)) is not None]
    if not measured:
        return None, [], None
    batch = 256 if any(int(r["batch"]) == 256 for r in measured) else max(int(r["batch"]) for r in measured)
    at = [r for r in measured if int(r["batch"]) == batch]
    return batch, at, statistics.median(_number(r[column]) for r in at)


def fp8_decision(rows) -> dict:
    """Item 1's rule, from the GEMM alone (``*_conv_f16``: operands already unpacked, fp16 out):
    per layer ``fp8_gain = mma_conv_f16_ms / mma_fp8_conv_f16_ms - 1`` at batch 256 (a dry run: its
    largest batch); fp8 operands become the default if the median gain is ≥ 10 %. Beside it, the
    other way to keep an int8 MMA in flight (``async_int8``: path ``mma_async``, Gluon), by the same
    measure and bar, and ``next_step``: what the numbers ask for. ``rows``: this script's rows (or
    ``results.csv`` read back). ``fp8_default`` is None where nothing was measured."""
    rule = (f"fp8 operands (path mma_fp8) become the default if the median over the layers of "
            f"mma_conv_f16_ms / mma_fp8_conv_f16_ms - 1 (the GEMM alone) at batch 256 is >= {FP8_DEFAULT_MIN_GAIN:.2f}")
    a_batch, a_rows, a_median = _gains_at_batch(rows, "async_gemm_gain")
    async_int8 = dict(batch=a_batch, median_gain=a_median,
                      faster=None if a_median is None else a_median >= FP8_DEFAULT_MIN_GAIN,
                      per_layer={r["layer"]: _number(r["async_gemm_gain"]) for r in a_rows},
                      async_gemm_ms={r["layer"]: _number(r.get("mma_async_conv_f16_ms")) for r in a_rows})
    if a_median is None:
        reasons = sorted({r["mma_async_unavailable"] for r in rows if r.get("mma_async_unavailable")})
        async_int8["reason"] = reasons[0] if reasons else "not measured (mma_async not in --paths, or it failed)"
    batch, at, median = _gains_at_batch(rows, "fp8_gemm_gain")
    if batch is None:
        return dict(rule=rule, batch=None, per_layer={}, median_gain=None, fp8_default=None, async_int8=async_int8,
                    next_step=None, reason="no layer has both GEMM times (mma_conv_f16_ms and mma_fp8_conv_f16_ms)")
    fp8_default = median >= FP8_DEFAULT_MIN_GAIN
    if fp8_default:
        next_step = "make mma_fp8 the default (fp8 operands in the fused mode too)"
    elif async_int8["faster"]:
        next_step = ("int8 with one wgmma in flight wins: make mma_async the default GEMM path on Hopper "
                     "(its fused layers are built: fused_async_f16, runner_fused_async_graph)")
    elif async_int8["faster"] is None:
        next_step = "int8 stays the default; mma_async is unmeasured"
    else:
        next_step = "int8 stays the default: neither fp8 nor mma_async gains >= 10 % on the GEMM"
    return dict(rule=rule, batch=batch, median_gain=median, fp8_default=fp8_default,
                per_layer={r["layer"]: _number(r["fp8_gemm_gain"]) for r in at},
                int8_gemm_ms={r["layer"]: _number(r.get("mma_conv_f16_ms")) for r in at},
                fp8_gemm_ms={r["layer"]: _number(r.get("mma_fp8_conv_f16_ms")) for r in at},
                async_int8=async_int8, next_step=next_step)


def _decision_line(decision) -> str:
    if decision["fp8_default"] is None:
        return f"fp8 vs int8: undecided ({decision['reason']})"
    gains = ", ".join(f"{layer} {100 * g:+.1f}%" for layer, g in decision["per_layer"].items())
    verdict = "fp8 becomes the default" if decision["fp8_default"] else "int8 stays the default"
    a = decision["async_int8"]
    async_part = (f"async int8 (mma_async) median {100 * a['median_gain']:+.1f}%" if a["median_gain"] is not None
                  else f"async int8 (mma_async): {a.get('reason')}")
    return (f"fp8 vs int8 GEMM at batch {decision['batch']}: median gain {100 * decision['median_gain']:+.1f}% "
            f"-> {verdict} (rule: >= {100 * FP8_DEFAULT_MIN_GAIN:.0f}%); per layer: {gains}; {async_part}; "
            f"next: {decision['next_step']}")


def report_tiles(out: Path, tag: str) -> list[dict]:
    """Print the autotuner's chosen tiles of this process (``triton_kernels.conv.autotuned_tiles``)
    and write them to ``out/autotuned_tiles.json``. On a CPU the list is empty (the interpreter runs
    fixed tiles), and it says so. Shared with ``gpu_model_bench.py`` and ``gpu_profile.py``."""
    try:
        from triton_kernels.conv import autotuned_tiles

        tiles, note = autotuned_tiles(), None
    except Exception as exc:  # noqa: BLE001 - Triton or the helper missing: say so
        tiles, note = [], f"unavailable: {type(exc).__name__}: {exc}"[:200]
    if not tiles and note is None:
        note = "none: no autotuned launch in this process (on a CPU the interpreter runs fixed tiles)"
    print(f"[{tag}] autotuned tiles: {note or len(tiles)}")
    for t in tiles:
        print(f"[{tag}]   {t['kernel']} {t['key']} -> {t['config']}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "autotuned_tiles.json", json.dumps(dict(tiles=tiles, note=note), indent=1, default=str))
    return tiles


def _fmt(v, digits=3):
    if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.4g}"
    return str(v)


def _line(row):
    parts = [f"[{row.get('elapsed_s', 0):5.0f}s] {row['layer']:8s} b{row['batch']:<3d} "
             f"C{row['C_in']}->{row['C_out']} {row['H']}x{row['H']}/s{row['stride']}"]
    for label in TIMED_LABELS + ("scaled_mm_fp8",):
        if f"{label}_ms" in row:
            frac = f" {100 * row[label + '_peak_frac']:.1f}%pk" if f"{label}_peak_frac" in row else ""
            ok = f" exact={row[label + '_exact']}" if f"{label}_exact" in row else ""
            parts.append(f"{label} {row[label + '_ms']:.3f}ms{ok}{frac}")
    for label in ("unpack", "mma_fp8_unpack", "mma_async_unpack"):
        if row.get(f"{label}_ms") is not None:
            parts.append(f"{label} {row[f'{label}_ms']:.3f}ms")
    parts.append(f"fp32 {row['torch_fp32_ms']:.3f}ms")
    for label in ("fp16", "bf16"):
        if f"torch_{label}_cl_ms" in row:
            parts.append(f"{label}-cl {row[f'torch_{label}_cl_ms']:.3f}ms")
    for label in ("mma_f16", "mma_async_f16", "mma_packed_f16") + FUSED_F16_LABELS:
        if f"{label}_speedup_vs_fp16cl" in row:
            parts.append(f"{label} x{row[f'{label}_speedup_vs_fp16cl']:.2f} vs fp16-cl")
    if "fp8_gemm_gain" in row:
        parts.append(f"fp8 GEMM {100 * row['fp8_gemm_gain']:+.1f}% vs int8")
    if "async_gemm_gain" in row:
        parts.append(f"async int8 GEMM {100 * row['async_gemm_gain']:+.1f}% vs int8")
    return " | ".join(parts)


# the fused layer's label per GEMM path (int8, fp8, int8 with one wgmma in flight): {label}_f16, and
# {label}_ksum_f16 for the K-sum form
FUSED_LABELS = {"mma": "fused", "mma_fp8": "fused_fp8", "mma_async": "fused_async"}
FUSED_F16_LABELS = tuple(f"{label}{form}_f16" for form in ("", "_ksum") for label in FUSED_LABELS.values())
# timed packed-kernel labels: path="mma" and "mma_fp8" with fp32 / fp16 / packed outputs and the
# GEMM alone, the K-sum form, the fused layer (int8 / fp8 / int8 async, plain / K-sum), then the
# one-kernel paths
TIMED_LABELS = ("mma", "mma_f16", "mma_bin", "mma_conv_f16",
                "mma_fp8", "mma_fp8_f16", "mma_fp8_bin", "mma_fp8_conv_f16",
                "mma_async_f16", "mma_async_conv_f16",
                "mma_ksum_f16", "mma_fp8_ksum_f16", "mma_async_ksum_f16",
                *FUSED_F16_LABELS,
                "mma_packed", "mma_packed_f16", "mma_packed_bin", "popcount", "mma_regs")
RATED_LABELS = TIMED_LABELS + ("scaled_mm_fp8",)
COLUMNS = (
    ["layer", "batch", "C_in", "C_out", "H", "stride", "OH", "binary_MACs", "ksum", "fused_residual"]
    + [f"{label}_exact" for label in TIMED_LABELS if "conv" not in label] + ["reference_exact"]
    + [f"{label}_ms" for label in TIMED_LABELS]
    + ["unpack_ms", "mma_fp8_unpack_ms", "mma_async_unpack_ms", "mma_eager_ms", "mma_fp8_eager_ms",
       "mma_async_eager_ms", "reference_ms", "pack_ms", "torch_fp16_cl_ms", "torch_bf16_cl_ms", "torch_fp32_ms",
       "scaled_mm_fp8_ms", "fp8_gemm_gain", "async_gemm_gain", "mma_async_unavailable"]
    + [f"{label}_speedup_vs_fp16cl" for label in TIMED_LABELS]
    + [f"{label}_speedup_vs_bf16cl" for label in TIMED_LABELS]
    + [f"{label}_TOPS" for label in RATED_LABELS]
    + [f"{label}_peak_frac" for label in RATED_LABELS]
    + [f"{label}_error" for label in RATED_LABELS + ("unpack", "mma_fp8_unpack", "mma_async_unpack", "mma_eager",
                                                     "mma_fp8_eager", "mma_async_eager", "pack")]
    + ["scaled_mm_fp8_skipped", "note", "elapsed_s", "device", "peak_assumed"]
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
    software versions, ``notes``, a table of those columns except ``hidden``, ``*_error`` and
    ``*_skipped``, then the errors and skips, each named by the row's ``key`` and batch) under
    ``out``, each written atomically. Shared with ``gpu_model_bench.py``."""
    out.mkdir(parents=True, exist_ok=True)
    cols = [c for c in columns if any(c in r for r in rows)]
    table = pd.DataFrame(rows).reindex(columns=cols)
    atomic_write_text(out / "results.csv", table.to_csv(index=False))
    not_measured = ("_error", "_skipped")
    md_cols = [c for c in cols if c not in hidden and not c.endswith(not_measured)]
    errors = [f"- {r[key]} b{r['batch']} {c}: {r[c]}" for r in rows for c in cols if c.endswith(not_measured) and r.get(c)]
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
        lines += ["", "## Errors and skipped measurements", ""] + errors
    atomic_write_text(out / "results.md", "\n".join(lines) + "\n")
    if not quiet:
        print(f"[{tag}] wrote {out / 'results.csv'} and {out / 'results.md'}")


def write_results(rows, out: Path, dev_name, peak_note, dry, quiet=False):
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
        " once and cached; fp32 and packed outputs are checked and timed only with --all-outputs. mma_conv_f16: the int8"
        " implicit GEMM alone (fp16 out). pack_ms (float -> packed) not included anywhere. cuDNN (torch_*): inputs"
        " already fp16/bf16/fp32 (conversion not timed), output same type; the like-for-like comparison is"
        " mma_f16_ms vs torch_fp16_cl_ms.",
        "- mma_fp8*: path='mma_fp8', the same two stages with fp8 e4m3 operands (±1/0 exact) and an fp32"
        " accumulator (Triton keeps fp8 wgmma in flight across K-steps, int8 wgmma not); fp8 dense peak = int8"
        " dense peak on H100/H200, so peak_frac uses the same peak. fp8_gemm_gain = mma_conv_f16_ms /"
        " mma_fp8_conv_f16_ms - 1.",
        "- mma_packed*: path='mma_packed', the int8 GEMM reading the packed activations directly (bits expanded"
        " in registers, no unpack pass); compare mma_packed_f16_ms with mma_f16_ms.",
        "- *_ksum_f16: CBConv's K-sum form of the same physical layer (C_in = maps·ksum; rotated bank over the"
        " maps, each map's ksum channel signs summed while unpacking, fp16 output), from packed activations; exact"
        " against the float64 conv of the sums. Its TOPS / peak_frac count the GEMM's actual multiply-adds"
        " (binary_MACs·CP/C_in, CP = C_in/ksum rounded up to 32); its speed-up is against the same physical"
        " cuDNN fp16 conv.",
        "- fused_*: the GPU engine's fused layer (OneBitRunner, mode='fused'): from its input operand (int8 /"
        " fp8 ±1, or K-sums) in a halo buffer, one kernel computes dot·A + B (folded α·BN), adds an fp16"
        " channels-last residual where fused_residual is True (stride 1), writes the fp16 real output and the"
        " next conv's operand (fused_*ksum*: its K-sums) into a pre-zeroed halo buffer. Exact = real output and"
        " operand bytes equal operands.operand_conv_reference on the same device. No unpack or pack is timed:"
        " in the engine the previous fused layer writes the operand.",
        "- binary MACs = N·OH·OW·C_out·C_in·9; TOPS = 2·MACs/s; peak_frac = TOPS / int8 dense peak;"
        " scaled_mm_fp8: torch._scaled_mm of fp8 e4m3 operands of the same M×K×N (no im2col, unit scales,"
        " fp16 out, use_fast_accum=True; batch >= 16): what cuBLASLt reaches at this size, not a ceiling.",
        f"- fp8 vs int8 (item 1): {_decision_line(fp8_decision(rows))}",
    ]
    write_tables(out, rows, COLUMNS, ("device", "peak_assumed", "binary_MACs", "OH", "elapsed_s"),
                 "Packed binary convolution vs cuDNN (ResNet18 3×3 shapes)", notes, "layer", "bench", quiet)


def _int_list(text: str, what: str, prog: str = "gpu_conv_bench") -> list[int]:
    """``"256,1"`` -> ``[256, 1]``; anything else is one clear error line (shared with ``gpu_model_bench.py``)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise SystemExit(f"{prog}: {what} must be comma-separated positive integers, got {text!r}")
    return values


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latest"), help="folder for results.csv / results.md")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, interpreter or reference (for tests)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes, in order (default 256,1; dry run 2,1)")
    ap.add_argument("--only-batch", type=int, default=0, help="time this batch size only (overrides --batches)")
    ap.add_argument("--only-layers", default="", help="comma-separated layer names (e.g. conv4_x,conv5_x)")
    ap.add_argument("--max-shapes", type=int, default=0, help="only the first N layer shapes (0: all)")
    ap.add_argument("--paths", default="mma,mma_fp8,mma_async",
                    help="packed kernel paths: mma,mma_fp8,mma_async (default; mma_async needs a Hopper GPU); mma_packed,"
                         " and popcount and mma_regs (known slow), only when named")
    ap.add_argument("--ksum", type=int, default=4,
                    help="also time CBConv's K-sum form with this K (the paper's K=4); 1 = skip")
    ap.add_argument("--rep-ms", type=float, default=10.0,
                    help="milliseconds of calls per timing (triton.testing.do_bench_cudagraph / do_bench's rep)")
    ap.add_argument("--no-graphs", action="store_true", help="time eager calls instead of CUDA graph replays")
    ap.add_argument("--all-outputs", action="store_true",
                    help="also check and time the fp32 and packed 1-bit outputs of mma / mma_fp8")
    ap.add_argument("--no-scaled-mm", action="store_true", help="skip the cuBLASLt fp8 GEMM (torch._scaled_mm)")
    ap.add_argument("--budget-s", type=float, default=200.0, help="stop starting new shapes after this many seconds")
    args = ap.parse_args(argv)
    args.batches = _int_list(args.batches, "--batches") if args.batches else None
    args.paths = [p for p in args.paths.split(",") if p]
    unknown = [p for p in args.paths if p not in PATH_CHOICES]
    if unknown or not args.paths:
        raise SystemExit(f"gpu_conv_bench: unknown --paths {unknown or args.paths}; valid: {','.join(PATH_CHOICES)}")
    if args.ksum != 1 and args.ksum not in VALID_K:
        raise SystemExit(f"gpu_conv_bench: --ksum must be 1 or one of {sorted(VALID_K)}, got {args.ksum}")
    if args.only_batch < 0 or args.max_shapes < 0 or args.rep_ms <= 0:
        raise SystemExit("gpu_conv_bench: --only-batch and --max-shapes must be >= 0, --rep-ms > 0")
    return run(args)


if __name__ == "__main__":
    main()
