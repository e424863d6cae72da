"""``cbcn reproduce --launcher`` through submitit's local executor (real processes, tiny runs),
the Slurm job script it would submit, and ``cbcn status``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")

from cbcn.cli import main  # noqa: E402
from cbcn.harness.claims import held_claims  # noqa: E402
from cbcn.harness.launcher import (LauncherError, LaunchSettings, SweepTask, launch, make_executor,  # noqa: E402
                                   require_submitit, slurm_parameters, wait)
from cbcn.harness.status import run_states  # noqa: E402
from cbcn.harness.store import ResultStore, record_key  # noqa: E402
from cbcn.harness.store import training_dir  # noqa: E402
from cbcn.training.profiles import Profile, Schedule, get_profile  # noqa: E402

SMOKE = get_profile("smoke")
# four rows whose smoke configurations differ (the 10-20-40-80 rows would shrink to the same model)
FOUR = ["t2-mnist-lenet-5-10-20-40-fp", "t2-mnist-lenet-5-10-20-40-xnor",
        "t2-mnist-rot-lenet-5-10-20-40-fp", "t2-mnist-rot-lenet-5-10-20-40-xnor"]
LOCAL = LaunchSettings(launcher="local", parallel=2, time_min=10)


def tasks(out, ids, profile=SMOKE):
    return [SweepTask(i, profile, str(out), seed=0, device="cpu") for i in ids]


def trainings(out, exp_id, profile="smoke"):
    """How many times a run was trained: the header lines its training log holds."""
    log = training_dir(Path(out), record_key(exp_id, profile, 0)) / "train.log"
    return log.read_text().count("cbcn train:") if log.exists() else 0


def test_four_task_selection_finishes_with_every_record_written_once(tmp_path):
    seen, stop = [], threading.Event()

    def reader():  # what `cbcn report` / `cbcn status` read while the tasks run: never half a file
        while not stop.is_set():
            records, problems = ResultStore(tmp_path).scan()
            states = run_states(tmp_path)
            for manifest in tmp_path.glob("launches/*/launch.json"):
                json.loads(manifest.read_text())
            seen.append((len(records), len(problems), len(states)))
            time.sleep(0.05)

    watcher = threading.Thread(target=reader)
    watcher.start()
    try:
        run = launch(tasks(tmp_path, FOUR), LOCAL, tmp_path, log=lambda line: None)
        assert wait(run, log=lambda line: None) == {i: "finished" for i in FOUR}
    finally:
        stop.set()
        watcher.join()
    assert seen and all(problems == 0 for _, problems, _ in seen)
    assert [n for n, _, _ in seen] == sorted(n for n, _, _ in seen)  # records only ever appear
    records, problems = ResultStore(tmp_path).scan()
    assert sorted(r["experiment_id"] for r in records) == sorted(FOUR) and not problems
    assert all(trainings(tmp_path, i) == 1 for i in FOUR)
    assert not list((tmp_path / "results" / ".claims").glob("*.claim"))  # every claim released
    states = run_states(tmp_path)
    assert list(states["state"]) == ["done"] * 4 and all(states["job"] != "")


def test_preempted_task_is_requeued_and_resumes_from_its_checkpoint(tmp_path):
    slow = Profile("launchtest", "six small epochs", cpu_threads=1, stages=(2, 2, 4, 4), hardware=SMOKE.hardware,
                   schedules={"mnist": Schedule(epochs=6, batch_size=32, max_train_samples=1024, max_test_samples=64)})
    (task,) = tasks(tmp_path, FOUR[:1], profile=slow)
    job = make_executor(LOCAL, tmp_path / "launch").submit(task)
    history = training_dir(tmp_path, record_key(task.experiment_id, "launchtest", 0)) / "history.csv"
    deadline = time.time() + 120
    while not (history.exists() and len(history.read_text().splitlines()) >= 2):  # header + epoch 1
        assert time.time() < deadline and not job.done(), "the task never finished an epoch"
        time.sleep(0.05)
    (holder,) = held_claims(tmp_path / "results" / ".claims").values()  # the task's own process
    os.kill(holder.pid, submitit.JobEnvironment._usr_sig())  # what Slurm sends before pre-emption / time-out
    assert job.result()["outcome"] == "finished"
    log = history.with_name("train.log").read_text()
    assert log.count("cbcn train:") == 2 and "resumed" in log  # a second process, from the checkpoint
    record = ResultStore(tmp_path).state(task.experiment_id, "launchtest", 0)[1]
    assert [c["epoch"] for c in record["curves"]] == [1, 2, 3, 4, 5, 6]


def test_failing_task_leaves_the_others_finished_and_a_clear_failed_entry(tmp_path):
    bad = FOUR[1]
    run_dir = training_dir(tmp_path, record_key(bad, "smoke", 0))
    run_dir.mkdir(parents=True)
    (run_dir / "last.pt").write_bytes(b"not a checkpoint")  # its resume raises
    run = launch(tasks(tmp_path, FOUR[:2]), LOCAL, tmp_path, log=lambda line: None)
    outcomes = wait(run, log=lambda line: None)
    assert outcomes[FOUR[0]] == "finished"
    assert outcomes[bad].startswith("FAILED") and "TaskFailed" in outcomes[bad]
    states = run_states(tmp_path).set_index("experiment_id")
    assert states.loc[FOUR[0], "state"] == "done"
    assert states.loc[bad, "state"] == "failed" and "CheckpointError" in states.loc[bad, "detail"]
    assert str(run.folder) in states.loc[bad, "detail"]  # where its job log is


def test_two_launches_on_one_store_never_train_a_row_twice(tmp_path):
    results = []

    def one_launch():
        run = launch(tasks(tmp_path, FOUR[:2]), LOCAL, tmp_path, log=lambda line: None)
        results.append(wait(run, log=lambda line: None))

    threads = [threading.Thread(target=one_launch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2
    for exp_id in FOUR[:2]:
        outcomes = sorted(r[exp_id] for r in results)
        assert outcomes.count("finished") == 1, outcomes
        assert set(outcomes) <= {"finished", "already done", "run by another sweep"}
        assert trainings(tmp_path, exp_id) == 1


def test_slurm_job_script_carries_the_settings(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string
    settings = LaunchSettings(launcher="slurm", partition="gpu", account="proj42", gpus_per_task=2, cpus_per_task=8,
                              mem_gb=64, time_min=720, parallel=5, setup=("module load cuda",),
                              slurm_options={"constraint": "a100"})
    script = _make_sbatch_string(command="python -m submitit.core._submit x", folder=tmp_path, map_count=12,
                                 **slurm_parameters(settings))
    for line in ("--partition=gpu", "--account=proj42", "--gpus-per-node=2", "--ntasks-per-node=2",
                 "--cpus-per-task=8", "--mem=64G", "--time=720", "--array=0-11%5", "--signal=USR2@120",
                 "--constraint=a100", "--requeue"):
        assert line in script, line
    assert "module load cuda" in script


def test_launcher_settings_from_a_json_file(tmp_path):
    cfg = tmp_path / "slurm.json"
    cfg.write_text('{"launcher": "slurm", "partition": "gpu", "setup": ["source venv/bin/activate"]}')
    s = LaunchSettings.from_file(cfg, partition="long", parallel=None)
    assert (s.launcher, s.partition, s.setup, s.parallel) == ("slurm", "long", ("source venv/bin/activate",), 16)
    assert LaunchSettings(launcher="local").parallel == 2
    cfg.write_text('{"partition": "gpu", "gpu": 2}')
    with pytest.raises(LauncherError, match=r"unknown keys \['gpu'\]"):
        LaunchSettings.from_file(cfg)


def test_without_submitit_the_launcher_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit now fails
    with pytest.raises(LauncherError, match=r"cbcn\[cluster\]"):
        require_submitit()
    assert main(["reproduce", "--profile", "smoke", "--launcher", "slurm", "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'cbcn[cluster]'" in err and len(err.strip().splitlines()) == 1


def test_status_shows_running_claims_with_their_holder_and_the_missing_runs(tmp_path, capsys):
    claims = tmp_path / "results" / ".claims"
    key = record_key(FOUR[0], "smoke", 0)
    holder = subprocess.Popen(  # another process holds the claim, as a running sweep does
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from cbcn.harness.claims import try_claim; "
         f"c, _ = try_claim(Path({str(claims)!r}), {key!r}); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "SLURM_JOB_ID": "4242"})
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["status", "--out", str(tmp_path), "--profile", "smoke", "--dataset", "mnist",
                     "--row", "t2-mnist-lenet-5-10-20-40-*"]) == 0
        out = capsys.readouterr().out
        running = next(line for line in out.splitlines() if FOUR[0] in line)
        assert "running" in running and f"pid {holder.pid}" in running and "4242" in running
        assert "missing" in next(line for line in out.splitlines() if "5-10-20-40-cbcn" in line)
        assert "3 runs: 1 running, 2 missing" in out
    finally:
        holder.kill()
        holder.wait()
    assert main(["status", "--out", str(tmp_path), "--profile", "smoke", "--row", FOUR[0]]) == 0
    assert "1 missing" in capsys.readouterr().out  # the killed holder's claim is not "running"


def test_a_task_with_two_ranks_trains_one_data_parallel_run(tmp_path):
    """What ``--gpus-per-task 2`` does on a GPU node, here with two CPU ranks (gloo): submitit's
    ranks get torchrun's variables, train one run together, and rank 0 alone writes the record."""
    (task,) = tasks(tmp_path, FOUR[:1])
    executor = make_executor(LOCAL, tmp_path / "launch")
    executor.update_parameters(tasks_per_node=2)
    job = executor.submit(task)
    assert [r["outcome"] for r in job.results()] == ["finished", "finished"]
    record = ResultStore(tmp_path).state(task.experiment_id, "smoke", 0)[1]
    log = (training_dir(tmp_path, record_key(task.experiment_id, "smoke", 0)) / "train.log").read_text()
    assert record["status"] == "finished" and "2 ranks (gloo)" in log


