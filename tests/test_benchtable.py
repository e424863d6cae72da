"""``benchmarks/benchtable.py``: saved pytest-benchmark JSON -> table (CSV + Markdown) and plot."""
import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import benchtable  # noqa: E402


def _bench(group, name, median_s, baseline=False, **extra):
    stats = dict(min=median_s * 0.9, q1=median_s * 0.95, median=median_s, q3=median_s * 1.1, mean=median_s,
                 stddev=median_s * 0.1, iqr=median_s * 0.15, max=median_s * 2, rounds=7, ops=1 / median_s)
    return {
        "group": group, "name": f"test_x[{name}]", "fullname": f"benchmarks/test_x.py::test_x[{name}]",
        "param": name, "params": {}, "stats": stats,
        "extra_info": {"suite": group.split(":")[0], "device": "cpu", "size": "small", "torch_threads": 1,
                       "baseline": baseline, **extra},
    }


def _write(path, benchmarks, node="vm"):
    path.write_text(json.dumps({
        "machine_info": {"node": node, "cpu": {"brand_raw": "Test CPU"}},
        "commit_info": {"id": "abc123"}, "datetime": "2026-01-01T00:00:00", "version": "5.2.3",
        "benchmarks": benchmarks,
    }))
    return path


@pytest.fixture
def run_json(tmp_path):
    return _write(tmp_path / "cpu-run.json", [
        _bench("layer-fwd: lenet", "lenet-conv2d", 0.002, baseline=True, method="conv2d", K=1, flops=4e6),
        _bench("layer-fwd+bwd: lenet", "lenet-conv2d-bwd", 0.006, baseline=True, method="conv2d", K=1),
        _bench("layer-fwd: lenet", "lenet-cbcn-K4", 0.003, method="cbcn", K=4, shape=[32, 10, 16], flops=4e6),
        _bench("layer-fwd: lenet", "lenet-conv2d-K4", 0.006, method="conv2d", K=4, flops=6.4e7),
        _bench("bitpack-pack: 1x64", "pack-ref", 0.004, path="reference", items=2e6),  # no baseline: vs fastest
        _bench("bitpack-pack: 1x64", "pack-kernel", 0.001, path="kernel", items=2e6, unit="values"),
    ])


def test_load_converts_labels_and_ratios(run_json):
    raw = benchtable.load([run_json])
    assert raw["group"].tolist()[:4] == ["layer-fwd: lenet"] * 3 + ["layer-fwd+bwd: lenet"]  # groups kept together
    df = raw.set_index("param")
    assert df.loc["lenet-cbcn-K4", "median_ms"] == pytest.approx(3.0)
    assert df.loc["lenet-cbcn-K4", "case"] == "cbcn-K4" and df.loc["lenet-conv2d-K4", "case"] == "conv2d-K4"
    assert df.loc["lenet-cbcn-K4", "shape"] == "32x10x16"  # list-valued extra_info flattened
    assert df.loc["lenet-cbcn-K4", "x_baseline"] == pytest.approx(1.5)  # vs the marked baseline
    assert df.loc["pack-ref", "x_baseline"] == pytest.approx(4.0)  # vs the fastest when none is marked
    assert df.loc["pack-kernel", "case"] == "kernel"
    assert df.loc["lenet-conv2d", "throughput"] == "2 GFLOP/s"
    assert df.loc["pack-kernel", "throughput"] == "2 Gvalues/s"
    assert df.loc["pack-ref", "throughput"] == "500 Mitems/s"
    assert set(df["run"]) == {"cpu-run"} and set(df["machine"]) == {"vm"}


def test_build_writes_csv_markdown_and_plot(run_json, tmp_path):
    files = benchtable.build([run_json], tmp_path / "out")
    assert {p.name for p in files.values()} == {"cpu-run.csv", "cpu-run.md", "cpu-run.png"}
    assert all(p.stat().st_size > 0 for p in files.values())
    md = files["markdown"].read_text()
    assert re.search(r"\| group +\| case +\| median_ms +\|", md) and "cbcn-K4" in md and "Test CPU" in md
    assert files["plot"].read_bytes()[:4] == b"\x89PNG"


def test_two_runs_side_by_side(run_json, tmp_path):
    slower = json.loads(run_json.read_text())
    for b in slower["benchmarks"]:
        b["stats"]["median"] *= 2
    other = tmp_path / "after.json"
    other.write_text(json.dumps(slower))
    df = benchtable.load([run_json, other])
    wide = benchtable.compare_runs(df)
    assert len(wide) == 6 and wide["after / cpu-run"].tolist() == pytest.approx([2.0] * 6)
    files = benchtable.build([run_json, other], tmp_path / "out")
    assert files["markdown"].name == "benchmarks.md"
    assert "Runs side by side" in files["markdown"].read_text()


def test_cli(run_json, tmp_path, capsys):
    out = tmp_path / "reports"
    assert benchtable.main([str(run_json), "--out", str(out), "--name", "t"]) == 0
    assert (out / "t.csv").is_file() and "markdown:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        benchtable.main([str(tmp_path / "missing.json")])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"not": "benchmarks"}))
    assert benchtable.main([str(bad), "--out", str(out)]) == 2
    assert "not a pytest-benchmark JSON" in capsys.readouterr().err
