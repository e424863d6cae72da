"""Sweeps that outgrow one machine: one Slurm array task (or one local process) per experiment,
submitted through submitit (``cbcn reproduce --launcher slurm|local``).

Why one task per experiment: the store's claims (``cbcn.harness.claims``) already make any number
of sweeps share one store without training a run twice, so a task is simply a sweep of one
experiment (``run_sweep``): it claims the experiment, trains it (resuming its checkpoint when there
is one) and writes its record atomically. Everything a cluster adds is handled by submitit:

- **pre-emption and time limits**: Slurm signals the task (``USR2``, ``signal_delay_s`` before the
  end); submitit calls ``SweepTask.checkpoint``, which resubmits the same task, and requeues it.
  The requeued task resumes from the run's last epoch checkpoint (``last.pt``), so at most one
  epoch is lost. After ``max_requeues`` time-outs submitit gives up and the task is failed.
- **scancel and scontrol requeue** send SIGTERM: the task stops at once (submitit alone would
  ignore it and train on until Slurm's KillWait ends in SIGKILL, then write nothing); the epoch in
  progress is lost, the last epoch checkpoint stays, and a requeued task resumes from it exactly.
- **failures**: a task that raises ends only itself; ``run_sweep`` has written a ``failed`` status
  with the reason into the store, and the job's log is in the launch folder.
- **several GPUs per task**: the task's ranks get ``torchrun``'s environment
  (``TorchDistributedEnvironment``) and train one data-parallel run, as under ``torchrun``.

Each launch leaves a folder ``<out>/launches/<launch id>/``: submitit's job files and logs
(``<job id>_0_log.out`` / ``.err``) and ``launch.json``, which names the job of every
experiment; ``cbcn status`` reads it. ``local`` runs the same tasks as processes on this machine,
at most ``parallel`` at once, and waits for them; ``slurm`` submits one job array and returns.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

from cbcn.errors import exception_line, sigterm_raises
from cbcn.fileio import atomic_write_text
from cbcn.training.profiles import Profile

LAUNCHERS = ("slurm", "local")
INSTALL_HINT = "pip install 'cbcn[cluster]'  (or: pip install submitit)"


class LauncherError(RuntimeError):
    """A launch that cannot start (bad settings, submitit missing); one line for the user."""


@dataclass(frozen=True)
class LaunchSettings:
    """Where and how the tasks run: plain data, from the command line or a JSON file."""

    launcher: str = "local"
    partition: str | None = None          # Slurm partition (sbatch --partition)
    account: str | None = None            # Slurm account (sbatch --account)
    qos: str | None = None                # Slurm quality of service
    gpus_per_task: int = 0                # >1: one data-parallel run over that many GPUs (one rank each)
    cpus_per_task: int = 4                # per rank
    mem_gb: int | None = None             # per node (sbatch --mem); None: the partition's default
    time_min: int = 24 * 60               # wall-time limit per job; pre-emption / time-out requeue it
    parallel: int | None = None           # tasks at once: the Slurm array's %N (default 16), or local
                                          # processes (default 2: each trains with its own threads)
    max_requeues: int = 3                 # time-outs a task may be requeued after (pre-emptions are free)
    signal_delay_s: int = 120             # Slurm warns the task this long before its time limit
    setup: tuple[str, ...] = ()           # shell lines run first in each job (module load, venv activate)
    slurm_options: dict = field(default_factory=dict)  # more sbatch options, e.g. {"constraint": "a100"}

    def __post_init__(self):
        if self.launcher not in LAUNCHERS:
            raise LauncherError(f"unknown launcher {self.launcher!r}; valid choices: {list(LAUNCHERS)}")
        if self.parallel is None:
            object.__setattr__(self, "parallel", 16 if self.launcher == "slurm" else 2)
        for name in ("cpus_per_task", "time_min", "parallel"):
            if getattr(self, name) < 1:
                raise LauncherError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_task < 0 or self.max_requeues < 0 or self.signal_delay_s < 0:
            raise LauncherError("gpus_per_task, max_requeues and signal_delay_s must be >= 0")

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> "LaunchSettings":
        """Settings from a JSON file (keys: the field names), then ``overrides`` that are not None."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            raise LauncherError(f"cannot read launcher config {path}: {e}") from None
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known) if isinstance(data, dict) else ["(not a JSON object)"]
        if unknown:
            raise LauncherError(f"launcher config {path}: unknown keys {unknown}; valid keys: {sorted(known)}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        if "setup" in data:
            data["setup"] = tuple(data["setup"])
        return cls(**data)


def require_submitit():
    """The submitit module, or a LauncherError that says what to install."""
    try:
        import submitit
    except ImportError:
        raise LauncherError(f"--launcher needs submitit, which is not installed: {INSTALL_HINT}") from None
    return submitit


@dataclass
class SweepTask:
    """One experiment as a submitit task: a sweep of that experiment alone (picklable)."""

    experiment_id: str
    profile: Profile
    out: str
    seed: int = 0
    data_root: str | None = None
    device: str = "auto"
    compile: bool = False

    def __call__(self) -> dict:
        """Claim, train (or resume), store; returns what happened. Raises if training failed,
        so that the job is marked failed; the store's ``failed`` status says why."""
        import submitit

        from cbcn.harness.experiments import get_experiment
        from cbcn.harness.sweep import run_sweep
        from cbcn.training.profiles import PROFILES

        PROFILES.setdefault(self.profile.name, self.profile)  # a profile built in code: training finds it by name
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # one rank per task of the job: torchrun's variables for DistInfo
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        with sigterm_raises():  # scancel / scontrol requeue: stop now (submitit would train on until SIGKILL)
            summary = run_sweep([get_experiment(self.experiment_id)], self.profile, self.out,
                                data_root=self.data_root, seed=self.seed, device=self.device, strict_data=False,
                                log=lambda line: print(line, flush=True), compile=self.compile)
        if summary.failed or summary.problems:
            raise TaskFailed(f"{self.experiment_id}: " + "; ".join({**summary.failed, **summary.problems}.values()))
        outcome = ("finished" if summary.finished else "already done" if summary.skipped_done else
                   "run by another sweep" if summary.claimed_elsewhere else
                   "unavailable" if summary.unavailable else "not runnable")
        return {"experiment_id": self.experiment_id, "outcome": outcome, "job": env.job_id}

    def checkpoint(self, *args, **kwargs):
        """Pre-empted or near its time limit: requeue the same task. The training state is on
        disk already (``last.pt`` after every epoch), which the requeued task resumes from."""
        import submitit
        return submitit.helpers.DelayedSubmission(self)


class TaskFailed(RuntimeError):
    """A task's experiment failed (the reason is also in the store's ``failed`` status)."""


def new_launch_dir(out: str | os.PathLike) -> Path:
    """``<out>/launches/<UTC time>-<random>``: one folder per launch, never shared."""
    folder = Path(out) / "launches" / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
    folder.mkdir(parents=True)
    return folder


def make_executor(settings: LaunchSettings, folder: Path):
    """A submitit executor for ``settings``, writing its files to ``folder``."""
    submitit = require_submitit()
    ranks = max(1, settings.gpus_per_task)
    if settings.launcher == "local":
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=settings.max_requeues)
        executor.update_parameters(timeout_min=settings.time_min, gpus_per_node=settings.gpus_per_task,
                                   tasks_per_node=ranks, signal_delay_s=settings.signal_delay_s)
        if settings.setup:
            executor.update_parameters(setup=list(settings.setup))
        return executor
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=settings.max_requeues)
    executor.update_parameters(**slurm_parameters(settings))
    return executor


