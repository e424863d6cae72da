"""Reports from a store of fabricated records (no training): paper vs measured, claims, inconsistencies,
unavailable figures, self-contained HTML, plots."""
import base64
import json
import re

import pandas as pd
import pytest

from cbcn.harness.experiments import EXPERIMENTS, get_experiment
from cbcn.harness.report import build_report, load_results, to_markdown
from cbcn.harness.store import SCHEMA_VERSION, ResultStore

NVML_REASON = "no NVIDIA GPU in use (model on cpu); NVML could not be initialised (NVMLError_LibraryNotFound)"


def hardware(onebit, latency_s):
    return {"device": "cpu", "device_name": "Test CPU", "torch_threads": 2, "fp32_bytes": onebit * 10,
            "onebit_bytes": onebit, "compression": 10.0, "flops": 1000, "bops": 6400, "ops": 1100.0,
            "macs_real": 500, "latency_b1_s": latency_s, "throughput_images_per_s": 100.0,
            "model": {"learned_parameters": 1234, "stages_maps": "2-2-4-4", "stages_physical_channels": "8-8-16-16"},
            "peak_memory_bytes": None, "energy_per_image_j": None, "power_w": None,
            "packed_latency_b1_s": None, "packed_throughput_images_per_s": None,
            "unavailable": {"peak_memory_bytes": "PyTorch has no per-model peak-memory counter on CPU",
                            "energy_per_image_j": NVML_REASON, "power_w": NVML_REASON,
                            "packed_latency_b1_s": "packed Triton kernels need a CUDA GPU (model on cpu)",
                            "packed_throughput_images_per_s": "packed Triton kernels need a CUDA GPU (model on cpu)"}}


def record(exp_id, profile="quick", seed=0, **metrics):
    exp = get_experiment(exp_id)
    curves = [{"epoch": e, "lr": 0.01, "train_loss": 1.0 / e, "train_error": 50.0 / e, "test_loss": 1.2 / e,
               "test_error": 60.0 / e, "seconds": 1.0} for e in (1, 2, 3)]
    return {"schema_version": SCHEMA_VERSION, "kind": "cbcn-result", "experiment_id": exp_id, "profile": profile,
            "seed": seed, "status": "finished", "experiment": exp.to_dict(), "model_stages": [2, 2, 4, 4],
            "metrics": {"error": None, "accuracy": None, "top1": None, "top5": None, **metrics},
            "paper": exp.paper, "curves": curves, "hardware": hardware(1000 + 100 * len(exp_id), 0.001 * (1 + seed)),
            "data": {"description": f"synthetic data for {exp_id}"}, "git": {"revision": "abc123"},
            "reused_from": None, "finished": "2024-01-01T00:00:00"}


def acc(a):
    return dict(error=100 - a, accuracy=a, top1=a, top5=min(100.0, a + 10))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    store = ResultStore(out)
    # Table 2, MNIST 5-10-20-40: CBCN beats XNOR on the original data, not on the rotated one
    store.write(record("t2-mnist-lenet-5-10-20-40-xnor", **acc(96.0)))
    store.write(record("t2-mnist-lenet-5-10-20-40-cbcn", **acc(97.0)))
    store.write(record("t2-mnist-lenet-5-10-20-40-cbcn", seed=1, **acc(98.0)))     # mean over seeds: 97.5
    store.write(record("t2-mnist-rot-lenet-5-10-20-40-xnor", **acc(90.0)))
    store.write(record("t2-mnist-rot-lenet-5-10-20-40-cbcn", **acc(85.0)))
    # Table 3 and 4 in another profile
    store.write(record("t3-xnor-convcomp", profile="smoke", **acc(50.0)))
    store.write(record("t3-cbcn-k4-convcomp", profile="smoke", **acc(55.0)))
    store.write(record("t4-cifar100-wrn22-16-16-32-64-fp", profile="smoke", **acc(20.0)))
    store.write(record("t5-imagenet-resnet18-cbcn", profile="smoke", **acc(1.0)))
    store.write_status("t4-cifar10-wrn40-16-16-32-64-cbcn", "smoke", 0, "unavailable",
                       "dataset cifar10 not found under /nowhere")
    store.write_status("t5-imagenet-resnet18-abcnet", "smoke", 0, "not runnable", "ABC-Net is not implemented")
    # an unreadable record and one from another schema version
    (store.results_dir / "t3-xnor-s__smoke__seed0.json").write_text("{ broken")
    other = record("t3-xnor-sc", profile="smoke", **acc(1.0))
    other["schema_version"] = SCHEMA_VERSION + 1
    (store.results_dir / "t3-xnor-sc__smoke__seed0.json").write_text(json.dumps(other))
    with pytest.MonkeyPatch.context() as mp:  # every method runs: test "not runnable" with ABC-Net off
        from cbcn.harness import experiments
        mp.setitem(experiments.UNIMPLEMENTED_METHODS, "abcnet", "ABC-Net is not implemented")
        files = build_report(out)
    return out, files


