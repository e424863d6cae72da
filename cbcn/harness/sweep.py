"""Run selected paper experiments into the results store: train, measure, record.

Why this shape: a sweep is a loop over independent experiments, each ending in one atomic
record (``cbcn.harness.store``). Everything that can go wrong with one experiment — its dataset is not
on this machine, its method is not implemented, its record is corrupt, training fails — is
reported and recorded as a status, and the loop goes on; only an interrupt stops it, losing at
most the experiment in progress (whose training checkpoint, under ``<out>/training/<key>/``, lets the
next sweep resume it). ``--shard i/n`` gives each of n cluster jobs a disjoint part of the
selection; experiments that are the same run (equal ``config_key``) stay in one shard, so the
second one reuses the first's training instead of repeating it.
"""
from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from cbcn.harness.claims import current_job
from cbcn.harness.experiments import Experiment
from cbcn.harness.store import RECORD_KIND, SCHEMA_VERSION, TRAINING, ResultStore, record_key, training_dir
from cbcn.nn.methods import SWITCHES
from cbcn.training.distributed import DistInfo
from cbcn.training.profiles import Profile, get_profile


class SweepError(RuntimeError):
    """The sweep cannot start as asked (message says why and what to do)."""


@dataclass(frozen=True)
class Shard:
    index: int   # 1-based
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        try:
            i, n = (int(x) for x in str(text).split("/"))
        except ValueError:
            raise ValueError(f"--shard must look like i/n (e.g. 2/4), got {text!r}") from None
        if n < 1 or not 1 <= i <= n:
            raise ValueError(f"--shard {text}: shards are numbered 1..n with n >= 1 "
                             f"(e.g. --shard $((SLURM_ARRAY_TASK_ID + 1))/$SLURM_ARRAY_TASK_COUNT)")
        return cls(i, n)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_experiments(experiments: Sequence[Experiment], shard: Shard | None, profile: Profile) -> list[Experiment]:
    """This shard's experiments: groups of identical runs dealt round-robin, in table order."""
    if shard is None or shard.count == 1:
        return list(experiments)
    groups: dict[tuple, int] = {}
    for e in experiments:
        groups.setdefault(e.config_key(profile.stages_for(e)), len(groups))
    return [e for e in experiments if groups[e.config_key(profile.stages_for(e))] % shard.count == shard.index - 1]


@dataclass
class SweepSummary:
    selected: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)     # trained (or reused) in this sweep
    skipped_done: list[str] = field(default_factory=list)  # already in the store
    unavailable: dict[str, str] = field(default_factory=dict)
    not_runnable: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # unreadable records left in place
    failed: dict[str, str] = field(default_factory=dict)
    claimed_elsewhere: dict[str, str] = field(default_factory=dict)  # another running sweep trains them

    @property
    def ok(self) -> bool:
        return not self.failed and not self.problems

    def lines(self) -> list[str]:
        out = [f"{len(self.selected)} selected: {len(self.finished)} run now, {len(self.skipped_done)} already "
               f"done, {len(self.claimed_elsewhere)} run by another sweep, {len(self.unavailable)} unavailable, "
               f"{len(self.not_runnable)} not runnable, {len(self.problems)} unreadable records, "
               f"{len(self.failed)} failed"]
        for title, d in (("unreadable records (left untouched; fix or delete them, or rerun with --repair to "
                          "move them aside and rerun only them)", self.problems), ("failed", self.failed),
                         ("run by another sweep (it stores their records)", self.claimed_elsewhere)):
            if d:
                out.append(title + ":")
                out += [f"  {k}: {v}" for k, v in d.items()]
        return out