def slurm_parameters(settings: LaunchSettings) -> dict:
    """submitit's ``SlurmExecutor`` parameters (its names for the sbatch options) for ``settings``."""
    params = dict(job_name="cbcn", time=settings.time_min, nodes=1, ntasks_per_node=max(1, settings.gpus_per_task),
                  cpus_per_task=settings.cpus_per_task, signal_delay_s=settings.signal_delay_s,
                  array_parallelism=settings.parallel)
    if settings.gpus_per_task:
        params["gpus_per_node"] = settings.gpus_per_task
    for name in ("partition", "account", "qos"):
        if getattr(settings, name):
            params[name] = getattr(settings, name)
    if settings.mem_gb:
        params["mem"] = f"{settings.mem_gb}G"
    if settings.setup:
        params["setup"] = list(settings.setup)
    # --requeue: Slurm may requeue the job itself (pre-emption with PreemptMode=REQUEUE, node failure);
    # submitit requeues it with scontrol on USR2 either way
    params["additional_parameters"] = {"requeue": True, **settings.slurm_options}
    return params


@dataclass
class Launch:
    """A submitted launch: its folder, its manifest and one (task, job) per experiment."""

    folder: Path
    settings: LaunchSettings
    manifest: dict
    jobs: list = field(default_factory=list)   # [(SweepTask, submitit Job)]

    def write_manifest(self) -> None:
        self.manifest["jobs"] = [{"experiment_id": t.experiment_id, "job_id": str(j.job_id),
                                  "log": str(j.paths.stdout), "errors": str(j.paths.stderr)} for t, j in self.jobs]
        atomic_write_text(self.folder / "launch.json", json.dumps(self.manifest, indent=1, default=str))


