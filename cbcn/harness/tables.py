"""The report's tables, built from the results store alone: the paper's Tables 2–5 with the
measured numbers beside the paper's, the claims checked, the inconsistencies, the hardware costs.

Why pandas tables built from per-run records: the store is the only input, so a report can be
rebuilt at any time, from any merged set of shards, without training anything. Every row says
which profile produced its number (a ``smoke`` number is not a reproduction), and a figure that
could not be measured is ``unavailable: <reason>``, never zero. ``cbcn.harness.report`` renders
these tables; ``cbcn.harness.plots`` draws them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cbcn.harness.experiments import BY_ID, CLAIMS, EXPERIMENTS, INCONSISTENCIES, accuracy_of
from cbcn.harness.store import ResultStore, StoreProblem, parse_key
from cbcn.harness.verdicts import COMPARABLE_PROFILE, claim_verdict, is_number, row_verdict

#: metrics shown per table (percent)
TABLE_COLUMNS = {2: ("error",), 3: ("accuracy",), 4: ("accuracy",), 5: ("top1", "top5")}
#: state of a row with no record and no sweep status: ``cbcn status``'s word for it
NOT_RUN = "missing"
#: state of a row with a record (``cbcn status``'s word)
DONE = "done"
#: the report also shows each metric averaged over the last epochs: a single epoch's test error of a
#: binary network can jump by points (issue 14), the trend over a few epochs is steadier
LAST_EPOCHS = 5


@dataclass
class Results:
    """What the store holds, in pandas form."""

    records: list[dict]
    problems: list[StoreProblem]
    statuses: list[dict]
    frame: pd.DataFrame                       # one row per record (experiment, profile, seed)
    summary: pd.DataFrame                     # one row per (experiment, profile): mean over seeds

    @property
    def profiles(self) -> list[str]:
        """Profiles with a record, a status or an unreadable record in the store."""
        names = set(self.frame["profile"]) if len(self.frame) else set()
        names |= {s["profile"] for s in self.statuses}
        for p in self.problems:
            try:
                names.add(parse_key(Path(p.path).name[:-5])[1])
            except ValueError:
                pass
        return sorted(names)


def _hw_value(hw: dict, key: str):
    """A hardware figure, or the string 'unavailable: <reason>'."""
    reason = (hw.get("unavailable") or {}).get(key)
    if reason is not None:
        return f"unavailable: {reason}"
    return hw.get(key)


SPEED_FIELDS = ("device_name", "torch_threads", "latency_b1_ms", "throughput_images_per_s", "packed_backend",
                "packed_latency_b1_ms", "packed_throughput_images_per_s", "float_physical_latency_b1_ms",
                "float_physical_throughput_images_per_s",
                "onebit_speedup_vs_float_physical_batch", "onebit_speedup_vs_float_physical_b1",
                "onebit_speedup_vs_training_batch", "packed_logits_equal", "peak_memory_bytes",
                "energy_per_image_mj", "packed_energy_per_image_mj", "power_w")
HARDWARE_FIELDS = ("learned_parameters", "maps", "physical_channels", "fp32_bytes", "onebit_bytes", "compression",
                   "fp32_checkpoint_bytes", "onebit_checkpoint_bytes",
                   "flops", "bops", "ops", "macs_real") + SPEED_FIELDS


def hardware_row(hw: dict) -> dict:
    """The report's hardware columns from a record's hardware profile (ms, mJ for readability)."""
    model = hw.get("model") if isinstance(hw.get("model"), dict) else {}
    row = {"learned_parameters": model.get("learned_parameters", hw.get("parameters")),
           "maps": model.get("stages_maps"), "physical_channels": model.get("stages_physical_channels")}
    for k in ("fp32_bytes", "onebit_bytes", "compression", "fp32_checkpoint_bytes", "onebit_checkpoint_bytes",
              "flops", "bops", "ops", "macs_real",
              "throughput_images_per_s", "packed_throughput_images_per_s", "peak_memory_bytes", "power_w",
              "device_name", "torch_threads", "packed_backend", "float_physical_throughput_images_per_s",
              "onebit_speedup_vs_float_physical_batch", "onebit_speedup_vs_float_physical_b1",
              "onebit_speedup_vs_training_batch", "packed_logits_equal"):
        row[k] = _hw_value(hw, k)
    for src, dst, factor in (("latency_b1_s", "latency_b1_ms", 1e3), ("packed_latency_b1_s", "packed_latency_b1_ms", 1e3),
                             ("float_physical_latency_b1_s", "float_physical_latency_b1_ms", 1e3),
                             ("energy_per_image_j", "energy_per_image_mj", 1e3),
                             ("packed_energy_per_image_j", "packed_energy_per_image_mj", 1e3)):
        v = _hw_value(hw, src)
        row[dst] = v * factor if isinstance(v, (int, float)) else v
    return row


def last_epochs_metric(curves: list[dict] | None, metric: str, epochs: int = LAST_EPOCHS) -> float | None:
    """``metric`` averaged over the last ``epochs`` epochs of a record's learning curve (percent):
    the test error, its complement for accuracy/top-1, or the top-5 accuracy; None without curves
    (or with fewer epochs than ``epochs``, where the mean would mix in the warm-up)."""
    key, flip = {"error": ("test_error", False), "accuracy": ("test_error", True), "top1": ("test_error", True),
                 "top5": ("test_top5", False)}[metric]
    values = [c.get(key) for c in (curves or [])[-epochs:]]
    if len(values) < epochs or not all(is_number(v) for v in values):
        return None
    mean = sum(values) / epochs
    return 100.0 - mean if flip else mean


def load_results(out: str | os.PathLike) -> Results:
    store = ResultStore(out)
    records, problems = store.scan()
    statuses = store.statuses()
    rows = []
    for r in records:
        exp = BY_ID.get(r["experiment_id"])
        e = r.get("experiment") or {}
        m = r.get("metrics") or {}
        row = {"experiment_id": r["experiment_id"], "table": e.get("table", exp.table if exp else None),
               "row": e.get("row"), "column": e.get("column"), "model": e.get("model"), "method": e.get("method"),
               "K": e.get("K"), "stages": "-".join(map(str, r.get("model_stages") or e.get("stages") or [])),
               "dataset": e.get("dataset"), "profile": r["profile"], "seed": r["seed"],
               "error": m.get("error"), "accuracy": m.get("accuracy"), "top1": m.get("top1"), "top5": m.get("top5"),
               "train_error": m.get("train_error"), "epochs": m.get("epochs"), "n_test": m.get("n_test"),
               "n_train": m.get("n_train"),
               "accuracy_pct": accuracy_of(exp, m) if exp else m.get("accuracy"),
               "reused_from": r.get("reused_from"), "data": (r.get("data") or {}).get("description"),
               "git_revision": (r.get("git") or {}).get("revision"), "finished": r.get("finished"),
               "train_time_s": r.get("train_time_s")}
        for metric in ("error", "accuracy", "top1", "top5"):
            row[f"{metric}_last{LAST_EPOCHS}"] = last_epochs_metric(r.get("curves"), metric)
        row.update(hardware_row(r.get("hardware") or {}))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame(columns=["experiment_id", "profile", "seed", "error", "accuracy", "top1", "top5",
                                      "accuracy_pct"])
    metric_cols = ["error", "accuracy", "top1", "top5", "accuracy_pct"]
    last_cols = [f"{m}_last{LAST_EPOCHS}" for m in ("error", "accuracy", "top1", "top5")]
    if len(frame):
        g = frame.groupby(["experiment_id", "profile"], sort=False)
        summary = g[metric_cols + last_cols].mean()
        for c in metric_cols + last_cols:
            summary[c + "_std"] = g[c].std()
        summary["seeds"] = g["seed"].count()
        summary = summary.reset_index()
    else:
        summary = pd.DataFrame(columns=["experiment_id", "profile", "seeds"] + metric_cols + last_cols)
    return Results(records, problems, statuses, frame, summary)


def _measured(results: Results, exp_id: str, profile: str) -> dict | None:
    s = results.summary
    hit = s[(s["experiment_id"] == exp_id) & (s["profile"] == profile)]
    return None if hit.empty else hit.iloc[0].to_dict()


def _status_map(results: Results) -> dict[tuple[str, str], str]:
    out = {}
    for s in results.statuses:
        out[(s["experiment_id"], s["profile"])] = f"{s['status']}: {s['reason']}" if s["status"] != "unavailable" \
            else f"unavailable: {s['reason']}"
    for p in results.problems:
        try:
            exp_id, profile, _ = parse_key(Path(p.path).name[:-5])
            out[(exp_id, profile)] = f"unreadable record: {p.error}"
        except ValueError:
            pass
    return out


def table_frame(results: Results, table: int, reference: dict | None = None) -> pd.DataFrame:
    """Paper | reference | this store for one table: a row per (experiment, profile) with a record
    or a status, and one 'missing' row for every experiment without either, so the paper column is
    complete. ``verdict`` judges the measured number against the paper's (``cbcn.harness.verdicts``);
    ``reference`` (``cbcn.harness.reference.load_reference()``) adds the committed reference result
    and its own verdict beside each row it covers."""
    status = _status_map(results)
    profiles = results.profiles
    ref_rows = (reference or {}).get("rows") or {}
    first = TABLE_COLUMNS[table][0]
    rows = []
    for exp in (e for e in EXPERIMENTS if e.table == table):
        pairs = [p for p in profiles if _measured(results, exp.id, p) is not None or (exp.id, p) in status]
        ref = ref_rows.get(exp.id)
        for profile in pairs or [None]:
            m = _measured(results, exp.id, profile) if profile else None
            row = {"id": exp.id, "row": exp.row, "column": exp.column, "profile": profile or "—"}
            for metric in TABLE_COLUMNS[table]:
                paper = exp.paper.get(metric)
                measured = m.get(metric) if m else None
                row[f"paper {metric}"] = paper
                row[f"reference {metric}"] = ref.get(metric) if ref else None
                if metric == first:
                    row["reference std"] = ref.get(f"{metric}_std") if ref else None
                    row["reference verdict"] = row_verdict(
                        COMPARABLE_PROFILE, metric, ref.get(metric), paper, ref.get(f"{metric}_std"),
                        ref["seeds"]) if ref else ""
                row[f"measured {metric}"] = measured if is_number(measured) else None
                row[f"diff {metric}"] = round(measured - paper, 4) if is_number(measured) and paper is not None else None
                last = m.get(f"{metric}_last{LAST_EPOCHS}") if m else None
                row[f"last-{LAST_EPOCHS}-epochs {metric}"] = last if is_number(last) else None
            if m:
                row["seeds"] = int(m["seeds"])
                std = m.get(first + "_std")
                row["std"] = std if is_number(std) else None
                row["verdict"] = row_verdict(profile, first, m.get(first), exp.paper.get(first), row["std"],
                                             row["seeds"])
                row["state"] = DONE
            else:
                row["seeds"], row["std"], row["verdict"] = 0, None, ""
                row["state"] = status.get((exp.id, profile), NOT_RUN) if profile else (
                    f"not runnable: {exp.not_runnable_reason}" if not exp.runnable else NOT_RUN)
            row["quoted"] = f"quoted from {exp.quoted_from}" if exp.quoted else ""
            row["notes"] = exp.notes
            rows.append(row)
    return pd.DataFrame(rows)


def claims_frame(results: Results, reference: dict | None = None) -> pd.DataFrame:
    """Each claim of the paper, whether the paper's own numbers support it, whether the committed
    reference result does (``reference``, as in ``table_frame``), and whether this store's
    measurement does (per profile). The margin is the winner's advantage in percentage points;
    for a claim about the size of a win (``Claim.than``), how much larger that advantage is. The
    verdicts grade the size as well as the sign (``cbcn.harness.verdicts.claim_verdict``)."""
    rows = []
    profiles = results.profiles or [None]
    ref_rows = (reference or {}).get("rows") or {}
    for c in CLAIMS:
        pairs = [(c.better, c.worse)] + ([c.than] if c.than else [])
        sign = -1 if c.metric == "error" else 1

        def margin(values: dict[str, float | None]) -> float | None:
            if not all(is_number(values.get(e)) for pair in pairs for e in pair):
                return None
            wins = [sign * (values[b] - values[w]) for b, w in pairs]
            return round(wins[0] - (wins[1] if c.than else 0.0), 4) + 0.0

        ids = [e for pair in pairs for e in pair]
        paper_margin = margin({e: BY_ID[e].paper.get(c.metric) for e in ids})
        ref_margin = margin({e: (ref_rows.get(e) or {}).get(c.metric) for e in ids})
        for profile in profiles:
            measured = {}
            for e in ids:
                m = _measured(results, e, profile) if profile else None
                measured[e] = m.get(c.metric) if m else None
            value = margin(measured)
            if value is not None:
                verdict = claim_verdict(value, paper_margin)
            else:
                verdict = "not measured: " + ", ".join(
                    f"{e} ({'not runnable' if not BY_ID[e].runnable else 'no result'})"
                    for e in dict.fromkeys(ids) if not is_number(measured[e]))
            rows.append({"table": c.table, "claim": c.text, "metric": c.metric, "profile": profile or "—",
                         "paper margin": paper_margin, "paper": "holds" if paper_margin and paper_margin > 0 else "does NOT hold",
                         "reference margin": ref_margin,
                         "reference": claim_verdict(ref_margin, paper_margin) if ref_margin is not None else "",
                         "measured margin": value, "measured": verdict, "better": c.better, "worse": c.worse})
    return pd.DataFrame(rows)


def inconsistencies_frame(results: Results) -> pd.DataFrame:
    """Each cell of the paper's inconsistencies with our measurement under each profile that has
    one; a cell measured under none gets one row without a profile (it showed ``quick`` there)."""
    rows = []
    for i, inc in enumerate(INCONSISTENCIES, 1):
        for cell in inc.cells:
            exp = BY_ID[cell]
            base = {"#": i, "inconsistency": inc.text, "source": inc.source, "cell": cell, "table": exp.table,
                    "table cell": f"{exp.row} / {exp.column}", "paper accuracy": round(accuracy_of(exp, exp.paper), 4)}
            measured = []
            for profile in results.profiles:
                m = _measured(results, cell, profile)
                acc = m.get("accuracy_pct") if m else None
                if is_number(acc):
                    measured.append({**base, "profile": profile, "measured accuracy": acc})
            rows += measured or [{**base, "profile": "—", "measured accuracy": None}]
    return pd.DataFrame(rows)


def hardware_frame(results: Results) -> pd.DataFrame:
    f = results.frame
    if f.empty:
        return pd.DataFrame(columns=["experiment_id", "profile", "seed", *HARDWARE_FIELDS])
    cols = ["experiment_id", "profile", "seed", "model", "method", "K", "stages", "dataset", "accuracy_pct",
            *HARDWARE_FIELDS]
    return f[[c for c in cols if c in f.columns]].copy()