def dataset_status(name: str, root: str | None, cache: dict, download: bool = False) -> str | None:
    """None if both splits of ``name`` load from ``root``, else why not, saying whether the data is
    missing or corrupt (cached per sweep). ``download`` fetches what is missing first."""
    key = (name, root, download)
    if key not in cache:
        from cbcn.data import DatasetCorrupt, DatasetError, DatasetNotFound, load_dataset
        where = f"under {root}" if root else "(no --data-root given)"
        cache[key] = None
        for train in (True, False):  # a corrupt training file must not wait for training to show
            try:
                load_dataset(name, root=root, train=train, max_samples=1, download=download and train)
            except DatasetCorrupt as e:
                cache[key] = f"dataset {name} is corrupt {where}: {e}"
            except DatasetNotFound as e:
                cache[key] = f"dataset {name} not found {where}: {e}"
            except (DatasetError, OSError, ValueError) as e:
                cache[key] = f"dataset {name} cannot be loaded {where}: {e}"
            if cache[key]:
                break
    return cache[key]


def missing_data(experiments: Sequence[Experiment], data_root: str | None, download: bool = False,
                 cache: dict | None = None) -> dict[str, list[str]]:
    """``{why the data set is not here: [experiment ids]}`` for the experiments whose data is missing."""
    cache = {} if cache is None else cache
    missing: dict[str, list[str]] = {}
    for e in experiments:
        why = dataset_status(e.dataset, data_root, cache, download)
        if why:
            missing.setdefault(why, []).append(e.id)
    return missing


def missing_data_message(missing: dict[str, list[str]]) -> str:
    """What is missing, for whom, and the ways on: the error of a sweep (or launch) that needs it."""
    return ("the selected experiments need data that is not here:\n  " + "\n  ".join(
        f"{why} (needed by {len(ids)}: {', '.join(ids[:4])}{' ...' if len(ids) > 4 else ''})"
        for why, ids in missing.items())
        + "\npass --data-root DIR (or --download for MNIST/CIFAR), narrow the selection (e.g. "
          "--dataset mnist), or add --skip-unavailable to record them as unavailable and go on")


def _config_for(exp: Experiment, profile: Profile, data_root: str | None, seed: int, device: str,
                out: Path, resume: bool, progress: str, download: bool = False, compile: bool = False):
    from cbcn.training.train import TrainConfig
    switches = {k: v for k, v in exp.switches.items() if k in SWITCHES}
    run_dir = training_dir(out, record_key(exp.id, profile.name, seed))
    return TrainConfig.from_recipe(
        profile, exp.model, exp.dataset, method=exp.method, K=exp.K,
        stages=tuple(profile.stages_for(exp)), data_root=data_root, seed=seed, device=device,
        center_loss=exp.center_loss is not None,
        center_lambda=exp.center_loss if exp.center_loss is not None else 0.01,
        output_dir=str(run_dir), resume=resume, overwrite=not resume, progress=progress, download=download,
        compile=compile, **switches)


def _input_shape(dataset: str) -> tuple[int, int, int]:
    from cbcn.data import dataset_info
    info = dataset_info(dataset)
    return (info.in_channels, info.image_size, info.image_size)


def metrics_from(final: dict) -> dict:
    """The metrics a report compares with the paper (percent): error, accuracy, top1, top5."""
    m = {"error": final.get("test_error"), "accuracy": final.get("top1"), "top1": final.get("top1"),
         "top5": final.get("top5"), "test_loss": final.get("test_loss"), "train_error": final.get("train_error"),
         "n_test": final.get("n_test"), "n_train": final.get("n_train"), "epochs": final.get("epochs")}
    return {k: (float(v) if isinstance(v, (int, float)) and k not in ("n_test", "n_train", "epochs") else v)
            for k, v in m.items()}


