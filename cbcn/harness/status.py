"""``cbcn status``: what a results store holds and what is happening to it, run by run.

Why a separate view from the report: while a sweep or a Slurm array is running, a user asks
"what is done, what is running and where, what failed and why, what is left" — questions about
runs, not about the paper's tables. Every answer comes from files that are written atomically
(records, statuses, launch manifests) or from the kernel (claim locks), so looking is safe at any
moment and never disturbs a running sweep.

States, the first that applies: ``done`` (a record, naming the job that trained it),
``unreadable`` (a record that cannot be read), ``running`` (a live claim: which job, process and
host, and the epoch), ``failed`` / ``unavailable`` / ``not runnable`` (the sweep's status and its
reason), then for a launched task with no sign in the store, what Slurm says of its job
(``cbcn.harness.slurm``): ``pending`` (with Slurm's reason), ``running`` (starting), ``failed``
(exit code and the last error line of the job's log), ``cancelled``, ``timeout``;
``submitted`` (Slurm cannot be asked, or no longer knows the job), ``missing`` (selected,
nothing at all).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from cbcn.harness.claims import held_claims
from cbcn.harness.store import ResultStore, parse_key, record_key, training_dir

STATE_ORDER = ("done", "unreadable", "running", "failed", "timeout", "cancelled", "unavailable", "not runnable",
               "pending", "submitted", "missing")


def launched_jobs(out: str | os.PathLike) -> dict[str, dict]:
    """``{record key: job entry}`` from every launch manifest; the newest launch wins."""
    jobs = {}
    for manifest in sorted(Path(out).glob("launches/*/launch.json")):  # folder names sort by time
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        for job in data.get("jobs", []):
            key = record_key(job["experiment_id"], data.get("profile"), data.get("seed"))
            jobs[key] = {**job, "launcher": data.get("launcher"), "launch": manifest.parent.name}
    return jobs


def training_progress(run_dir: Path) -> str:
    """``epoch 3 of 10 done`` for a run folder of ``cbcn train`` (its history.csv and config.json,
    both written atomically after each epoch), or ``''`` before its first epoch ends."""
    try:
        done = len((run_dir / "history.csv").read_text().strip().splitlines()) - 1  # the header
        total = json.loads((run_dir / "config.json").read_text()).get("epochs")
    except (OSError, ValueError, AttributeError):
        return ""
    return f"epoch {done} of {total} done" if done > 0 else ""


def run_states(out: str | os.PathLike, selected_keys: list[str] | None = None) -> pd.DataFrame:
    """One row per run (experiment, profile, seed) that the store knows of or that was selected:
    ``state`` and ``detail`` as described above, plus the job and its log where one was launched."""
    store = ResultStore(out)
    records, problems = store.scan()
    rows: dict[str, dict] = {}

    def row(key: str) -> dict:
        if key not in rows:
            exp, profile, seed = parse_key(key)
            rows[key] = {"experiment_id": exp, "profile": profile, "seed": seed, "state": "missing", "detail": "",
                         "job": "", "log": ""}
        return rows[key]

    for key in selected_keys or []:
        row(key)
    launched = launched_jobs(out)
    for key, job in launched.items():
        r = row(key)
        r.update(state="submitted", detail=f"{job['launcher']} launch {job['launch']}", job=job["job_id"],
                 log=job.get("log", ""))
    for s in store.statuses():
        r = row(record_key(s["experiment_id"], s["profile"], s["seed"]))
        r.update(state=s["status"], detail=f"{s['reason']} ({s.get('time', '?')})")
        if s["status"] == "failed" and r["log"]:
            r["detail"] += f"; job log {r['log']}"
    for key, holder in held_claims(store.results_dir / ".claims").items():
        r = row(key)
        progress = training_progress(training_dir(out, key))
        r.update(state="running", detail=str(holder) + (f", {progress}" if progress else ""))
        if holder.job:
            r["job"] = holder.job
    for p in problems:
        try:
            row(Path(p.path).name[:-len(".json")]).update(state="unreadable", detail=p.error)
        except ValueError:
            continue
    for rec in records:
        r = row(record_key(rec["experiment_id"], rec["profile"], rec["seed"]))
        metrics = rec.get("metrics") or {}
        metric = next((m for m in ("error", "top1", "accuracy") if metrics.get(m) is not None), None)
        r.update(state="done", detail=(f"{metric} {metrics[metric]:.2f}%" if metric else "finished")
                 + f", finished {rec.get('finished', '?')}", job=rec.get("job") or "", log="")
    _ask_slurm(rows, launched)  # last: only tasks with no sign in the store
    frame = pd.DataFrame(list(rows.values()), columns=["experiment_id", "profile", "seed", "state", "detail",
                                                       "job", "log"])
    frame["order"] = frame["state"].map({s: i for i, s in enumerate(STATE_ORDER)}).fillna(len(STATE_ORDER))
    return frame.sort_values(["order", "profile", "seed", "experiment_id"]).drop(columns="order").reset_index(drop=True)


def _ask_slurm(rows: dict[str, dict], launched: dict[str, dict]) -> None:
    """Rows still ``submitted`` from a Slurm launch take the state Slurm gives their job."""
    from cbcn.harness import slurm
    keys = [k for k, r in rows.items() if r["state"] == "submitted" and launched[k].get("launcher") == "slurm"]
    if not keys:
        return
    why = slurm.missing()
    if why:
        for k in keys:
            rows[k]["detail"] += f"; job state unknown: {why}"
        return
    states = slurm.job_states([rows[k]["job"] for k in keys])
    for k in keys:
        r, job = rows[k], states.get(rows[k]["job"])
        if job is None:
            r["detail"] += "; Slurm no longer knows the job (ended before claiming? see its log)"
            continue
        if job.state == "pending":
            r.update(state="pending", detail=f"Slurm: {job.slurm_state}" + (f" ({job.reason})" if job.reason else ""))
        elif job.state == "running":
            r.update(state="running", detail="Slurm: RUNNING, starting (no claim yet)")
        elif job.state in ("failed", "completed", "cancelled", "timeout"):  # ended without a record or status
            error = slurm.last_error_line(launched[k].get("errors") or Path(r["log"]).with_suffix(".err"))
            r.update(state="failed" if job.state == "completed" else job.state,
                     detail=f"Slurm: {job.slurm_state}" + (f", exit {job.exit_code}" if job.exit_code else "")
                     + (f": {error}" if error else "") + f"; job log {r['log']}")
        else:
            r["detail"] += f"; Slurm: {job.slurm_state}"


def counts_line(frame: pd.DataFrame) -> str:
    """``12 runs: 8 done, 2 running, 1 failed, 1 missing``."""
    counts = frame["state"].value_counts()
    parts = [f"{int(counts[s])} {s}" for s in STATE_ORDER if s in counts]
    return f"{len(frame)} runs: " + (", ".join(parts) if parts else "none")
