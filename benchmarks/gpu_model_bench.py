#!/usr/bin/env python
"""Whole models on one GPU: the 1-bit model on the packed kernels vs the same network in float.

The question users ask is "is my binary model faster and smaller than the float one?" — per
network, not per layer. For each model, this script

1. checks on the GPU that the 1-bit model (``cbcn.onebit.convert.convert_to_onebit``, Triton kernels)
   gives the float model's logits bit for bit in eval mode (cuDNN off for both: its Winograd/FFT
   algorithms would round the float model's ±1 convolutions), and the same predictions;
2. times one forward at batch 256 and batch 1, side by side:
   - ``float_*``: the full-precision network of the same physical widths (method ``fp``, plain
     convolutions) in fp32 (cuDNN, PyTorch's default TF32) and fp16 channels-last — what the
     binary network has to beat;
   - ``sim_fp16_cl``: the binary training model itself in fp16 channels-last (signs computed in
     float, float convolutions of ±1 tensors) — what a user without packed kernels runs;
   - ``onebit_*``: the 1-bit model with fp32 and fp16 activations (``path="mma"``) and with fp16
     activations on ``path="mma_fp8"``; CBCN layers in the K-sum form (``OneBitConv2d.ksum``). Times
   are GPU milliseconds of one forward, the median of CUDA graph replays
   (``triton.testing.do_bench_cudagraph``, as ``gpu_conv_bench.py``), plus the eager per-call time of the fp16 1-bit model (host overhead
   included — Python dispatch per layer is part of what a user gets);
3. records peak GPU memory of one forward and the checkpoint bytes (fp32 state dict vs the 1-bit
   checkpoint of ``cbcn.onebit.convert.save_onebit``).

Models (weights random — speed and exactness do not depend on training): ImageNet ResNet18
(7×7 stem, 224×224, 1000 classes) XNOR at 64-128-256-512 and CBCN K=4 at 16-32-64-128 learned
maps (the same 64…512 physical channels, hence the same binary MACs). In the 1-bit models only
the binary convolutions run on packed bits; the stem, 1×1 shortcuts, batch-norm and classifier
stay in float, as in the training model. CBCN layers expand their packed learned signs to the
rotated bank on every forward (``cif_pack_bank``), as the 1-bit model is specified to.

Writes ``results.csv`` / ``results.md`` to ``--out`` after every model. ``--dry-run`` runs the same
code on the CPU with a tiny CIFAR ResNet18 (kernels in the Triton interpreter), for tests.

Usage (device machine):  python benchmarks/gpu_model_bench.py --out benchmarks/results/h100-model
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
from gpu_conv_bench import gpu_device, gpu_timer, write_tables  # noqa: E402

from cbcn.harness.hardware import float_twin  # noqa: E402
from cbcn.harness.measure import cuda_peak_memory  # noqa: E402
from cbcn.nn.models import build_model  # noqa: E402
from cbcn.onebit.convert import checkpoint_size_report, convert_to_onebit  # noqa: E402

# (label, build_model kwargs, image size)
MODELS = [
    ("resnet18-xnor", dict(name="resnet18", method="xnor", stem="imagenet", num_classes=1000), 224),
    ("resnet18-cbcn-K4", dict(name="resnet18", method="cbcn", K=4, stages=(16, 32, 64, 128), stem="imagenet",
                              num_classes=1000), 224),
]
DRY_MODELS = [("tiny-cbcn-K4", dict(name="resnet18", method="cbcn", K=4, stages=(2, 2, 4, 4)), 8)]
CONTENDERS = ("float_fp32", "float_fp16_cl", "sim_fp16_cl", "onebit_fp32", "onebit_fp16", "onebit_fp8_fp16")


def _checkpoint_bytes(model, onebit) -> tuple[int, int]:
    report = checkpoint_size_report(model.cpu(), onebit.cpu() if onebit is not None else None)
    return report["fp32_checkpoint_bytes"], report["onebit_checkpoint_bytes"]


def _peak_mb(fn, device) -> float | None:
    """Peak GPU memory of one ``fn()`` beyond what was allocated before it, MiB (``cbcn.harness.measure``)."""
    if device.type != "cuda":
        return None
    before, peak = cuda_peak_memory(fn, device)
    return (peak - before) / 2**20


def run(args) -> list[dict]:
    dry = args.dry_run
    device = gpu_device(dry)
    models = DRY_MODELS if dry else MODELS
    if args.only_models:
        wanted = set(args.only_models.split(","))
        models = [m for m in models if m[0] in wanted]
    batches = [int(b) for b in (args.batches or ("2" if dry else "256,1")).split(",")]
    dev_name = "cpu (dry run)" if dry else torch.cuda.get_device_name(device)
    print(f"[model-bench] device: {dev_name}; torch {torch.__version__}; "
          f"triton {getattr(sys.modules.get('triton'), '__version__', 'n/a')}", flush=True)
    timer = gpu_timer(device, args.rep_ms, graph=not args.no_graphs)
    t_start = time.time()
    rows = []
    for label, kwargs, image in models:
        kwargs = dict(kwargs)
        name = kwargs.pop("name")
        torch.manual_seed(0)
        model = build_model(name, image_size=image, **kwargs).eval()
        floating, _ = float_twin(model)
        floating = floating.to(memory_format=torch.contiguous_format)  # fp32 NCHW: PyTorch's default
        fp32_bytes, onebit_bytes = _checkpoint_bytes(model, convert_to_onebit(model))
        for batch in batches:
            elapsed = time.time() - t_start
            if elapsed > args.budget_s:
                print(f"[model-bench] budget of {args.budget_s:.0f}s spent: skipping {label} batch {batch}")
                rows.append(dict(model=label, batch=batch, note="skipped: time budget spent"))
                continue
            row = dict(model=label, batch=batch, image=image, device=dev_name,
                       fp32_checkpoint_bytes=fp32_bytes, onebit_checkpoint_bytes=onebit_bytes,
                       checkpoint_ratio=fp32_bytes / onebit_bytes)
            x = torch.randn(batch, 3, image, image, generator=torch.Generator().manual_seed(batch)).to(device)
            train32 = copy.deepcopy(model).to(device)
            onebit32 = convert_to_onebit(train32, backend="triton", path="mma")
            # 1. exactness on this device (cuDNN off for both; a few images suffice)
            onebit32_fp8 = convert_to_onebit(train32, backend="triton", path="mma_fp8")
            probe = x[: min(batch, 8)]
            with torch.no_grad(), torch.backends.cudnn.flags(enabled=False):
                expected, got, got_fp8 = train32(probe), onebit32(probe), onebit32_fp8(probe)
            row["onebit_exact"] = bool(torch.equal(got, expected))
            row["onebit_fp8_exact"] = bool(torch.equal(got_fp8, expected))
            row["onebit_same_predictions"] = bool(torch.equal(got.argmax(1), expected.argmax(1)))
            del expected, got, got_fp8, onebit32_fp8
            # 2. the contenders, each a no-grad forward of the whole model
            float32 = floating.to(device)
            float16 = copy.deepcopy(float32).half().to(memory_format=torch.channels_last)
            train16 = copy.deepcopy(train32).half().to(memory_format=torch.channels_last)
            onebit16 = convert_to_onebit(train16, backend="triton", path="mma")
            onebit16_fp8 = convert_to_onebit(train16, backend="triton", path="mma_fp8")
            x16 = x.half().contiguous(memory_format=torch.channels_last)
            calls = {
                "float_fp32": lambda: float32(x),
                "float_fp16_cl": lambda: float16(x16),
                "sim_fp16_cl": lambda: train16(x16),
                "onebit_fp32": lambda: onebit32(x),
                "onebit_fp16": lambda: onebit16(x16),
                "onebit_fp8_fp16": lambda: onebit16_fp8(x16),
            }
            with torch.no_grad():
                for contender, fn in calls.items():
                    try:
                        row[f"{contender}_ms"] = timer(fn)
                        row[f"{contender}_peak_MB"] = _peak_mb(fn, device)
                    except Exception as exc:  # noqa: BLE001 - report, go on with the rest
                        row[f"{contender}_error"] = f"{type(exc).__name__}: {exc}"[:300]
                        print(f"[model-bench] {label} b{batch} {contender}: {row[f'{contender}_error']}", flush=True)
                if "onebit_fp16_ms" in row:
                    row["onebit_fp16_eager_ms"] = timer.eager(calls["onebit_fp16"])
            for contender in CONTENDERS:
                if f"{contender}_ms" in row:
                    row[f"{contender}_images_per_s"] = batch / row[f"{contender}_ms"] * 1e3
                    if "float_fp16_cl_ms" in row:
                        row[f"{contender}_speedup_vs_fp16cl"] = row["float_fp16_cl_ms"] / row[f"{contender}_ms"]
            row["elapsed_s"] = time.time() - t_start
            rows.append(row)
            print(_line(row), flush=True)
            floating = float32.cpu()
            del float32, float16, train32, train16, onebit32, onebit16, onebit16_fp8, x, x16, calls
            if device.type == "cuda":
                torch.cuda.empty_cache()
            write_results(rows, Path(args.out), dev_name, dry, quiet=True)
    write_results(rows, Path(args.out), dev_name, dry)
    print(f"[model-bench] total {time.time() - t_start:.0f}s", flush=True)
    return rows


def _line(row) -> str:
    parts = [f"[{row['elapsed_s']:5.0f}s] {row['model']} b{row['batch']} exact={row.get('onebit_exact')}"]
    for contender in CONTENDERS:
        if f"{contender}_ms" in row:
            parts.append(f"{contender} {row[f'{contender}_ms']:.3f}ms")
    if "onebit_fp16_speedup_vs_fp16cl" in row:
        parts.append(f"1-bit fp16 x{row['onebit_fp16_speedup_vs_fp16cl']:.2f} vs float fp16-cl")
    parts.append(f"checkpoint {row['checkpoint_ratio']:.1f}x smaller")
    return " | ".join(parts)


COLUMNS = (
    ["model", "batch", "image", "onebit_exact", "onebit_fp8_exact", "onebit_same_predictions"]
    + [f"{c}_ms" for c in CONTENDERS] + ["onebit_fp16_eager_ms"]
    + [f"{c}_speedup_vs_fp16cl" for c in CONTENDERS]
    + [f"{c}_images_per_s" for c in CONTENDERS]
    + [f"{c}_peak_MB" for c in CONTENDERS]
    + ["fp32_checkpoint_bytes", "onebit_checkpoint_bytes", "checkpoint_ratio"]
    + [f"{c}_error" for c in CONTENDERS] + ["note", "elapsed_s", "device"]
)


def write_results(rows, out: Path, dev_name, dry, quiet=False):
    notes = [
        f"- device: {dev_name}",
        f"- mode: {'DRY RUN (CPU, tiny model, interpreter: timings meaningless)' if dry else 'GPU'}",
        "- onebit_exact / onebit_fp8_exact: the 1-bit model's logits (path mma / mma_fp8, fp32 activations) equal"
        " the binary training model's bit for bit on this device (eval, cuDNN off for both, 8 images);"
        " onebit_same_predictions: argmax equal.",
        "- times: GPU ms of one no-grad forward, median of CUDA graph replays (triton.testing.do_bench_cudagraph);"
        " onebit_fp16_eager_ms: eager call (do_bench), host overhead included. float_*: the full-precision network of the same physical widths (method"
        " fp) in fp32 (TF32 default) / fp16 channels-last; sim_fp16_cl: the binary training model in fp16"
        " channels-last (float convs of ±1 tensors); onebit_*: binary convs on packed bits (path mma; fp8: path"
        " mma_fp8; CBCN in the K-sum form), the rest in fp32 / fp16; the activations' packing and unpacking are"
        " included. speedup_vs_fp16cl: float_fp16_cl time / this time.",
        "- peak_MB: peak GPU memory allocated during one forward beyond what was allocated before it.",
        "- checkpoint bytes: torch.save of the fp32 state dict vs cbcn.onebit.convert.save_onebit.",
    ]
    hidden = ("device", "elapsed_s") + tuple(f"{c}_images_per_s" for c in CONTENDERS)
    write_tables(out, rows, COLUMNS, hidden, "Whole models: 1-bit (packed kernels) vs float (cuDNN)", notes,
                 "model", "model-bench", quiet)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HERE / "results" / "latest-model"), help="folder for results.csv / .md")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, kernels in the interpreter (tests)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 256,1; dry run 2)")
    ap.add_argument("--only-models", default="", help=f"comma-separated labels of {[m[0] for m in MODELS]}")
    ap.add_argument("--rep-ms", type=float, default=20.0,
                    help="milliseconds of calls per timing (triton.testing.do_bench_cudagraph / do_bench's rep)")
    ap.add_argument("--no-graphs", action="store_true", help="time eager calls instead of CUDA graph replays")
    ap.add_argument("--budget-s", type=float, default=240.0, help="stop starting new rows after this many seconds")
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
