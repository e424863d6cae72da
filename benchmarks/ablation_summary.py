#!/usr/bin/env python
"""The ablations of the reference result in one table: each ablation's runs (``cbcn train`` run
folders under ``reports/paper-mnist/ablations/<ablation>/<row>-seed<N>/``) beside the reference
row they vary, final epoch and last-5-epochs mean over the seeds that finished.

Why both numbers: without the BatchNorm re-estimation a binary LeNet's test error swings by tens
of points from one epoch to the next, so the final epoch alone can mislead; the reference reports
both. Unfinished runs (fewer epochs than their recipe) are counted apart, never averaged in.

    python benchmarks/ablation_summary.py [reports/paper-mnist/ablations] [--markdown]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAST = 5


def _row_id(dataset: str, stages: list[int], method: str) -> str:
    return f"t2-{dataset}-lenet-{'-'.join(map(str, stages))}-{method}"


def runs(folder: Path) -> list[dict]:
    """One dict per run folder: ablation, row id, seed, epochs done of planned, final and last-5 error."""
    out = []
    for history in sorted(folder.glob("*/*/history.json")):
        run = history.parent
        config = json.loads((run / "config.json").read_text())
        curve = json.loads(history.read_text())
        errors = [h["test_error"] for h in curve]
        out.append(dict(ablation=run.parent.name, row=_row_id(config["dataset"], config["stages"], config["method"]),
                        seed=config["seed"], done=len(errors), epochs=config["epochs"],
                        final=errors[-1] if errors else None,
                        last5=statistics.mean(errors[-LAST:]) if len(errors) >= LAST else None))
    return out


def table(folder: Path) -> list[dict]:
    """Per (ablation, row): finished seeds' mean ± std of the final error and the last-5 mean,
    with the reference's and the paper's numbers for that row, and the unfinished runs named."""
    from cbcn.harness.experiments import BY_ID
    from cbcn.harness.reference import load_reference
    reference = load_reference()["rows"]
    groups: dict[tuple, list[dict]] = {}
    for r in runs(folder):
        groups.setdefault((r["ablation"], r["row"]), []).append(r)
    rows = []
    for (ablation, row), rs in sorted(groups.items()):
        done = [r for r in rs if r["done"] >= r["epochs"]]
        finals = [r["final"] for r in done]
        ref = reference.get(row, {})
        exp = BY_ID.get(row)
        rows.append({
            "ablation": ablation, "row": row, "paper %": exp.paper.get("error") if exp else None,
            "reference %": ref.get("error"), "reference last-5 %": ref.get("error_last5"),
            "ablation %": statistics.mean(finals) if finals else None,
            "± std": statistics.stdev(finals) if len(finals) > 1 else None,
            "ablation last-5 %": statistics.mean(r["last5"] for r in done) if done else None,
            "seeds": ", ".join(str(r["seed"]) for r in sorted(done, key=lambda r: r["seed"])) or "none",
            "per seed (final)": ", ".join(f"{r['final']:.2f}" for r in sorted(done, key=lambda r: r["seed"])),
            "unfinished": ", ".join(f"seed {r['seed']} ({r['done']}/{r['epochs']} epochs)"
                                    for r in rs if r["done"] < r["epochs"]),
        })
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", nargs="?", default=str(ROOT / "reports" / "paper-mnist" / "ablations"))
    args = ap.parse_args(argv)
    import pandas as pd

    from cbcn.harness.markdown import markdown_table
    frame = pd.DataFrame(table(Path(args.folder)))
    if frame.empty:
        print(f"no ablation runs under {args.folder}")
        return 1
    shown = frame.map(lambda v: "" if v is None or (isinstance(v, float) and v != v)
                      else f"{v:.2f}" if isinstance(v, float) else str(v))
    shown["row"] = shown["row"].map(lambda r: re.sub(r"^t2-|-lenet", "", r))
    print(markdown_table(shown))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
