"""The reproduction harness end to end: the smoke profile over rows of Tables 2-5 on synthetic data in
the real formats; a killed sweep rerun; corrupt records, missing data, failures and shards."""
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cbcn.cli import main
from cbcn.harness import sweep
from cbcn.harness.experiments import get_experiment, select
from cbcn.harness.store import SCHEMA_VERSION, ResultStore, read_record

REPO = Path(__file__).resolve().parents[1]
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


# --- synthetic data in the published formats ---------------------------------------------------
def _idx(path: Path, arr: np.ndarray) -> None:
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    path.write_bytes(header + arr.tobytes())


def _digits(labels: np.ndarray) -> np.ndarray:
    """28x28 images with a bright bar whose row depends on the label (learnable, cheap)."""
    img = np.zeros((len(labels), 28, 28), dtype=np.uint8)
    for c in range(10):
        img[labels == c, 2 + 2 * c: 4 + 2 * c, 4:24] = 255
    return img


def write_mnist(root: Path) -> None:
    """Full-size idx files (the loader checks MNIST's official shapes and training label counts)."""
    d = root / "mnist"
    d.mkdir(parents=True)
    train = np.repeat(np.arange(10, dtype=np.uint8), MNIST_TRAIN_COUNTS)
    np.random.default_rng(0).shuffle(train)
    test = (np.arange(10000) % 10).astype(np.uint8)
    for split, labels in (("train", train), ("t10k", test)):
        _idx(d / f"{split}-images-idx3-ubyte", _digits(labels))
        _idx(d / f"{split}-labels-idx1-ubyte", labels)


def _cifar_images(labels: np.ndarray) -> np.ndarray:
    x = np.random.default_rng(1).integers(0, 64, (len(labels), 3, 32, 32), dtype=np.uint8)
    x[np.arange(len(labels)), labels % 3] += 150            # the label shows in the colour
    return x.reshape(len(labels), 3072)


def write_cifar(root: Path) -> None:
    d10 = root / "cifar-10-batches-py"
    d10.mkdir(parents=True)
    for name, n in (("data_batch_1", 300), ("test_batch", 150)):
        y = (np.arange(n) % 10).tolist()
        with open(d10 / name, "wb") as f:
            pickle.dump({b"data": _cifar_images(np.array(y)), b"labels": y, b"batch_label": name.encode(),
                         b"filenames": [b"x.png"] * n}, f)
    with open(d10 / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": 10000}, f)
    d100 = root / "cifar-100-python"
    d100.mkdir(parents=True)
    for name, n in (("train", 300), ("test", 150)):
        y = (np.arange(n) % 100).tolist()
        with open(d100 / name, "wb") as f:
            pickle.dump({b"data": _cifar_images(np.array(y)), b"fine_labels": y, b"coarse_labels": [0] * n,
                         b"filenames": [b"x.png"] * n, b"batch_label": name.encode()}, f)
    with open(d100 / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                     b"coarse_label_names": [b"c"] * 20}, f)


def write_imagenet(root: Path) -> None:
    from PIL import Image
    rng = np.random.default_rng(2)
    for split, n in (("train", 12), ("val", 6)):
        for c in range(3):
            d = root / "imagenet" / split / f"n0000{c}"
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
                arr[..., c] = 255
                Image.fromarray(arr).save(d / f"img{i}.png")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_mnist(root)
    write_cifar(root)
    write_imagenet(root)
    return root


# --- the smoke profile over Tables 2-5 ------------------------------------------------------------
ROWS = ["t2-mnist-lenet-5-10-20-40-cbcn",            # MNIST idx files
        "t2-cifar10-resnet18-16-16-32-64-cbcn",      # CIFAR10 pickles
        "t3-cbcn-k4-sg",                             # the same run as the row above: reused
        "t4-cifar100-wrn22-16-16-32-64-fp",          # CIFAR100 pickles, WRN
        "t5-imagenet-resnet18-cbcn",                 # ImageFolder of PNGs, ImageNet stem, top-1/top-5
        "t5-imagenet-resnet18-abcnet"]               # quoted, and runnable: ABC-Net M = N = 1


