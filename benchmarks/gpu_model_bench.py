#!/usr/bin/env python
"""Whole models on one GPU: the 1-bit model's inference entry point vs the same network in float.

The question users ask is "is my binary model faster and smaller than the float one?" — per
network, not per layer. For each model and batch (256 first, then 1), this script

1. checks on the GPU that the 1-bit model (``cbcn.onebit.convert.convert_to_onebit``, Triton kernels)
   gives the binary training model's logits bit for bit in eval mode, int8 and fp8 operands (fp32,
   8 images; cuDNN off for both: its Winograd/FFT algorithms would round the training model's ±1
   convolutions) — ``onebit_exact``, ``onebit_fp8_exact``; and states how closely the fused mode
   (fp16 activations, folded batch-norm) agrees with the fp32 training model over the whole
   batch — ``fused_max_abs_dlogit``, ``fused_argmax_agreement`` (``fused_fp8_same_as_int8``,
   ``fused_async_same_as_int8``: the fp8 / async int8 fused runner's logits equal the int8 one's);
2. times one forward, contenders in this order (the decisive ones first, so a spent
   ``--budget-s`` skips the least important):
   - ``float_fp16_cl``: the full-precision network of the same physical widths (method ``fp``)
     in fp16 channels-last, eager — what the binary network has to beat;
   - ``runner_fused_graph`` / ``runner_fused``: ``OneBitRunner(mode="fused")`` with and without its
     CUDA graph (``graphs=False``: the host's Python and launches included); ``runner_fused_fp8*``:
     the same on fp8 operands (``path="mma_fp8"``); ``runner_fused_async_graph``: on the int8 GEMM
     that keeps one wgmma in flight (``path="mma_async"``, Gluon; Hopper GPUs only, else skipped with
     the reason); ``runner_exact_graph``: the exact mode (the converted model in a CUDA graph);
   - ``onebit_exact_eager``: the converted model (fp16, ``path="mma"``) called eagerly;
   - ``float_fp16_cl_graph``: ``float_fp16_cl`` as GPU time of a CUDA graph (no host overhead);
   - ``sim_fp16_cl``: the binary training model itself in fp16 channels-last (float convs of ±1
     tensors) — what a user without packed kernels runs; ``float_fp32``: fp32 NCHW (TF32 default);
   - ``float_fp16_cl_compiled``: ``torch.compile(float model)`` (default mode, ``dynamic=False``;
     the compile time is recorded apart in ``float_fp16_cl_compile_s``); timed last, after every
     row is measured and saved (a cold compile takes tens of seconds and must not cost the batch-1
     rows their runner numbers), while ``COMPILE_RESERVE_S`` of the budget is left; skipped on the
     CPU dry run unless ``--compile``; ``onebit_exact_compiled``: ``torch.compile`` of the 1-bit
     model (the converted fp16 model on the Triton kernels, ``path="mma"``; its compile time in
     ``onebit_exact_compiled_compile_s``), timed after the float one under the same rules.
   Times are milliseconds of one call, the median of ``triton.testing.do_bench`` (eager calls; a
   runner with ``graphs=True`` replays its own graph per call) or, for ``float_fp16_cl_graph``,
   ``do_bench_cudagraph``. Speed-ups: ``*_speedup_vs_fp16cl`` = float_fp16_cl / this,
   ``*_speedup_vs_compiled`` = float_fp16_cl_compiled / this, ``*_speedup_vs_fp16cl_graph``;
3. records peak GPU memory of one call and the checkpoint bytes (fp32 state dict vs the 1-bit
   checkpoint of ``cbcn.onebit.convert.save_onebit``).

Models (weights random — speed and exactness do not depend on training): ImageNet ResNet18
(7×7 stem, 224×224, 1000 classes) XNOR at 64-128-256-512 and CBCN K=4 at 16-32-64-128 learned
maps (the same 64…512 physical channels, hence the same binary MACs; CBCN layers in the K-sum
form). In the 1-bit models only the binary convolutions run on packed bits or operands; the stem,
1×1 shortcuts, pooling and classifier stay in float. A CBCN layer's rotated bank is packed once
per weight version and cached (``OneBitConv2d.weight_bank``); the runner's fused plan builds its
weight matrices once.

Writes ``results.csv`` / ``results.md`` to ``--out`` after every row and the autotuner's chosen
tiles at the end. ``--dry-run`` runs the same code on the CPU with a tiny CIFAR ResNet18 (kernels
in the Triton interpreter; no CUDA graphs), for tests.

Usage (device machine):  python benchmarks/gpu_model_bench.py --out benchmarks/results/h100-model
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parent), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import torch  # noqa: E402
from gpu_conv_bench import _int_list, gpu_device, gpu_timer, report_tiles, write_tables  # noqa: E402

from cbcn.harness.hardware import float_twin  # noqa: E402
from cbcn.harness.measure import cuda_peak_memory  # noqa: E402
from cbcn.nn.models import build_model  # noqa: E402
from cbcn.onebit.backends import triton_available  # noqa: E402
from cbcn.onebit.convert import checkpoint_size_report, convert_to_onebit  # noqa: E402
from cbcn.onebit.runner import OneBitRunner  # noqa: E402

# (label, build_model kwargs, image size)
MODELS = [
    ("resnet18-xnor", dict(name="resnet18", method="xnor", stem="imagenet", num_classes=1000), 224),
    ("resnet18-cbcn-K4", dict(name="resnet18", method="cbcn", K=4, stages=(16, 32, 64, 128), stem="imagenet",
                              num_classes=1000), 224),
]
DRY_MODELS = [("tiny-cbcn-K4", dict(name="resnet18", method="cbcn", K=4, stages=(2, 2, 4, 4)), 8)]
# timed in this order (see the module docstring); the graph contenders need CUDA
CONTENDERS = ("float_fp16_cl", "runner_fused_graph", "runner_fused_fp8_graph", "runner_fused", "runner_fused_fp8",
              "runner_fused_async_graph", "runner_exact_graph", "onebit_exact_eager", "float_fp16_cl_graph", "sim_fp16_cl", "float_fp32",
              "float_fp16_cl_compiled", "onebit_exact_compiled")
COMPILED = ("float_fp16_cl_compiled", "onebit_exact_compiled")  # torch.compile: timed after every row
GRAPH_CONTENDERS = ("runner_fused_graph", "runner_fused_fp8_graph", "runner_fused_async_graph", "runner_exact_graph",
                    "float_fp16_cl_graph")
ONEBIT = tuple(c for c in CONTENDERS if c.startswith(("runner_", "onebit_")))
PROBE_IMAGES = 8  # the exactness check's batch: bit-equality does not need more
COMPILE_RESERVE_S = 60  # torch.compile starts only with this much of --budget-s left (its cost: <contender>_compile_s)
# torch.compile's time is unbounded (30-70 s per model cold): it runs after every row is measured and
# saved, so it cannot cost a row (batch 1 above all) its runner numbers
DEFERRED = "deferred: timed after every row (torch.compile last)"


def _checkpoint_bytes(model, onebit) -> tuple[int, int]:
    report = checkpoint_size_report(model.cpu(), onebit.cpu() if onebit is not None else None)
    return report["fp32_checkpoint_bytes"], report["onebit_checkpoint_bytes"]


def _peak_mb(fn, device) -> float | None:
    """Peak GPU memory of one ``fn()`` beyond what was allocated before it, MiB (``cbcn.harness.measure``)."""
    if device.type != "cuda":
        return None
    before, peak = cuda_peak_memory(fn, device)
    return (peak - before) / 2**20


def _allocated_mb(device) -> float | None:
    """GPU memory PyTorch's allocator holds for tensors now, MiB (None on the CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.memory_allocated(device) / 2**20


