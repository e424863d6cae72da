#!/usr/bin/env python
"""``OUT/summary.json`` of one ``benchmarks/device_check.sh`` run: the numbers that decide, in one file.

Reads what the run left in ``OUT`` — ``layers.csv`` (``gpu_conv_bench.py``), ``model.csv``
(``gpu_model_bench.py``), ``extra/steps.tsv`` (each step's exit code and seconds) and
``extra/*/autotuned_tiles.json`` (from ``extra.tar.gz`` once archived, so a committed run can be
summarised again) — and writes ``OUT/summary.json`` atomically with:

- ``gpu``, ``date``, ``dry_run``, ``batches`` (the large and small batch: 256 and 1 on a GPU);
- ``per_layer_speedup_vs_cudnn_fp16`` (layer → ×, batch 256): the fused layer, the best of its
  int8, fp8 and int8-async forms, over cuDNN fp16 channels-last; ``..._b1`` the same at batch 1;
  ``per_layer_speedups_by_contender`` every timed packed contender's speed-up, so nothing is hidden;
- ``gemm_fraction_of_int8_peak`` (layer → fraction, batch 256): the GEMM alone
  (``*_conv_f16``), the best of int8 / fp8 / int8 async; ``..._by_contender`` every contender's fraction;
- ``fp8_vs_int8``: item 1's decision (``gpu_conv_bench.fp8_decision``) with its numbers;
  ``mma_packed_speedup_vs_mma``: ``mma_f16_ms / mma_packed_f16_ms`` per layer (packed input vs
  unpack + GEMM), where both were timed;
- ``model_speedup_vs_float_fp16_b256`` / ``_b1`` (model → ×): the fused ``OneBitRunner`` with CUDA
  graphs (the better of int8 / fp8) over the float model of the same widths in fp16
  channels-last, eager — on the CPU dry run the runner without graphs, as ``model_speedup_basis``
  says; ``model_speedup_vs_compiled_b256`` / ``_b1`` over ``torch.compile`` of that model;
  ``model_speedups_by_contender``, ``fused_agreement``;
- ``exact``: every ``*_exact`` column True, ``onebit_exact`` True for every model row, and the
  GPU tests passed (``exact_detail`` says which part failed);
- ``training``: the GPU training step (``gpu_train_check.py``): images/s, peak memory, whether a
  resumed run equals an uninterrupted one;
- ``steps`` (name → exit code, seconds), ``targets`` (each target of the issue: measured, met —
  true / false / null where not measured or a dry run), ``autotuned_tiles``, and ``unavailable``
  (what could not be measured and why). A missing number is null with its reason, never 0.

``--tiles`` only prints the autotuned tiles each step saved (``device_check.sh``'s tiles step).

Usage:  python benchmarks/device_summary.py OUT [--dry-run] [--tiles]
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
for p in (str(HERE.parent), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from gpu_conv_bench import TIMED_LABELS, _number, fp8_decision  # noqa: E402
from gpu_model_bench import CONTENDERS as MODEL_CONTENDERS  # noqa: E402

from cbcn.fileio import atomic_write_text  # noqa: E402

FUSED = ("fused_f16", "fused_fp8_f16", "fused_async_f16")  # the headline per-layer contenders: the fused layer, int8 / fp8 / int8 async
GEMMS = ("mma_conv_f16", "mma_fp8_conv_f16", "mma_async_conv_f16")  # the GEMM alone: int8, fp8, int8 async
GRAPH_RUNNERS = ("runner_fused_graph", "runner_fused_fp8_graph", "runner_fused_async_graph")
EAGER_RUNNERS = ("runner_fused", "runner_fused_fp8")
TILE_STEPS = ("layers", "model", "profile")
REQUIRED_KEYS = ("gpu", "per_layer_speedup_vs_cudnn_fp16", "gemm_fraction_of_int8_peak",
                 "model_speedup_vs_float_fp16_b256", "model_speedup_vs_float_fp16_b1", "exact")


def _cell(text: str):
    """A CSV cell as Python: "" -> None, "True"/"False" -> bool, numbers -> int / float, else the text."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() else value  # pandas writes 64.0 in a column with gaps


