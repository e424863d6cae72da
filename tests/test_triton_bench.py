"""The GPU benchmark scripts' code paths, exercised on the CPU with --dry-run (tiny shapes), the
summary's arithmetic on GPU-like results, and ``benchmarks/device_check.sh --dry-run`` end to end."""
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FUSED_LABELS = ("fused_f16", "fused_fp8_f16", "fused_ksum_f16", "fused_fp8_ksum_f16")


def _skip_if_interpreter_cannot_run_kernels():
    """The dry runs execute the kernels in the Triton interpreter (when Triton is installed)."""
    try:
        from triton_kernels._runtime import interpreter_problem
    except ImportError:  # no Triton: the conv benchmark times the reference path only
        return
    if interpreter_problem():
        pytest.skip(interpreter_problem())


def _load(name):
    """A benchmark script as a module (registered, so the scripts can import each other)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_peak_detection():
    bench = _load("gpu_conv_bench")
    assert bench.int8_peak("NVIDIA H100 80GB HBM3")[0] == 1979.0
    assert bench.int8_peak("NVIDIA H100 PCIe")[0] == 1513.0
    assert bench.int8_peak("NVIDIA H200")[0] == 1979.0
    assert bench.int8_peak("NVIDIA H200 NVL")[0] == bench.int8_peak("NVIDIA H100 NVL")[0] == 1671.0
    peak, note = bench.int8_peak("NVIDIA A100-SXM4-80GB")
    assert peak is None and "unknown" in note


def test_fp8_decision_rule():
    """Item 1: fp8 becomes the default when the median GEMM gain at batch 256 is >= 10 %; batch-1
    rows and rows without both GEMM times do not count; CSV strings are read like numbers."""
    bench = _load("gpu_conv_bench")
    rows = [dict(layer=f"l{i}", batch=256, fp8_gemm_gain=g, mma_conv_f16_ms=1.0, mma_fp8_conv_f16_ms=1 / (1 + g))
            for i, g in enumerate((0.12, 0.08, 0.15))]
    rows += [dict(layer="l0", batch=1, fp8_gemm_gain=-0.5), dict(layer="l9", batch=256, note="skipped")]
    decision = bench.fp8_decision(rows)
    assert decision["batch"] == 256 and decision["fp8_default"] is True
    assert decision["median_gain"] == pytest.approx(0.12) and set(decision["per_layer"]) == {"l0", "l1", "l2"}
    rows[0]["fp8_gemm_gain"] = "0.02"  # as read back from results.csv
    assert bench.fp8_decision(rows)["fp8_default"] is False
    undecided = bench.fp8_decision([dict(layer="l0", batch=256, fp8_gemm_gain="")])
    assert undecided["fp8_default"] is None and undecided["reason"]


def test_fp8_decision_reports_the_async_int8_alternative():
    """Beside fp8, the int8 GEMM with one wgmma in flight (mma_async) by the same measure and bar;
    the next step follows: fp8 first, else mma_async if it gains >= 10 %, else int8 stays."""
    bench = _load("gpu_conv_bench")

    def rows(fp8, async_):
        return [dict(layer=f"l{i}", batch=256, fp8_gemm_gain=f, async_gemm_gain=a, mma_conv_f16_ms=1.0,
                     mma_fp8_conv_f16_ms=1 / (1 + f), mma_async_conv_f16_ms=1 / (1 + a))
                for i, (f, a) in enumerate(zip(fp8, async_))]

    decision = bench.fp8_decision(rows((0.02, 0.05, 0.0), (0.3, 0.2, 0.25)))
    assert decision["fp8_default"] is False and decision["async_int8"]["faster"] is True
    assert decision["async_int8"]["median_gain"] == pytest.approx(0.25) and "mma_async" in decision["next_step"]
    assert "async int8 (mma_async) median +25.0%" in bench._decision_line(decision)
    assert "make mma_fp8 the default" in bench.fp8_decision(rows((0.2, 0.3, 0.1), (0.3, 0.2, 0.25)))["next_step"]
    neither = bench.fp8_decision(rows((0.02, 0.05, 0.0), (0.01, -0.2, 0.05)))
    assert neither["async_int8"]["faster"] is False and "neither" in neither["next_step"]
    cpu = bench.fp8_decision([dict(layer="l0", batch=2, fp8_gemm_gain=0.0, mma_async_unavailable="no GPU")])
    assert cpu["async_int8"]["faster"] is None and cpu["async_int8"]["reason"] == "no GPU"
    assert "unmeasured" in cpu["next_step"]


def test_dry_run_writes_results(tmp_path):
    _skip_if_interpreter_cannot_run_kernels()
    bench = _load("gpu_conv_bench")
    rows = bench.main(["--dry-run", "--out", str(tmp_path), "--max-shapes", "1", "--batches", "1", "--rep-ms", "1"])
    assert len(rows) == 1
    row = rows[0]
    exact = {k: v for k, v in row.items() if k.endswith("_exact")}
    assert exact and all(exact.values()), exact  # at least one path checked, every checked path exact
    assert row["torch_fp32_ms"] > 0
    if "fused_f16_exact" in row:  # with Triton: the fused layer, int8 / fp8, plain / K-sum, and the fp8 decision
        assert all(row[f"{label}_exact"] is True and row[f"{label}_ms"] > 0 for label in FUSED_LABELS), row
        assert row["fused_residual"] is True and "fp8_gemm_gain" in row
        assert not any(k.startswith("popcount") for k in row)  # popcount only when asked for
        assert "interpreter" in row["mma_async_unavailable"]  # Gluon: GPU only, said in the row
    assert "scaled_mm_fp8_ms" not in row and "GPU" in row["scaled_mm_fp8_skipped"]
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 1 and "torch_fp32_ms" in table[0]
    md = (tmp_path / "results.md").read_text()
    assert "DRY RUN" in md and "tiny_a" in md and "fp8 vs int8 (item 1)" in md
    assert json.loads((tmp_path / "autotuned_tiles.json").read_text())["tiles"] == []


def test_a_failing_operand_step_costs_only_its_measurements(tmp_path, monkeypatch):
    """When unpacking the weights fails (a compile error, an OOM), the GEMM-alone and fused-layer
    measurements of each shape say why, and every shape is still measured (no uncaught error ends
    the script and loses the later shapes)."""
    pytest.importorskip("triton")
    _skip_if_interpreter_cannot_run_kernels()
    from triton_kernels import conv as tkconv

    def broken(*args, **kwargs):
        raise RuntimeError("stand-in failure")

    monkeypatch.setattr(tkconv, "unpack_weights", broken)
    bench = _load("gpu_conv_bench")
    rows = bench.main(["--dry-run", "--out", str(tmp_path), "--batches", "1", "--rep-ms", "1", "--paths", "mma",
                       "--ksum", "1"])
    assert [r["layer"] for r in rows] == [s[0] for s in bench.DRY_SHAPES]
    for row in rows:
        assert "stand-in failure" in row["mma_conv_f16_error"] and "stand-in failure" in row["fused_f16_error"]
        assert row["torch_fp32_ms"] > 0 and row["pack_ms"] > 0


@pytest.mark.parametrize("argv,message", [
    (["--paths", "mma,fast"], "unknown --paths"),
    (["--batches", "256,x"], "comma-separated positive integers"),
    (["--ksum", "3"], "--ksum must be"),
])
def test_bad_arguments_are_one_clear_line(argv, message):
    bench = _load("gpu_conv_bench")
    with pytest.raises(SystemExit, match=message):
        bench.main(["--dry-run", *argv])


def test_model_bench_dry_run(tmp_path):
    """benchmarks/gpu_model_bench.py on the CPU: a tiny CBCN model, 1-bit through the kernels in the
    interpreter, equal to the training model; the fused runner's agreement stated; every contender
    that runs on a CPU timed, the others skipped with their reason; checkpoint bytes measured."""
    pytest.importorskip("triton")
    _skip_if_interpreter_cannot_run_kernels()
    bench = _load("gpu_model_bench")
    rows = bench.main(["--dry-run", "--out", str(tmp_path), "--batches", "1", "--rep-ms", "1"])
    assert len(rows) == 1
    row = rows[0]
    assert row["onebit_exact"] is True and row["onebit_fp8_exact"] is True and row["onebit_same_predictions"] is True
    assert 0 <= row["fused_argmax_agreement"] <= 1 and row["fused_max_abs_dlogit"] >= 0
    assert row["fused_fp8_same_as_int8"] is True  # the same integers through fp8 operands
    for contender in bench.CONTENDERS:
        if contender in bench.GRAPH_CONTENDERS:
            assert row[f"{contender}_skipped"] == "CUDA graphs need a GPU"
        elif contender in bench.COMPILED:
            assert "--compile" in row[f"{contender}_skipped"]
        else:
            assert row[f"{contender}_ms"] > 0 and f"{contender}_speedup_vs_fp16cl" in row, contender
    assert row["fp32_checkpoint_bytes"] > row["onebit_checkpoint_bytes"] > 0
    md = (tmp_path / "results.md").read_text()
    assert "DRY RUN" in md and "CUDA graphs need a GPU" in md


def _write_csv(path, rows):
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def _gpu_like_run(out, tests_rc=0, conv2_exact=True):
    """A device_check.sh folder with made-up GPU results (only the summary's arithmetic is tested)."""
    (out / "extra").mkdir(parents=True)
    layer = lambda name, batch, c_in, stride, fused, fp8, gemm, fp8_gemm: dict(
        layer=name, batch=batch, C_in=c_in, stride=stride, device="NVIDIA H100 80GB HBM3", peak_assumed="H100 SXM",
        fused_f16_exact=conv2_exact or name != "conv2_x", fused_fp8_f16_exact=True, mma_f16_exact=True,
        fused_f16_ms=1.0, fused_fp8_f16_ms=1.0, torch_fp16_cl_ms=1.0,
        fused_f16_speedup_vs_fp16cl=fused, fused_fp8_f16_speedup_vs_fp16cl=fp8,
        mma_conv_f16_ms=1.0, mma_fp8_conv_f16_ms=1.0, mma_conv_f16_peak_frac=gemm, mma_fp8_conv_f16_peak_frac=fp8_gemm,
        fp8_gemm_gain=0.05)
    _write_csv(out / "layers.csv", [
        layer("conv2_x", 256, 64, 1, 1.4, 1.6, 0.30, 0.35), layer("conv3_1", 256, 64, 2, 1.1, 1.2, 0.25, 0.2),
        layer("conv4_x", 256, 256, 1, 1.7, 1.5, 0.62, 0.55), layer("conv2_x", 1, 64, 1, 0.9, 0.8, 0.01, 0.01)])
    model = lambda name, batch, graph, fp8_graph, compiled: dict(
        model=name, batch=batch, device="NVIDIA H100 80GB HBM3", onebit_exact=True, onebit_fp8_exact=True,
        float_fp16_cl_ms=1.0, runner_fused_graph_ms=1.0, runner_fused_fp8_graph_ms=1.0,
        runner_fused_graph_speedup_vs_fp16cl=graph, runner_fused_fp8_graph_speedup_vs_fp16cl=fp8_graph,
        runner_fused_speedup_vs_fp16cl=9.9,  # eager runner: not the GPU headline
        **(dict(float_fp16_cl_compiled_ms=1.0, runner_fused_graph_speedup_vs_compiled=compiled)
           if compiled else dict(float_fp16_cl_compiled_error="BackendCompilerFailed: no")))
    _write_csv(out / "model.csv", [model("resnet18-xnor", 256, 1.8, 1.6, 1.2), model("resnet18-xnor", 1, 0.9, 0.7, None)])
    (out / "extra" / "steps.tsv").write_text(f"layers\t0\t90\nmodel\t0\t150\ntests\t{tests_rc}\t80\nno_gpu_skips\t0\t0\n")


def test_device_summary_on_gpu_like_results(tmp_path):
    summary_mod = _load("device_summary")
    _gpu_like_run(tmp_path)
    summary = summary_mod.main([str(tmp_path)])
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(summary, default=str))
    assert all(k in summary for k in summary_mod.REQUIRED_KEYS)
    assert summary["gpu"] == "NVIDIA H100 80GB HBM3" and summary["exact"] is True
    assert summary["per_layer_speedup_vs_cudnn_fp16"] == {"conv2_x": 1.6, "conv3_1": 1.2, "conv4_x": 1.7}
    assert summary["per_layer_speedup_vs_cudnn_fp16_b1"] == {"conv2_x": 0.9}
    assert summary["gemm_fraction_of_int8_peak"]["conv4_x"] == 0.62
    assert summary["model_speedup_vs_float_fp16_b256"] == {"resnet18-xnor": 1.8}  # graphs, not the eager 9.9
    assert summary["model_speedup_vs_float_fp16_b1"] == {"resnet18-xnor": 0.9}
    assert summary["model_speedup_vs_compiled_b1"] == {"resnet18-xnor": None}
    assert "BackendCompilerFailed" in summary["unavailable"]["model_speedup_vs_compiled b1 resnet18-xnor"]
    assert summary["fp8_vs_int8"]["fp8_default"] is False
    met = [t["met"] for t in summary["targets"]]
    assert met == [True, False, True, True, False]
    _gpu_like_run(tmp_path / "failed", tests_rc=1)
    assert summary_mod.main([str(tmp_path / "failed")])["exact"] is False
    _gpu_like_run(tmp_path / "not-exact", conv2_exact=False)
    detail = summary_mod.main([str(tmp_path / "not-exact")])["exact_detail"]
    assert detail["columns_not_exact"] == ["conv2_x b256 fused_f16_exact", "conv2_x b1 fused_f16_exact"]


