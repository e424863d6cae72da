"""What Slurm itself says: the state of submitted jobs, and what a partition can schedule.

Why ask Slurm: the store only learns of a task once it claims its experiment. A job that pends
forever (a request no node can meet), dies before claiming (a bad ``--device``), is cancelled or
times out leaves no trace there, so ``cbcn status`` asks ``squeue`` (live jobs), then ``sacct``
where accounting exists, else ``scontrol show job`` (recently ended jobs), and the launcher asks
``sinfo`` before submitting a request that can never be scheduled. Every call has a short
timeout; without Slurm's commands on the PATH the answers are "unknown", with the reason.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cbcn.errors import exception_line

TIMEOUT_S = 15
#: Slurm job states -> ``cbcn status`` states
STATES = {"PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending",
          "REQUEUE_FED": "pending", "RESV_DEL_HOLD": "pending", "SUSPENDED": "pending",
          "RUNNING": "running", "COMPLETING": "running", "STAGE_OUT": "running", "SIGNALING": "running",
          "COMPLETED": "completed", "CANCELLED": "cancelled", "TIMEOUT": "timeout", "DEADLINE": "timeout",
          "FAILED": "failed", "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed", "BOOT_FAIL": "failed",
          "PREEMPTED": "pending", "REVOKED": "cancelled", "SPECIAL_EXIT": "failed"}


@dataclass
class JobState:
    job: str
    slurm_state: str           # Slurm's word, e.g. PENDING, FAILED
    state: str                 # cbcn status's word (STATES)
    reason: str = ""           # the pending reason, or why it ended
    exit_code: str = ""        # "1:0" (exit status : signal)


def missing() -> str | None:
    """Why Slurm cannot be asked here (no ``squeue`` / ``sinfo`` on the PATH), or None."""
    absent = [c for c in ("squeue", "sinfo", "scontrol") if shutil.which(c) is None]
    return f"Slurm commands not found on the PATH ({', '.join(absent)})" if absent else None


def _run(*args: str) -> str | None:
    """The command's stdout, or None if it fails, times out or is missing."""
    try:
        res = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def job_states(jobs: list[str]) -> dict[str, JobState]:
    """``{job: JobState}`` for the jobs Slurm still knows (array tasks as ``<array>_<task>``)."""
    jobs = sorted({str(j) for j in jobs if j})
    if not jobs or missing():
        return {}
    found: dict[str, JobState] = {}
    text = _run("squeue", "-h", "-j", ",".join(jobs), "-o", "%i|%T|%r") or ""
    for line in text.splitlines():
        job, state, reason = (line.split("|") + ["", ""])[:3]
        found[job.strip()] = _state(job.strip(), state, "" if reason.strip() == "None" else reason.strip())
    rest = [j for j in jobs if j not in found]
    if rest and shutil.which("sacct"):
        text = _run("sacct", "-n", "-P", "-X", "-j", ",".join(rest), "-o", "JobID,State,ExitCode,Reason") or ""
        for line in text.splitlines():
            job, state, code, reason = (line.split("|") + ["", "", ""])[:4]
            if job in rest:
                found[job] = _state(job, state.split()[0] if state else "", "" if reason == "None" else reason, code)
    for job in [j for j in jobs if j not in found]:
        text = _run("scontrol", "show", "job", "-o", job)
        if text:
            fields = dict(re.findall(r"(\w+)=(\S*)", text))
            found[job] = _state(job, fields.get("JobState", ""), "" if fields.get("Reason") == "None"
                                else fields.get("Reason", ""), fields.get("ExitCode", ""))
    return found


def _state(job: str, slurm_state: str, reason: str = "", exit_code: str = "") -> JobState:
    word = slurm_state.strip().upper().split()[0] if slurm_state.strip() else "UNKNOWN"
    return JobState(job, word, STATES.get(word, word.lower()), reason, exit_code.strip())


def last_error_line(path: str | Path) -> str:
    """The last exception line of a job's ``.err`` (``SomeError: why``), else its last line."""
    try:
        return exception_line(Path(path).read_text(errors="replace"))[:300]
    except OSError:
        return ""


@dataclass
class Partition:
    name: str
    default: bool
    max_cpus_per_node: int
    gpus_per_node: int
    time_limit_min: int | None     # None: unlimited
    available: bool


def _minutes(text: str) -> int | None:
    """Slurm's ``[days-]hours:minutes:seconds`` (or ``minutes``, or ``infinite``) in minutes."""
    text = text.strip()
    if not text or text.lower() in ("infinite", "unlimited", "n/a"):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if len(parts) == 1:
        minutes = parts[0]
    else:
        parts = [0] * (3 - len(parts)) + parts
        minutes = parts[0] * 60 + parts[1] + (1 if parts[2] else 0)
    return minutes + (int(days) * 24 * 60 if days else 0)


def _gpus(gres: str) -> int:
    total = 0
    for item in gres.split(","):
        m = re.match(r"gpu(?::[\w.-]+)?:(\d+)", item.strip())
        if m:
            total += int(m.group(1))
    return total


def partitions() -> dict[str, Partition] | None:
    """Every partition with the largest node's CPUs and GPUs (``sinfo``), or None without Slurm."""
    text = _run("sinfo", "-h", "-o", "%P|%c|%G|%l|%a")
    if text is None:
        return None
    out: dict[str, Partition] = {}
    for line in text.splitlines():
        name, cpus, gres, limit, avail = (line.split("|") + [""] * 4)[:5]
        default = name.endswith("*")
        name = name.rstrip("*")
        cpus_n = int(re.sub(r"\D.*", "", cpus) or 0)
        p = out.setdefault(name, Partition(name, default, 0, 0, _minutes(limit), avail.strip() == "up"))
        p.max_cpus_per_node = max(p.max_cpus_per_node, cpus_n)
        p.gpus_per_node = max(p.gpus_per_node, _gpus(gres))
    return out


def unschedulable(partition: str | None, cpus: int, gpus: int, time_min: int) -> str | None:
    """Why no node of the partition can ever run a job asking for ``cpus`` CPUs, ``gpus`` GPUs and
    ``time_min`` minutes, or None (also None when Slurm cannot be asked: sbatch will say)."""
    parts = partitions()
    if not parts:
        return None
    if partition is None:
        partition = next((p.name for p in parts.values() if p.default), None)
        if partition is None:
            return "the cluster has no default partition: pass --partition"
    p = parts.get(partition)
    if p is None:
        return f"partition {partition!r} does not exist (sinfo lists {', '.join(sorted(parts))})"
    if not p.available:
        return f"partition {partition!r} is not up"
    if cpus > p.max_cpus_per_node:
        return (f"a task asks for {cpus} CPUs but the largest node of partition {partition!r} has "
                f"{p.max_cpus_per_node}: lower --cpus-per-task")
    if gpus > p.gpus_per_node:
        return (f"a task asks for {gpus} GPUs but the nodes of partition {partition!r} have at most "
                f"{p.gpus_per_node}: lower --gpus-per-task or pick another --partition")
    if p.time_limit_min is not None and time_min > p.time_limit_min:
        return (f"a task asks for {time_min} minutes but partition {partition!r} allows {p.time_limit_min}: "
                f"lower --time-min (a task that reaches it is requeued and resumes)")
    return None