def _release(device) -> None:
    """Return freed blocks to the driver between contenders; after a sticky CUDA error this raises
    too, and the row (saved so far) must not be lost for it."""
    if device.type == "cuda":
        try:
            torch.cuda.empty_cache()
        except RuntimeError as exc:
            print(f"[model-bench] torch.cuda.empty_cache failed: {exc}"[:300], flush=True)


def _skip_reason(contender, ctx, args) -> str | None:
    """Why ``contender`` is not timed in this run, or None."""
    if contender in GRAPH_CONTENDERS and ctx.device.type != "cuda":
        return "CUDA graphs need a GPU"
    if contender in GRAPH_CONTENDERS and args.no_graphs:
        return "--no-graphs"
    if "async" in contender:
        from triton_kernels.async_mma import async_mma_problem

        return async_mma_problem(ctx.device)
    if contender in COMPILED:
        if args.no_compile:
            return "--no-compile"
        if args.dry_run and not args.compile:
            return "dry run: torch.compile skipped on the CPU (a C++ toolchain and minutes); --compile runs it"
    return None


def _runner(ctx, model, mode, graphs):
    """A runner's call on the batch (its own CUDA graph replayed when ``graphs``)."""
    backend = ctx.fused_backend if mode == "fused" else None
    runner = OneBitRunner(model, ctx.x16, mode=mode, graphs=graphs, backend=backend)
    return partial(runner, ctx.x16)


