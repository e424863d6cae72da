"""The committed reference result, shipped with the package and shown beside a user's own rows.

Why shipped as a small JSON: a user's quick run (4,000 images, 10 epochs) lands points away from
the paper and says little about whether the paper reproduces; the reference result does (the
paper's recipe on the full MNIST, three seeds, ``reports/paper-mnist/``). A pip-installed cbcn has
no ``reports/`` folder, so ``reference_results.json`` beside this module holds each reference row's
summary, built from the committed store by ``build_reference``; a test checks that the shipped
file is what the committed store gives. Rebuild it after adding runs to that store::

    python -m cbcn.harness.reference reports/paper-mnist/store

It also prints the ablations of the reference (``reports/paper-mnist/ablations/``: one decision
the paper leaves open, changed, on the rows it may move) beside the rows they vary.
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
#: its ablations: ``cbcn train`` run folders ``<ablation>/<row>-seed<N>/`` beside the store
ABLATIONS = "reports/paper-mnist/ablations"
LAST = 5


def _short_cpu(name: str) -> str:
    return " ".join(w for w in str(name).replace("(R)", "").split() if w not in ("Processor", "CPU"))


def build_reference(store_dir: str | Path, label: str = REFERENCE_STORE) -> dict:
    """``{"source", "recipe", "rows": {experiment id: {metric, metric_std, seeds, metric_last5,
    machines, dates, revisions}}, "ablations": [...]}`` from the ``paper``-profile records of a
    store and the ablation run folders beside it (``ablation_summary``)."""
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
    ablations = Path(store_dir).parent / "ablations"
    return {"source": label, "recipe": f"profile {COMPARABLE_PROFILE} (the paper's recipe, Sec. 4.1)",
            "rows": rows, "ablations": ablation_summary(ablations) if ablations.is_dir() else []}


def _row_id(config: dict) -> str:
    return f"t2-{config['dataset']}-{config['model']}-{'-'.join(map(str, config['stages']))}-{config['method']}"


def ablation_runs(folder: str | Path) -> list[dict]:
    """One dict per ablation run folder: ablation, the reference row it varies, seed, epochs done
    of planned, final test error and the mean of the last ``LAST`` epochs."""
    out = []
    for history in sorted(Path(folder).glob("*/*/history.json")):
        run = history.parent
        config = json.loads((run / "config.json").read_text())
        errors = [h["test_error"] for h in json.loads(history.read_text())]
        out.append(dict(ablation=run.parent.name, row=_row_id(config), seed=config["seed"], done=len(errors),
                        epochs=config["epochs"], final=errors[-1] if errors else None,
                        last5=sum(errors[-LAST:]) / LAST if len(errors) >= LAST else None))
    return out


def ablation_summary(folder: str | Path) -> list[dict]:
    """Per (ablation, row): the finished seeds' final errors, their mean and the mean of their
    last-``LAST`` means; runs still short of their epochs are named, never averaged in."""
    groups: dict[tuple, list[dict]] = {}
    for r in ablation_runs(folder):
        groups.setdefault((r["ablation"], r["row"]), []).append(r)
    rows = []
    for (ablation, row), runs in sorted(groups.items()):
        done = sorted((r for r in runs if r["done"] >= r["epochs"]), key=lambda r: r["seed"])
        finals = [r["final"] for r in done]
        mean = sum(finals) / len(finals) if finals else None
        rows.append(dict(ablation=ablation, row=row, seeds=[r["seed"] for r in done],
                         error=round(mean, 4) if mean is not None else None,
                         error_std=round((sum((f - mean) ** 2 for f in finals) / (len(finals) - 1)) ** 0.5, 4)
                         if len(finals) > 1 else None,
                         error_last5=round(sum(r["last5"] for r in done) / len(done), 4)
                         if done and all(r["last5"] is not None for r in done) else None,
                         per_seed=[round(f, 2) for f in finals],
                         # seeds only (no epoch count): the shipped file changes when a run finishes, not every epoch
                         unfinished=sorted(r["seed"] for r in runs if r["done"] < r["epochs"])))
    return rows


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


def ablations_frame(reference: dict):
    """The ablations as a table for reading: each beside the reference row it varies and the paper."""
    import pandas as pd

    from cbcn.harness.experiments import BY_ID
    rows = []
    for a in reference.get("ablations") or []:
        ref = (reference.get("rows") or {}).get(a["row"], {})
        exp = BY_ID.get(a["row"])
        rows.append({"ablation": a["ablation"], "row": a["row"],
                     "paper %": exp.paper.get("error") if exp else None,
                     "reference %": ref.get("error"), "reference last-5 %": ref.get("error_last5"),
                     "ablation %": a["error"], "ablation std": a["error_std"],
                     "ablation last-5 %": a["error_last5"],
                     "seeds": ", ".join(map(str, a["seeds"])) or "none finished",
                     "per seed": ", ".join(f"{v:.2f}" for v in a["per_seed"]),
                     "unfinished seeds": ", ".join(map(str, a["unfinished"]))})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0], "results").is_dir():
        print("usage: python -m cbcn.harness.reference STORE (a results store with a results/ folder)",
              file=sys.stderr)
        return 2
    text = json.dumps(build_reference(argv[0]), indent=1, sort_keys=True) + "\n"
    atomic_write_text(REFERENCE_FILE, text)
    reference = json.loads(text)
    print(f"wrote {REFERENCE_FILE} ({len(reference['rows'])} rows, {len(reference['ablations'])} ablation rows)")
    from cbcn.harness.markdown import markdown_table
    if reference["ablations"]:
        frame = ablations_frame(reference)
        print(markdown_table(frame.map(lambda v: "" if v is None or v != v else f"{v:.2f}" if isinstance(v, float)
                                       else str(v))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
