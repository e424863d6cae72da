"""Failures a new user meets, each loud, specific, one line and non-zero; a results store that
stays right when several sweeps share it; output that says what was actually done.

Each test here failed on the code before these fixes (the exit codes, the tracebacks, the lock,
the --force/--repair split, the console lines)."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_reproduce import write_mnist

from cbcn import cli
from cbcn.harness.claims import try_claim
from cbcn.harness.store import ResultStore

REPO = Path(__file__).resolve().parents[1]
SMOKE = ["--profile", "smoke", "--max-train-samples", "64", "--max-test-samples", "32", "--progress", "lines"]


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    monkeypatch.delenv("CBCN_DATA", raising=False)


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def _cbcn(*args, env=None, timeout=600, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    env.pop("CBCN_DATA", None)
    return subprocess.run([sys.executable, "-m", "cbcn.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, **kw)


# --- 1. reproduce with data that is missing or corrupt -------------------------------------------
def test_reproduce_with_a_missing_data_root_exits_non_zero(tmp_path, capsys):
    out = tmp_path / "runs"
    code = cli.main(["reproduce", "--profile", "smoke", "--data-root", str(tmp_path / "nowhere"), "--out", str(out),
                     "--no-report", "--train-progress", "none"])
    assert code == 1
    err = capsys.readouterr().err
    assert "12 of the 12 requested experiments could not run" in err and "not found" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    # --skip-unavailable: the same rows recorded as unavailable, exit 0
    assert cli.main(["reproduce", "--profile", "smoke", "--data-root", str(tmp_path / "nowhere"), "--out", str(out),
                     "--no-report", "--skip-unavailable"]) == 0
    assert {s["status"] for s in ResultStore(out).statuses()} == {"unavailable"}


@pytest.mark.parametrize("split", ["t10k", "train"])
def test_a_corrupt_data_file_is_called_corrupt(tmp_path, capsys, split):
    root = tmp_path / "data"
    write_mnist(root)
    (root / "mnist" / f"{split}-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    code = cli.main(["reproduce", "--profile", "smoke", "--data-root", str(root), "--out", str(tmp_path / "runs"),
                     "--no-report", "--dataset", "mnist"])
    assert code == 2  # explicitly selected: an error before anything runs
    err = capsys.readouterr().err
    assert err.startswith("cbcn: error: the selected experiments need data that is not here")
    assert "dataset mnist is corrupt" in err and "not found" not in err and "Traceback" not in err
    code = cli.main(["reproduce", "--profile", "smoke", "--data-root", str(root), "--out", str(tmp_path / "runs2"),
                     "--no-report"])
    assert code == 1  # the profile's default selection: recorded, and the exit status says so
    assert "is corrupt" in capsys.readouterr().err


def test_reproduce_has_the_download_option_its_advice_names():
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert "--download" in action.choices["reproduce"].format_help()


# --- 2, 3, 5. one clear line instead of a traceback; nothing created for a rejected configuration ----
@pytest.mark.parametrize("argv,needle", [
    (["train", "--device", "cuda", *SMOKE], "CUDA is not available"),
    (["train", "--device", "tpu", *SMOKE], "unknown device 'tpu'"),
    (["train", "--lr", "nan", *SMOKE], "lr must be a finite number"),
    (["train", "--method", "xnor", "-K", "4", *SMOKE], "K=4 needs circulant layers"),
    (["train", "--stages", "5-10", *SMOKE], "four positive stage widths"),
])
def test_train_mistakes_are_one_line_and_create_nothing(tmp_path, capsys, argv, needle):
    if "cuda" in argv and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "run"
    assert cli.main([*argv, "--output", str(out)]) == 2
    _one_error_line(capsys, needle)
    assert not out.exists()  # validated before any file is written


def test_eval_mistakes_are_one_line(tmp_path, capsys):
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04 truncated zip")
    assert cli.main(["eval", str(tmp_path / "trunc.pt")]) == 2
    err = _one_error_line(capsys, "trunc.pt is not a valid cbcn checkpoint", "truncated or corrupt")
    assert "Please" not in err and "file an issue" not in err and "safe_globals" not in err
    assert cli.main(["eval", str(tmp_path / "trunc.pt"), "--device", "tpu"]) == 2
    _one_error_line(capsys)


def test_a_diverging_run_is_one_line(tmp_path):
    res = _cbcn("train", "--profile", "smoke", "--max-train-samples", "256", "--max-test-samples", "32",
                "--method", "fp", "--lr", "1e30", "--output", str(tmp_path / "r"))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == ["cbcn: error: loss became nan at epoch 1 batch 2; lower the learning rate"]


def test_a_closed_pipe_ends_quietly(monkeypatch, capsys):
    """`cbcn list | head`: the reader goes away while cbcn still writes."""
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert cli.main(["list"]) == 141  # as a process ended by SIGPIPE
    assert capsys.readouterr().err == ""


# --- 4. SIGTERM ------------------------------------------------------------------------------------
def test_sigterm_stops_a_sweep_cleanly_and_says_how_to_resume(tmp_path):
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("CBCN_DATA", None)
    proc = subprocess.Popen([sys.executable, "-m", "cbcn.cli", "reproduce", "--profile", "quick", "--out", str(out),
                             "--train-progress", "lines", "--no-report"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    for line in proc.stdout:  # wait until the first experiment is training
        if "epoch 1/" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "rerun the same command" in err and "Traceback" not in err


def test_sigterm_stops_a_training_run_cleanly_and_says_how_to_resume(tmp_path):
    """``cbcn train`` on SIGTERM: exit status 143 and one line (it exited 143 silently)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("CBCN_DATA", None)
    proc = subprocess.Popen([sys.executable, "-m", "cbcn.cli", "train", *SMOKE, "--epochs", "1000", "--lr-step", "0",
                             "--output", str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.time() + 300
    for line in proc.stdout:  # wait until epoch 2 has finished: epoch 1's checkpoint is written by then
        if "epoch 2/" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["cbcn: terminated (SIGTERM) (the last completed epoch's checkpoint is "
                                        "intact; use --resume)"], err
    assert (tmp_path / "run" / "last.pt").is_file()


# --- 6. concurrent sweeps on one store ----------------------------------------------------------------
def test_claims_are_exclusive_and_die_with_their_process(tmp_path):
    claims = tmp_path / "claims"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from cbcn.harness.claims import try_claim
        claim, _ = try_claim(__import__("pathlib").Path({str(claims)!r}), "k")
        print("held" if claim else "refused", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    claim, who = try_claim(claims, "k")
    assert claim is None and who.pid == holder.pid  # a live holder: refused, and named
    holder.kill()  # SIGKILL: no chance to release
    holder.wait()
    claim, who = try_claim(claims, "k")  # the kernel dropped its lock: the claim is free again
    assert claim is not None and who is None
    claim.release()
    assert not (claims / "k.claim").exists()


def test_status_shows_the_epoch_of_a_running_run(tmp_path):
    """``cbcn status``: a running run says how far its training is (it showed no epoch)."""
    from cbcn.harness.status import run_states
    from cbcn.harness.store import record_key, training_dir

    key = record_key("t2-mnist-lenet-5-10-20-40-xnor", "quick", 0)
    run_dir = training_dir(tmp_path, key)
    run_dir.mkdir(parents=True)
    (run_dir / "history.csv").write_text("epoch,train_loss\n1,0.5\n2,0.4\n")
    (run_dir / "config.json").write_text('{"epochs": 10}')
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from cbcn.harness.claims import try_claim
        claim, _ = try_claim(__import__("pathlib").Path({str(tmp_path / "results" / ".claims")!r}), {key!r})
        print("held" if claim else "refused", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (running,) = run_states(tmp_path).query("state == 'running'").itertuples()
        assert running.detail.endswith("epoch 2 of 10 done"), running.detail
    finally:
        holder.kill()
        holder.wait()


def test_two_concurrent_sweeps_train_each_row_once(tmp_path):
    out = tmp_path / "runs"
    args = ["reproduce", "--profile", "smoke", "--out", str(out), "--train-progress", "none",
            "--row", "t2-mnist-lenet-5-10-20-40-*", "--row", "t2-mnist-rot-lenet-5-10-20-40-*"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CBCN_DATA", None)
    procs = [subprocess.Popen([sys.executable, "-m", "cbcn.cli", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in e, e
    trained = [line.split("] ", 1)[1].split(":")[0] for o, _ in outs for line in o.splitlines() if ": training " in line]
    assert sorted(trained) == sorted(set(trained)) and len(trained) == 6, outs  # each row trained once
    assert len(list((out / "results").glob("*.json"))) == 6
    assert not list((out / "results" / ".claims").glob("*.claim"))  # all released


def test_two_concurrent_sweeps_train_a_shared_configuration_once(tmp_path):
    """Rows that are the same run (in the smoke profile LeNet 5-10-20-40 and 10-20-40-80 both
    shrink to one configuration), in two sweeps started together: one trains it, the other waits
    and reuses its record (before, claims were per row and both trained it)."""
    out = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CBCN_DATA", None)
    procs = [subprocess.Popen([sys.executable, "-m", "cbcn.cli", "reproduce", "--profile", "smoke", "--out", str(out),
                               "--train-progress", "none", "--no-report", "--row", row], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
             for row in ("t2-mnist-lenet-5-10-20-40-xnor", "t2-mnist-lenet-10-20-40-80-xnor")]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in e, e
    trained = [line for o, _ in outs for line in o.splitlines() if ": training " in line]
    assert len(trained) == 1, outs
    records = [json.loads(f.read_text()) for f in (out / "results").glob("*.json")]
    assert len(records) == 2 and sorted(r["reused_from"] is None for r in records) == [False, True], records
    assert not list((out / "results" / ".claims").rglob("*.claim"))  # all released


# --- 8. merge conflicts -----------------------------------------------------------------------------
def test_a_merge_conflict_exits_non_zero_and_shows_both_records(tmp_path, capsys):
    a, b = ResultStore(tmp_path / "a"), ResultStore(tmp_path / "b")
    base = {"schema_version": 1, "kind": "cbcn-result", "experiment_id": "t2-mnist-lenet-5-10-20-40-fp",
            "profile": "smoke", "seed": 0, "experiment": {}, "finished": "2026-12-02T00:00:00"}
    a.write({**base, "metrics": {"error": 1.5}})
    b.write({**base, "metrics": {"error": 2.5}})
    assert cli.main(["report", "--out", str(tmp_path / "a"), "--merge", str(tmp_path / "b")]) == 1
    out = capsys.readouterr()
    assert "1 CONFLICTS" in out.out and "error 1.50" in out.out and "error 2.50" in out.out
    assert "merge conflicts" in out.err


# --- 9, 10. what the console says ---------------------------------------------------------------------
def test_sweep_lines_are_short_and_say_elapsed_and_left(tmp_path, capsys):
    assert cli.main(["reproduce", "--profile", "smoke", "--out", str(tmp_path / "runs"), "--no-report",
                     "--train-progress", "lines", "--row", "t2-mnist-lenet-5-10-20-40-*"]) == 0
    log = capsys.readouterr().out
    assert "[2/3 | " in log and " elapsed, ~" in log and " left] " in log
    data = [line for line in log.splitlines() if line.startswith("data: ")]
    assert data and all(len(line) < 200 for line in data), data  # one short line; the full text is in the log
    assert not any(line.startswith("model: {") for line in log.splitlines())  # no JSON dump on the console
    train_log = next((tmp_path / "runs" / "training").glob("*/train.log")).read_text()
    assert "data (full description): train: " in train_log and "model (full description): {" in train_log


def test_progress_none_still_prints_the_final_metrics(tmp_path, capsys):
    assert cli.main(["train", "--profile", "smoke", "--max-train-samples", "64", "--max-test-samples", "32",
                     "--progress", "none", "--output", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("final: test error")


def test_the_recipe_says_how_many_images_were_used(tmp_path, capsys):
    assert cli.main(["train", *SMOKE, "--max-train-samples", "100", "--output", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "(this run: 100 training, 32 test images)" in out


def test_training_folders_do_not_nest_and_an_older_store_resumes_in_place(tmp_path):
    """A sweep's run folders are ``OUT/training/<key>`` (they nested as ``runs/runs/<key>`` under the
    default ``--out runs``); a store written before keeps its ``OUT/runs/<key>``, so its checkpoint
    resumes rather than being trained again."""
    from cbcn.harness.store import TRAINING, training_dir

    assert training_dir(tmp_path / "runs", "k") == tmp_path / "runs" / TRAINING / "k"
    (tmp_path / "runs" / "runs" / "k").mkdir(parents=True)
    assert training_dir(tmp_path / "runs", "k") == tmp_path / "runs" / "runs" / "k"


@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_a_missing_dataset_names_the_command_line_option(tmp_path, capsys, dataset):
    """The error says what to type (``--download``), not the Python argument first (it read
    "download=True (--download)")."""
    assert cli.main(["train", "--dataset", dataset, "--data-root", str(tmp_path), *SMOKE]) == 2
    err = _one_error_line(capsys, "add --download to fetch")
    assert "download=True (--download)" not in err


def test_list_shows_the_state_of_the_profile_the_store_holds(tmp_path, capsys):
    """``cbcn list --out STORE`` without --profile reads the store's own profile (it assumed quick,
    so a smoke-only store showed every row missing), in the states ``cbcn status`` names."""
    from test_store import make_record

    ResultStore(tmp_path).write(make_record("t2-mnist-lenet-5-10-20-40-xnor", profile="smoke"))
    assert cli.main(["list", "--out", str(tmp_path), "--table", "2"]) == 0
    out = capsys.readouterr().out
    row = next(line.strip() for line in out.splitlines() if line.strip().startswith("t2-mnist-lenet-5-10-20-40-xnor "))
    assert row.endswith("done") and "state for profile smoke" in out
    assert cli.main(["list", "--out", str(tmp_path), "--table", "2", "--profile", "quick"]) == 0
    out = capsys.readouterr().out
    row = next(line.strip() for line in out.splitlines() if line.strip().startswith("t2-mnist-lenet-5-10-20-40-xnor "))
    assert row.endswith("missing")


def test_the_sweeps_time_left_weighs_rows_by_their_recipe():
    """The time left is the rows' recipe cost (epochs x images), not their count: after one cheap
    MNIST row took a minute, a paper-profile CIFAR row ahead is hours, not "~2 min"."""
    from cbcn.harness.experiments import get_experiment
    from cbcn.harness.sweep import SweepClock, recipe_cost
    from cbcn.training.profiles import get_profile

    paper = get_profile("paper")
    rows = [get_experiment("t2-mnist-lenet-5-10-20-40-xnor"), get_experiment("t2-cifar10-resnet18-16-16-32-64-xnor")]
    costs = [recipe_cost(e, paper) for e in rows]
    assert costs[1] > 3 * costs[0]  # 200 epochs x 50,000 images against 50 x 60,000
    clock = SweepClock(costs)
    clock.last -= 60  # the MNIST row took a minute
    clock.finished(1)
    left = clock.progress(2).split("~")[1]
    assert left == f"{max(1, round(costs[1] / costs[0]))} min left", left
