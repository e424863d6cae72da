"""The GPU benchmark script's code paths, exercised on the CPU with --dry-run (tiny shapes)."""
import csv
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    bench = _load_bench()
    rows = bench.main(["--dry-run", "--out", str(tmp_path), "--max-shapes", "1", "--batches", "1,2", "--reps", "1"])
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