def test_report_files_exist(report):
    out, files = report
    rdir = out / "report"
    for name in ("report.md", "report.html", "table2.csv", "table3.csv", "table4.csv", "table5.csv", "claims.csv",
                 "inconsistencies.csv", "hardware.csv", "results.csv"):
        assert (rdir / name).stat().st_size > 100, name
    assert files.plots and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000
                               for p in files.plots)
    names = {p.name for p in files.plots}
    assert {"table3_accuracy_vs_K.png", "table3_accuracy_vs_ablation.png", "accuracy_vs_bytes.png",
            "accuracy_vs_latency.png"} <= names
    assert any(n.startswith("curves_quick_mnist_lenet") for n in names)
    assert "accuracy_vs_energy.png" not in names          # nothing measurable: said so in the report instead


def test_tables_have_paper_column_and_measured_difference(report):
    out, _ = report
    t2 = pd.read_csv(out / "report" / "table2.csv")
    assert t2["paper error"].notna().all()
    assert set(t2["id"]) == {e.id for e in EXPERIMENTS if e.table == 2}
    row = t2[(t2["id"] == "t2-mnist-lenet-5-10-20-40-cbcn") & (t2["profile"] == "quick")].iloc[0]
    assert row["measured error"] == pytest.approx(2.5) and row["seeds"] == 2
    assert row["diff error"] == pytest.approx(2.5 - 1.91) and row["paper error"] == 1.91
    assert pd.isna(row["last-5-epochs error"])  # the fake runs have 3 epochs: no 5-epoch mean
    assert t2[t2["id"] == "t2-cifar10-resnet18-16-16-32-64-fp"]["state"].iloc[0] == "missing"
    assert row["state"] == "done" and row["verdict"] == "not comparable (profile quick)"
    # the committed reference result beside the user's row, with its own verdict
    assert row["reference error"] == pytest.approx(2.9667, abs=1e-3) and row["reference verdict"].startswith("worse by 1.06")
    t4 = pd.read_csv(out / "report" / "table4.csv")
    assert t4["paper accuracy"].notna().all()
    st = t4[t4["id"] == "t4-cifar10-wrn40-16-16-32-64-cbcn"]["state"].iloc[0]
    assert st == "unavailable: dataset cifar10 not found under /nowhere"
    t5 = pd.read_csv(out / "report" / "table5.csv")
    assert {"paper top1", "paper top5", "measured top1", "measured top5"} <= set(t5.columns)
    assert t5["paper top5"].notna().all()
    abc = t5[t5["id"] == "t5-imagenet-resnet18-abcnet"].iloc[0]
    assert abc["state"].startswith("not runnable") and abc["quoted"].startswith("quoted from ABC-Net")
    t3 = pd.read_csv(out / "report" / "table3.csv")
    bad = t3[t3["id"] == "t3-xnor-s"]["state"].iloc[0]
    assert bad.startswith("unreadable record") and "not valid JSON" in bad


