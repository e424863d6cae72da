#!/usr/bin/env python
"""The CPU engine side by side with float: whole models, per layer, peak memory.

Models (random weights, eval mode, 32×32 inputs): ResNet18 16-16-32-64 XNOR, ResNet18 16-16-32-64
CBCN K=4 (physical widths 64-64-128-256) and LeNet 10-20-40-80 CBCN K=4 (physical 40-80-160-320).
For each, in one process, the contenders are timed in turn in every round (drift on a shared
machine hits them alike) and the medians are compared:

- ``float (physical widths)``: method fp at the 1-bit model's physical widths, eager, channels-last;
- ``float (learned widths)``: method fp at the learned widths (for CBCN, fp 16-16-32-64: the
  model the paper's Table 4 sets beside CBCN; the same model as above for XNOR);
- ``binary training model``: the model as trained (eval mode), float arithmetic — the oracle;
- ``1-bit (cpu)``: ``convert_to_onebit`` on the ``cpu`` backend (``--reference`` adds the
  ``reference`` backend, the 1-bit path before the CPU engine).

The 1-bit logits are checked ``torch.equal`` to the training model's. Batches 64 and 1, one and
two threads (``--threads``). Timer: process CPU time with one thread (robust to other load on
a shared machine; see cbcn/harness/measure.py), wall-clock time with more.

``--per-layer``: every binary conv of the 1-bit model timed alone with its fused epilogue
(batch-norm, pooling, residual, packing the next layer's signs) against what the float model
does for the same layer (conv, its batch-norm, pooling, ReLU, residual add; channels-last), with
GMAC/s and the fraction of this machine's measured peak for each path: XOR + popcount
(``native.popcount_peak_gmacs``) for the 1-bit layer, a large fp32 GEMM for the float layer.

Peak memory: the rise of the process's peak RSS during one batch-64 forward, each contender in a
fresh subprocess (``/proc/self/clear_refs`` resets the peak), so native buffers count too.

glibc's allocator is set to keep freed memory (mallopt, as ``tox -e bench`` does with
environment variables) for every contender alike: otherwise large tensors are re-faulted in on
every forward.

Usage: python benchmarks/cpu_engine_bench.py [--out DIR] [--threads 1 2] [--batches 64 1]
       [--repeats 15] [--per-layer] [--memory] [--reference] [--models xnor cbcn lenet]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cbcn.fileio import atomic_write_text  # noqa: E402
from cbcn.harness import provenance  # noqa: E402
from cbcn.harness.machine import host_description  # noqa: E402
from cbcn.harness.measure import default_clock, interleaved_times, time_calls  # noqa: E402
from cbcn.nn.models import build_model  # noqa: E402
from cbcn.onebit.backends import cpu as cpu_engine  # noqa: E402
from cbcn.onebit.convert import OneBitConv2d, convert_to_onebit  # noqa: E402


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


def interleaved_medians(fns: dict, repeats: int, clock: str) -> dict:
    """Median seconds per call of each function, timed interleaved in shuffled orders
    (``cbcn.harness.measure.interleaved_times``, two warm-up rounds: caches, first-use builds, allocator)."""
    with torch.inference_mode():
        times = interleaved_times(fns, rounds=repeats, warmup=2, clock=clock)
    return {name: statistics.median(ts) for name, ts in times.items()}


def contenders(case: ModelCase, with_reference: bool) -> dict:
    """name -> (model, input memory format)."""
    trained = case.build()
    out = {
        "float (physical widths)": (case.build("fp", case.physical_stages).to(memory_format=torch.channels_last),
                                    torch.channels_last),
        "float (learned widths)": (case.build("fp").to(memory_format=torch.channels_last), torch.channels_last),
        "binary training model": (trained, torch.contiguous_format),
        "1-bit (cpu)": (convert_to_onebit(trained, backend="cpu"), torch.contiguous_format),
    }
    if with_reference:
        out["1-bit (reference)"] = (convert_to_onebit(trained, backend="reference"), torch.contiguous_format)
    return out


def whole_models(case: ModelCase, threads_list, batches, repeats, with_reference) -> list[dict]:
    models = contenders(case, with_reference)
    x = torch.randn(max(batches), case.in_channels, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        exact = bool(torch.equal(models["1-bit (cpu)"][0](x), models["binary training model"][0](x)))
    rows = []
    for threads in threads_list:
        torch.set_num_threads(threads)
        clock = default_clock(torch.device("cpu"), threads)
        for batch in batches:
            fns = {}
            for name, (model, fmt) in models.items():
                xb = x[:batch].contiguous(memory_format=fmt)
                fns[name] = (lambda m=model, xb=xb: m(xb))
            med = interleaved_medians(fns, repeats, clock)
            onebit = med["1-bit (cpu)"]
            for name, seconds in med.items():
                rows.append({
                    "model": case.label, "threads": threads, "batch": batch, "contender": name,
                    "ms": seconds * 1e3, "images_per_s": batch / seconds,
                    "speedup_of_1bit": seconds / onebit, "timer": CLOCK_NAMES[clock], "repeats": repeats,
                    "logits_equal": exact,
                })
            print(f"[bench] {case.label:32s} t={threads} b={batch:3d} " + " | ".join(
                f"{n} {s * 1e3:.2f} ms" for n, s in med.items()) + f" | 1-bit vs float(phys) "
                f"{med['float (physical widths)'] / onebit:.2f}x, exact={exact}", flush=True)
    torch.set_num_threads(1)
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


def fp32_peak_gmacs(threads: int) -> float:
    """This machine's fp32 GEMM rate (a large matmul) on ``threads`` threads, GMAC/s."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 1024), torch.randn(1024, 1024)
    best = min(time_calls(lambda: a @ b, rounds=5, clock=default_clock(torch.device("cpu"), threads)))
    return 2048 * 1024 * 1024 / best / 1e9