# --- what Slurm says (its commands stubbed in-process: slurm._run answers as they would) ---------

def fake_slurm(monkeypatch, answers: dict[str, str | None]):
    """Slurm's commands answer from ``answers`` (keyed by the command's name: the text, a function of
    the arguments, or None = it failed)."""
    from cbcn.harness import slurm
    calls = []

    def run(*args):
        calls.append(args)
        answer = answers.get(args[0])
        return answer(args) if callable(answer) else answer
    monkeypatch.setattr(slurm, "_run", run)
    monkeypatch.setattr(slurm, "missing", lambda: None)
    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}" if name in answers else None)
    return calls


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("cbcn: error:"), err
    return err


def test_a_launch_needing_data_that_is_not_here_stops_before_submitting(tmp_path, capsys, monkeypatch):
    """Before: 17 jobs were submitted and 13 of them only recorded "unavailable"."""
    fake_slurm(monkeypatch, {"sinfo": "debug*|16|(null)|infinite|up\n"})
    submitted = []
    monkeypatch.setattr("cbcn.harness.launcher.launch", lambda *a, **k: submitted.append(a))
    assert main(["reproduce", "--profile", "quick", "--method", "fp", "--launcher", "slurm",
                 "--out", str(tmp_path)]) == 2
    err = _one_line_error(capsys)
    assert "need data that is not here" in err and "cifar10" in err and "nothing was submitted" in err
    assert not submitted and not (tmp_path / "launches").exists()
    # --skip-unavailable: those rows are recorded as unavailable here and only the rest is submitted
    assert main(["reproduce", "--profile", "quick", "--method", "fp", "--launcher", "slurm", "--skip-unavailable",
                 "--out", str(tmp_path)]) == 0
    (tasks_submitted,) = [a[0] for a in submitted]
    assert {t.experiment_id for t in tasks_submitted} == {"t2-mnist-lenet-5-10-20-40-fp", "t2-mnist-rot-lenet-5-10-20-40-fp",
                                                          "t2-mnist-lenet-10-20-40-80-fp", "t2-mnist-rot-lenet-10-20-40-80-fp"}
    statuses = {s["experiment_id"]: s["status"] for s in ResultStore(tmp_path).statuses()}
    assert len(statuses) == 13 and set(statuses.values()) == {"unavailable"}