def test_claims_flagged(report):
    out, _ = report
    c = pd.read_csv(out / "report" / "claims.csv")
    q = c[c["profile"] == "quick"].set_index("claim")
    assert q.loc["CBCN beats XNOR on MNIST LeNet 5-10-20-40", "measured"] == "holds; margin 81 % of the paper's"
    assert q.loc["CBCN beats XNOR on MNIST LeNet 5-10-20-40", "measured margin"] == pytest.approx(1.5)
    # graded by size: the reference's gap on MNIST-rot is 16 % of the paper's
    rot = q.loc["CBCN beats XNOR on MNIST-rot LeNet 5-10-20-40"]
    assert rot["reference margin"] == pytest.approx(1.8033, abs=1e-3)
    assert rot["reference"] == "holds in sign only; margin 16 % of the paper's"
    assert q.loc["CBCN beats XNOR on MNIST-rot LeNet 5-10-20-40", "measured"] == "does NOT hold"
    assert q.loc["CBCN beats XNOR on MNIST-rot LeNet 5-10-20-40", "paper margin"] == pytest.approx(17.26 - 5.76)
    gap = q.loc["CBCN gains more over XNOR on MNIST-rot than on MNIST (LeNet 5-10-20-40)"]
    assert gap["paper margin"] == pytest.approx((17.26 - 5.76) - (3.76 - 1.91))
    assert gap["measured margin"] == pytest.approx((10.0 - 15.0) - 1.5) and gap["measured"] == "does NOT hold"
    assert "t2-mnist-lenet-5-10-20-40-fp (no result)" in q.loc["fp beats CBCN on MNIST LeNet 5-10-20-40", "measured"]
    s = c[c["profile"] == "smoke"].set_index("claim")
    assert s.loc["CBCN K=4 beats XNOR (ConvComp)", "measured"].startswith("holds")
    assert "not runnable" in s.loc["CBCN beats ABC-Net (top-1)", "measured"]
    assert (c["paper"] == "holds").all()
    md = (out / "report" / "report.md").read_text()  # the summary's margins as the tables print them
    assert "paper margin +11.50, measured margin -5.00" in md and "-0.7812" not in md


def test_inconsistencies_shown(report):
    out, _ = report
    inc = pd.read_csv(out / "report" / "inconsistencies.csv")
    first = inc[(inc["#"] == 1)]
    assert set(first["paper accuracy"].round(2)) == {91.06, 94.84}
    md = (out / "report" / "report.md").read_text()
    assert "Table 4 gives 94.84 %" in md
    # a profile is named only beside a measurement (unmeasured cells showed profile quick)
    assert (inc["profile"].eq("—") == inc["measured accuracy"].isna()).all()
    assert not inc.duplicated(["#", "cell", "profile"]).any()


def test_unavailable_not_zero_and_problems_listed(report):
    out, _ = report
    md = (out / "report" / "report.md").read_text()
    html = (out / "report" / "report.html").read_text()
    for text in (md, html):
        assert "unavailable: " + NVML_REASON in text
        assert "t3-xnor-s__smoke__seed0.json" in text and "not valid JSON" in text
        assert "schema version 2" in text
    hw = pd.read_csv(out / "report" / "hardware.csv")
    assert hw["energy_per_image_mj"].str.startswith("unavailable: ").all()
    assert "**Accuracy vs energy per image**: unavailable: " + NVML_REASON in md


def test_html_is_self_contained(report):
    out, files = report
    html = files.html.read_text()
    srcs = re.findall(r"src='([^']*)'", html)
    assert len(srcs) == len(files.plots) and all(s.startswith("data:image/png;base64,") for s in srcs)
    base64.b64decode(srcs[0].split(",", 1)[1], validate=True)
    assert "<link" not in html and "<script" not in html and "src=\"" not in html
    md = files.markdown.read_text()
    for p in files.plots:
        assert f"plots/{p.name}" in md