def _compiled(ctx, row, contender):
    """``torch.compile`` (``dynamic=False``) of the fp16 float model or of the 1-bit model (the
    converted fp16 model, Triton kernels, ``path="mma"``), compiled by one call here (its time
    recorded as ``<contender>_compile_s``)."""
    compiled = torch.compile(ctx.float16 if contender == "float_fp16_cl_compiled" else ctx.onebit16, dynamic=False)
    t = time.time()
    compiled(ctx.x16)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize(ctx.device)
    row[f"{contender}_compile_s"] = time.time() - t
    return partial(compiled, ctx.x16)


def _builders(ctx, row) -> dict:
    """contender -> a function that builds its call (built only when timed, freed after)."""
    return {
        "float_fp16_cl": lambda: partial(ctx.float16, ctx.x16),
        "runner_fused_graph": lambda: _runner(ctx, ctx.onebit16, "fused", True),
        "runner_fused_fp8_graph": lambda: _runner(ctx, ctx.onebit16_fp8, "fused", True),
        "runner_fused": lambda: _runner(ctx, ctx.onebit16, "fused", False),
        "runner_fused_fp8": lambda: _runner(ctx, ctx.onebit16_fp8, "fused", False),
        "runner_fused_async_graph": lambda: _runner(ctx, ctx.onebit16_async, "fused", True),
        "runner_exact_graph": lambda: _runner(ctx, ctx.onebit16, "exact", True),
        "onebit_exact_eager": lambda: partial(ctx.onebit16, ctx.x16),
        "float_fp16_cl_graph": lambda: partial(ctx.float16, ctx.x16),
        "sim_fp16_cl": lambda: partial(ctx.train16, ctx.x16),
        "float_fp32": lambda: partial(ctx.float32, ctx.x),
        "float_fp16_cl_compiled": lambda: _compiled(ctx, row, "float_fp16_cl_compiled"),
        "onebit_exact_compiled": lambda: _compiled(ctx, row, "onebit_exact_compiled"),
    }


def _check_fused(ctx, row, contender, call) -> None:
    """On the first fused runner of each GEMM: its logits over the whole batch against the fp32
    training model's (int8), or against the int8 fused runner's (fp8, and int8 with one wgmma in
    flight: the same integers, the same epilogue) — ``fused_fp8_same_as_int8``,
    ``fused_async_same_as_int8``."""
    if not contender.startswith("runner_fused"):
        return
    logits = call().float()
    other = next((g for g in ("fp8", "async") if g in contender), None)
    if other is not None:
        key = f"fused_{other}_same_as_int8"
        if ctx.fused_logits is not None and key not in row:
            row[key] = bool(torch.equal(logits, ctx.fused_logits))
        return
    if ctx.fused_logits is None:
        ctx.fused_logits = logits
        row["fused_max_abs_dlogit"] = (logits - ctx.expected).abs().max().item()
        row["fused_max_abs_logit"] = ctx.expected.abs().max().item()
        row["fused_argmax_agreement"] = (logits.argmax(1) == ctx.expected.argmax(1)).float().mean().item()