@pytest.mark.parametrize("extra,needle", [
    (["--device", "cuda"], "asks for a GPU but --gpus-per-task is 0"),
    (["--device", "cdua"], "--device cdua:"),
    (["--cpus-per-task", "4"], "asks for 4 CPUs but the largest node of partition 'debug' has 2"),
    (["--partition", "gpu"], "partition 'gpu' does not exist (sinfo lists debug)"),
    (["--gpus-per-task", "1", "--device", "cuda", "--cpus-per-task", "1"], "asks for 1 GPUs but the nodes of partition 'debug' have at most 0"),
    (["--time-min", "120", "--cpus-per-task", "1"], "asks for 120 minutes but partition 'debug' allows 60"),
])
def test_a_request_slurm_could_never_schedule_is_refused_before_submitting(tmp_path, capsys, monkeypatch,
                                                                           extra, needle):
    """Before: --cpus-per-task 4 on a 2-CPU node was accepted by sbatch and pended forever."""
    fake_slurm(monkeypatch, {"sinfo": "debug*|2|(null)|1:00:00|up\n"})
    monkeypatch.setattr("cbcn.harness.launcher.launch", lambda *a, **k: pytest.fail("submitted"))
    assert main(["reproduce", "--profile", "smoke", "--row", FOUR[0], "--launcher", "slurm",
                 "--out", str(tmp_path)] + extra) == 2
    err = _one_line_error(capsys)
    assert needle in err and len(err.splitlines()) == 1


