"""Verdicts: whether a measured row reproduces the paper's number, and how much of a claim holds.

Why a tolerance that grows with the seeds' spread: a binary network's final test error moves by
points from one seed to the next (issue 14), so "reproduced" must allow for the run-to-run
noise we measured, and never less than a floor that covers rounding and the paper's own one
run. A row reproduces when ``|measured − paper| ≤ max(TOLERANCE_FLOOR, SEED_STD_FACTOR × std)``,
with ``std`` the standard deviation over its seeds (one seed: the floor alone).

Only the ``paper`` profile runs the paper's recipe; a shortened profile's number is "not
comparable" and gets no verdict. A claim ("A beats B by the paper's margin m") is graded by sign
*and* size: the measured margin as a fraction of the paper's, so that a claim whose gap shrank
from 9.65 to 2.60 points does not read as simply "holds".
"""
from __future__ import annotations

import math

#: smallest tolerance of a row verdict (percentage points)
TOLERANCE_FLOOR = 0.5
#: the tolerance in units of the seeds' standard deviation
SEED_STD_FACTOR = 2.0
#: a claim "holds" when its measured margin is at least this fraction of the paper's; below it,
#: with the right sign, it "holds in sign only"
CLAIM_SIZE_FRACTION = 0.5
#: the only profile whose numbers are compared with the paper's
COMPARABLE_PROFILE = "paper"

#: verdict kinds, in the order the summary counts them, with the HTML colour of each
ROW_KINDS = {"reproduced": "#dff0d8", "better": "#d9edf7", "worse": "#fbe3e3", "not comparable": "#f4f4f4"}
CLAIM_KINDS = {"holds": "#dff0d8", "holds in sign only": "#fcf3d9", "does NOT hold": "#fbe3e3",
               "not measured": "#f4f4f4"}


def is_number(v) -> bool:
    """A real number, not None, not a bool and not NaN (pandas puts NaN where a value is missing)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


def tolerance(std: float | None, seeds: int) -> float:
    """``max(TOLERANCE_FLOOR, SEED_STD_FACTOR × std)`` points; the floor alone for one seed."""
    if seeds >= 2 and is_number(std):
        return max(TOLERANCE_FLOOR, SEED_STD_FACTOR * float(std))
    return TOLERANCE_FLOOR


def row_verdict(profile: str, metric: str, measured: float | None, paper: float | None,
                std: float | None = None, seeds: int = 1) -> str:
    """``reproduced (±0.50)``, ``worse by 1.59 (±0.50)``, ``better by 6.81 (±1.26)``,
    ``not comparable (profile quick)``, or ``''`` when nothing was measured or the paper has no
    number. ``metric`` is ``error`` (lower is better) or an accuracy (higher is better)."""
    if not is_number(measured) or not is_number(paper):
        return ""
    if profile != COMPARABLE_PROFILE:
        return f"not comparable (profile {profile})"
    tol = tolerance(std, seeds)
    diff = float(measured) - float(paper)
    if abs(diff) <= tol:
        return f"reproduced (±{tol:.2f})"
    worse = diff > 0 if metric == "error" else diff < 0
    return f"{'worse' if worse else 'better'} by {abs(diff):.2f} (±{tol:.2f})"


def claim_verdict(measured_margin: float | None, paper_margin: float | None) -> str:
    """``holds; margin 135 % of the paper's``, ``holds in sign only; margin 27 % of the paper's``,
    ``does NOT hold``, or ``does NOT hold (tie)``; ``''`` when the margin was not measured. Where the
    paper's own margin is not positive, only the sign is judged."""
    if not is_number(measured_margin):
        return ""
    if measured_margin <= 0:
        return "does NOT hold (tie)" if measured_margin == 0 else "does NOT hold"
    if not is_number(paper_margin) or paper_margin <= 0:
        return "holds"
    fraction = measured_margin / paper_margin
    size = f"margin {100 * fraction:.0f} % of the paper's"
    return f"holds; {size}" if fraction >= CLAIM_SIZE_FRACTION else f"holds in sign only; {size}"


def kind_of(verdict: str, kinds: dict[str, str]) -> str | None:
    """The kind a verdict text starts with (the longest that matches), or None."""
    hits = [k for k in kinds if str(verdict).startswith(k)]
    return max(hits, key=len) if hits else None