def _device_check(*args, **kwargs):
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
                          **kwargs)


def test_device_check_refuses_bad_arguments(tmp_path):
    res = _device_check(str(tmp_path / "a"), "--fast")
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0 and "unknown option --fast" in res.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    res = _device_check(str(tmp_path / "full"), "--dry-run")
    assert res.returncode == 2 and "not empty" in res.stderr


@pytest.mark.slow
def test_device_check_dry_run(tmp_path):
    """The whole device run on the CPU: every step in order, at most 9 files, a complete summary."""
    pytest.importorskip("triton")
    _skip_if_interpreter_cannot_run_kernels()
    if shutil.which("timeout") is None or shutil.which("tar") is None:
        pytest.skip("device_check.sh needs coreutils timeout and tar")
    out = tmp_path / "run"
    res = _device_check(str(out), "--dry-run", timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["summary.json", "device_check.log", "layers.csv", "layers.md", "model.csv", "model.md",
                            "profile.txt", "train.json", "extra.tar.gz"])
    summary = json.loads((out / "summary.json").read_text())
    for key in ("gpu", "date", "dry_run", "per_layer_speedup_vs_cudnn_fp16", "per_layer_speedup_vs_cudnn_fp16_b1",
                "gemm_fraction_of_int8_peak", "fp8_vs_int8", "model_speedup_vs_float_fp16_b256",
                "model_speedup_vs_float_fp16_b1", "model_speedup_vs_compiled_b256", "model_speedup_vs_compiled_b1",
                "exact", "steps", "targets", "unavailable"):
        assert key in summary, key
    assert summary["exact"] is True and summary["dry_run"] is True and summary["gpu"] == "cpu (dry run)"
    assert all(s["exit_code"] == 0 for s in summary["steps"].values()), summary["steps"]
    assert all(v is not None for v in summary["model_speedup_vs_float_fp16_b256"].values())
    assert summary["mma_packed_speedup_vs_mma"]["b1"]  # device_check.sh names --paths mma,mma_fp8,mma_async,mma_packed
    log = (out / "device_check.log").read_text()
    order = [log.index(f"=== step {name} ") for name in ("env", "layers", "model", "profile", "train", "tests")]
    order.append(log.index("=== tiles "))  # bookkeeping, outside the step budget
    assert order == sorted(order) and log.index("=== summary") > order[-1]
    assert "[tiles] layers: none" in log and "every step passed" in log
    assert "Self CPU time total" in (out / "profile.txt").read_text()
    assert summary["training"]["resumed_equals_uninterrupted"] is True
    assert summary["training"]["images_per_s_later_epochs"] > 0