def test_a_refused_submission_leaves_no_orphan_files(tmp_path, monkeypatch):
    settings = LaunchSettings(launcher="slurm", partition="nope", time_min=10)

    class Refusing:
        def batch(self):
            raise subprocess.CalledProcessError(1, "sbatch", output=b"sbatch: error: invalid partition specified: nope")
    monkeypatch.setattr("cbcn.harness.launcher.make_executor", lambda s, folder: (folder.joinpath("x.pkl").write_text(""),
                                                                                  Refusing())[1])
    with pytest.raises(subprocess.CalledProcessError):
        launch(tasks(tmp_path, FOUR[:1]), settings, tmp_path)
    assert list((tmp_path / "launches").iterdir()) == []


def _slurm_launch(out: Path, jobs: dict[str, str]) -> Path:
    """A launch manifest as ``launch`` writes it, with each job's log files."""
    folder = out / "launches" / "20261208-000000-abcdef"
    folder.mkdir(parents=True)
    entries = []
    for exp_id, job in jobs.items():
        log, err = folder / f"{job}_0_log.out", folder / f"{job}_0_log.err"
        log.write_text("")
        err.write_text("Traceback (most recent call last):\n  File x\ncbcn.harness.sweep.SweepError: --device cuda: "
                       "CUDA is not available on this machine\nsrun: error: node1: task 0: Exited with exit code 1\n")
        entries.append({"experiment_id": exp_id, "job_id": job, "log": str(log), "errors": str(err)})
    (folder / "launch.json").write_text(json.dumps({"launcher": "slurm", "profile": "smoke", "seed": 0,
                                                   "jobs": entries}))
    return folder


def test_status_asks_slurm_for_pending_failed_and_cancelled_jobs(tmp_path, capsys, monkeypatch):
    """Before: every one of these read "submitted"."""
    _slurm_launch(tmp_path, {FOUR[0]: "77_0", FOUR[1]: "77_1", FOUR[2]: "77_2", FOUR[3]: "77_3"})
    fake_slurm(monkeypatch, {
        "squeue": "77_0|PENDING|PartitionConfig\n77_3|RUNNING|None\n",
        "sacct": None,                                     # no accounting: scontrol answers
        "scontrol": lambda args: {
            "77_1": "JobId=78 ArrayJobId=77 ArrayTaskId=1 JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0\n",
            "77_2": "JobId=79 ArrayJobId=77 ArrayTaskId=2 JobState=CANCELLED Reason=None ExitCode=0:15\n"}.get(args[-1]),
        "sinfo": ""})
    frame = run_states(tmp_path)
    by = frame.set_index("experiment_id")
    assert by.loc[FOUR[0], "state"] == "pending" and "PartitionConfig" in by.loc[FOUR[0], "detail"]
    assert by.loc[FOUR[3], "state"] == "running"
    assert by.loc[FOUR[1], "state"] == "failed"
    assert "exit 1:0: cbcn.harness.sweep.SweepError: --device cuda: CUDA is not available" in by.loc[FOUR[1], "detail"]
    assert by.loc[FOUR[2], "state"] == "cancelled" and "Slurm: CANCELLED" in by.loc[FOUR[2], "detail"]


def test_status_names_the_job_that_trained_a_record_and_says_when_slurm_cannot_be_asked(tmp_path, monkeypatch):
    from tests.test_report import acc, record
    _slurm_launch(tmp_path, {FOUR[0]: "90_0", FOUR[1]: "90_1"})
    rec = record(FOUR[0], profile="smoke", **acc(90.0))
    rec["job"] = "55_0"        # an older launch's job trained it
    ResultStore(tmp_path).write(rec)
    from cbcn.harness import slurm
    monkeypatch.setattr(slurm, "missing", lambda: "Slurm commands not found on the PATH (squeue)")
    by = run_states(tmp_path).set_index("experiment_id")
    assert by.loc[FOUR[0], "state"] == "done" and by.loc[FOUR[0], "job"] == "55_0"  # not the newest launch's 90_0
    assert by.loc[FOUR[1], "state"] == "submitted"
    assert "job state unknown: Slurm commands not found on the PATH" in by.loc[FOUR[1], "detail"]