def read_rows(path: Path) -> list[dict] | None:
    """The rows of a results CSV with typed cells, or None if the file is missing."""
    if not path.exists():
        return None
    with open(path, newline="") as f:
        return [{k: _cell(v) for k, v in row.items()} for row in csv.DictReader(f)]


def extra_text(out: Path, name: str) -> str | None:
    """``OUT/extra/<name>``'s text, from the folder during a run or from ``extra.tar.gz`` once it
    is archived (so a committed run can be summarised again); None if absent."""
    path = out / "extra" / name
    if path.exists():
        return path.read_text()
    archive = out / "extra.tar.gz"
    if archive.exists():
        with tarfile.open(archive) as tar:
            try:
                return tar.extractfile(f"extra/{name}").read().decode()
            except KeyError:
                return None
    return None


def read_steps(out: Path) -> dict:
    """``extra/steps.tsv`` (name, exit code, seconds per line) -> {name: {exit_code, seconds}}."""
    steps = {}
    for line in (extra_text(out, "steps.tsv") or "").splitlines():
        name, rc, seconds = line.split("\t")[:3]
        steps[name] = dict(exit_code=int(rc), seconds=int(seconds))
    return steps


def _missing(row: dict, label: str, suffix: str, base: str | None) -> str:
    """Why ``row`` has no ``{label}{suffix}``: its error or skip, no time, no peak, or no baseline
    (``base``: the baseline's label, e.g. ``torch_fp16_cl``, with its own error or skip)."""
    for tag in ("_error", "_skipped"):
        if row.get(f"{label}{tag}"):
            return f"{label}: {row[f'{label}{tag}']}"
    if row.get(f"{label}_ms") is None:
        return row.get("note") or f"{label}: not measured"
    if suffix == "_peak_frac":
        return f"no int8 peak: {row.get('peak_assumed')}"
    if base and row.get(f"{base}_ms") is None:
        why = row.get(f"{base}_error") or row.get(f"{base}_skipped") or (
            "the dry run has no CPU fp16 cuDNN baseline" if base == "torch_fp16_cl" else "not measured")
        return f"no {base}_ms: {why}"
    return f"{label}{suffix}: not computed"


class _Summary:
    """Collects the numbers and, for each missing one, its reason (``unavailable``)."""

    def __init__(self):
        self.unavailable: dict[str, str] = {}

    def best(self, what: str, row: dict, labels, suffix: str, base: str | None = None):
        """The largest ``{label}{suffix}`` of ``row`` over ``labels``, or None with the reasons noted."""
        values = {label: _number(row.get(f"{label}{suffix}")) for label in labels}
        measured = [v for v in values.values() if v is not None]
        if measured:
            return max(measured)
        self.unavailable[what] = "; ".join(dict.fromkeys(_missing(row, label, suffix, base) for label in labels))
        return None

    def per_row(self, rows, name, batch, labels, suffix, key, base=None) -> dict:
        """{row[name]: best value} over the rows of ``batch`` (``name``: "layer" or "model")."""
        return {r[name]: self.best(f"{key} {r[name]}", r, labels, suffix, base) for r in rows if r.get("batch") == batch}


def _by_contender(rows, key, batch, labels, suffix) -> dict:
    """{row name: {label: value}} of every measured ``{label}{suffix}``."""
    return {r[key]: {label: r[f"{label}{suffix}"] for label in labels if _number(r.get(f"{label}{suffix}")) is not None}
            for r in rows if r.get("batch") == batch}


