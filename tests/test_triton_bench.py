"""The GPU benchmark script's code paths, exercised on the CPU with --dry-run (tiny shapes)."""
import csv
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _skip_if_interpreter_cannot_run_kernels():
    """The dry runs execute the kernels in the Triton interpreter (when Triton is installed)."""
    try:
        from triton_kernels._runtime import interpreter_problem
    except ImportError:  # no Triton: the conv benchmark times the reference path only
        return
    if interpreter_problem():
        pytest.skip(interpreter_problem())


def _load_bench():
    spec = importlib.util.spec_from_file_location("gpu_conv_bench", ROOT / "benchmarks" / "gpu_conv_bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_conv_bench"] = module
    spec.loader.exec_module(module)
    return module


def test_peak_detection():
    bench = _load_bench()
    assert bench.int8_peak("NVIDIA H100 80GB HBM3")[0] == 1979.0
    assert bench.int8_peak("NVIDIA H100 PCIe")[0] == 1513.0
    assert bench.int8_peak("NVIDIA H200")[0] == 1979.0
    peak, note = bench.int8_peak("NVIDIA A100-SXM4-80GB")
    assert peak is None and "unknown" in note


def test_dry_run_writes_results(tmp_path):
    _skip_if_interpreter_cannot_run_kernels()
    bench = _load_bench()
    rows = bench.main(["--dry-run", "--out", str(tmp_path), "--max-shapes", "1", "--batches", "1,2", "--rep-ms", "1"])
    assert len(rows) == 2
    for row in rows:
        exact = {k: v for k, v in row.items() if k.endswith("_exact")}
        assert exact and all(exact.values()), exact  # at least one path checked, every checked path exact
        assert row["torch_fp32_ms"] > 0
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 and "torch_fp32_ms" in table[0]
    md = (tmp_path / "results.md").read_text()
    assert "DRY RUN" in md and "tiny_a" in md


def test_model_bench_dry_run(tmp_path):
    """benchmarks/gpu_model_bench.py on the CPU: a tiny CBCN model, 1-bit through the kernels in the
    interpreter, equal to the training model; every contender timed; checkpoint bytes measured."""
    pytest.importorskip("triton")
    _skip_if_interpreter_cannot_run_kernels()
    spec = importlib.util.spec_from_file_location("gpu_model_bench", ROOT / "benchmarks" / "gpu_model_bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rows = bench.main(["--dry-run", "--out", str(tmp_path)])
    assert len(rows) == 1
    row = rows[0]
    assert row["onebit_exact"] is True and row["onebit_fp8_exact"] is True and row["onebit_same_predictions"] is True
    assert all(row[f"{c}_ms"] > 0 for c in bench.CONTENDERS), row
    assert row["fp32_checkpoint_bytes"] > row["onebit_checkpoint_bytes"] > 0
    assert "DRY RUN" in (tmp_path / "results.md").read_text()