def test_results_frame_and_markdown():
    df = pd.DataFrame({"a": [1.23456, None], "b|c": ["x|y", "z"], "diff x": [0.5, -1.0]})
    md = to_markdown(df)
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in md.splitlines()]
    assert cells[0] == ["a", "b\\|c", "diff x"] and set(cells[1][0]) == {"-"}
    assert ["1.23", "x\\|y", "+0.50"] in cells and ["", "z", "-1.00"] in cells


def test_report_cli_rebuilds_and_merges(tmp_path, capsys, report):
    from cbcn.cli import main
    shard = ResultStore(tmp_path / "shard2")
    shard.write(record("t2-mnist-lenet-10-20-40-80-fp", **acc(99.0)))
    out = tmp_path / "merged"
    assert main(["report", "--out", str(out), "--merge", str(tmp_path / "shard2")]) == 0
    text = capsys.readouterr().out
    assert "merged 1 records" in text and "report.html" in text
    t2 = pd.read_csv(out / "report" / "table2.csv")
    assert t2.set_index("id").loc["t2-mnist-lenet-10-20-40-80-fp", "measured error"] == pytest.approx(1.0)
    # a store with unreadable records: the report is written, the problems are printed, exit status 1
    assert main(["report", "--out", str(report[0])]) == 1
    err = capsys.readouterr().err
    assert "skipped unreadable record" in err and "schema version" in err
    assert len(load_results(report[0]).records) == 9


def test_last_epochs_metric_averages_the_curve_tail():
    from cbcn.harness.tables import last_epochs_metric
    curves = [{"test_error": e, "test_top5": 100 - e / 10} for e in (50.0, 9.0, 3.0, 2.0, 24.0, 2.0, 1.0)]
    assert last_epochs_metric(curves, "error") == pytest.approx((3 + 2 + 24 + 2 + 1) / 5)
    assert last_epochs_metric(curves, "accuracy") == pytest.approx(100 - 32 / 5)
    assert last_epochs_metric(curves, "top5") == pytest.approx(100 - 3.2 / 5)
    assert last_epochs_metric(curves[:4], "error") is None and last_epochs_metric(None, "error") is None


def test_numbers_read_one_way_in_every_table():
    """One style of thousands separator (``8642`` sat beside ``29,522``) and counts as whole
    numbers (byte counts printed as ``360.000``)."""
    from cbcn.harness.report import _fmt

    assert [_fmt(8642), _fmt(29522), _fmt(360)] == ["8,642", "29,522", "360"]
    assert _fmt(360.0, "1-bit bytes") == "360" and _fmt(1234567.0, "BOPs") == "1,234,567"
    assert _fmt(0.5, "error") == "0.50" and _fmt(1.5, "diff (points)") == "+1.50"


def test_a_column_with_no_value_is_not_shown():
    """Table 2's ``quoted`` column is blank in every row: shown, the HTML split it into a 30-row
    table of its own. The shown table drops it (the CSV keeps every column)."""
    from cbcn.harness.report import display, to_html_table

    df = pd.DataFrame({"id": ["a", "b"], "error": [1.0, 2.0], "quoted": [None, ""]})
    assert list(display(df).columns) == ["id", "error"]
    assert "quoted" not in to_html_table(df) and "quoted" not in to_markdown(df)


@pytest.mark.parametrize("profile,metric,measured,paper,std,seeds,expected", [
    ("paper", "error", 2.97, 1.91, 0.40, 3, "worse by 1.06 (±0.80)"),      # 2 × std beats the floor
    ("paper", "error", 1.72, 2.77, 0.08, 3, "better by 1.05 (±0.50)"),     # the floor beats 2 × std
    ("paper", "error", 0.80, 0.91, 0.06, 3, "reproduced (±0.50)"),
    ("paper", "accuracy", 88.0, 90.0, None, 1, "worse by 2.00 (±0.50)"),  # accuracy: lower is worse
    ("paper", "top1", 70.0, 69.6, None, 1, "reproduced (±0.50)"),
    ("quick", "error", 5.0, 1.91, 0.1, 2, "not comparable (profile quick)"),
    ("paper", "error", None, 1.91, None, 0, ""),
])
def test_row_verdict_tolerance_direction_and_profile(profile, metric, measured, paper, std, seeds, expected):
    from cbcn.harness.verdicts import row_verdict
    assert row_verdict(profile, metric, measured, paper, std, seeds) == expected