def test_smoke_profile_over_tables_2_to_5(data_root, tmp_path, capsys):
    out = tmp_path / "runs"
    args = ["reproduce", "--profile", "smoke", "--data-root", str(data_root), "--out", str(out),
            "--train-progress", "none"]
    for r in ROWS:
        args += ["--row", r]
    assert main(args) == 0
    log = capsys.readouterr().out
    assert "t3-cbcn-k4-sg: same run as t2-cifar10-resnet18-16-16-32-64-cbcn" in log
    assert "report: " in log and "report.html" in log

    store = ResultStore(out)
    records, problems = store.scan()
    assert problems == []
    by_id = {r["experiment_id"]: r for r in records}
    assert set(by_id) == set(ROWS)
    for r in records:
        assert r["schema_version"] == SCHEMA_VERSION and r["profile"] == "smoke" and r["seed"] == 0
        assert r["model_stages"] == [2, 2, 4, 4]
        assert 0 <= r["metrics"]["error"] <= 100 and r["curves"] and "test_error" in r["curves"][0]
        hw = r["hardware"]
        assert hw["latency_b1_s"] > 0 and hw["flops"] > 0 and hw["fp32_bytes"] > 0
        if hw["device"] == "cpu":        # on an NVIDIA GPU with NVML these are measured instead
            assert hw["energy_per_image_j"] is None and hw["unavailable"]["energy_per_image_j"]
        else:
            assert hw["energy_per_image_j"] > 0 or hw["unavailable"]["energy_per_image_j"]
        assert r["versions"]["torch"] and r["git"]["revision"] and r["machine"]["cpu_count"]
        assert str(data_root) in r["data"]["description"]
    assert by_id["t3-cbcn-k4-sg"]["reused_from"] == "t2-cifar10-resnet18-16-16-32-64-cbcn__smoke__seed0"
    assert by_id["t5-imagenet-resnet18-cbcn"]["metrics"]["top5"] is not None
    assert by_id["t5-imagenet-resnet18-cbcn"]["hardware"]["input_shape"] == [3, 224, 224]
    assert by_id["t2-mnist-lenet-5-10-20-40-cbcn"]["hardware"]["model"]["stages_physical_channels"] == "8-8-16-16"
    assert by_id["t5-imagenet-resnet18-abcnet"]["hardware"]["packed_logits_equal"] is True
    assert by_id["t5-imagenet-resnet18-abcnet"]["hardware"]["model"]["weight_bases"] == 1

    rdir = out / "report"
    for t, metric in ((2, "error"), (3, "accuracy"), (4, "accuracy"), (5, "top1")):
        df = pd.read_csv(rdir / f"table{t}.csv")
        assert df[f"paper {metric}"].notna().all(), t
        measured = df[df["state"] == "done"]
        assert len(measured) >= 1 and measured[f"measured {metric}"].notna().all(), t
        assert (measured["profile"] == "smoke").all()
        assert (measured["verdict"] == "not comparable (profile smoke)").all(), t  # a verdict on every measured row
    t5 = pd.read_csv(rdir / "table5.csv").set_index("id")
    assert t5.loc["t5-imagenet-resnet18-abcnet", "state"] == "done"
    for name in ("report.md", "report.html", "claims.csv", "inconsistencies.csv", "hardware.csv", "results.csv"):
        assert (rdir / name).stat().st_size > 200, name
    pngs = sorted((rdir / "plots").glob("*.png"))
    assert len(pngs) >= 6                                   # 4 curve groups, 2 Table 3, bytes, latency
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000
    html = (rdir / "report.html").read_text()
    assert html.count("<details><summary>") >= 4  # a collapsible per-layer summary per trained model
    assert html.count("data:image/png;base64,") == len(pngs)
    on_cpu = by_id["t5-imagenet-resnet18-cbcn"]["hardware"]["device"] == "cpu"
    assert ("unavailable: no RAPL" if on_cpu and not Path("/sys/class/powercap").is_dir() else "unavailable: ") in html

    # rerun: nothing left to do; `cbcn report` rebuilds from the store without training
    assert main(args) == 0
    assert "0 run now, 6 already done" in capsys.readouterr().out
    (rdir / "report.md").unlink()
    assert main(["report", "--out", str(out)]) == 0
    assert (rdir / "report.md").is_file()