def _target(name, measured: dict, threshold: float, dry: bool) -> dict:
    """One target: every measured value ≥ ``threshold`` → met; any below → not met; else null."""
    values = [v for v in measured.values() if v is not None]
    if dry:
        met, note = None, "dry run: not a measurement of the target"
    elif any(v < threshold for v in values):
        met, note = False, None
    elif values and len(values) == len(measured):
        met, note = True, None
    else:
        met, note = None, "not every value was measured" if values else "not measured"
    return dict(target=name, threshold=threshold, measured=measured, met=met, note=note)


def _exactness(layers, model, steps) -> tuple[bool, dict]:
    """``exact`` and where it failed: at least one checked ``*_exact`` cell in each table and all of
    them True, each measured model row's ``onebit_exact`` True, the GPU tests (and their no-skip
    rule) passed."""
    cells = lambda rows, key: [(f"{r.get(key)} b{r.get('batch')} {k}", v) for r in rows for k, v in r.items()
                               if k.endswith("_exact") and v is not None]
    layer_cells, model_cells = cells(layers, "layer"), cells(model, "model")
    failed = [name for name, v in layer_cells + model_cells if v is not True]
    models_checked = [r for r in model if r.get("onebit_exact") is not None]
    tests = {name: s["exit_code"] for name, s in steps.items() if name in ("tests", "no_gpu_skips")}
    detail = dict(layer_columns_checked=len(layer_cells), model_columns_checked=len(model_cells),
                  columns_not_exact=failed, model_rows_checked=len(models_checked), tests_exit_codes=tests)
    exact = bool(layer_cells and models_checked and not failed and tests.get("tests") == 0
                 and all(rc == 0 for rc in tests.values()))
    return exact, detail


def _training(out: Path) -> dict | None:
    """``benchmarks/gpu_train_check.py``'s result: images/s, peak memory, resumed == uninterrupted."""
    text = (out / "train.json").read_text() if (out / "train.json").is_file() else extra_text(out, "train/train.json")
    if not text:
        return None
    r = json.loads(text)
    return {k: r.get(k) for k in ("device", "model", "data", "steps", "images_per_s_first_epoch",
                                  "images_per_s_later_epochs", "peak_memory_bytes", "resumed_equals_uninterrupted",
                                  "resumed_final_metrics_equal", "resumed_max_abs_weight_diff", "deterministic")}


def _tiles(out: Path) -> dict:
    tiles = {}
    for step in TILE_STEPS:
        text = extra_text(out, f"{step}/autotuned_tiles.json")
        tiles[step] = json.loads(text) if text else dict(tiles=[], note="not written (step failed?)")
    return tiles


def print_tiles(out: Path) -> None:
    """The autotuner's chosen tiles of every step (``device_check.sh``'s tiles step)."""
    for step, data in _tiles(out).items():
        tiles = data.get("tiles") or []
        print(f"[tiles] {step}: {data.get('note') or f'{len(tiles)} autotuned kernel/shape keys'}")
        for t in tiles:
            print(f"[tiles]   {t['kernel']} {t['key']} -> {t['config']}")