@pytest.mark.parametrize("measured,paper,expected", [
    (2.60, 9.65, "holds in sign only; margin 27 % of the paper's"),   # the example
    (2.38, 1.85, "holds; margin 129 % of the paper's"),
    (-0.58, 9.65, "does NOT hold"), (0.0, 1.0, "does NOT hold (tie)"),
    (0.3, -1.0, "holds"),                                             # the paper's own sign is wrong: sign only
    (None, 1.0, ""),
])
def test_claim_verdict_grades_size_and_sign(measured, paper, expected):
    from cbcn.harness.verdicts import claim_verdict
    assert claim_verdict(measured, paper) == expected


def test_summary_counts_verdicts_and_html_colours_them_with_a_legend(report):
    out, _ = report
    md = (out / "report" / "report.md").read_text()
    assert "the committed reference result (the paper's recipe) against the paper: " in md
    assert "of 12 rows" in md and "Verdicts: **reproduced**" in md
    assert "the paper's claims, measured (profile quick): " in md
    page = (out / "report" / "report.html").read_text()
    assert "<td class='v-not-comparable'>not comparable (profile quick)" in page
    assert "<td class='v-worse'>worse by" in page and "<td class='v-holds-in-sign-only'>holds in sign only" in page
    assert "td.v-reproduced,span.v-reproduced{background:" in page and "<span class='key v-worse'>worse</span>" in page


def test_shipped_reference_is_what_the_committed_store_gives():
    """``cbcn/harness/reference_results.json`` is rebuilt from ``reports/paper-mnist/store``; a stale
    copy fails here (rebuild: ``python -m cbcn.harness.reference reports/paper-mnist/store``)."""
    from pathlib import Path

    from cbcn.harness.reference import REFERENCE_STORE, build_reference, load_reference
    store = Path(__file__).resolve().parents[1] / REFERENCE_STORE
    if not (store / "results").is_dir():
        pytest.skip(f"{REFERENCE_STORE} is not in this checkout (an installed package)")
    assert load_reference() == json.loads(json.dumps(build_reference(store)))


def test_latency_plot_uses_the_deployed_1bit_model_and_the_report_says_when_it_is_slower(tmp_path):
    """The latency axis is the packed 1-bit forward (0.48 ms here), not the float-simulated training
    model (0.80 ms); a 1-bit model slower than its float twin is named, with the device and backend."""
    from cbcn.harness import plots
    from cbcn.harness.tables import load_results
    store = ResultStore(tmp_path)
    rec = record("t2-mnist-lenet-5-10-20-40-xnor", **acc(95.0))
    rec["hardware"].update(latency_b1_s=0.0008, packed_latency_b1_s=0.00048, float_physical_latency_b1_s=0.0004,
                           packed_backend="cpu[native[avx2]]", onebit_speedup_vs_float_physical_b1=0.83,
                           onebit_speedup_vs_float_physical_batch=1.4)
    rec["hardware"]["unavailable"].pop("packed_latency_b1_s")
    store.write(rec)
    store.write(record("t2-mnist-lenet-5-10-20-40-fp", **acc(99.0)))
    results = load_results(tmp_path)
    row = results.frame.set_index("method").loc["xnor"].to_dict()
    assert plots._deployed_latency({**row, "method": "xnor"}) == pytest.approx(0.48)
    assert plots._deployed_latency(results.frame.set_index("method").loc["fp"].to_dict() | {"method": "fp"}) \
        == pytest.approx(1.0)  # a float model's own forward (1 ms in the fixture)
    latency = [f for f in plots.cost(results, tmp_path / "plots") if f.title.startswith("Accuracy vs latency")][0]
    assert latency.path is not None and "packed 1-bit forwards on cpu[native[avx2]]" in latency.caption
    files = build_report(tmp_path)
    md = files.markdown.read_text()
    assert ("the 1-bit model is slower than float on Test CPU (backend cpu[native[avx2]]) for 1 of 1 binary models "
            "(1 at batch 1, 0 at the throughput batch)") in md
    assert "`t2-mnist-lenet-5-10-20-40-xnor` seed 0 0.83× / 1.40×" in md
    assert (tmp_path / "report" / "plots" / "table2_paper_vs_measured.png").stat().st_size > 2000