def _prepare(label, kwargs, image):
    """The training model (random weights, eval), its float twin in fp32 NCHW, and the checkpoint bytes."""
    kwargs = dict(kwargs)
    name = kwargs.pop("name")
    torch.manual_seed(0)
    model = build_model(name, image_size=image, **kwargs).eval()
    floating, _ = float_twin(model)
    floating = floating.to(memory_format=torch.contiguous_format)  # fp32 NCHW: PyTorch's default
    return model, floating, _checkpoint_bytes(model, convert_to_onebit(model))


def _measure_row(label, batch, image, model, floating, ctx_base, args, timer, t_start, rows, save) -> dict:
    """One model at one batch: exactness, agreement, every contender (see the module docstring).
    The row joins ``rows`` at once and ``save()`` writes the table after every measurement, so a
    step killed by its timeout mid-row keeps what the row has measured."""
    device, dev_name = ctx_base.device, ctx_base.dev_name
    (fp32_bytes, onebit_bytes) = ctx_base.bytes
    row = dict(model=label, batch=batch, image=image, device=dev_name, runner_backend=ctx_base.fused_backend,
               fp32_checkpoint_bytes=fp32_bytes, onebit_checkpoint_bytes=onebit_bytes,
               checkpoint_ratio=fp32_bytes / onebit_bytes)
    rows.append(row)

    def progress():
        row["elapsed_s"] = time.time() - t_start
        save()
    x = torch.randn(batch, 3, image, image, generator=torch.Generator().manual_seed(batch)).to(device)
    train32 = copy.deepcopy(model).to(device)
    # 1. exactness on this device (cuDNN off: exact float convs of ±1 tensors), and the agreement's reference
    probe = x[:PROBE_IMAGES]
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=False):
        expected = train32(probe)
        got = convert_to_onebit(train32, backend="triton", path="mma")(probe)
        got_fp8 = convert_to_onebit(train32, backend="triton", path="mma_fp8")(probe)
        full = expected if batch <= PROBE_IMAGES else train32(x)
    row["onebit_exact"] = bool(torch.equal(got, expected))
    row["onebit_fp8_exact"] = bool(torch.equal(got_fp8, expected))
    row["onebit_same_predictions"] = bool(torch.equal(got.argmax(1), expected.argmax(1)))
    del expected, got, got_fp8
    progress()
    # 2. the contenders, each a no-grad forward of the whole model
    train16 = copy.deepcopy(train32).half().to(memory_format=torch.channels_last)
    float32 = copy.deepcopy(floating).to(device)
    ctx = SimpleNamespace(
        device=device, x=x, x16=x.half().contiguous(memory_format=torch.channels_last), float32=float32,
        float16=copy.deepcopy(float32).half().to(memory_format=torch.channels_last), train16=train16,
        onebit16=convert_to_onebit(train16, backend="triton", path="mma"),
        onebit16_fp8=convert_to_onebit(train16, backend="triton", path="mma_fp8"),
        onebit16_async=convert_to_onebit(train16, backend="triton", path="mma_async"),
        fused_backend=ctx_base.fused_backend, expected=full.float(), fused_logits=None)
    del train32
    builders = _builders(ctx, row)
    with torch.no_grad():
        for contender in CONTENDERS:
            reason = _skip_reason(contender, ctx, args)
            if reason is None and contender in COMPILED:
                reason = DEFERRED  # _compile_pass
            if reason is None and args.budget_s - (time.time() - t_start) < 0:
                reason = f"time budget of {args.budget_s:.0f}s spent"
            if reason is not None:
                row[f"{contender}_skipped"] = reason
                continue
            call = None
            try:
                before = _allocated_mb(device)
                call = builders[contender]()
                if before is not None:  # runner buffers, weight matrices, graph pool: not in peak_MB
                    row[f"{contender}_build_MB"] = _allocated_mb(device) - before
                _check_fused(ctx, row, contender, call)
                row[f"{contender}_ms"] = (timer if contender == "float_fp16_cl_graph" else timer.eager)(call)
                row[f"{contender}_peak_MB"] = _peak_mb(call, device)
            except Exception as exc:  # noqa: BLE001 - report, go on with the rest
                row[f"{contender}_error"] = f"{type(exc).__name__}: {exc}"[:300]
                print(f"[model-bench] {label} b{batch} {contender}: {row[f'{contender}_error']}", flush=True)
            del call
            _release(device)
            _speedups(row)
            progress()
    _speedups(row)
    if hasattr(torch, "_dynamo"):
        torch._dynamo.reset()  # drop this row's compiled graphs (the next row compiles for its own shapes)
    return row


