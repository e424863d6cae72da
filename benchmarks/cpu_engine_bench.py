#!/usr/bin/env python
"""The CPU engine side by side with what a practitioner would deploy instead: the fastest fp32 and
the fastest int8 model of the same physical widths. Whole models, per layer, peak memory.

Models (random weights, eval mode, 32×32 inputs): ResNet18 16-16-32-64 XNOR, ResNet18 16-16-32-64
CBCN K=4 (physical widths 64-64-128-256) and LeNet 10-20-40-80 CBCN K=4 (physical 40-80-160-320).
For each, in one process, the contenders are timed in turn in every round (drift on a shared
machine hits them alike) and the medians are compared (``cbcn.harness.anchors`` builds them):

- ``fp32 eager (channels-last)`` and ``fp32 compiled`` (``torch.compile``): the float model at the
  1-bit model's physical widths, as plain ``nn.Conv2d`` modules; **best fp32** is the faster;
- ``int8 fx (x86)`` (``torch.ao`` FX, FBGEMM) and ``int8 pt2e (x86 inductor)`` (torchao's
  ``X86InductorQuantizer`` + ``torch.compile``, where torchao is installed): the same model
  quantized to int8; **best int8** is the faster;
- ``fp32 eager, learned widths``: method fp at the learned widths (for CBCN, fp 16-16-32-64: the
  model the paper's Table 4 sets beside CBCN);
- ``binary training model``: the model as trained (eval mode), float arithmetic — the oracle;
- ``1-bit (cpu)``: ``convert_to_onebit`` on the ``cpu`` backend, its variant named in the header
  (``--reference`` adds the ``reference`` backend).

A contender that cannot be built here (no torchao, no compiler for inductor) is reported as
unavailable with the reason, never timed as zero. The 1-bit logits are checked ``torch.equal`` to
the training model's. Batches 64 and 1, one and two threads (``--threads``). Timer: process CPU
time with one thread (robust to other load on a shared machine; see cbcn/harness/measure.py),
wall-clock time with more. Every row where the 1-bit model is slower than an anchor says so.

``--per-layer``: every binary conv of the 1-bit model timed alone with its fused epilogue
(batch-norm, pooling, residual, packing the next layer's signs) against what the fp32 model does
for the same layer (conv, its batch-norm, pooling, ReLU, residual add; channels-last) and what
the int8 model does (a quantized conv with the batch-norm folded in, pooling, quantized add),
with GMAC/s and each path's fraction of its own peak measured here: the variant's XOR + popcount
loop (``native.popcount_peak_gmacs``) for the 1-bit layer, a large fp32 GEMM for fp32, a large
quantized linear (FBGEMM) for int8.

Peak memory: the rise of the process's peak RSS during one batch-64 forward, each contender in a
fresh subprocess (``/proc/self/clear_refs`` resets the peak), so native buffers count too.

glibc's allocator is set to keep freed memory (mallopt, as ``tox -e bench`` does with
environment variables) for every contender alike: otherwise large tensors are re-faulted in on
every forward.

Usage: python benchmarks/cpu_engine_bench.py [--out DIR] [--threads 1 2] [--batches 64 1]
       [--repeats 15] [--per-layer] [--memory] [--reference] [--no-compile] [--models xnor cbcn lenet]
Results per CPU: --out reports/benchmarks/cpu-engine/<variant>-<date> (results.json, results.md,
the CPU's flags in both).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cbcn.fileio import atomic_write_text  # noqa: E402
from cbcn.harness import anchors, provenance  # noqa: E402
from cbcn.harness.machine import host_description  # noqa: E402
from cbcn.harness.measure import default_clock, interleaved_times, time_calls  # noqa: E402
from cbcn.nn.models import build_model  # noqa: E402
from cbcn.onebit.backends import cpu as cpu_engine  # noqa: E402
from cbcn.onebit.convert import OneBitConv2d, convert_to_onebit  # noqa: E402
from cbcn.onebit.export import agreement  # noqa: E402


@dataclass(frozen=True)
class ModelCase:
    """One model of the comparison, as plain data."""

    key: str
    name: str
    method: str
    stages: tuple[int, ...]
    K: int
    in_channels: int

    @property
    def label(self) -> str:
        k = f" K={self.K}" if self.method == "cbcn" else ""
        return f"{self.name} {'-'.join(map(str, self.stages))} {self.method}{k}"

    @property
    def physical_stages(self) -> tuple[int, ...]:
        return tuple(s * (self.K if self.method == "cbcn" else 1) for s in self.stages)

    def build(self, method: str | None = None, stages=None) -> nn.Module:
        torch.manual_seed(0)
        method = method or self.method
        return build_model(self.name, method=method, stages=stages or self.stages,
                           K=self.K if method == "cbcn" else 1, in_channels=self.in_channels).eval()


CASES = {
    "xnor": ModelCase("xnor", "resnet18", "xnor", (16, 16, 32, 64), 1, 3),
    "cbcn": ModelCase("cbcn", "resnet18", "cbcn", (16, 16, 32, 64), 4, 3),
    "lenet": ModelCase("lenet", "lenet", "cbcn", (10, 20, 40, 80), 4, 1),
}
IMAGE = 32
CLOCK_NAMES = {"cpu": "process CPU time", "wall": "wall clock"}


def keep_freed_memory() -> str:
    """glibc: serve large tensors from the heap and never trim it (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(-3, 1 << 30) == 1 and libc.mallopt(-1, (1 << 31) - 1) == 1
        return "mallopt(M_MMAP_THRESHOLD=1 GiB, M_TRIM_THRESHOLD=2 GiB)" if ok else "mallopt refused"
    except OSError:
        return "not glibc: allocator left as is"


MIN_SAMPLE_S = 0.05  # a sample repeats a short call (batch 1) for about this long: steady state, as in a serving loop


def interleaved_medians(fns: dict, repeats: int, clock: str) -> dict:
    """Median seconds per call of each function, timed interleaved in shuffled orders
    (``cbcn.harness.measure.interleaved_times``, two warm-up rounds: caches, first-use builds, allocator;
    each sample at least ``MIN_SAMPLE_S`` long)."""
    with torch.inference_mode():
        times = interleaved_times(fns, rounds=repeats, warmup=2, clock=clock, min_sample_s=MIN_SAMPLE_S)
    return {name: statistics.median(ts) for name, ts in times.items()}


FP32 = ("fp32 eager (channels-last)", "fp32 compiled", "fp32 AOTInductor")
INT8 = ("int8 fx (x86)", "int8 pt2e (x86 inductor)")
ONEBIT = "1-bit (cpu)"  # eager: the exact reference mode
ONEBIT_COMPILED = ("1-bit compiled", "1-bit AOTInductor")  # the cbcn operators in a graph (cbcn.onebit.export)


def contenders(case: ModelCase, x: torch.Tensor, with_reference: bool, compile_fp32: bool = True,
               int8: bool = True, aoti: bool = False) -> dict:
    """name -> (model or None, input memory format, why unavailable or None)."""
    trained = case.build()
    physical = case.build("fp", case.physical_stages)
    out = {}
    for name, (fn, why) in anchors.fp32_contenders(physical, x, compile_fp32, aoti).items():
        out[name] = (fn, torch.channels_last, why)
    if int8:
        for name, (fn, why) in anchors.int8_contenders(physical, x).items():
            out[name] = (fn, torch.contiguous_format, why)
    out["fp32 eager, learned widths"] = (case.build("fp").to(memory_format=torch.channels_last), torch.channels_last,
                                         None)
    out["binary training model"] = (trained, torch.contiguous_format, None)
    out[ONEBIT] = (convert_to_onebit(trained, backend="cpu"), torch.contiguous_format, None)
    if compile_fp32:
        fn, why = anchors.compiled_contender(out[ONEBIT][0], x, fullgraph=True, onebit=True)
        out["1-bit compiled"] = (fn, torch.contiguous_format, why)
    if aoti:
        fn, why = anchors.aoti_contender(out[ONEBIT][0], x, onebit=True)
        out["1-bit AOTInductor"] = (fn, torch.contiguous_format, why)
    if with_reference:
        out["1-bit (reference)"] = (convert_to_onebit(trained, backend="reference"), torch.contiguous_format, None)
    return out


def best_of(med: dict, names) -> tuple[str | None, float | None]:
    """The fastest of ``names`` that was timed: ``(name, seconds)``, or ``(None, None)``."""
    timed = [(med[n], n) for n in names if med.get(n) is not None]
    return (min(timed)[1], min(timed)[0]) if timed else (None, None)


def whole_models(case: ModelCase, threads_list, batches, repeats, with_reference, compile_fp32=True,
                 int8=True, aoti=False) -> list[dict]:
    x = torch.randn(max(batches), case.in_channels, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    models = contenders(case, x, with_reference, compile_fp32, int8, aoti)
    with torch.inference_mode():
        exact = bool(torch.equal(models[ONEBIT][0](x), models["binary training model"][0](x)))
        agree = {name: str(agreement(models[ONEBIT][0], models[name][0], [x])) for name in ONEBIT_COMPILED
                 if models.get(name, (None,))[0] is not None}
        plain = anchors.plain_float_model(case.build("fp", case.physical_stages))
        twin_diff = float((plain(x) - case.build("fp", case.physical_stages)(x)).abs().max())
    unavailable = {name: why for name, (fn, _, why) in models.items() if fn is None}
    for name, why in unavailable.items():
        print(f"[bench] {case.label:32s} {name}: unavailable: {why}", flush=True)
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        clock = default_clock(torch.device("cpu"), threads)
        for batch in batches:
            fns = {}
            for name, (model, fmt, _) in models.items():
                if model is None:
                    continue
                xb = x[:batch].contiguous(memory_format=fmt)
                try:
                    with torch.inference_mode():
                        model(xb)
                except Exception as exc:  # e.g. a compiled graph that cannot take this batch: reported
                    unavailable[name] = f"fails at batch {batch} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
                    print(f"[bench] {case.label:32s} {name}: unavailable: {unavailable[name]}", flush=True)
                    continue
                fns[name] = (lambda m=model, xb=xb: m(xb))
            med = interleaved_medians(fns, repeats, clock)
            onebit = med[ONEBIT]
            fp32_name, fp32_s = best_of(med, FP32)
            int8_name, int8_s = best_of(med, INT8)
            for name in models:
                seconds = med.get(name)
                rows.append({
                    "model": case.label, "threads": threads, "batch": batch, "contender": name,
                    "ms": None if seconds is None else seconds * 1e3,
                    "images_per_s": None if seconds is None else batch / seconds,
                    "speedup_of_1bit": None if seconds is None else seconds / onebit,
                    "unavailable": unavailable.get(name), "timer": CLOCK_NAMES[clock], "repeats": repeats,
                    "logits_equal": exact, "best_fp32": fp32_name, "best_int8": int8_name,
                    "plain_fp32_twin_max_abs_diff": twin_diff, "engine": cpu_engine.describe(),
                    "agreement_with_eager_1bit": agree.get(name),
                    "fp32_over_this": None if seconds is None or fp32_s is None else fp32_s / seconds,
                    "int8_over_this": None if seconds is None or int8_s is None else int8_s / seconds,
                })
            print(f"[bench] {case.label:32s} t={threads} b={batch:3d} " + " | ".join(
                f"{n} {t * 1e3:.2f} ms" for n, t in med.items()), flush=True)
            for form in (ONEBIT, *ONEBIT_COMPILED):
                if med.get(form) is None:
                    continue
                t = med[form]
                vs = [f"vs best fp32 ({fp32_name}) {fp32_s / t:.2f}x" if fp32_s else "no fp32 anchor",
                      f"vs best int8 ({int8_name}) {int8_s / t:.2f}x" if int8_s else "no int8 anchor"]
                slower = [a for a, u in (("best fp32", fp32_s), ("best int8", int8_s)) if u is not None and u < t]
                print(f"[bench]   {form:18s} " + ", ".join(vs) + (f", exact={exact}" if form == ONEBIT else
                                                                    f", {agree.get(form)}")
                      + (f"  ** SLOWER than {' and '.join(slower)} here **" if slower else ""), flush=True)
    torch.set_num_threads(1)
    return rows


# --- host overhead at batch 1 -------------------------------------------------------------------
def host_overhead(case: ModelCase, repeats: int, aoti: bool) -> list[dict]:
    """``host_overhead_here`` in a fresh process (the models compiled before in this one share
    their forward's code objects with it, and Dynamo's state would skew the compiled form)."""
    proc = subprocess.run([sys.executable, __file__, "--_host-child", case.key, str(repeats), str(int(aoti))],
                          capture_output=True, text=True, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("[bench]"):
            print(line, flush=True)
    if proc.returncode != 0:
        print(f"[bench] {case.label:32s} host overhead: unavailable: "
              f"{(proc.stderr.strip().splitlines() or ['failed'])[-1]}", flush=True)
        return []
    return json.loads(proc.stdout.strip().splitlines()[-1])


def host_overhead_here(case: ModelCase, repeats: int, aoti: bool, calls: int = 20) -> list[dict]:
    """Per 1-bit form (eager, compiled, AOTInductor), batch 1, one thread: in each of ``repeats``
    rounds, the mean forward time of ``calls`` unprofiled forwards (process CPU time) and, right
    after, the time ``torch.profiler`` attributes to kernels in ``calls`` profiled forwards (the
    self times of the ``cbcn engine`` events around each call of the engine's arithmetic, and of
    ``aten::`` events); the median over rounds of their difference, per binary layer. What is left
    is Python, dispatch, Dynamo's guards, the operators' argument handling and output allocation,
    the compiled graph's own glue and Inductor's small generated kernels (pooling, ReLU: not
    profiled). Each round's two halves run seconds apart, so the machine's drift mostly cancels;
    the profiler's own cost per event counts as kernel time, so the overhead is if anything
    underestimated."""
    torch.set_num_threads(1)
    x1 = torch.randn(1, case.in_channels, IMAGE, IMAGE, generator=torch.Generator().manual_seed(2))
    eager = convert_to_onebit(case.build(), backend="cpu")
    forms = {ONEBIT: eager, "1-bit compiled": anchors.compiled_contender(eager, x1, fullgraph=True, onebit=True)[0]}
    if aoti:
        forms["1-bit AOTInductor"] = anchors.aoti_contender(eager, x1, onebit=True)[0]
    forms = {k: v for k, v in forms.items() if v is not None}
    layers = sum(isinstance(m, OneBitConv2d) for m in eager.modules())
    rounds = {name: [] for name in forms}
    with torch.inference_mode():
        for model in forms.values():
            model(x1)
        for _ in range(repeats):
            for name, model in forms.items():
                t0 = time.process_time()
                for _ in range(calls):
                    model(x1)
                forward = (time.process_time() - t0) / calls
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    for _ in range(calls):
                        model(x1)
                kernels = sum(e.self_cpu_time_total for e in prof.key_averages()
                              if e.key == "cbcn engine" or e.key.startswith("aten::")) / calls / 1e6
                rounds[name].append((forward, kernels))
    rows = []
    for name, pairs in rounds.items():
        forward, kernels = (statistics.median(v) for v in zip(*pairs))
        host = statistics.median(f - k for f, k in pairs) / layers
        rows.append({"model": case.label, "form": name, "batch": 1, "threads": 1, "binary_layers": layers,
                     "forward_us": forward * 1e6, "operators_us": kernels * 1e6,
                     "host_overhead_us_per_binary_layer": host * 1e6})
        print(f"[bench] {case.label:32s} {name:18s} batch 1: forward {forward * 1e6:7.0f} us, kernels "
              f"{kernels * 1e6:7.0f} us, host overhead {host * 1e6:6.1f} us per binary layer ({layers} layers)",
              flush=True)
    return rows


# --- per layer --------------------------------------------------------------------------------
def record_binary_calls(model: nn.Module, x: torch.Tensor) -> list[tuple]:
    """``(name, layer, x_packed, epilogue, memory_format)`` of every fused binary conv in one forward."""
    names = {m: n for n, m in model.named_modules()}
    calls, original = [], OneBitConv2d.run

    def recording(self, x_packed, epilogue=None, memory_format=torch.channels_last, ops=None):
        from cbcn.onebit.backends.epilogue import Epilogue

        epilogue = epilogue if epilogue is not None else Epilogue()
        calls.append((names.get(self, "?"), self, x_packed, epilogue, memory_format))
        return original(self, x_packed, epilogue, memory_format, ops)

    OneBitConv2d.run = recording
    try:
        with torch.inference_mode():
            model(x)
    finally:
        OneBitConv2d.run = original
    return calls


def float_layer(layer: OneBitConv2d, epilogue, x_packed: torch.Tensor):
    """What the float model of the same physical widths does for this layer: conv, then the
    steps the 1-bit epilogue fuses, each a separate channels-last PyTorch op."""
    N, H, W, _ = x_packed.shape
    C_in, C_out = layer.physical_in_channels, layer.physical_out_channels
    conv = nn.Conv2d(C_in, C_out, layer.kernel_size, layer.stride, layer.padding, bias=False).to(
        memory_format=torch.channels_last)
    bn = nn.BatchNorm2d(C_out).eval() if epilogue.bn is not None else None
    x = torch.randn(N, C_in, H, W).contiguous(memory_format=torch.channels_last)
    residual = None
    if epilogue.residual is not None:
        residual = torch.randn(epilogue.residual.shape).contiguous(memory_format=torch.channels_last)

    def run():
        y = conv(x)
        if epilogue.pool == "max2":
            y = F.relu(F.max_pool2d(y, 2)) if epilogue.relu else F.max_pool2d(y, 2)
        if bn is not None:
            y = bn(y)
        if residual is not None:
            y = y + residual
        return y

    return run


def int8_layer(layer: OneBitConv2d, epilogue, x_packed: torch.Tensor):
    """What the int8 model (FBGEMM, x86) does for this layer: a quantized channels-last conv (its
    batch-norm folded in, as FX quantization folds it), the pooling, the quantized residual add;
    ``None`` where PyTorch's quantized engine is missing."""
    if "x86" not in torch.backends.quantized.supported_engines:
        return None
    torch.backends.quantized.engine = "x86"
    N, H, W, _ = x_packed.shape
    C_in, C_out = layer.physical_in_channels, layer.physical_out_channels
    conv = torch.ao.nn.quantized.Conv2d(C_in, C_out, layer.kernel_size, layer.stride, layer.padding)
    w = torch.quantize_per_channel(torch.randn(C_out, C_in, layer.kernel_size, layer.kernel_size),
                                   torch.rand(C_out) * 0.01 + 0.001, torch.zeros(C_out, dtype=torch.long), 0, torch.qint8)
    conv.set_weight_bias(w, torch.zeros(C_out))
    conv.scale, conv.zero_point = 0.05, 64
    qx = torch.quantize_per_tensor(torch.randn(N, C_in, H, W).contiguous(memory_format=torch.channels_last), 0.05, 64,
                                   torch.quint8)
    qres = None
    if epilogue.residual is not None:
        qres = torch.quantize_per_tensor(torch.randn(epilogue.residual.shape).contiguous(
            memory_format=torch.channels_last), 0.05, 64, torch.quint8)

    def run():
        y = conv(qx)
        if epilogue.pool == "max2":
            y = F.relu(F.max_pool2d(y, 2)) if epilogue.relu else F.max_pool2d(y, 2)
        if qres is not None:
            y = torch.ops.quantized.add(y, qres, 0.05, 64)
        return y

    return run


def fp32_peak_gmacs(threads: int) -> float:
    """This machine's fp32 GEMM rate (a large matmul) on ``threads`` threads, GMAC/s."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 1024), torch.randn(1024, 1024)
    best = min(time_calls(lambda: a @ b, rounds=5, clock=default_clock(torch.device("cpu"), threads)))
    return 2048 * 1024 * 1024 / best / 1e9


def int8_peak_gmacs(threads: int) -> float | None:
    """This machine's int8 GEMM rate in PyTorch's x86 quantized engine (FBGEMM): a large quantized
    linear, GMAC/s; ``None`` without the engine."""
    if "x86" not in torch.backends.quantized.supported_engines:
        return None
    torch.backends.quantized.engine = "x86"
    torch.set_num_threads(threads)
    lin = torch.ao.nn.quantized.Linear(1024, 1024)
    qa = torch.quantize_per_tensor(torch.randn(2048, 1024), 0.05, 64, torch.quint8)
    best = min(time_calls(lambda: lin(qa), rounds=5, clock=default_clock(torch.device("cpu"), threads)))
    return 2048 * 1024 * 1024 / best / 1e9


def per_layer(case: ModelCase, repeats: int, batch: int = 64) -> list[dict]:
    torch.set_num_threads(1)
    clock = default_clock(torch.device("cpu"), 1)
    model = convert_to_onebit(case.build(), backend="cpu")
    x = torch.randn(batch, case.in_channels, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    lib = cpu_engine.native.load()
    peak_binary = lib.popcount_peak_gmacs() if lib is not None else None
    peak_fp32, peak_int8 = fp32_peak_gmacs(1), int8_peak_gmacs(1)
    rows = []
    for name, layer, x_packed, epilogue, fmt in record_binary_calls(model, x):
        N, H, W, _ = x_packed.shape
        OH = (H + 2 * layer.padding - layer.kernel_size) // layer.stride + 1
        OW = (W + 2 * layer.padding - layer.kernel_size) // layer.stride + 1
        macs = N * OH * OW * layer.physical_out_channels * layer.physical_in_channels * layer.kernel_size ** 2
        fused = [s for s, on in (("bn", epilogue.bn is not None), ("pool+relu", epilogue.pool == "max2"), ("residual",
                 epilogue.residual is not None), ("packed out", epilogue.packed), ("real out", epilogue.real)) if on]
        fns = {"fp32": float_layer(layer, epilogue, x_packed),
               "1-bit": lambda layer=layer, xp=x_packed, ep=epilogue, fmt=fmt: layer.run(xp, ep, fmt)}
        int8_fn = int8_layer(layer, epilogue, x_packed)
        if int8_fn is not None:
            fns["int8"] = int8_fn
        med = interleaved_medians(fns, repeats, clock)
        rate = {k: macs / t / 1e9 for k, t in med.items()}
        rows.append({
            "model": case.label, "layer": name,
            "shape": f"{layer.physical_in_channels}->{layer.physical_out_channels} {H}x{W} s{layer.stride}",
            "epilogue": ", ".join(fused), "fp32_ms": med["fp32"] * 1e3, "int8_ms": med["int8"] * 1e3 if "int8" in med else None,
            "onebit_ms": med["1-bit"] * 1e3, "speedup_vs_fp32": med["fp32"] / med["1-bit"],
            "speedup_vs_int8": med["int8"] / med["1-bit"] if "int8" in med else None,
            "fp32_gmacs": rate["fp32"], "fp32_fraction_of_peak": rate["fp32"] / peak_fp32,
            "int8_gmacs": rate.get("int8"),
            "int8_fraction_of_peak": rate["int8"] / peak_int8 if "int8" in rate and peak_int8 else None,
            "onebit_binary_gmacs": rate["1-bit"],
            "onebit_fraction_of_popcount_peak": rate["1-bit"] / peak_binary if peak_binary else None,
            "onebit_path": cpu_engine.describe(), "batch": batch, "threads": 1, "timer": CLOCK_NAMES[clock],
        })
        r = rows[-1]
        print(f"[layer] {case.label:32s} {name:18s} {r['shape']:22s} fp32 {med['fp32'] * 1e3:7.3f} ms | int8 "
              + (f"{med['int8'] * 1e3:7.3f} ms" if "int8" in med else "   n/a    ")
              + f" | 1-bit {med['1-bit'] * 1e3:7.3f} ms | {r['speedup_vs_fp32']:5.2f}x fp32 | "
              f"{rate['1-bit']:6.0f} binary GMAC/s"
              + (f" = {r['onebit_fraction_of_popcount_peak']:.0%} of peak" if peak_binary else ""), flush=True)
    return rows, {"popcount_peak_binary_gmacs_1thread": peak_binary, "fp32_gemm_peak_gmacs_1thread": peak_fp32,
                  "int8_gemm_peak_gmacs_1thread": peak_int8}


# --- peak memory --------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_memory_child(case_key: str, contender: str, batch: int) -> dict:
    """In a fresh process: the rise of peak RSS over the RSS before one forward."""
    torch.set_num_threads(1)
    keep_freed_memory()
    case = CASES[case_key]
    x = torch.randn(batch, case.in_channels, IMAGE, IMAGE)
    model, fmt, why = contenders(case, x, contender == "1-bit (reference)", compile_fp32=False, int8=False)[contender]
    if model is None:
        raise RuntimeError(why)
    x = x.contiguous(memory_format=fmt)
    with torch.inference_mode():
        model(x[:1])  # first-use work (native build, caches) outside the measurement
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (Linux >= 4.0)
        before = _status_kib("VmRSS")
        model(x)
        peak = _status_kib("VmHWM")
    return {"peak_rise_bytes": (peak - before) * 1024}


def peak_memory(case: ModelCase, batch: int, with_reference: bool) -> list[dict]:
    # not the int8 models: quantizing them frees so much heap that their forward reuses it and
    # shows no rise at all (measured: 4 KiB), which says nothing of what they need
    names = ["fp32 eager (channels-last)", "fp32 eager, learned widths", "binary training model", ONEBIT]
    if with_reference:
        names.append("1-bit (reference)")
    rows = []
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--_peak-child", case.key, name, str(batch)],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            value, why = None, (proc.stderr.strip().splitlines() or ["failed"])[-1]
        else:
            value, why = json.loads(proc.stdout.strip().splitlines()[-1])["peak_rise_bytes"], None
        rows.append({"model": case.label, "contender": name, "batch": batch, "peak_rise_bytes": value,
                     "unavailable": why})
        print(f"[memory] {case.label:32s} {name:26s} "
              + (f"{value / 2**20:8.1f} MiB" if value is not None else f"unavailable: {why}"), flush=True)
    return rows


# --- output -------------------------------------------------------------------------------------
def markdown_tables(results: dict) -> str:
    import pandas as pd

    m = results["machine"]
    parts = [f"# CPU engine benchmark\n\n- machine: {m['cpu']} ({m['cpu_count']} CPUs), {m['platform']}\n"
             f"- CPU SIMD flags: {' '.join(m.get('simd_flags', [])) or 'none'}\n"
             f"- torch {results['versions']['torch']}; engine: {results['engine_path']}; {results['allocator']}\n"
             f"- code: {results['code']['revision']}{' (uncommitted changes)' if results['code'].get('dirty') else ''}\n"
             f"- date: {results['date']}\n- data: random weights and inputs (seed 0/1), 32x32, eval mode\n"]
    whole = pd.DataFrame(results["whole_model"])
    if not whole.empty:
        table = whole.pivot_table(index=["model", "threads", "batch"], columns="contender", values="ms",
                                  sort=False, dropna=False).reset_index()
        for form in (ONEBIT, *ONEBIT_COMPILED):
            if form not in table:
                continue
            short = {ONEBIT: "1-bit", "1-bit compiled": "compiled 1-bit", "1-bit AOTInductor": "AOTI 1-bit"}[form]
            for label, names in (("best fp32", FP32), ("best int8", INT8)):
                present = [n for n in names if n in table]
                table[f"{short} vs {label}"] = table[present].min(axis=1) / table[form] if present else float("nan")
        onebit = table[ONEBIT]
        table["1-bit vs training model"] = table["binary training model"] / onebit
        exact = whole.groupby("model", sort=False)["logits_equal"].all()
        table["logits equal"] = table["model"].map(exact)
        parts.append("## Whole models (ms per forward, medians of interleaved rounds)\n\n"
                     "Best fp32 / best int8: the faster of the fp32 / int8 contenders of the same physical widths, "
                     "timed in the same rounds. A ratio below 1 means the 1-bit model is slower.\n\n"
                     + table.to_markdown(index=False, floatfmt=".2f") + "\n")
        agree = whole[whole["agreement_with_eager_1bit"].notna()][["model", "contender", "agreement_with_eager_1bit"]]
        if not agree.empty:
            parts.append("Compiled forms against the eager 1-bit model (same inputs):\n\n"
                         + agree.drop_duplicates().to_markdown(index=False) + "\n")
        missing = whole[whole["unavailable"].notna()][["model", "contender", "unavailable"]].drop_duplicates()
        if not missing.empty:
            parts.append("Unavailable contenders (not measured here):\n\n" + missing.to_markdown(index=False) + "\n")
    if results.get("host_overhead"):
        host = pd.DataFrame(results["host_overhead"])
        parts.append("## Host overhead per binary layer (batch 1, one thread)\n\nPer round, the mean time of unprofiled "
                     "forwards minus, from profiled forwards right after, the time torch.profiler attributes to kernels "
                     "(the engine's arithmetic, 'cbcn engine' events, and aten:: ops); the median over rounds, per binary "
                     "layer: Python, dispatch, Dynamo's guards, the operators' argument handling and output allocation, "
                     "the compiled graph's glue and Inductor's own small kernels.\n\n"
                     + host[["model", "form", "forward_us", "operators_us", "host_overhead_us_per_binary_layer"]]
                     .to_markdown(index=False, floatfmt=".1f") + "\n")
    if results.get("per_layer"):
        layers = pd.DataFrame(results["per_layer"])[[
            "model", "layer", "shape", "epilogue", "fp32_ms", "int8_ms", "onebit_ms", "speedup_vs_fp32",
            "speedup_vs_int8", "fp32_fraction_of_peak", "int8_fraction_of_peak", "onebit_binary_gmacs",
            "onebit_fraction_of_popcount_peak"]]
        peaks = results["peaks"]
        int8_peak = peaks.get("int8_gemm_peak_gmacs_1thread")
        parts.append("## Per layer (batch 64, one thread)\n\nEach binary conv with its fused epilogue vs the fp32 "
                     "layer of the same physical shape (conv and the same steps as separate channels-last ops) and "
                     "the int8 layer (quantized conv, batch-norm folded, quantized add). Peaks measured here, one "
                     f"thread: the engine variant's XOR+popcount loop {peaks['popcount_peak_binary_gmacs_1thread']:.0f} "
                     f"binary GMAC/s, fp32 GEMM {peaks['fp32_gemm_peak_gmacs_1thread']:.0f} GMAC/s, int8 GEMM "
                     + (f"{int8_peak:.0f} GMAC/s" if int8_peak else "unavailable") + ".\n\n"
                     + layers.to_markdown(index=False, floatfmt=".3g") + "\n")
    if results.get("memory"):
        mem = pd.DataFrame(results["memory"])
        mem["peak_rise_MiB"] = mem["peak_rise_bytes"] / 2**20
        parts.append("## Peak memory of one batch-64 forward (rise of peak RSS, fresh process each)\n\n"
                     + mem[["model", "contender", "peak_rise_MiB", "unavailable"]].to_markdown(index=False, floatfmt=".1f")
                     + "\n")
    return "\n".join(parts)


SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "bmi2", "avx512f", "avx512bw", "avx512vl", "avx512_vpopcntdq",
              "avx512_bitalg", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm", "sve", "sve2")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json and results.md")
    ap.add_argument("--models", nargs="+", choices=sorted(CASES), default=["xnor", "cbcn", "lenet"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--batches", nargs="+", type=int, default=[64, 1])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--per-layer", action="store_true", help="also the per-layer table (one thread, batch 64)")
    ap.add_argument("--memory", action="store_true", help="also peak memory (a subprocess per contender)")
    ap.add_argument("--reference", action="store_true", help="also the 1-bit model on the reference backend")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile contenders (minutes to build)")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 contenders")
    ap.add_argument("--aoti", action="store_true",
                    help="also the AOTInductor packages of the fp32 and the 1-bit models (a minute or two each)")
    ap.add_argument("--host-overhead", action="store_true",
                    help="also the host overhead per binary layer at batch 1 (profiler), per 1-bit form, in a fresh "
                         "process per model")
    ap.add_argument("--_peak-child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--_host-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._host_child:
        key, repeats, aoti = args._host_child
        keep_freed_memory()
        print(json.dumps(host_overhead_here(CASES[key], int(repeats), aoti == "1")))
        return 0
    if args._peak_child:
        key, name, batch = args._peak_child
        print(json.dumps(peak_memory_child(key, name, int(batch))))
        return 0
    if any(t < 1 for t in args.threads) or any(b < 1 for b in args.batches) or args.repeats < 1:
        print("error: --threads, --batches and --repeats must be positive", file=sys.stderr)
        return 2
    allocator = keep_freed_memory()
    machine = {**host_description(), "arch": cpu_engine.native.machine_arch(),
               "simd_flags": sorted(f for f in cpu_engine.native.cpu_features() if f in SIMD_FLAGS),
               "cpu_flags": sorted(cpu_engine.native.cpu_features())}
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine,
        "versions": provenance.package_versions(), "code": provenance.git_revision(),
        "engine_path": cpu_engine.describe(), "allocator": allocator, "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("_")},
        "cases": {k: asdict(CASES[k]) for k in args.models}, "whole_model": [], "per_layer": [], "memory": [], "host_overhead": [],
    }
    print(f"[bench] {results['machine']['cpu']}, torch {torch.__version__}, engine {results['engine_path']}, "
          f"{allocator}", flush=True)
    for key in args.models:
        results["whole_model"] += whole_models(CASES[key], args.threads, args.batches, args.repeats, args.reference,
                                               not args.no_compile, not args.no_int8, args.aoti)
    if args.host_overhead:
        for key in args.models:
            results["host_overhead"] += host_overhead(CASES[key], args.repeats, args.aoti)
    if args.per_layer:
        for key in args.models:
            rows, peaks = per_layer(CASES[key], args.repeats)
            results["per_layer"] += rows
            results["peaks"] = peaks
    if args.memory:
        for key in args.models:
            results["memory"] += peak_memory(CASES[key], 64, args.reference)
    text = markdown_tables(results)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "results.json", json.dumps(results, indent=1, default=str))
        atomic_write_text(args.out / "results.md", text)
        print(f"[bench] wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