def run_experiment(exp: Experiment, profile: Profile, *, data_root: str | None, seed: int, device: str,
                   out: Path, resume: bool = True, progress: str = "lines", download: bool = False,
                   compile: bool = False) -> dict:
    """Train and profile one experiment; return its store record (not yet written)."""
    from cbcn.harness.hardware import profile_model
    from cbcn.harness.machine import host_description
    from cbcn.harness.provenance import git_revision, package_versions
    from cbcn.training.train import train
    started = time.time()
    config = _config_for(exp, profile, data_root, seed, device, out, resume, progress, download, compile)
    ckpt = Path(config.output_dir) / "last.pt"
    if resume and not ckpt.exists():
        config.resume = False
    result = train(config)
    trained = time.time()
    hw = profile_model(result.model, _input_shape(exp.dataset), profile.hardware)
    return {
        "schema_version": SCHEMA_VERSION, "kind": RECORD_KIND,
        "experiment_id": exp.id, "profile": profile.name, "seed": seed, "status": "finished",
        "experiment": exp.to_dict(),
        "model_stages": list(profile.stages_for(exp)),
        "metrics": metrics_from(result.final),
        "paper": dict(exp.paper),
        "curves": result.history,
        "hardware": hw,
        "data": {"dataset": exp.dataset, "root": data_root, "description": result.data_description},
        "train_config": result.config,
        "recipe": result.recipe_description,
        "model_description": result.model_description,
        "checkpoint": result.checkpoint,
        "git": git_revision(),
        "versions": package_versions(),
        "machine": host_description(),
        "job": current_job(),   # the Slurm (or submitit local) job that trained it, for `cbcn status`
        "device": {k: hw.get(k) for k in ("device", "device_name", "torch_threads")},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "train_time_s": trained - started,
        "hardware_time_s": time.time() - trained,
        "reused_from": None,
    }


def reuse_record(source: dict, exp: Experiment) -> dict:
    """A record for ``exp`` from the record of an identical run (same ``config_key``)."""
    r = dict(source)
    r.update(experiment_id=exp.id, experiment=exp.to_dict(), paper=dict(exp.paper),
             reused_from=source.get("reused_from") or record_key(source["experiment_id"], source["profile"],
                                                                 source["seed"]))
    return r