def _compile_pass(rows, prepared, device, args, timer, t_start, save) -> None:
    """The ``COMPILED`` contenders of the rows that deferred them, batch 256 first, the float model
    before the 1-bit one, each only with ``COMPILE_RESERVE_S`` of the budget left; results saved
    after each. Same models and input as the row's other contenders (the input's seed is the batch
    size)."""
    for row in rows:
        for contender in COMPILED:
            if row.get(f"{contender}_skipped") != DEFERRED:
                continue
            left = args.budget_s - (time.time() - t_start)
            if left < COMPILE_RESERVE_S:
                row[f"{contender}_skipped"] = (f"time budget of {args.budget_s:.0f}s spent "
                                               f"(torch.compile needs about {COMPILE_RESERVE_S}s)")
                continue
            del row[f"{contender}_skipped"]
            model, floating, _ = prepared[row["model"]]
            batch, image = row["batch"], row["image"]
            x = torch.randn(batch, 3, image, image, generator=torch.Generator().manual_seed(batch)).to(device)
            half = dict(dtype=torch.float16, memory_format=torch.channels_last)
            ctx = SimpleNamespace(
                device=device, x16=x.half().contiguous(memory_format=torch.channels_last),
                float16=copy.deepcopy(floating).to(device).to(**half) if contender == "float_fp16_cl_compiled" else None,
                onebit16=convert_to_onebit(copy.deepcopy(model).to(device).to(**half), backend="triton", path="mma")
                if contender == "onebit_exact_compiled" else None)
            call = None
            try:
                with torch.no_grad():
                    call = _compiled(ctx, row, contender)
                    row[f"{contender}_ms"] = timer.eager(call)
                    row[f"{contender}_peak_MB"] = _peak_mb(call, device)
            except Exception as exc:  # noqa: BLE001 - report, go on with the rest
                row[f"{contender}_error"] = f"{type(exc).__name__}: {exc}"[:300]
                print(f"[model-bench] {row['model']} b{batch} {contender}: {row[f'{contender}_error']}", flush=True)
            del call, ctx, x
            _speedups(row)
            if hasattr(torch, "_dynamo"):
                torch._dynamo.reset()
            _release(device)
            save()


def _speedups(row) -> None:
    bases = (("fp16cl", "float_fp16_cl_ms"), ("compiled", "float_fp16_cl_compiled_ms"),
             ("fp16cl_graph", "float_fp16_cl_graph_ms"))
    for contender in CONTENDERS:
        ms = row.get(f"{contender}_ms")
        if not ms:
            continue
        row[f"{contender}_images_per_s"] = row["batch"] / ms * 1e3
        for name, base in bases:
            if row.get(base) and (name == "fp16cl" or contender in ONEBIT):
                row[f"{contender}_speedup_vs_{name}"] = row[base] / ms


