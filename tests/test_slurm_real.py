"""``cbcn reproduce --launcher slurm`` against a real Slurm: a single-node slurmctld and slurmd
started on this machine for the test (Debian's ``slurm-wlm`` and ``munge``; ``.ci/run`` installs
them where apt is available). Skips, with the reason, where they are missing or do not start.

The cluster: ``proctrack/linuxproc``, ``task/none``, ``select/cons_tres`` with ``CR_CPU``, no
accounting, its own munge key and socket, state and logs under a temporary folder, ports picked
free; the daemons are stopped at the end.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

submitit = pytest.importorskip("submitit")

from cbcn.harness.launcher import LaunchSettings, SweepTask, launch  # noqa: E402
from cbcn.harness.status import run_states  # noqa: E402
from cbcn.harness.store import ResultStore, record_key, training_dir  # noqa: E402
from cbcn.training.profiles import Profile, Schedule, get_profile  # noqa: E402

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")
SMOKE = get_profile("smoke")
ROWS = ["t2-mnist-lenet-5-10-20-40-fp", "t2-mnist-lenet-5-10-20-40-xnor"]


def _which(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)),
                                      None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``SLURM_CONF`` of a running one-node cluster (the environment the tests run commands with)."""
    missing = [d for d in DAEMONS if _which(d) is None]
    if missing:
        pytest.skip(f"Slurm/munge not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("starting slurmd needs root here (it runs jobs as their user)")
    d = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname().split(".")[0]
    (d / "state").mkdir()
    (d / "spool").mkdir()
    conf = d / "slurm.conf"
    conf.write_text(f"""ClusterName=cbcntest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={d / 'munge.sock'}
CredType=cred/munge
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={d / 'state'}
SlurmdSpoolDir={d / 'spool'}
SlurmctldPidFile={d / 'slurmctld.pid'}
SlurmdPidFile={d / 'slurmd.pid'}
SlurmctldLogFile={d / 'slurmctld.log'}
SlurmdLogFile={d / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=5
NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)  # in-process calls (launch, run_states) use this cluster
    try:
        starts = [[_which("mungekey"), "-c", "-f", "-k", str(d / "munge.key")],
                  [_which("munged"), "-f", f"--key-file={d / 'munge.key'}", "-S", str(d / "munge.sock"),
                   f"--pid-file={d / 'munged.pid'}", f"--log-file={d / 'munged.log'}",
                   f"--seed-file={d / 'munged.seed'}"],
                  [_which("slurmctld"), "-f", str(conf)], [_which("slurmd"), "-f", str(conf)]]
        for command in starts:
            res = subprocess.run(command, env=env, capture_output=True, text=True)
            if res.returncode != 0:
                pytest.skip(f"could not start {Path(command[0]).name}: {(res.stderr or res.stdout).strip()[:300]}")
        deadline = time.time() + 30
        while True:
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout
            if out.strip() in ("idle", "mix", "alloc"):
                break
            if time.time() > deadline:
                logs = "".join(p.read_text()[-600:] for p in d.glob("slurm*.log"))
                pytest.skip(f"the test cluster did not come up (sinfo: {out.strip()!r}): {logs}")
            time.sleep(0.5)
        yield env
    finally:
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True)
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            try:
                os.kill(int((d / pid_file).read_text().split()[0]), 15)
            except (OSError, ValueError):
                pass
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def _cbcn(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cbcn.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _wait(predicate, seconds: float, what: str):
    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_a_smoke_sweep_runs_as_a_job_array_and_status_names_its_jobs(cluster, tmp_path):
    res = _cbcn(cluster, "reproduce", "--profile", "smoke", "--row", ROWS[0], "--row", ROWS[1], "--launcher", "slurm",
                "--cpus-per-task", "1", "--time-min", "10", "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "submitted 2 tasks as Slurm job array" in res.stdout
    store = ResultStore(tmp_path)
    _wait(lambda: len(store.scan()[0]) == 2, 240, "two records")
    records = {r["experiment_id"]: r for r in store.scan()[0]}
    states = run_states(tmp_path).set_index("experiment_id")
    for exp_id in ROWS:
        assert states.loc[exp_id, "state"] == "done"
        assert states.loc[exp_id, "job"] == records[exp_id]["job"] and "_" in records[exp_id]["job"]  # <array>_<task>


def test_a_job_that_fails_before_claiming_shows_its_reason_in_status(cluster, tmp_path):
    """Before: Slurm said FAILED and ``cbcn status`` said "submitted"; the reason was only in the .err."""
    res = _cbcn(cluster, "reproduce", "--profile", "smoke", "--row", ROWS[0], "--launcher", "slurm",
                "--cpus-per-task", "1", "--time-min", "10", "--out", str(tmp_path),
                "--slurm-setup", "echo 'module: cuda/12.4 not found' >&2; exit 3")
    assert res.returncode == 0, res.stderr
    _wait(lambda: run_states(tmp_path).iloc[0]["state"] not in ("submitted", "pending", "running"), 120,
          "the job to end")
    row = run_states(tmp_path).iloc[0]
    assert row["state"] == "failed", row.to_dict()
    assert "Slurm: FAILED, exit 3:0: module: cuda/12.4 not found" in row["detail"]
    shown = _cbcn(cluster, "status", "--out", str(tmp_path))
    assert "module: cuda/12.4 not found" in shown.stdout and "1 failed" in shown.stdout


def test_a_pending_job_shows_slurms_reason(cluster, tmp_path):
    """A job that may not start yet stays pending; status says why, from squeue."""
    res = _cbcn(cluster, "reproduce", "--profile", "smoke", "--row", ROWS[0], "--launcher", "slurm",
                "--cpus-per-task", "1", "--time-min", "10", "--out", str(tmp_path), "--slurm-option", "begin=now+1hour")
    assert res.returncode == 0, res.stderr
    row = run_states(tmp_path).iloc[0]
    try:
        assert row["state"] == "pending" and "Slurm: PENDING (BeginTime)" in row["detail"], row.to_dict()
    finally:
        subprocess.run(["scancel", str(row["job"]).split("_")[0]], env=cluster, capture_output=True)


def test_a_requeued_job_resumes_and_equals_an_uninterrupted_run(cluster, tmp_path):
    """``scontrol requeue`` of a running task: the new run resumes from the last epoch's checkpoint
    and its record's curves and final metrics equal a run that was never interrupted."""
    import torch
    slow = Profile("slurmtest", "three small epochs", cpu_threads=1, stages=(2, 2, 4, 4), hardware=SMOKE.hardware,
                   schedules={"mnist": Schedule(epochs=3, batch_size=32, max_train_samples=1024, max_test_samples=64)})
    settings = LaunchSettings(launcher="slurm", cpus_per_task=1, time_min=10, parallel=2)
    interrupted, whole = tmp_path / "requeued", tmp_path / "whole"
    run = launch([SweepTask(ROWS[1], slow, str(interrupted), device="cpu")], settings, interrupted,
                 log=lambda line: None)
    launch([SweepTask(ROWS[1], slow, str(whole), device="cpu")], settings, whole, log=lambda line: None)
    (_, job), = run.jobs
    history = training_dir(interrupted, record_key(ROWS[1], "slurmtest", 0)) / "history.csv"
    _wait(lambda: history.exists() and len(history.read_text().splitlines()) >= 2, 180, "the first epoch")
    subprocess.run(["scontrol", "requeue", str(job.job_id)], env=cluster, check=True, capture_output=True)
    # Slurm holds a requeued job back for a while (BeginTime); let it start now
    _wait(lambda: "JobState=PENDING" in subprocess.run(["scontrol", "show", "job", "-o", str(job.job_id)], env=cluster,
                                                        capture_output=True, text=True).stdout, 60, "the requeue")
    subprocess.run(["scontrol", "update", f"JobId={job.job_id}", "StartTime=now"], env=cluster, capture_output=True)
    a, b = ResultStore(interrupted), ResultStore(whole)
    _wait(lambda: a.scan()[0] and b.scan()[0], 300, "both records")
    ra, rb = a.scan()[0][0], b.scan()[0][0]
    log = history.with_name("train.log").read_text()
    assert log.count("cbcn train:") == 2 and "resumed" in log  # a second process, from the checkpoint
    strip = lambda curves: [{k: v for k, v in c.items() if "seconds" not in k} for c in curves]  # noqa: E731
    assert strip(ra["curves"]) == strip(rb["curves"]) and ra["metrics"] == rb["metrics"]
    wa = torch.load(Path(ra["checkpoint"]), map_location="cpu", weights_only=False)["model"]
    wb = torch.load(Path(rb["checkpoint"]), map_location="cpu", weights_only=False)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