def run_sweep(experiments: Sequence[Experiment], profile: str | Profile = "quick", out: str | os.PathLike = "runs",
              *, data_root: str | None = None, seed: int = 0, force: bool = False, repair: bool = False,
              shard: Shard | None = None, device: str = "auto", strict_data: bool = False,
              log: Callable[[str], None] = print, train_progress: str = "lines",
              download: bool = False, compile: bool = False) -> SweepSummary:
    """Run every selected experiment that has no record yet.

    ``repair``: unreadable records are moved aside (``<name>.json.bad-<time>``) and only those
    experiments rerun; ``force``: every selected experiment is trained again, finished ones
    included (and unreadable records moved aside). ``strict_data``: a missing dataset is an error
    before anything runs (the user selected those rows explicitly) instead of an "unavailable"
    status. Every experiment is claimed (``ResultStore.claim``) before it trains, so sweeps
    sharing a store never train one twice.
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    out = Path(out)
    store = ResultStore(out)
    is_main = DistInfo.from_env().is_main
    mine = shard_experiments(experiments, shard, profile)
    summary = SweepSummary(selected=[e.id for e in mine])
    data_cache: dict = {}

    try:
        from cbcn.training.distributed import resolve_device
        resolve_device(device)
    except (RuntimeError, ValueError) as e:
        raise SweepError(f"--device {device}: {e}") from None
    runnable = [e for e in mine if e.runnable]
    if mine and not runnable:
        raise SweepError("nothing to run: " + "; ".join(f"{e.id}: {e.not_runnable_reason}" for e in mine))
    if strict_data:
        missing = missing_data(runnable, data_root, download, data_cache)
        if missing:
            raise SweepError(missing_data_message(missing))

    done_now: dict[tuple, dict] = {}
    log(f"cbcn reproduce: profile {profile.name} ({profile.description}); seed {seed}; "
        f"{len(mine)} experiments" + (f" (shard {shard} of {len(experiments)})" if shard else "")
        + f"; store {store.results_dir}")
    clock = SweepClock([recipe_cost(e, profile) for e in mine])
    for i, exp in enumerate(mine, 1):
        tag = f"[{i}/{len(mine)} | {clock.progress(i)}] {exp.id}"
        if not exp.runnable:
            summary.not_runnable[exp.id] = exp.not_runnable_reason
            if is_main:
                store.write_status(exp.id, profile.name, seed, "not runnable", exp.not_runnable_reason)
            log(f"{tag}: not runnable: {exp.not_runnable_reason}")
            continue
        state, found = store.state(exp.id, profile.name, seed)
        if state == "finished" and not force:
            summary.skipped_done.append(exp.id)
            clock.skipped()
            log(f"{tag}: already done ({store.path(exp.id, profile.name, seed).name}); skipped")
            continue
        if state == "problem" and not (repair or force):
            summary.problems[exp.id] = found.error
            clock.skipped()
            log(f"{tag}: UNREADABLE RECORD, not rerun: {found.error}")
            continue
        why = dataset_status(exp.dataset, data_root, data_cache, download)
        if why:
            summary.unavailable[exp.id] = why
            if is_main:
                store.write_status(exp.id, profile.name, seed, "unavailable", why)
            log(f"{tag}: unavailable: {why}")
            continue
        claim, holder = store.claim(exp.id, profile.name, seed) if is_main else (None, None)
        if is_main and claim is None:
            summary.claimed_elsewhere[exp.id] = str(holder)
            clock.skipped()
            log(f"{tag}: being run by another sweep, {holder}; skipped (it will store the record)")
            continue
        try:
            state, found = store.state(exp.id, profile.name, seed)  # again, now that it is ours
            if state == "finished" and not force:
                summary.skipped_done.append(exp.id)
                clock.skipped()
                log(f"{tag}: finished by another sweep meanwhile; skipped")
                continue
            if state == "problem" and is_main:
                moved = store.quarantine(exp.id, profile.name, seed)
                log(f"{tag}: unreadable record moved aside to {moved.name} ({'--repair' if repair else '--force'}); "
                    f"rerunning it: {found.error}")
            record, path = _run_one(exp, profile, store, seed, force, done_now, tag, log, is_main, out,
                                    data_root=data_root, device=device, progress=train_progress,
                                    download=download, compile=compile)
        except KeyboardInterrupt:
            log(f"{tag}: interrupted; finished experiments are stored, rerun the same command to continue")
            raise
        except Exception as e:  # one failed experiment must not end the sweep
            msg = f"{type(e).__name__}: {e}"
            if type(e).__name__ == "CheckpointError":
                msg += f" (its training checkpoint is in {out / TRAINING}; rerun with --force to start afresh)"
            summary.failed[exp.id] = msg
            if is_main:
                store.write_status(exp.id, profile.name, seed, "failed", msg)
            log(f"{tag}: FAILED: {msg}")
            if os.environ.get("CBCN_DEBUG"):
                traceback.print_exc()
            clock.finished(i)
            continue
        finally:
            if claim is not None:
                claim.release()
        clock.finished(i)
        done_now[exp.config_key(profile.stages_for(exp))] = record
        summary.finished.append(exp.id)
        m = record["metrics"]
        metric = "top1" if exp.table == 5 else exp.metric
        paper = exp.paper.get(metric)
        log(f"{tag}: done: {metric} {m.get(metric):.2f}% (paper {paper}%) -> {path}")
    for line in summary.lines():
        log(line)
    return summary


CONFIGURATION_POLL_S = 2.0  # how often a sweep waiting for another's training of the same run looks again


def _run_one(exp, profile, store, seed, force, done_now, tag, log, is_main, out, **run_args):
    """Train ``exp`` (or reuse an identical run's result) and store its record: ``(record, path)``."""
    key = exp.config_key(profile.stages_for(exp))
    twin = done_now.get(key)
    if twin is None and not force:
        twin = _find_twin(store, exp, profile, seed)
    configuration = None
    if twin is None and not force and is_main and not DistInfo.from_env().enabled:  # torchrun: ranks must not diverge
        configuration, twin = _claim_configuration(store, exp, profile, seed, key, tag, log)
    try:
        return _train_or_reuse(exp, profile, store, seed, force, twin, tag, log, is_main, out, **run_args)
    finally:
        if configuration is not None:
            configuration.release()


def _claim_configuration(store, exp, profile, seed, key, tag, log):
    """``(claim, None)`` once this sweep may train ``exp``'s configuration, or ``(None, record)``
    when another sweep trained it meanwhile: while another process holds the configuration (it is
    training a row that is the same run), wait for it and reuse its record; if it dies without
    one, its claim dies with it and this sweep trains."""
    waiting = False
    while True:
        claim, holder = store.claim_configuration(key, profile.name, seed)
        twin = _find_twin(store, exp, profile, seed)
        if twin is not None:
            if claim is not None:
                claim.release()
            return None, twin
        if claim is not None:
            return claim, None
        if not waiting:
            log(f"{tag}: the same run is being trained by another sweep ({holder}); waiting to reuse its result")
            waiting = True
        time.sleep(CONFIGURATION_POLL_S)


def _train_or_reuse(exp, profile, store, seed, force, twin, tag, log, is_main, out, **run_args):
    """Reuse ``twin``'s record, or train ``exp``; store the record: ``(record, path)``."""
    if twin is not None:
        record = reuse_record(twin, exp)
        log(f"{tag}: same run as {record['reused_from'].split('__')[0]} (identical configuration); its result reused")
    else:
        stages = "-".join(map(str, profile.stages_for(exp)))
        log(f"{tag}: training {exp.model} {stages} {exp.method} K={exp.K} on {exp.dataset} ({profile.name} profile)")
        record = run_experiment(exp, profile, seed=seed, out=out, resume=not force, **run_args)
    path = store.write(record) if is_main else store.path(exp.id, profile.name, seed)
    return record, path


def recipe_cost(exp: Experiment, profile: Profile) -> float:
    """What training ``exp`` costs in ``profile``, in images seen: epochs x training images (the
    profile's cap, else the data set's size). The sweep's time left weighs the rows by it."""
    from cbcn.data import dataset_info

    recipe = profile.recipe(exp.dataset)
    images = dataset_info(exp.dataset).train_size
    if recipe.get("max_train_samples"):
        images = min(images, recipe["max_train_samples"])
    return float(recipe["epochs"] * images)


class SweepClock:
    """Elapsed time and a rough time left for the sweep's progress lines: the recipe cost of the
    rows still to come (``recipe_cost``) times the seconds per unit of cost the rows trained so far
    took (stored and skipped ones cost nothing). Counting rows instead said "~2 min left" where a
    paper-profile CIFAR row alone takes hours after a few MNIST rows."""

    def __init__(self, costs: list[float]):
        self.costs, self.total, self.start = list(costs), len(costs), time.time()
        self.ran, self.skips, self.last = 0, 0, time.time()
        self.run_seconds = self.run_cost = 0.0

    def skipped(self) -> None:
        self.skips += 1
        self.last = time.time()

    def finished(self, i: int) -> None:
        """Row ``i`` (1-based) was trained (or failed trying)."""
        now = time.time()
        self.ran += 1
        self.run_seconds += now - self.last
        self.run_cost += self.costs[i - 1]
        self.last = now

    def progress(self, i: int) -> str:
        self.last = time.time()
        elapsed = _clock(time.time() - self.start)
        if not self.ran or self.run_cost <= 0:
            return f"{elapsed} elapsed"
        left = sum(self.costs[i - 1:]) * self.run_seconds / self.run_cost
        return f"{elapsed} elapsed, ~{_clock(left, coarse=True)} left"


def _clock(seconds: float, coarse: bool = False) -> str:
    if coarse:
        return f"{max(1, round(seconds / 60))} min" if seconds >= 60 else f"{max(1, round(seconds))} s"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _find_twin(store: ResultStore, exp: Experiment, profile: Profile, seed: int) -> dict | None:
    """A finished record of another experiment that is the same run as ``exp``."""
    from cbcn.harness.experiments import EXPERIMENTS
    key = exp.config_key(profile.stages_for(exp))
    for other in EXPERIMENTS:
        if other.id == exp.id or not other.runnable or other.config_key(profile.stages_for(other)) != key:
            continue
        state, rec = store.state(other.id, profile.name, seed)
        if state == "finished" and rec.get("reused_from") is None:
            return rec
    return None