def run(args) -> list[dict]:
    dry = args.dry_run
    device = gpu_device(dry)
    models = DRY_MODELS if dry else MODELS
    if args.only_models:
        wanted = args.only_models.split(",")
        unknown = sorted(set(wanted) - {m[0] for m in models})
        if unknown:
            raise SystemExit(f"gpu_model_bench: unknown --only-models {unknown}; valid: {[m[0] for m in models]}")
        models = [m for m in models if m[0] in wanted]
    batches = args.batches or ([2, 1] if dry else [256, 1])
    dev_name = "cpu (dry run)" if dry else torch.cuda.get_device_name(device)
    # the fused mode's kernels: on the CPU in the Triton interpreter (to exercise them), else its reference
    fused_backend = "triton" if device.type == "cuda" or triton_available() else "reference"
    print(f"[model-bench] device: {dev_name}; torch {torch.__version__}; "
          f"triton {getattr(sys.modules.get('triton'), '__version__', 'n/a')}; fused backend {fused_backend}", flush=True)
    timer = gpu_timer(device, args.rep_ms)
    t_start = time.time()
    prepared = {label: _prepare(label, kwargs, image) for label, kwargs, image in models}
    rows = []

    def save():
        write_results(rows, Path(args.out), dev_name, dry, quiet=True)
    for batch in batches:  # batch 256 of every model first: the decisive numbers
        for label, _, image in models:
            elapsed = time.time() - t_start
            if elapsed > args.budget_s:
                print(f"[model-bench] budget of {args.budget_s:.0f}s spent: skipping {label} batch {batch}")
                rows.append(dict(model=label, batch=batch, note="skipped: time budget spent"))
                continue
            model, floating, nbytes = prepared[label]
            base = SimpleNamespace(device=device, dev_name=dev_name, bytes=nbytes, fused_backend=fused_backend)
            row = _measure_row(label, batch, image, model, floating, base, args, timer, t_start, rows, save)
            row["elapsed_s"] = time.time() - t_start
            print(_line(row), flush=True)
            _release(device)
            save()
    _compile_pass(rows, prepared, device, args, timer, t_start, save)
    write_results(rows, Path(args.out), dev_name, dry)
    report_tiles(Path(args.out), "model-bench")
    print(f"[model-bench] total {time.time() - t_start:.0f}s", flush=True)
    return rows


def _line(row) -> str:
    parts = [f"[{row['elapsed_s']:5.0f}s] {row['model']} b{row['batch']} exact={row.get('onebit_exact')}"]
    for contender in CONTENDERS:
        if f"{contender}_ms" in row:
            parts.append(f"{contender} {row[f'{contender}_ms']:.3f}ms")
    for contender in ("runner_fused_graph", "runner_fused_fp8_graph", "runner_fused"):
        if f"{contender}_speedup_vs_fp16cl" in row:
            parts.append(f"{contender} x{row[f'{contender}_speedup_vs_fp16cl']:.2f} vs float fp16-cl")
    if "fused_argmax_agreement" in row:
        parts.append(f"fused: max |dlogit| {row['fused_max_abs_dlogit']:.3g}, argmax {row['fused_argmax_agreement']:.2%}")
    parts.append(f"checkpoint {row['checkpoint_ratio']:.1f}x smaller")
    return " | ".join(parts)


COLUMNS = (
    ["model", "batch", "image", "onebit_exact", "onebit_fp8_exact", "onebit_same_predictions",
     "fused_max_abs_dlogit", "fused_max_abs_logit", "fused_argmax_agreement", "fused_fp8_same_as_int8",
     "fused_async_same_as_int8"]
    + [f"{c}_ms" for c in CONTENDERS] + ["float_fp16_cl_compile_s"]
    + [f"{c}_speedup_vs_fp16cl" for c in CONTENDERS]
    + [f"{c}_speedup_vs_compiled" for c in ONEBIT]
    + [f"{c}_speedup_vs_fp16cl_graph" for c in ONEBIT]
    + [f"{c}_images_per_s" for c in CONTENDERS]
    + [f"{c}_peak_MB" for c in CONTENDERS] + [f"{c}_build_MB" for c in CONTENDERS]
    + ["fp32_checkpoint_bytes", "onebit_checkpoint_bytes", "checkpoint_ratio"]
    + [f"{c}_error" for c in CONTENDERS] + [f"{c}_skipped" for c in CONTENDERS]
    + ["note", "runner_backend", "elapsed_s", "device"]
)


