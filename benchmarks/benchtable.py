"""Saved pytest-benchmark JSON -> a pandas table (CSV + Markdown) and a plot.

    python benchmarks/benchtable.py benchmarks/results/cpu-2025-11-26.json [more.json ...] --out reports/benchmarks

Reads the files written by ``--benchmark-json`` or ``--benchmark-save``/``--benchmark-autosave``
(the same format) and needs nothing else: each benchmark's ``extra_info`` (filled by
``benchmarks/conftest.py``) says what it timed — suite, shape, method, K, device, path (reference
or kernel), and FLOPs or items for a throughput. Within a group, ``x baseline`` is the median
over the median of the row marked ``baseline`` (else the group's fastest), so that numbers
from a noisy machine are read as ratios measured side by side. With several files, a second table
sets each benchmark's median side by side per run (e.g. before/after a change, CPU/GPU).

Outputs, under ``--out``: ``<name>.csv`` (every column), ``<name>.md`` and ``<name>.png``
(one panel per group: median time, Q1–Q3 whiskers, baseline in a darker colour).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cbcn.harness.markdown import markdown_table  # noqa: E402

STATS = ("min", "q1", "median", "q3", "mean", "stddev", "iqr", "max")  # seconds in the JSON, ms in the table
TABLE_COLUMNS = ["group", "case", "median_ms", "iqr_ms", "min_ms", "rounds", "x_baseline", "throughput", "loadavg_1m"]


def load(paths) -> pd.DataFrame:
    """One row per benchmark per file: run, machine, group, case, extra_info columns, stats in ms."""
    rows = []
    for path in map(Path, paths):
        data = json.loads(path.read_text())
        if "benchmarks" not in data:
            raise ValueError(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' key)")
        machine = data.get("machine_info", {})
        run = {
            "run": path.stem,
            "datetime": data.get("datetime"),
            "commit": (data.get("commit_info") or {}).get("id"),
            "machine": machine.get("node"),
            "cpu": (machine.get("cpu") or {}).get("brand_raw"),
        }
        for b in data["benchmarks"]:
            stats = b.get("stats") or {}
            extra = b.get("extra_info") or {}
            row = {**run, "group": b.get("group"), "name": b.get("name"), "fullname": b.get("fullname"),
                   "param": b.get("param"), **{k: _cell(v) for k, v in extra.items()}}
            row.update({f"{s}_ms": stats[s] * 1e3 for s in STATS if s in stats})
            row["rounds"] = stats.get("rounds")
            row["case"] = case_label(extra, b.get("param") or b.get("name"))
            rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    order = {key: i for i, key in enumerate(dict.fromkeys(zip(df["run"], df["group"])))}
    df = df.iloc[sorted(range(len(df)), key=lambda i: order[(df["run"].iat[i], df["group"].iat[i])])]
    return add_ratios(df.reset_index(drop=True))


def _cell(value):
    """extra_info values as table cells (lists such as shapes become ``16x16x3x3``)."""
    if isinstance(value, (list, tuple)):
        return "x".join(map(str, value))
    return value


def case_label(extra: dict, fallback: str) -> str:
    """How a row is told apart inside its group: the method (with K for CBCN) or the path."""
    method, K, path = extra.get("method"), extra.get("K"), extra.get("path")
    if method is not None:
        return f"{method}-K{K}" if method == "cbcn" or (K or 1) > 1 else str(method)
    return str(path) if path is not None else str(fallback)


def add_ratios(df: pd.DataFrame) -> pd.DataFrame:
    """``x_baseline`` (median over the group's baseline median) and ``throughput``."""
    df = df.copy()
    if "baseline" not in df:
        df["baseline"] = False
    df["baseline"] = df["baseline"].fillna(False).astype(bool)

    def reference(g: pd.DataFrame) -> float:
        base = g.loc[g["baseline"], "median_ms"]
        return float(base.iloc[0]) if len(base) else float(g["median_ms"].min())

    refs = df.groupby(["run", "group"], dropna=False)[["baseline", "median_ms"]].apply(reference)
    df["x_baseline"] = [row.median_ms / refs[(row.run, row.group)] for row in df[["run", "group", "median_ms"]].itertuples()]
    df["throughput"] = [_throughput(r) for r in df.to_dict("records")]
    return df


def _throughput(row: dict) -> str:
    """``flops`` -> GFLOP/s; ``items`` -> ``<unit>/s`` (``unit`` from extra_info, default items)."""
    seconds = row.get("median_ms", math.nan) / 1e3
    if not seconds > 0:
        return ""
    flops, items = _number(row.get("flops")), _number(row.get("items"))
    if flops is not None:
        return f"{flops / seconds / 1e9:.3g} GFLOP/s"
    if items is not None:
        rate, prefix = items / seconds, ""
        for scale, p in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if rate >= scale:
                rate, prefix = rate / scale, p
                break
        unit = row.get("unit") if isinstance(row.get("unit"), str) else "items"
        return f"{rate:.3g} {prefix}{unit}/s"
    return ""


def _number(value):
    if value is None or isinstance(value, bool) or (isinstance(value, float) and math.isnan(value)):
        return None
    return value if isinstance(value, (int, float)) else None


def compare_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Median per run side by side (rows: benchmarks present in more than one run), with each
    later run's ratio to the first."""
    runs = list(dict.fromkeys(df["run"]))
    if len(runs) < 2:
        return pd.DataFrame()
    wide = df.pivot_table(index=["group", "case", "fullname"], columns="run", values="median_ms", aggfunc="first")
    wide = wide[runs].dropna(thresh=2).reset_index().drop(columns="fullname")
    for run in runs[1:]:
        wide[f"{run} / {runs[0]}"] = wide[run] / wide[runs[0]]
    return wide.rename(columns={r: f"{r} median_ms" for r in runs})


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def to_markdown(df: pd.DataFrame) -> str:
    """A benchmark table in Markdown, numbers to 3 significant digits."""
    return markdown_table(df, _fmt)


def markdown_report(df: pd.DataFrame) -> str:
    parts = []
    for run, r in df.groupby("run", sort=False):
        first = r.iloc[0]
        parts.append(f"## {run}\n\nmachine {first.get('machine')}, cpu {first.get('cpu')}, "
                     f"{first.get('datetime')}, commit {first.get('commit')}\n")
        context = [c for c in ("device", "size", "torch_threads") if c in r]
        if context:
            parts.append(", ".join(f"{c}: {'/'.join(map(str, r[c].dropna().unique()))}" for c in context) + "\n")
        cols = [c for c in TABLE_COLUMNS if c in r]
        suites = r["suite"].fillna(r["group"]) if "suite" in r else r["group"]
        for suite, part in r.groupby(suites, sort=False):
            part = part.assign(group=[g.removeprefix(f"{suite}: ") for g in part["group"]])
            parts.append(f"### {suite}\n\n{to_markdown(part[cols])}\n")
    wide = compare_runs(df)
    if len(wide):
        parts.append("## Runs side by side (median ms)\n\n" + to_markdown(wide) + "\n")
    return "\n".join(parts)


def plot(df: pd.DataFrame, path: Path, ncols: int = 3) -> Path:
    """One panel per (run, group): median ms per case, whiskers from Q1 to Q3, baseline darker."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = list(df.groupby(["run", "group"], sort=False))
    nrows = max(1, math.ceil(len(panels) / ncols))
    height = max(1.2, 0.28 * max((len(g) for _, g in panels), default=1) + 0.9)
    fig = Figure(figsize=(5.2 * ncols, height * nrows), dpi=90)
    FigureCanvasAgg(fig)
    multi_run = df["run"].nunique() > 1
    for i, ((run, group), g) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        colors = ["#1f4e79" if b else "#7fa7cf" for b in g["baseline"]]
        xerr = None
        if {"q1_ms", "q3_ms"} <= set(g):
            xerr = [(g["median_ms"] - g["q1_ms"]).clip(lower=0), (g["q3_ms"] - g["median_ms"]).clip(lower=0)]
        ax.barh(range(len(g)), g["median_ms"], xerr=xerr, color=colors, ecolor="#444", capsize=2)
        ax.set_yticks(range(len(g)), [str(c) for c in g["case"]], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{run}: {group}" if multi_run else str(group), fontsize=8)
        ax.set_xlabel("median ms", fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def build(paths, out: Path, name: str | None = None) -> dict[str, Path]:
    """Write ``<out>/<name>.csv``, ``.md`` and ``.png``; returns the paths."""
    paths = [Path(p) for p in paths]
    df = load(paths)
    if df.empty:
        raise ValueError("no benchmarks in " + ", ".join(map(str, paths)))
    name = name or (paths[0].stem if len(paths) == 1 else "benchmarks")
    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / f"{name}.csv", "markdown": out / f"{name}.md", "plot": out / f"{name}.png"}
    df.to_csv(files["csv"], index=False)
    files["markdown"].write_text(f"# Benchmarks: {', '.join(p.name for p in paths)}\n\n{markdown_report(df)}")
    plot(df, files["plot"])
    return files


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/benchtable.py", description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+", type=Path, help="pytest-benchmark JSON files")
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks"), help="output folder")
    parser.add_argument("--name", default=None, help="file name stem (default: the JSON's stem, or 'benchmarks')")
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.json if not p.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    try:
        files = build(args.json, args.out, args.name)
    except (ValueError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for kind, path in files.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
