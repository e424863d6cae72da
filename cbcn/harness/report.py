"""Reports: the tables of ``cbcn.harness.tables`` rendered as CSV, Markdown and one
self-contained HTML page, with the plots, rebuilt from the results store alone (``cbcn report``).

Why a renderer apart from the tables: the numbers are decided once, in pandas; Markdown and HTML
only format them (rounded for reading, wide tables split to fit a window, the reasons for
unavailable figures as footnotes), so the two pages can never disagree.
"""
from __future__ import annotations

import base64
import html
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cbcn.fileio import atomic_path, atomic_write_text
from cbcn.harness.experiments import INCONSISTENCIES, TABLE_METRICS, TABLE_TITLES
from cbcn.harness.hardware import CONVENTIONS
from cbcn.harness.markdown import markdown_table
from cbcn.harness.reference import describe as describe_reference
from cbcn.harness.reference import ablations_frame, load_reference
from cbcn.harness.tables import (DONE, SPEED_FIELDS, Results, claims_frame, hardware_frame, inconsistencies_frame,
                                 load_results, table_frame)
from cbcn.harness.verdicts import (CLAIM_KINDS, CLAIM_SIZE_FRACTION, COMPARABLE_PROFILE, ROW_KINDS, SEED_STD_FACTOR,
                                   TOLERANCE_FLOOR, is_number, kind_of)