def test_labels_are_placed_without_overlapping():
    """Two models at nearly the same point (the issue's "5-10-20-40 mnist" over "10-20-40-80 mnist")
    get labels whose boxes do not overlap."""
    from cbcn.harness import plots
    fig, ax = plots._new()
    pts = [(1.0 + 0.01 * i, 97.0 + 0.02 * i, f"{'5-10-20-40' if i % 2 else '10-20-40-80'} mnist", "C0")
           for i in range(6)]
    ax.scatter([p[0] for p in pts], [p[1] for p in pts])
    ax.set_xlim(0.5, 2.0)
    ax.set_ylim(90, 100)
    texts = plots.place_labels(ax, pts)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in texts]
    assert len(boxes) == 6
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_report_fits_a_1400px_window_in_headless_chromium(report, tmp_path):
    """Laid out by a real browser at 1400 px: the page does not scroll sideways and no table's
    right edge is cut off (Debian's chromium; .ci/run installs it where apt is available)."""
    import shutil
    import subprocess
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium on the PATH (apt-get install chromium)")
    out, files = report
    page = tmp_path / "measured.html"
    probe = ("<script>document.title = 'W=' + document.documentElement.scrollWidth + ' T=' + Math.max(0, "
             "...Array.from(document.querySelectorAll('table')).map(t => t.getBoundingClientRect().right))</script>")
    page.write_text(files.html.read_text().replace("</body>", probe + "</body>"))
    res = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000", "--dump-dom",
                          page.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r"<title>W=(\d+) T=([\d.]+)</title>", res.stdout)
    assert m, res.stderr[-2000:]
    assert int(m.group(1)) <= 1400 and float(m.group(2)) <= 1400, m.group(0)


def test_ablations_of_the_reference_count_finished_seeds_only(tmp_path):
    from cbcn.harness.reference import ablation_summary

    def run(name, seed, errors, epochs=3):
        d = tmp_path / "no-bn-recalibration" / name
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"dataset": "mnist-rot", "model": "lenet", "stages": [5, 10, 20, 40],
                                                  "method": "cbcn", "seed": seed, "epochs": epochs}))
        (d / "history.json").write_text(json.dumps([{"epoch": i + 1, "test_error": e} for i, e in enumerate(errors)]))
    run("a-seed0", 0, [30.0, 20.0, 10.0])
    run("a-seed1", 1, [40.0, 30.0, 14.0])
    run("a-seed2", 2, [50.0])                    # still training: named, not averaged in
    (row,) = ablation_summary(tmp_path)
    assert row["row"] == "t2-mnist-rot-lenet-5-10-20-40-cbcn" and row["seeds"] == [0, 1]
    assert row["error"] == pytest.approx(12.0) and row["error_std"] == pytest.approx(2 ** 0.5 * 2, abs=1e-4)  # rounded to 4 places
    assert row["error_last5"] is None and row["unfinished"] == [2]   # fewer than 5 epochs: no last-5 mean


def test_report_shows_the_reference_ablations_beside_table_2(report):
    out, _ = report
    from cbcn.harness.reference import load_reference
    if not load_reference().get("ablations"):
        pytest.skip("the shipped reference has no ablations")
    md = (out / "report" / "report.md").read_text()
    assert "**Ablations of the reference result**" in md and "no-bn-recalibration" in md
    assert (out / "report" / "reference_ablations.csv").exists()