def test_ptxas_table_occupancy_arithmetic():
    """CTAs per SM from registers (allocated per warp in units of 256) and shared memory (1 KiB
    reserved per CTA) on an H100/H200; tile names as in the results tables."""
    table = _load("ptxas_table")
    assert table.ctas_per_sm(128, 8, 64 * 1024) == (2, 3)
    assert table.ctas_per_sm(129, 8, 64 * 1024)[0] == 1  # 136 per thread after rounding: one 8-warp CTA
    assert table.ctas_per_sm(64, 4, 0) == (8, 32)
    assert table._tile_name(dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, SPLIT_K=4)) == "64x64x32 split_k=4"
    assert table._tile_name(dict(BLOCK_M=256, BLOCK_N=64, BLOCK_K=64, SWAP_AB=True, PERSISTENT=True,
                                 TMA_STORE=True)) == "256x64x64 swap_ab persistent tma_store"


def test_model_bench_times_torch_compile_last(tmp_path, monkeypatch):
    """torch.compile (unbounded time) runs after every row is measured and saved: the rows defer
    it, the final pass times it on the row's model and input, and a spent budget says so. Here
    ``_compiled`` is a stand-in (a cheap call): a real CPU compile takes minutes, and the 1-bit
    model runs its kernels in the Triton interpreter."""
    pytest.importorskip("triton")
    _skip_if_interpreter_cannot_run_kernels()
    bench = _load("gpu_model_bench")
    order = []

    def stand_in(ctx, row, contender):  # the model it would compile is there; a cheap call is timed
        order.append((row["model"], row["batch"], contender, len(list(tmp_path.glob("results.csv")))))
        assert (ctx.float16 if contender == "float_fp16_cl_compiled" else ctx.onebit16) is not None
        row[f"{contender}_compile_s"] = 0.0
        return lambda: ctx.x16 * 2

    monkeypatch.setattr(bench, "_compiled", stand_in)
    monkeypatch.setattr(bench, "COMPILE_RESERVE_S", 0)
    # the order of the passes is the question here, not the other contenders (the dry-run test
    # times those): only the float model besides the compiled ones, which keeps this test short
    monkeypatch.setattr(bench, "CONTENDERS", ("float_fp16_cl", *bench.COMPILED))
    rows = bench.main(["--dry-run", "--compile", "--out", str(tmp_path), "--batches", "2,1", "--rep-ms", "1"])
    # the float model, then the 1-bit model (the converted model on the kernels), row by row
    assert [(r["model"], r["batch"], c) for r in rows for c in bench.COMPILED] == [o[:3] for o in order]
    assert all(saved for *_, saved in order)  # the rows were on disk before the first compile
    for row in rows:
        for contender in bench.COMPILED:
            assert row[f"{contender}_ms"] > 0 and f"{contender}_skipped" not in row
        assert row["onebit_exact_compiled_speedup_vs_fp16cl"] > 0
    monkeypatch.setattr(bench, "COMPILE_RESERVE_S", 10**6)
    rows = bench.main(["--dry-run", "--compile", "--out", str(tmp_path / "b"), "--batches", "1", "--rep-ms", "1"])
    assert all("budget" in rows[0][f"{c}_skipped"] for c in bench.COMPILED)


def test_model_bench_saves_each_measurement(tmp_path, monkeypatch):
    """A model row is on disk after every contender, so a step killed by its ``timeout`` in the
    middle of a row keeps what the row measured (exactness flags and the contenders timed so far).
    The kill is stood in for by ``KeyboardInterrupt`` from the fourth contender's builder."""
    pytest.importorskip("triton")
    _skip_if_interpreter_cannot_run_kernels()
    bench = _load("gpu_model_bench")
    builders = bench._builders

    def killed_at_runner_fused(ctx, row):
        made = builders(ctx, row)

        def kill():
            raise KeyboardInterrupt

        made["runner_fused"] = kill
        return made

    monkeypatch.setattr(bench, "_builders", killed_at_runner_fused)
    with pytest.raises(KeyboardInterrupt):
        bench.main(["--dry-run", "--out", str(tmp_path), "--batches", "1", "--rep-ms", "1"])
    with open(tmp_path / "results.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["onebit_exact"] == "True" and float(row["float_fp16_cl_ms"]) > 0
    assert "runner_fused_ms" not in row or not row["runner_fused_ms"]