def footnote_unavailable(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Replace each 'unavailable: <reason>' cell by 'unavailable [n]' and return the reasons, so
    that wide tables stay readable; the reasons are printed below the table."""
    notes: list[str] = []

    def short(v):
        if isinstance(v, str) and v.startswith("unavailable: "):
            reason = v[len("unavailable: "):]
            if reason not in notes:
                notes.append(reason)
            return f"unavailable [{notes.index(reason) + 1}]"
        return v

    return df.apply(lambda col: col.map(short)) if len(df) else df, notes


_COUNT_WORDS = ("bytes", "params", "bops", "macs", "ops", "images")  # columns of counts: whole numbers


def _fmt(v, col: str = "") -> str:
    """One cell for reading: thousands separators on every number from 1,000 (one style in a
    column), counts (bytes, parameters, operations) as whole numbers, signed differences."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if col.startswith("diff") or "margin" in col:
            return f"{v:+.2f}"
        if abs(v) >= 1000 or (v.is_integer() and any(w in col.lower() for w in _COUNT_WORDS)):
            return f"{v:,.0f}"
        if v != 0 and abs(v) < 0.01:
            return f"{v:.3g}"
        return f"{v:.2f}"
    return str(v)


def display(df: pd.DataFrame) -> pd.DataFrame:
    """All cells as strings, numbers rounded for reading; a column with no value in any row is left
    out (in HTML it became a table of its own, e.g. Table 2's blank ``quoted``: the CSV keeps it)."""
    cells = {c: [_fmt(v, str(c)) for v in df[c].tolist()] for c in df.columns}
    return pd.DataFrame({c: v for c, v in cells.items() if any(v) or not len(df)}, index=df.index)


def to_markdown(df: pd.DataFrame) -> str:
    """A report table in Markdown, numbers rounded as in ``display``."""
    return markdown_table(display(df))


HTML_TABLE_WIDTH_PX = 1300  # what fits a 1400-px window beside the page margins
_CHAR_PX, _CELL_PAD_PX = 7.2, 14  # 13-px table text


WRAP_CHARS = 80  # a longer cell (a reason, an error message) wraps in a box this many characters wide


def _column_px(df: pd.DataFrame, col) -> float:
    longest = max([len(str(col))] + [min(len(str(v)), WRAP_CHARS) for v in df[col].tolist()])
    return longest * _CHAR_PX + _CELL_PAD_PX


def split_columns(df: pd.DataFrame, width_px: float = HTML_TABLE_WIDTH_PX) -> list[pd.DataFrame]:
    """``df`` as one or more tables that each fit ``width_px``, every part repeating the first
    (identifying) column, so that no column is cut off at the right of a 1400-px window."""
    if df.shape[1] <= 1:
        return [df]
    key, rest = df.columns[0], list(df.columns[1:])
    parts, current, used = [], [], _column_px(df, key)
    for col in rest:
        w = _column_px(df, col)
        if current and used + w > width_px:
            parts.append(df[[key, *current]])
            current, used = [], _column_px(df, key)
        current.append(col)
        used += w
    parts.append(df[[key, *current]])
    return parts


_VERDICT_KINDS = {**ROW_KINDS, **CLAIM_KINDS}


def _css_class(kind: str) -> str:
    return "v-" + "-".join(kind.lower().split())


def _mark_cell(match) -> str:
    """A verdict cell gets its kind's class; a long text cell wraps instead of widening the table."""
    text = html.unescape(match.group(1))
    kind = kind_of(text, _VERDICT_KINDS)
    if kind:
        return f"<td class='{_css_class(kind)}'>{match.group(1)}"
    return f"<td class='wrap'>{match.group(1)}" if len(text) > WRAP_CHARS else match.group(0)


def to_html_table(df: pd.DataFrame) -> str:
    """HTML tables that fit a 1400-px window (wide ones split by columns, ``split_columns``; a box
    that scrolls if one column alone is wider); verdict cells (reproduced, worse, holds, …) get the
    class of their kind, coloured by the stylesheet and explained by the legend."""
    import re
    shown = display(df)
    out = []
    for part in split_columns(shown):
        table = part.to_html(index=False, escape=True, border=0, classes="t")
        table = re.sub(r"<td>([^<]*)", _mark_cell, table)
        out.append(f"<div class='scroll'>{table}</div>")
    return "\n".join(out)


@dataclass
class ReportFiles:
    markdown: Path
    html: Path
    csv: list[Path] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:110em}table.t{border-collapse:collapse;
font-size:13px;margin:1em 0}table.t th,table.t td{border:1px solid #ccc;padding:2px 6px;text-align:left;
white-space:nowrap}table.t th{background:#eee}div.scroll{overflow-x:auto;max-width:100%}
span.key{display:inline-block;padding:0 .5em;margin-right:.3em;border:1px solid #ccc}
table.t td.wrap{white-space:normal;min-width:30em;max-width:45em}
img{max-width:100%;width:60em;display:block;margin:1em 0}.warn{color:#a00}code{background:#f4f4f4}
.summary{border:1px solid #ccc;background:#fafafa;padding:.5em 1em}details{margin:.4em 0}
summary{cursor:pointer;font-weight:bold}""" + "".join(
    f"td.{_css_class(k)},span.{_css_class(k)}{{background:{c}}}" for k, c in {**ROW_KINDS, **CLAIM_KINDS}.items())


def build_report(out: str | os.PathLike, report_dir: str | os.PathLike | None = None) -> ReportFiles:
    """Write ``report.md``, ``report.html`` (self-contained), CSVs and ``plots/*.png`` under
    ``<out>/report`` from the store at ``<out>``."""
    from cbcn.harness import plots
    out = Path(out)
    rdir = Path(report_dir) if report_dir else out / "report"
    pdir = rdir / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    results = load_results(out)
    files = ReportFiles(rdir / "report.md", rdir / "report.html")

    reference = load_reference()
    tables = {t: table_frame(results, t, reference) for t in TABLE_METRICS}
    claims = claims_frame(results, reference)
    incons = inconsistencies_frame(results)
    hw = hardware_frame(results)
    for t, df in tables.items():
        files.csv.append(_write_csv(df, rdir / f"table{t}.csv"))
    files.csv.append(_write_csv(claims, rdir / "claims.csv"))
    files.csv.append(_write_csv(incons, rdir / "inconsistencies.csv"))
    files.csv.append(_write_csv(hw, rdir / "hardware.csv"))
    files.csv.append(_write_csv(results.frame, rdir / "results.csv"))
    ablations = ablations_frame(reference)
    if len(ablations):
        files.csv.append(_write_csv(ablations, rdir / "reference_ablations.csv"))

    figures = plots.make_all(results, pdir, reference)          # list of plots.Figure
    files.plots = [f.path for f in figures if f.path is not None]

    sections = _sections(results, tables, claims, incons, hw, figures, out, reference)
    _atomic_text(files.markdown, _render_markdown(sections, rdir))
    _atomic_text(files.html, _render_html(sections))
    return files


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    with atomic_path(path, fsync=False) as tmp:
        df.to_csv(tmp, index=False)
    return path


def _atomic_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def _profile_lines(results: Results) -> list[str]:
    from cbcn.training.profiles import PROFILES
    lines = []
    for p in results.profiles:
        d = PROFILES[p].description if p in PROFILES else "unknown profile"
        runs = results.frame[results.frame["profile"] == p] if len(results.frame) else results.frame
        used = ""
        if "n_train" in runs and runs["n_train"].notna().any():  # what the runs actually trained on
            counts = sorted({int(v) for v in runs["n_train"].dropna()})
            tests = sorted({int(v) for v in runs["n_test"].dropna()}) if "n_test" in runs else []
            used = (f"; these runs used {' / '.join(f'{c:,}' for c in counts)} training and "
                    f"{' / '.join(f'{c:,}' for c in tests)} test images")
        lines.append(f"`{p}`: {len(runs)} finished runs — {d}{used}")
    return lines


def _rows_text(ids: list[str], n_rows: int) -> str:
    return "every row" if len(ids) == n_rows else "rows " + ", ".join(f"`{i}`" for i in ids)


def _data_text(description) -> str:
    """A run's data description with its train and test halves said once where they repeat."""
    text = str(description or "unknown data")
    if text.startswith("train: ") and " | test: " in text:
        train, test = text[len("train: "):].split(" | test: ", 1)
        common = train.split(" (")[0].replace(" train", "")
        if test.split(" (")[0].replace(" test", "") == common:
            return f"{train} | test split of the same source ({test.split(';')[0][:120]})"
    return text


def _count(verdicts: pd.Series, kinds: dict[str, str]) -> dict[str, int]:
    """How many verdicts of each kind (in the kinds' order; kinds with none left out)."""
    found = verdicts.map(lambda v: kind_of(v, kinds)).value_counts()
    return {k: int(found[k]) for k in kinds if k in found}


def _counts_text(counts: dict[str, int]) -> str:
    words = {"not measured": "cannot be checked yet"}
    return ", ".join(f"**{n} {k}**" if k.startswith(("worse", "does NOT")) else f"{n} {words.get(k, k)}"
                     for k, n in counts.items())


def _summary_lines(tables, claims, hw: pd.DataFrame | None = None) -> list[str]:
    """The report at a glance: rows measured and not, their verdicts and the reference's, the
    claims graded per profile."""
    rows = pd.concat([df.assign(table=t) for t, df in tables.items()], ignore_index=True)
    measured = rows[rows["state"] == DONE]
    lines = [f"**{measured['id'].nunique()} of {rows['id'].nunique()} table rows measured** "
             f"({len(measured)} row × profile results); "
             + ", ".join(f"Table {t}: {int((df['state'] == DONE).sum())}/{df['id'].nunique()}"
                         for t, df in tables.items())]
    if len(measured):
        lines.append("this store against the paper: " + _counts_text(_count(measured["verdict"], ROW_KINDS))
                     + f" of {len(measured)} row × profile results")
    ref = rows.drop_duplicates("id")
    ref = ref[ref["reference verdict"] != ""]
    if len(ref):
        lines.append("the committed reference result (the paper's recipe) against the paper: "
                     + _counts_text(_count(ref["reference verdict"], ROW_KINDS)) + f" of {len(ref)} rows")
    not_run = rows[rows["state"] != DONE]
    if len(not_run):
        kinds = not_run["state"].str.split(":").str[0].value_counts()
        lines.append("not measured: " + ", ".join(f"{n} {k}" for k, n in kinds.items()))
    for profile, c in claims.groupby("profile", sort=False) if len(claims) else ():
        counts = _count(c["measured"], CLAIM_KINDS)
        if any(k != "not measured" for k in counts):
            lines.append(f"the paper's claims, measured (profile {profile}): " + _counts_text(counts)
                         + ("" if profile == COMPARABLE_PROFILE else
                            " — a shortened recipe: read the signs; the sizes are not comparable with the paper's"))
        for _, row in c[c["measured"].str.startswith("does NOT hold")].iterrows():
            lines.append(f"does NOT hold ({row['profile']}): {row['claim']} — paper margin "
                         f"{_fmt(row['paper margin'], 'margin')}, measured margin {_fmt(row['measured margin'], 'margin')}")
    if len(claims):
        ref_claims = claims.drop_duplicates("claim")
        ref_claims = ref_claims[ref_claims["reference"] != ""]
        if len(ref_claims):
            lines.append("the paper's claims in the reference result: "
                         + _counts_text(_count(ref_claims["reference"], CLAIM_KINDS)))
    return lines + slower_than_float(hw if hw is not None else pd.DataFrame())


def slower_than_float(hw: pd.DataFrame) -> list[str]:
    """One line per (device, 1-bit backend) on which some binary model ran slower than the float
    model of the same physical widths (speed-up < 1 at batch 1 or at the throughput batch), naming
    the models and their speed-ups: on that machine the user should not binarize for speed."""
    need = {"onebit_speedup_vs_float_physical_batch", "onebit_speedup_vs_float_physical_b1", "device_name",
            "packed_backend"}
    if hw.empty or not need <= set(hw.columns):
        return []
    lines = []
    measured = hw[hw["onebit_speedup_vs_float_physical_batch"].map(is_number)
                  | hw["onebit_speedup_vs_float_physical_b1"].map(is_number)]
    for (device, backend), g in measured.groupby(["device_name", "packed_backend"], sort=True):
        slow = [(r["experiment_id"], r["seed"], r["onebit_speedup_vs_float_physical_b1"],
                 r["onebit_speedup_vs_float_physical_batch"]) for _, r in g.iterrows()
                if any(is_number(v) and v < 1 for v in (r["onebit_speedup_vs_float_physical_b1"],
                                                      r["onebit_speedup_vs_float_physical_batch"]))]
        if slow:
            b1 = sum(is_number(v) and v < 1 for _, _, v, _ in slow)
            bt = sum(is_number(v) and v < 1 for _, _, _, v in slow)
            lines.append(
                f"the 1-bit model is slower than float on {device} (backend {backend}) for {len(slow)} of {len(g)} "
                f"binary models ({b1} at batch 1, {bt} at the throughput batch) — speed-up over the float model of "
                f"the same widths at batch 1 / throughput batch: "
                + ", ".join(f"`{e}` seed {s} {_fmt(b)}× / {_fmt(t)}×" for e, s, b, t in slow)
                + "; where it is slower, a float (or int8) model is the faster deployment on this machine")
    return lines


def _legend() -> list[tuple[str, str, str]]:
    """(kind, colour, meaning) of every verdict the tables show."""
    return [
        ("reproduced", ROW_KINDS["reproduced"], f"|measured − paper| ≤ max({TOLERANCE_FLOOR} points, "
                                                f"{SEED_STD_FACTOR:g} × the seeds' std); the tolerance is printed"),
        ("worse", ROW_KINDS["worse"], "further from the paper than the tolerance, in the worse direction"),
        ("better", ROW_KINDS["better"], "further from the paper than the tolerance, in the better direction"),
        ("not comparable", ROW_KINDS["not comparable"], f"a shortened profile: only `{COMPARABLE_PROFILE}` "
                                                        "runs the paper's recipe"),
        ("holds", CLAIM_KINDS["holds"], f"the claim's sign, with at least {100 * CLAIM_SIZE_FRACTION:.0f} % "
                                        "of the paper's margin"),
        ("holds in sign only", CLAIM_KINDS["holds in sign only"],
         f"the right sign, but less than {100 * CLAIM_SIZE_FRACTION:.0f} % of the paper's margin"),
        ("does NOT hold", CLAIM_KINDS["does NOT hold"], "the measured margin has the wrong sign (or is a tie)"),
    ]


def _sections(results: Results, tables, claims, incons, hw, figures, out: Path, reference: dict) -> list[tuple]:
    """The report as (kind, payload) items shared by the Markdown and HTML renderers."""
    S: list[tuple] = [("h1", "cbcn reproduction report — Circulant Binary Convolutional Networks (CVPR 2019)")]
    f = results.frame
    revs = sorted(set(f["git_revision"].dropna())) if "git_revision" in f else []
    devices = sorted(set(f["device_name"].dropna().astype(str))) if "device_name" in f else []
    finished = sorted(str(t) for t in f["finished"].dropna()) if "finished" in f else []
    # no clock time and no absolute path: the same records give the same report, on any machine
    S.append(("p", f"Store: `{out}` — {len(results.records)} finished runs"
                   f"{f', the last finished {finished[-1]}' if finished else ''}. "
                   f"Code revisions: {', '.join(revs) or '—'}. "
                   f"Devices: {', '.join(devices) or '—'}."))
    S.append(("summary", _summary_lines(tables, claims, hw)))
    S.append(("legend", _legend()))
    if results.profiles:
        S.append(("p", "Profiles (every number below names the profile that produced it; only `paper` "
                       "runs the paper's recipes, the others are shortened and not comparable with the paper):"))
        S.append(("ul", _profile_lines(results)))
    else:
        S.append(("p", "The store holds no results yet: the tables show the paper's numbers only. Run "
                       "`cbcn reproduce --profile quick` to measure."))
    if results.problems:
        S.append(("h2", "Unreadable records"))
        S.append(("warn", "These result files could not be read and were skipped (they are left untouched; "
                          "fix or delete them, or rerun those experiments with --repair, which moves them aside):"))
        S.append(("ul", [p.error for p in results.problems]))
    for t, df in tables.items():
        S.append(("h2", TABLE_TITLES[t]))
        S.append(("p", "Paper | reference | this store. `diff` = measured − paper (percentage points); "
                       "`measured` is the final epoch's, averaged over `seeds` runs with their standard deviation "
                       "`std`; `last-5-epochs` averages each run's last 5 epochs first (one epoch of a binary "
                       "network can jump by points); `verdict` judges `measured` against the paper (legend above). "
                       + describe_reference(reference) + ", judged in `reference verdict`. Quoted rows are "
                       "numbers the paper took from other papers."))
        S.append(("table", df.drop(columns=["notes"]), f"table{t}.csv"))
        by_note: dict[str, list[str]] = {}
        for _, r in df.iterrows():
            if r["notes"] and r["id"] not in by_note.setdefault(r["notes"], []):
                by_note[r["notes"]].append(r["id"])
        if by_note:  # each note once, with the rows it concerns
            S.append(("ul", [f"{n} ({_rows_text(ids, len(df['id'].unique()))})" for n, ids in by_note.items()]))
        ablations = ablations_frame(reference)
        if t == 2 and len(ablations):
            S.append(("p", "**Ablations of the reference result**: one decision the paper leaves open, changed, on the "
                           "rows it may move (`reports/paper-mnist/ablations/`; final-epoch error, mean over the "
                           "finished seeds, and the mean of their last 5 epochs; unfinished runs are named, not "
                           "averaged in). `rotation-per-epoch`: each training image gets a new angle every epoch "
                           "instead of one fixed angle; `no-bn-recalibration`: BatchNorm's moving averages at test "
                           "time instead of the re-estimation before each evaluation; `hidden-fc`: a hidden fully "
                           "connected layer before the classifier."))
            S.append(("table", ablations, "reference_ablations.csv"))
    S.append(("h2", "The paper's claims, checked"))
    S.append(("p", "A claim is that one cell beats another (lower error, higher accuracy, top-1 for Table 5). "
                   "`paper margin` is the paper's advantage, `reference margin` the committed reference result's, "
                   "`measured margin` this store's (percentage points); the verdicts grade the size as well as "
                   "the sign (legend above)."))
    measured = claims[~claims["measured"].str.startswith("not measured")] if len(claims) else claims
    if len(measured):
        S.append(("table", measured.drop(columns=["better", "worse"]), "claims.csv"))
        n_open = len(claims) - len(measured)
        if n_open:
            S.append(("p", f"{n_open} further claim checks need results not in the store (listed in `claims.csv`)."))
    else:
        S.append(("p", "No claim can be checked yet (no measured pair in the store); the paper's own numbers "
                       "support all of them:"))
        S.append(("table", claims.drop(columns=["better", "worse", "profile", "measured margin"]), "claims.csv"))
    S.append(("h2", "The paper's inconsistencies"))
    S.append(("p", "Cells that describe the same model but print different numbers (SPEC §6). Where our "
                   "experiments share a configuration they are one run and agree by construction; where "
                   "the configurations differ (e.g. Table 3's S row has no Gaussian gradient) they are "
                   "separate runs. Accuracy in %, Table 2 as 100 − error."))
    S.append(("table", incons.drop(columns=["inconsistency"]), "inconsistencies.csv"))
    S.append(("ol", [inc.text + ("" if inc.source == "SPEC §6" else f" ({inc.source})") for inc in INCONSISTENCIES]))
    S.append(("h2", "Hardware profile of every trained model"))
    S.append(("p", CONVENTIONS + " For cbcn the stage numbers count feature maps of K channels each: "
                   "`physical_channels` is what the hardware sees."))
    hw_short, notes = footnote_unavailable(hw)
    ident = [c for c in ("experiment_id", "profile", "seed", "method", "K", "accuracy_pct") if c in hw_short]
    size = [c for c in ("learned_parameters", "maps", "physical_channels", "fp32_bytes", "onebit_bytes",
                        "compression", "fp32_checkpoint_bytes", "onebit_checkpoint_bytes", "flops", "bops", "ops",
                        "macs_real") if c in hw_short]
    speed = [c for c in SPEED_FIELDS if c in hw_short]
    S.append(("p", "**Size and operations** (per image)"))
    S.append(("table", hw_short[ident + size], "hardware.csv"))
    S.append(("p", "**Speed, memory and energy**: the trained model; its 1-bit version (`packed_*`, on the "
                   "backend named); the float model of the same physical widths (`float_physical_*`); the "
                   "1-bit model's speed-ups over both (ratios of interleaved medians)."))
    S.append(("table", hw_short[ident + speed], "hardware.csv"))
    for line in slower_than_float(hw):
        S.append(("warn", line[0].upper() + line[1:] + "."))
    if notes:
        S.append(("ol", [f"unavailable: {r}" for r in notes]))
    from cbcn.harness.summary import CONVENTIONS as SUMMARY_CONVENTIONS
    from cbcn.harness.summary import record_summaries

    summaries = record_summaries(results.records)
    if summaries:
        S.append(("h2", "Per-layer summary of every trained model"))
        S.append(("p", "Each model's layers (`cbcn summary`, from the hardware profile's counting code; open a "
                       "model to see its table). " + SUMMARY_CONVENTIONS))
        for summary in summaries:
            S.append(("details", summary))
    S.append(("h2", "Plots"))
    for fig in figures:
        if fig.path is not None:
            S.append(("img", fig.title, fig.path, fig.caption))
        else:
            S.append(("p", f"**{fig.title}**: {fig.caption}"))
    S.append(("h2", "Data"))
    if len(f):
        by_data: dict[str, list[str]] = {}
        for r in f.itertuples():
            by_data.setdefault(_data_text(r.data), []).append(f"`{r.experiment_id}` ({r.profile}, seed {r.seed})")
        S.append(("ul", [f"{d} — {len(runs)} run{'s' if len(runs) > 1 else ''}: {', '.join(runs)}"
                         for d, runs in by_data.items()]))
    S.append(("p", "Full records (curves, configs, versions, machine) are in the store's `results/*.json`; "
                   "all runs in one table: `results.csv`."))
    return S


def _render_markdown(sections, rdir: Path) -> str:
    out = []
    for item in sections:
        kind = item[0]
        if kind == "h1":
            out.append(f"# {item[1]}\n")
        elif kind == "h2":
            out.append(f"## {item[1]}\n")
        elif kind == "p":
            out.append(item[1] + "\n")
        elif kind == "warn":
            out.append(f"**{item[1]}**\n")
        elif kind in ("ul", "ol"):
            out.append("\n".join((f"{i}. " if kind == "ol" else "- ") + s for i, s in enumerate(item[1], 1)) + "\n")
        elif kind == "table":
            out.append(to_markdown(item[1]) + f"\n\n(CSV: `{item[2]}`)\n")
        elif kind == "img":
            _, title, path, caption = item
            out.append(f"**{title}**\n\n![{title}]({Path(path).relative_to(rdir).as_posix()})\n\n{caption}\n")
        elif kind == "summary":
            out.append("\n".join(f"> {line}  " for line in item[1]) + "\n")
        elif kind == "legend":
            out.append("Verdicts: " + "; ".join(f"**{k}**: {meaning}" for k, _, meaning in item[1]) + ".\n")
        elif kind == "details":
            summary = item[1]
            out.append(f"<details><summary>{html.escape(summary.title)}</summary>\n\n"
                       + to_markdown(summary.table()) + "\n\n"
                       + "\n".join(f"- {s}" for s in summary.totals_lines()) + "\n\n</details>\n")
    return "\n".join(out)


def _md_inline(s: str) -> str:
    """Escape for HTML, then render `code` and **bold** spans."""
    import re
    s = html.escape(s)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)


def _render_html(sections) -> str:
    body = []
    title = "cbcn report"
    for item in sections:
        kind = item[0]
        if kind == "h1":
            title = item[1]
            body.append(f"<h1>{html.escape(item[1])}</h1>")
        elif kind == "h2":
            body.append(f"<h2>{html.escape(item[1])}</h2>")
        elif kind == "p":
            body.append(f"<p>{_md_inline(item[1])}</p>")
        elif kind == "warn":
            body.append(f"<p class='warn'><b>{_md_inline(item[1])}</b></p>")
        elif kind in ("ul", "ol"):
            tag = kind
            body.append(f"<{tag}>" + "".join(f"<li>{_md_inline(s)}</li>" for s in item[1]) + f"</{tag}>")
        elif kind == "table":
            body.append(to_html_table(item[1]))
        elif kind == "img":
            _, t, path, caption = item
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            body.append(f"<figure><figcaption><b>{html.escape(t)}</b> — {_md_inline(caption)}</figcaption>"
                        f"<img alt='{html.escape(t)}' src='data:image/png;base64,{data}'></figure>")
        elif kind == "summary":
            body.append("<div class='summary'>" + "".join(
                f"<p class='warn'>{_md_inline(x)}</p>" if x.startswith(("does NOT hold", "the 1-bit model is slower"))
                else f"<p>{_md_inline(x)}</p>"
                for x in item[1]) + "</div>")
        elif kind == "legend":
            body.append("<p class='legend'>Verdicts: " + " ".join(
                f"<span class='key {_css_class(k)}'>{html.escape(k)}</span> {_md_inline(meaning)};"
                for k, _, meaning in item[1]) + "</p>")
        elif kind == "details":
            summary = item[1]
            body.append(f"<details><summary>{html.escape(summary.title)}</summary>"
                        + to_html_table(summary.table())
                        + "<ul>" + "".join(f"<li>{_md_inline(s)}</li>" for s in summary.totals_lines()) + "</ul>"
                        + "</details>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