def write_results(rows, out: Path, dev_name, dry, quiet=False):
    notes = [
        f"- device: {dev_name}",
        f"- mode: {'DRY RUN (CPU, tiny model, interpreter: timings meaningless)' if dry else 'GPU'}",
        "- onebit_exact / onebit_fp8_exact: the 1-bit model's logits (path mma / mma_fp8, fp32 activations) equal"
        f" the binary training model's bit for bit on this device (eval, cuDNN off for both, {PROBE_IMAGES} images);"
        " onebit_same_predictions: argmax equal.",
        "- fused_*: OneBitRunner(mode='fused') (fp16 activations on a GPU, folded α·BN) against the fp32 training"
        " model (cuDNN off) over the whole batch: largest |Δlogit| (fused_max_abs_logit: the largest logit, for"
        " scale) and argmax agreement; fused_fp8_same_as_int8 / fused_async_same_as_int8: the fp8 / async int8"
        " (path mma_async) fused runner's logits equal the int8 one's.",
        "- times: ms of one no-grad forward, median of triton.testing.do_bench of eager calls (host overhead"
        " included; a *_graph runner replays its own CUDA graph per call); float_fp16_cl_graph: the float model in"
        " a CUDA graph (do_bench_cudagraph, GPU time only).",
        "- float_*: the full-precision network of the same physical widths (method fp): fp16 channels-last"
        " (float_fp16_cl, the baseline of *_speedup_vs_fp16cl), fp32 NCHW (TF32 default), torch.compile default"
        " mode (compile time in float_fp16_cl_compile_s, not in the timing); sim_fp16_cl: the binary training"
        " model in fp16 channels-last (float convs of ±1 tensors); onebit_exact_eager: the converted model, fp16,"
        " path mma, eager; runner_*: OneBitRunner (fused: one GEMM kernel per binary conv writing the next conv's"
        " operand; exact: the converted model), fp8 = path mma_fp8. CBCN layers run in the K-sum form.",
        "- speedup_vs_fp16cl / _vs_compiled / _vs_fp16cl_graph: that float time / this time.",
        "- peak_MB: peak GPU memory allocated during one call beyond what was allocated before it; build_MB: what"
        " building the contender allocated and keeps (a runner's operand and output buffers, weight matrices and"
        " CUDA graph pool), not counted in peak_MB.",
        "- checkpoint bytes: torch.save of the fp32 state dict vs cbcn.onebit.convert.save_onebit.",
    ]
    hidden = ("device", "elapsed_s", "runner_backend") + tuple(f"{c}_images_per_s" for c in CONTENDERS)
    write_tables(out, rows, COLUMNS, hidden, "Whole models: 1-bit (packed kernels) vs float (cuDNN)", notes,
                 "model", "model-bench", quiet)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(HERE / "results" / "latest-model"), help="folder for results.csv / .md")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny model, kernels in the interpreter (tests)")
    ap.add_argument("--batches", default=None, help="comma-separated batch sizes (default 256,1; dry run 2,1)")
    ap.add_argument("--only-models", default="", help=f"comma-separated labels of {[m[0] for m in MODELS]}")
    ap.add_argument("--rep-ms", type=float, default=20.0,
                    help="milliseconds of calls per timing (triton.testing.do_bench / do_bench_cudagraph's rep)")
    ap.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph contenders")
    ap.add_argument("--compile", action="store_true", help="time torch.compile on the CPU dry run too")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile contender")
    ap.add_argument("--budget-s", type=float, default=240.0,
                    help="stop starting new rows and contenders after this many seconds")
    args = ap.parse_args(argv)
    args.batches = _int_list(args.batches, "--batches", "gpu_model_bench") if args.batches else None
    if args.rep_ms <= 0:
        raise SystemExit("gpu_model_bench: --rep-ms must be > 0")
    return run(args)


if __name__ == "__main__":
    main()