def per_layer(case: ModelCase, repeats: int, batch: int = 64) -> list[dict]:
    torch.set_num_threads(1)
    clock = default_clock(torch.device("cpu"), 1)
    model = convert_to_onebit(case.build(), backend="cpu")
    x = torch.randn(batch, case.in_channels, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    lib = cpu_engine.native.load()
    peak_binary = lib.popcount_peak_gmacs() if lib is not None else None
    peak_fp32 = fp32_peak_gmacs(1)
    rows = []
    for name, layer, x_packed, epilogue, fmt in record_binary_calls(model, x):
        N, H, W, _ = x_packed.shape
        OH = (H + 2 * layer.padding - layer.kernel_size) // layer.stride + 1
        OW = (W + 2 * layer.padding - layer.kernel_size) // layer.stride + 1
        macs = N * OH * OW * layer.physical_out_channels * layer.physical_in_channels * layer.kernel_size ** 2
        fused = [s for s, on in (("bn", epilogue.bn is not None), ("pool+relu", epilogue.pool == "max2"), ("residual",
                 epilogue.residual is not None), ("packed out", epilogue.packed), ("real out", epilogue.real)) if on]
        med = interleaved_medians({
            "float": float_layer(layer, epilogue, x_packed),
            "1-bit": lambda layer=layer, xp=x_packed, ep=epilogue, fmt=fmt: layer.run(xp, ep, fmt),
        }, repeats, clock)
        binary_gmacs = macs / med["1-bit"] / 1e9
        float_gmacs = macs / med["float"] / 1e9
        rows.append({
            "model": case.label, "layer": name,
            "shape": f"{layer.physical_in_channels}->{layer.physical_out_channels} {H}x{W} s{layer.stride}",
            "epilogue": ", ".join(fused), "float_ms": med["float"] * 1e3, "onebit_ms": med["1-bit"] * 1e3,
            "speedup": med["float"] / med["1-bit"], "float_gmacs": float_gmacs,
            "float_fraction_of_fp32_peak": float_gmacs / peak_fp32,
            "onebit_binary_gmacs": binary_gmacs,
            "onebit_fraction_of_popcount_peak": binary_gmacs / peak_binary if peak_binary else None,
            "onebit_path": cpu_engine.describe(), "batch": batch, "threads": 1, "timer": CLOCK_NAMES[clock],
        })
        print(f"[layer] {case.label:32s} {name:18s} {rows[-1]['shape']:22s} float {med['float'] * 1e3:7.3f} ms "
              f"| 1-bit {med['1-bit'] * 1e3:7.3f} ms | {rows[-1]['speedup']:5.2f}x | "
              f"{binary_gmacs:6.0f} binary GMAC/s", flush=True)
    return rows, {"popcount_peak_binary_gmacs_1thread": peak_binary, "fp32_gemm_peak_gmacs_1thread": peak_fp32}


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
    model, fmt = contenders(case, contender == "1-bit (reference)")[contender]
    x = torch.randn(batch, case.in_channels, IMAGE, IMAGE).contiguous(memory_format=fmt)
    with torch.inference_mode():
        model(x[:1])  # first-use work (native build, caches) outside the measurement
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (Linux >= 4.0)
        before = _status_kib("VmRSS")
        model(x)
        peak = _status_kib("VmHWM")
    return {"peak_rise_bytes": (peak - before) * 1024}


def peak_memory(case: ModelCase, batch: int, with_reference: bool) -> list[dict]:
    names = ["float (physical widths)", "float (learned widths)", "binary training model", "1-bit (cpu)"]
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

    parts = [f"# CPU engine benchmark\n\n- machine: {results['machine']['cpu']} ({results['machine']['cpu_count']} "
             f"CPUs), {results['machine']['platform']}\n- torch {results['versions']['torch']}; engine path: "
             f"{results['engine_path']}; {results['allocator']}\n- code: {results['code']['revision']}"
             f"{' (uncommitted changes)' if results['code'].get('dirty') else ''}\n- date: {results['date']}\n"
             f"- data: random weights and inputs (seed 0/1), 32x32, eval mode\n"]
    whole = pd.DataFrame(results["whole_model"])
    if not whole.empty:
        table = whole.pivot_table(index=["model", "threads", "batch"], columns="contender", values="ms",
                                  sort=False).reset_index()
        onebit = table["1-bit (cpu)"]
        table["1-bit vs float (physical)"] = table["float (physical widths)"] / onebit
        table["1-bit vs float (learned)"] = table["float (learned widths)"] / onebit
        table["1-bit vs training model"] = table["binary training model"] / onebit
        exact = whole.groupby("model", sort=False)["logits_equal"].all()
        table["logits equal"] = table["model"].map(exact)
        parts.append("## Whole models (ms per forward, medians of interleaved rounds)\n\n"
                     + table.to_markdown(index=False, floatfmt=".2f") + "\n")
    if results.get("per_layer"):
        layers = pd.DataFrame(results["per_layer"])[[
            "model", "layer", "shape", "epilogue", "float_ms", "onebit_ms", "speedup", "float_gmacs",
            "float_fraction_of_fp32_peak", "onebit_binary_gmacs", "onebit_fraction_of_popcount_peak"]]
        peaks = results["peaks"]
        parts.append("## Per layer (batch 64, one thread)\n\nEach binary conv with its fused epilogue vs "
                     "the float layer of the same physical shape (conv and the same steps as separate "
                     "channels-last ops). Peaks measured here: XOR+popcount "
                     f"{peaks['popcount_peak_binary_gmacs_1thread']:.0f} binary GMAC/s, fp32 GEMM "
                     f"{peaks['fp32_gemm_peak_gmacs_1thread']:.0f} GMAC/s (one thread).\n\n"
                     + layers.to_markdown(index=False, floatfmt=".3g") + "\n")
    if results.get("memory"):
        mem = pd.DataFrame(results["memory"])
        mem["peak_rise_MiB"] = mem["peak_rise_bytes"] / 2**20
        parts.append("## Peak memory of one batch-64 forward (rise of peak RSS, fresh process each)\n\n"
                     + mem[["model", "contender", "peak_rise_MiB", "unavailable"]].to_markdown(index=False, floatfmt=".1f")
                     + "\n")
    return "\n".join(parts)


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
    ap.add_argument("--_peak-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._peak_child:
        key, name, batch = args._peak_child
        print(json.dumps(peak_memory_child(key, name, int(batch))))
        return 0
    if any(t < 1 for t in args.threads) or any(b < 1 for b in args.batches) or args.repeats < 1:
        print("error: --threads, --batches and --repeats must be positive", file=sys.stderr)
        return 2
    allocator = keep_freed_memory()
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": host_description(),
        "versions": provenance.package_versions(), "code": provenance.git_revision(),
        "engine_path": cpu_engine.describe(), "allocator": allocator, "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if not k.startswith("_")},
        "cases": {k: asdict(CASES[k]) for k in args.models}, "whole_model": [], "per_layer": [], "memory": [],
    }
    print(f"[bench] {results['machine']['cpu']}, torch {torch.__version__}, engine {results['engine_path']}, "
          f"{allocator}", flush=True)
    for key in args.models:
        results["whole_model"] += whole_models(CASES[key], args.threads, args.batches, args.repeats, args.reference)
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