def launch(tasks: Sequence[SweepTask], settings: LaunchSettings, out: str | os.PathLike,
           log: Callable[[str], None] = print, folder: Path | None = None) -> Launch:
    """Submit ``tasks``: Slurm as one job array (returns at once); local as processes, at most
    ``settings.parallel`` at a time (returns when all have ended; ``wait`` reports them)."""
    require_submitit()
    folder = folder or new_launch_dir(out)
    executor = make_executor(settings, folder)
    first = tasks[0] if tasks else None
    run = Launch(folder, settings, {
        "launcher": settings.launcher, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(sys.argv), "store": str(out), "settings": asdict(settings),
        "profile": first.profile.name if first else None, "seed": first.seed if first else None})
    if settings.launcher == "slurm":
        try:
            with executor.batch():
                pending = [(t, executor.submit(t)) for t in tasks]
        except BaseException:  # sbatch refused: no job exists, so its files would be orphans
            shutil.rmtree(folder, ignore_errors=True)
            raise
        run.jobs = pending
        run.write_manifest()
        ids = sorted({str(j.job_id).split("_")[0] for _, j in pending})
        log(f"submitted {len(pending)} tasks as Slurm job array {', '.join(ids)} (at most {settings.parallel} "
            f"at once); logs in {folder}; follow with: cbcn status --out {out}")
        return run
    queue, running = list(tasks), []
    try:
        while queue or running:
            running = [(t, j) for t, j in running if not j.done()]
            while queue and len(running) < settings.parallel:
                task = queue.pop(0)
                job = executor.submit(task)
                running.append((task, job))
                run.jobs.append((task, job))
                run.write_manifest()
                log(f"started {task.experiment_id} as local job {job.job_id} (log {job.paths.stdout})")
            time.sleep(0.5)
    except KeyboardInterrupt:  # local jobs would outlive us: stop them (their checkpoints stay)
        for task, job in running:
            job.cancel()
            log(f"stopped {task.experiment_id} (local job {job.job_id}); it resumes from its checkpoint next time")
        raise
    return run


def wait(run: Launch, log: Callable[[str], None] = print) -> dict[str, str]:
    """Wait for every job of ``run``; ``{experiment_id: outcome or 'FAILED: reason (log ...)'}``."""
    outcomes = {}
    for task, job in run.jobs:
        try:
            outcomes[task.experiment_id] = job.result()["outcome"]
        except Exception as e:  # submitit re-raises the task's error, its traceback in the message
            outcomes[task.experiment_id] = f"FAILED: {exception_line(str(e))} (log {job.paths.stderr})"
        log(f"{task.experiment_id}: {outcomes[task.experiment_id]}")
    return outcomes