def test_killed_sweep_rerun_finishes_only_what_was_missing(data_root, tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "cbcn.cli", "reproduce", "--profile", "smoke", "--data-root", str(data_root),
           "--out", str(out), "--row", "t2-mnist-lenet-5-10-20-40-*", "--train-progress", "none", "--no-report"]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = out / "results"
    deadline = time.time() + 240
    try:
        while not (results.is_dir() and list(results.glob("*.json"))):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "the sweep produced no record in time"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    done = {p.name: p.read_bytes() for p in results.glob("*.json")}
    assert 1 <= len(done) < 3

    summary = sweep.run_sweep(select(row="t2-mnist-lenet-5-10-20-40-*"), "smoke", out, data_root=str(data_root),
                              log=lambda s: None, train_progress="none")
    assert len(summary.skipped_done) == len(done) and len(summary.finished) == 3 - len(done)
    assert summary.ok
    records, problems = ResultStore(out).scan()
    assert len(records) == 3 and problems == []
    for name, data in done.items():                          # finished records were not touched
        assert (results / name).read_bytes() == data


# --- sweep logic, with training replaced by a fake --------------------------------------------
@pytest.fixture
def fake_training(monkeypatch):
    """``run_experiment`` returns a record at once; ``calls`` lists the experiments trained."""
    calls = []

    def fake(exp, profile, *, data_root, seed, device, out, resume=True, progress="lines", download=False, compile=False):
        calls.append(exp.id)
        if exp.id == "t3-xnor-sc":
            raise RuntimeError("simulated crash")
        return {"schema_version": SCHEMA_VERSION, "kind": "cbcn-result", "experiment_id": exp.id,
                "profile": profile.name, "seed": seed, "status": "finished", "experiment": exp.to_dict(),
                "metrics": {"error": 10.0, "accuracy": 90.0, "top1": 90.0, "top5": 99.0}, "curves": [],
                "hardware": {}, "reused_from": None}

    monkeypatch.setattr(sweep, "run_experiment", fake)
    monkeypatch.setattr(sweep, "dataset_status",
                        lambda name, root, cache, download=False: None if name.startswith("mnist") or name == "cifar10" and root
                        else f"dataset {name} not found under {root}")
    return calls


def test_corrupt_record_is_reported_then_repair_reruns_only_it_and_force_everything(tmp_path, fake_training, capsys):
    out = tmp_path / "runs"
    store = ResultStore(out)
    bad = store.path("t2-mnist-lenet-5-10-20-40-xnor", "smoke", 0)
    bad.parent.mkdir(parents=True)
    bad.write_text('{"schema_version": 1, "kind": "cbcn-result", "experim')
    args = ["reproduce", "--profile", "smoke", "--out", str(out), "--row", "t2-mnist-lenet-5-10-20-40-*",
            "--no-report"]
    assert main(args) == 1
    log = capsys.readouterr().out
    assert "t2-mnist-lenet-5-10-20-40-xnor: UNREADABLE RECORD, not rerun" in log and "not valid JSON" in log
    assert fake_training == ["t2-mnist-lenet-5-10-20-40-fp", "t2-mnist-lenet-5-10-20-40-cbcn"]
    assert bad.read_text().endswith('"experim')                        # untouched
    del fake_training[:]
    assert main(args + ["--repair"]) == 0                               # only the unreadable one reruns
    log = capsys.readouterr().out
    assert "unreadable record moved aside" in log and "(--repair)" in log
    assert fake_training == ["t2-mnist-lenet-5-10-20-40-xnor"]
    assert read_record(bad)["experiment_id"] == "t2-mnist-lenet-5-10-20-40-xnor"
    moved = [p for p in bad.parent.iterdir() if ".json.bad-" in p.name]
    assert len(moved) == 1 and moved[0].read_text().endswith('"experim')
    # the moved-aside file does not stop a merge of this store into another
    assert main(["report", "--out", str(tmp_path / "merged"), "--merge", str(out)]) == 0
    assert len(list((tmp_path / "merged" / "results").glob("*.json"))) == 3
    capsys.readouterr()
    del fake_training[:]
    assert main(args + ["--force"]) == 0                                # an explicit request to retrain all
    assert fake_training == ["t2-mnist-lenet-5-10-20-40-fp", "t2-mnist-lenet-5-10-20-40-xnor",
                             "t2-mnist-lenet-5-10-20-40-cbcn"]


def _switch_off_abcnet(monkeypatch):
    """Every method of the tables runs; the not-runnable path is tested with ABC-Net switched off."""
    from cbcn.harness import experiments
    monkeypatch.setitem(experiments.UNIMPLEMENTED_METHODS, "abcnet", "ABC-Net is switched off for this test")