def _cuda_name() -> str | None:
    """The device's name when no results row gives it (the layer and model steps failed)."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def summarize(out: Path, dry: bool) -> dict:
    """The summary of the run in ``out`` (see the module docstring)."""
    layers, model = read_rows(out / "layers.csv"), read_rows(out / "model.csv")
    devices = [r["device"] for r in (layers or []) + (model or []) if r.get("device")]
    dry = dry or bool(devices and all(d == "cpu (dry run)" for d in devices))  # a dry run's rows say so
    s = _Summary()
    steps = read_steps(out)
    for name, rows in (("layers.csv", layers), ("model.csv", model)):
        if rows is None:
            s.unavailable[name] = "missing: its step failed before writing a row (see device_check.log)"
    layers, model = layers or [], model or []
    for name, step in steps.items():
        if step["exit_code"] != 0:
            s.unavailable[f"step {name}"] = f"exit {step['exit_code']}" + (" (timeout)" if step["exit_code"] in (124, 137) else "")
    for file, rows, key in (("layers", layers, "layer"), ("model", model, "model")):
        for r in rows:
            for k, v in r.items():
                if v and k.endswith(("_error", "_skipped")):
                    s.unavailable[f"{file} {r[key]} b{r['batch']} {k.rsplit('_', 1)[0]}"] = str(v)
    gpu = "cpu (dry run)" if dry else (devices[0] if devices else _cuda_name())
    if gpu is None:
        s.unavailable["gpu"] = "no results row names the device, and this process sees no CUDA device"
    measured_batches = sorted({r["batch"] for r in layers + model if isinstance(r.get("batch"), int)})
    large = 256 if 256 in measured_batches or not measured_batches else max(measured_batches)
    small = 1
    speedup_layer = lambda batch: s.per_row(layers, "layer", batch, FUSED, "_speedup_vs_fp16cl",
                                              f"per_layer_speedup_vs_cudnn_fp16 b{batch}", "torch_fp16_cl")
    runners = EAGER_RUNNERS if dry else GRAPH_RUNNERS
    model_speedup = lambda batch, base: s.per_row(
        model, "model", batch, runners, f"_speedup_vs_{base}", f"model_speedup_vs_{base} b{batch}",
        "float_fp16_cl" if base == "fp16cl" else "float_fp16_cl_compiled")
    summary = dict(
        gpu=gpu,
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        dry_run=dry,
        batches=dict(large=large, small=small,
                     note="dry run: the large batch stands in for 256" if dry and large != 256 else None),
        per_layer_speedup_vs_cudnn_fp16=speedup_layer(large),
        per_layer_speedup_vs_cudnn_fp16_b1=speedup_layer(small),
        per_layer_speedup_basis="the fused layer (fused_f16 int8 / fused_fp8_f16 fp8 / fused_async_f16 int8 with one "
                                "wgmma in flight, the best) vs cuDNN fp16 "
                                "channels-last (torch_fp16_cl_ms), GPU time of CUDA-graph replays",
        per_layer_speedups_by_contender={f"b{b}": _by_contender(layers, "layer", b, TIMED_LABELS, "_speedup_vs_fp16cl")
                                         for b in (large, small)},
        gemm_fraction_of_int8_peak=s.per_row(layers, "layer", large, GEMMS, "_peak_frac",
                                               "gemm_fraction_of_int8_peak"),
        gemm_fraction_of_int8_peak_by_contender=_by_contender(layers, "layer", large, TIMED_LABELS + ("scaled_mm_fp8",),
                                                              "_peak_frac"),
        fp8_vs_int8=dict(fp8_decision(layers), dry_run_note="dry run: timings meaningless" if dry else None),
        mma_packed_speedup_vs_mma={f"b{b}": {r["layer"]: r["mma_f16_ms"] / r["mma_packed_f16_ms"] for r in layers
                                             if r.get("batch") == b and _number(r.get("mma_packed_f16_ms"))
                                             and _number(r.get("mma_f16_ms"))} for b in (large, small)},
        model_speedup_vs_float_fp16_b256=model_speedup(large, "fp16cl"),
        model_speedup_vs_float_fp16_b1=model_speedup(small, "fp16cl"),
        model_speedup_vs_compiled_b256=model_speedup(large, "compiled"),
        model_speedup_vs_compiled_b1=model_speedup(small, "compiled"),
        model_speedup_basis=(f"the better of {' / '.join(runners)} ("
                             + ("no CUDA graphs: CPU dry run" if dry else "OneBitRunner fused mode, CUDA graphs")
                             + ") vs float_fp16_cl (the float model of the same widths, fp16 channels-last, eager)"
                             " / float_fp16_cl_compiled (torch.compile)"),
        model_speedups_by_contender={f"b{b}": _by_contender(model, "model", b, MODEL_CONTENDERS, "_speedup_vs_fp16cl")
                                     for b in (large, small)},
        fused_agreement={f"b{b}": {r["model"]: {k: r.get(k) for k in ("fused_max_abs_dlogit", "fused_max_abs_logit",
                                                                      "fused_argmax_agreement", "fused_fp8_same_as_int8",
                                                                      "fused_async_same_as_int8")}
                                   for r in model if r.get("batch") == b} for b in (large, small)},
    )
    summary["exact"], summary["exact_detail"] = _exactness(layers, model, steps)
    summary["steps"] = steps
    stride = {r["layer"]: r.get("stride") for r in layers}
    wide = {r["layer"] for r in layers if isinstance(r.get("C_in"), int) and r["C_in"] >= 256}
    per_layer, gemm = summary["per_layer_speedup_vs_cudnn_fp16"], summary["gemm_fraction_of_int8_peak"]
    summary["targets"] = [
        _target("fused layer >= 1.5x cuDNN fp16 channels-last, stride 1, batch 256",
                {k: v for k, v in per_layer.items() if stride.get(k) == 1}, 1.5, dry),
        _target("fused layer >= 1.25x cuDNN fp16 channels-last, stride 2, batch 256",
                {k: v for k, v in per_layer.items() if stride.get(k) == 2}, 1.25, dry),
        _target("GEMM >= 60% of the int8 dense peak at C_in >= 256, batch 256",
                {k: v for k, v in gemm.items() if k in wide}, 0.60, dry),
        _target("whole model (fused runner, CUDA graphs) >= 1.5x float fp16 channels-last at batch 256",
                summary["model_speedup_vs_float_fp16_b256"], 1.5, dry),
        _target("whole model (fused runner, CUDA graphs) >= 1.0x float fp16 channels-last at batch 1",
                summary["model_speedup_vs_float_fp16_b1"], 1.0, dry),
    ]
    summary["training"] = _training(out)
    if summary["training"] is None:
        s.unavailable["training"] = "train.json missing: the train step failed or did not run (see device_check.log)"
    summary["autotuned_tiles"] = _tiles(out)
    summary["unavailable"] = s.unavailable
    return summary


def _print(summary: dict) -> None:
    print(f"[summary] gpu: {summary['gpu']}; exact: {summary['exact']}; dry run: {summary['dry_run']}")
    fmt = lambda d: ", ".join(f"{k} {'n/a' if v is None else f'{v:.2f}'}" for k, v in d.items()) or "none"
    print(f"[summary] per-layer speed-up vs cuDNN fp16 (b{summary['batches']['large']}): "
          f"{fmt(summary['per_layer_speedup_vs_cudnn_fp16'])}")
    print(f"[summary] GEMM fraction of the int8 peak: {fmt(summary['gemm_fraction_of_int8_peak'])}")
    decision = summary["fp8_vs_int8"]
    print(f"[summary] fp8 default: {decision['fp8_default']} (median gain {decision.get('median_gain')})")
    print(f"[summary] model speed-up vs float fp16: b{summary['batches']['large']} "
          f"{fmt(summary['model_speedup_vs_float_fp16_b256'])}; b1 {fmt(summary['model_speedup_vs_float_fp16_b1'])}")
    for t in summary["targets"]:
        print(f"[summary] target met={t['met']}: {t['target']}")
    print(f"[summary] {len(summary['unavailable'])} measurements unavailable (see summary.json)")


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", help="the device_check.sh output folder")
    ap.add_argument("--dry-run", action="store_true",
                    help="the run was device_check.sh --dry-run (also detected from the rows' device)")
    ap.add_argument("--tiles", action="store_true", help="only print the autotuned tiles each step saved")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if not out.is_dir():
        raise SystemExit(f"device_summary: {out} is not a folder")
    if args.tiles:
        print_tiles(out)
        return None
    summary = summarize(out, args.dry_run)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=str) + "\n")
    _print(summary)
    print(f"[summary] wrote {out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
