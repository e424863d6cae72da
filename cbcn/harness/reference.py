"""The committed reference result, shipped with the package and shown beside a user's own rows.

Why shipped as a small JSON: a user's quick run (4,000 images, 10 epochs) lands points away from
the paper and says little about whether the paper reproduces; the reference result does (the
paper's recipe on the full MNIST, three seeds, ``reports/paper-mnist/``). A pip-installed cbcn has
no ``reports/`` folder, so ``reference_results.json`` beside this module holds each reference row's
summary, built from the committed store by ``build_reference``; a test checks that the shipped
file is what the committed store gives. Rebuild it after adding runs to that store::

    python -m cbcn.harness.reference reports/paper-mnist/store
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from cbcn.fileio import atomic_write_text
from cbcn.harness.verdicts import COMPARABLE_PROFILE

REFERENCE_FILE = Path(__file__).with_name("reference_results.json")
#: where the reference store lives in the repository (what the shipped file is built from)
REFERENCE_STORE = "reports/paper-mnist/store"


def _short_cpu(name: str) -> str:
    return " ".join(w for w in str(name).replace("(R)", "").split() if w not in ("Processor", "CPU"))


def build_reference(store_dir: str | Path, label: str = REFERENCE_STORE) -> dict:
    """``{"source", "recipe", "rows": {experiment id: {metric, metric_std, seeds, metric_last5,
    machines, dates, revisions}}}`` from the ``paper``-profile records of a store."""
    from cbcn.harness.tables import LAST_EPOCHS, TABLE_COLUMNS, load_results
    results = load_results(store_dir)
    f = results.frame[results.frame["profile"] == COMPARABLE_PROFILE]
    rows = {}
    for exp_id, runs in f.groupby("experiment_id", sort=True):
        table = int(runs["table"].iloc[0])
        row: dict = {"seeds": int(len(runs))}
        for metric in TABLE_COLUMNS[table]:
            values = runs[metric].astype(float)
            last = runs[f"{metric}_last{LAST_EPOCHS}"].astype(float)
            row[metric] = round(float(values.mean()), 4)
            row[f"{metric}_std"] = round(float(values.std()), 4) if len(values) > 1 else None
            row[f"{metric}_last{LAST_EPOCHS}"] = round(float(last.mean()), 4) if last.notna().all() else None
        recs = [r for r in results.records if r["experiment_id"] == exp_id and r["profile"] == COMPARABLE_PROFILE]
        row["machines"] = sorted({_short_cpu((r.get("machine") or {}).get("cpu", "unknown CPU")) for r in recs})
        row["dates"] = sorted({str(r.get("finished", ""))[:10] for r in recs})
        row["revisions"] = sorted({str((r.get("git") or {}).get("revision", ""))[:7] for r in recs})
        row["n_train"] = sorted({int(n) for n in runs["n_train"].dropna()})
        rows[exp_id] = row
    return {"source": label, "recipe": f"profile {COMPARABLE_PROFILE} (the paper's recipe, Sec. 4.1)",
            "rows": rows}


def load_reference() -> dict:
    """The shipped reference (``{"rows": {}}`` if the file is missing from a broken install)."""
    try:
        return json.loads(REFERENCE_FILE.read_text())
    except (OSError, ValueError):
        return {"source": None, "recipe": None, "rows": {}}


def describe(reference: dict) -> str:
    """One line naming the reference's recipe, data size, seeds, machines and dates."""
    rows = reference.get("rows") or {}
    if not rows:
        return "no reference result is shipped with this installation"
    machines = sorted({m for r in rows.values() for m in r["machines"]})
    dates = sorted({d for r in rows.values() for d in r["dates"]})
    n_train = sorted({n for r in rows.values() for n in r.get("n_train", [])})
    seeds = sorted({r["seeds"] for r in rows.values()})
    return (f"`reference` is the committed result in `{reference['source']}`: {reference['recipe']}, "
            f"{' / '.join(f'{n:,}' for n in n_train)} training images, {' or '.join(map(str, seeds))} seeds per row, "
            f"trained on {', '.join(machines)} (one thread per run), finished {dates[0]}"
            + (f" to {dates[-1]}" if dates[-1] != dates[0] else "") + f"; {len(rows)} rows")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0], "results").is_dir():
        print("usage: python -m cbcn.harness.reference STORE (a results store with a results/ folder)",
              file=sys.stderr)
        return 2
    text = json.dumps(build_reference(argv[0]), indent=1, sort_keys=True) + "\n"
    atomic_write_text(REFERENCE_FILE, text)
    print(f"wrote {REFERENCE_FILE} ({len(json.loads(text)['rows'])} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