def test_unavailable_data_failures_and_reuse(tmp_path, fake_training, capsys, monkeypatch):
    _switch_off_abcnet(monkeypatch)
    out = tmp_path / "runs"
    exps = [get_experiment(i) for i in ("t2-mnist-lenet-5-10-20-40-fp", "t3-xnor-s", "t3-xnor-sc",
                                        "t3-xnor-sg", "t5-imagenet-resnet18-abcnet")]
    summary = sweep.run_sweep(exps, "paper", out, data_root=None, log=lambda s: None)
    assert summary.finished == ["t2-mnist-lenet-5-10-20-40-fp"]
    assert set(summary.unavailable) == {"t3-xnor-s", "t3-xnor-sc", "t3-xnor-sg"}
    assert "not found" in summary.unavailable["t3-xnor-s"]
    assert set(summary.not_runnable) == {"t5-imagenet-resnet18-abcnet"}
    st = {s["experiment_id"]: s for s in ResultStore(out).statuses()}
    assert st["t3-xnor-s"]["status"] == "unavailable" and st["t5-imagenet-resnet18-abcnet"]["status"] == "not runnable"

    # with data: a crash in one experiment is recorded and the sweep goes on
    summary = sweep.run_sweep(exps, "paper", out, data_root="/data", log=lambda s: None)
    assert summary.failed == {"t3-xnor-sc": "RuntimeError: simulated crash"}
    assert summary.finished == ["t3-xnor-s", "t3-xnor-sg"] and not summary.ok
    assert {s["experiment_id"]: s["status"] for s in ResultStore(out).statuses()}["t3-xnor-sc"] == "failed"

    # identical runs train once
    fake_training.clear()
    twins = [get_experiment(i) for i in ("t2-cifar10-resnet18-16-16-32-64-cbcn", "t3-cbcn-k4-sg",
                                         "t4-cifar10-resnet18-16-16-32-64-cbcn")]
    summary = sweep.run_sweep(twins, "paper", out, data_root="/data", log=lambda s: None)
    assert fake_training == ["t2-cifar10-resnet18-16-16-32-64-cbcn"] and len(summary.finished) == 3
    for twin in ("t3-cbcn-k4-sg", "t4-cifar10-resnet18-16-16-32-64-cbcn"):
        assert read_record(ResultStore(out).path(twin, "paper", 0))["reused_from"] == \
            "t2-cifar10-resnet18-16-16-32-64-cbcn__paper__seed0"


def test_explicit_selection_needs_its_data(tmp_path, fake_training, capsys, monkeypatch):
    args = ["reproduce", "--profile", "smoke", "--out", str(tmp_path), "--table", "3", "--no-report"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "dataset cifar10 not found" in err and "needed by 20" in err and "--skip-unavailable" in err
    assert fake_training == []
    assert main(args + ["--skip-unavailable"]) == 0
    assert "20 unavailable" in capsys.readouterr().out
    assert main(["reproduce", "--row", "t5-imagenet-resnet18-abcnet", "--out", str(tmp_path)]) == 2
    assert "dataset imagenet not found" in capsys.readouterr().err
    _switch_off_abcnet(monkeypatch)
    assert main(["reproduce", "--row", "t5-imagenet-resnet18-abcnet", "--out", str(tmp_path)]) == 2
    assert "ABC-Net is switched off for this test" in capsys.readouterr().err


def test_shards_merge_into_the_full_sweep(tmp_path, fake_training, capsys):
    exps = select(table=2, dataset=["mnist", "mnist-rot"])
    for i in (1, 2, 3):
        s = sweep.run_sweep(exps, "quick", tmp_path / f"shard{i}", shard=sweep.Shard(i, 3), log=lambda s: None)
        assert len(s.selected) == 4
    assert sorted(fake_training) == sorted(e.id for e in exps)
    merged = tmp_path / "merged"
    assert main(["report", "--out", str(merged)] + sum((["--merge", str(tmp_path / f"shard{i}")]
                                                        for i in (1, 2, 3)), [])) == 0
    assert len(ResultStore(merged).scan()[0]) == 12
    t2 = pd.read_csv(merged / "report" / "table2.csv")
    assert (t2[t2["id"].isin([e.id for e in exps])]["state"] == "done").all()
