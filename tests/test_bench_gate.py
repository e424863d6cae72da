"""The benchmark regression gate works: a run compared with a saved baseline through
``--benchmark-compare-fail`` fails when the code got slower and passes when it did not.

A tiny benchmark (a 2 ms sleep — immune to CPU load from other jobs) runs in a subprocess three
times: saved as the baseline, compared unchanged, compared with a 20x slowdown injected through
an environment variable. The threshold (``mean:300%``) is far from both outcomes, so noise cannot
flip them. The project's own gate is ``tox -e bench-compare`` (docs/BENCHMARKS.md).
"""
import os
import subprocess
import sys

BENCHMARK = '''
import os
import time


def test_sleep(benchmark):
    benchmark(time.sleep, 0.002 * float(os.environ.get("GATE_SLOWDOWN", "1")))
'''


def _pytest(tmp_path, *args, slowdown=1):
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env.update(GATE_SLOWDOWN=str(slowdown), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")  # fast start: one plugin
    cmd = [
        sys.executable, "-m", "pytest", "test_gate_case.py", "-q", "-p", "pytest_benchmark.plugin", "-p", "no:cacheprovider",
        f"--benchmark-storage=file://{tmp_path / 'storage'}", "--benchmark-min-rounds=5",
        "--benchmark-max-time=0.05", "--benchmark-warmup=off", *args,
    ]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_compare_fail_gate(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # keep the project's addopts (--benchmark-disable) out
    (tmp_path / "test_gate_case.py").write_text(BENCHMARK)
    saved = _pytest(tmp_path, "--benchmark-save=baseline")
    assert saved.returncode == 0, saved.stdout + saved.stderr
    assert list((tmp_path / "storage").rglob("0001_baseline.json")), saved.stdout

    gate = ["--benchmark-compare=0001", "--benchmark-compare-fail=mean:300%"]
    unchanged = _pytest(tmp_path, *gate)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr

    slower = _pytest(tmp_path, *gate, slowdown=20)
    assert slower.returncode != 0, slower.stdout + slower.stderr
    assert "Performance has regressed" in slower.stdout + slower.stderr
