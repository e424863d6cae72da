"""The report's figures, drawn with matplotlib's Agg canvas (no display, no global backend switch).

- training/test error curves per dataset and backbone, as the paper's Fig. 8–9 (CBCN vs XNOR);
- Table 3: accuracy vs K and vs the ablation switches, paper (dashed) and measured (solid);
- paper against measured per table, with seed error bars and the committed reference result;
- accuracy vs cost: 1-bit model bytes, the deployed model's batch-1 latency beside the float model
  of the same widths, energy per image.

A figure with nothing to draw is returned with ``path=None`` and the reason as its caption, so
that the report says why it is missing (e.g. energy unavailable on a CPU) instead of showing an
empty frame.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cbcn.fileio import atomic_path
from cbcn.harness.experiments import BY_ID
from cbcn.harness.verdicts import is_number

T3_COLUMNS = ("ConvComp", "S", "S+C", "S+G", "S+C+G")
T3_ROWS = (("XNOR", 1, "t3-xnor"), ("CBCN K=2", 2, "t3-cbcn-k2"), ("CBCN K=4", 4, "t3-cbcn-k4"),
           ("CBCN K=8", 8, "t3-cbcn-k8"))


@dataclass
class Figure:
    title: str
    path: Path | None
    caption: str


def _new(figsize=(7.0, 4.2)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure
    fig = MplFigure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path, fsync=False) as tmp:  # a unique temporary name: concurrent reports cannot collide
        fig.savefig(tmp, format="png")
    return path


def _slug(s: str) -> str:
    return re.sub(r"[^a-zA-Z0-9.+-]+", "_", s).strip("_")


def _label(exp_id: str) -> str:
    e = BY_ID.get(exp_id)
    if e is None:
        return exp_id
    return f"{e.row} {e.column}" if e.table == 3 else (f"{e.column} (T{e.table})")


def curves(results, pdir: Path) -> list[Figure]:
    """Train (dashed) and test (solid) error per epoch, one figure per profile/dataset/backbone."""
    groups: dict[tuple, list[dict]] = {}
    for r in results.records:
        if r.get("reused_from") or not r.get("curves"):
            continue
        e = r.get("experiment") or {}
        stages = "-".join(map(str, r.get("model_stages") or e.get("stages") or []))
        groups.setdefault((r["profile"], e.get("dataset"), e.get("model"), stages), []).append(r)
    figs = []
    for (profile, dataset, model, stages), recs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        fig, ax = _new()
        for i, r in enumerate(sorted(recs, key=lambda r: (r["experiment_id"], r["seed"]))[:12]):
            color = f"C{i % 10}"
            h = r["curves"]
            ep = [row["epoch"] for row in h]
            label = _label(r["experiment_id"]) + (f" s{r['seed']}" if r["seed"] else "")
            ax.plot(ep, [row.get("test_error") for row in h], "-o", color=color, ms=3, label=f"{label} test")
            ax.plot(ep, [row.get("train_error") for row in h], "--", color=color, alpha=0.7, label=f"{label} train")
        ax.set_xlabel("epoch")
        ax.set_ylabel("error (%)")
        ax.set_title(f"{dataset} {model} {stages} — {profile} profile")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        path = _save(fig, pdir / f"curves_{_slug(profile)}_{_slug(str(dataset))}_{_slug(str(model))}_{_slug(stages)}.png")
        figs.append(Figure(f"Error curves: {dataset} {model} {stages} ({profile})", path,
                           "training (dashed) and test (solid) error per epoch, as the paper's Fig. 8–9"))
    if not figs:
        figs.append(Figure("Error curves", None, "no finished runs with training curves in the store yet"))
    return figs


def _t3_value(results, exp_id: str, profile: str):
    s = results.summary
    hit = s[(s["experiment_id"] == exp_id) & (s["profile"] == profile)]
    return None if hit.empty else float(hit.iloc[0]["accuracy"])


def _slug_col(c: str) -> str:
    return "convcomp" if c == "ConvComp" else c.lower().replace("+", "")


def table3(results, pdir: Path) -> list[Figure]:
    """Accuracy vs K per ablation column, and vs ablation column per model (paper dashed)."""
    profiles = [p for p in results.profiles
                if len(results.summary) and any(results.summary[(results.summary["profile"] == p)]["experiment_id"].str.startswith("t3-"))]
    out = []
    # vs K
    fig, ax = _new()
    ks = [k for _, k, _ in T3_ROWS]
    for i, col in enumerate(T3_COLUMNS):
        paper = [BY_ID[f"{pre}-{_slug_col(col)}"].paper["accuracy"] for _, _, pre in T3_ROWS]
        ax.plot(ks, paper, "--o", color=f"C{i}", mfc="none", label=f"{col} paper")
        for p in profiles:
            meas = [_t3_value(results, f"{pre}-{_slug_col(col)}", p) for _, _, pre in T3_ROWS]
            pts = [(k, v) for k, v in zip(ks, meas) if v is not None]
            if pts:
                ax.plot(*zip(*pts), "-s", color=f"C{i}", label=f"{col} measured ({p})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, ["XNOR\n(K=1)", "2", "4", "8"])
    ax.set_xlabel("orientations K")
    ax.set_ylabel("CIFAR10 accuracy (%)")
    ax.set_title("Table 3: accuracy vs K")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    out.append(Figure("Table 3: accuracy vs K", _save(fig, pdir / "table3_accuracy_vs_K.png"),
                      "paper (dashed, hollow) and measured (solid) per ablation column"
                      + ("" if profiles else "; no Table 3 measurements in the store yet")))
    # vs ablation
    fig, ax = _new()
    x = list(range(len(T3_COLUMNS)))
    for i, (label, _, pre) in enumerate(T3_ROWS):
        ax.plot(x, [BY_ID[f"{pre}-{_slug_col(c)}"].paper["accuracy"] for c in T3_COLUMNS], "--o", color=f"C{i}",
                mfc="none", label=f"{label} paper")
        for p in profiles:
            pts = [(j, _t3_value(results, f"{pre}-{_slug_col(c)}", p)) for j, c in enumerate(T3_COLUMNS)]
            pts = [(j, v) for j, v in pts if v is not None]
            if pts:
                ax.plot(*zip(*pts), "-s", color=f"C{i}", label=f"{label} measured ({p})")
    ax.set_xticks(x, list(T3_COLUMNS))
    ax.set_xlabel("ablation (ConvComp: CBConv vs BConv; S: shortcuts; C: center loss; G: Gaussian gradient)")
    ax.set_ylabel("CIFAR10 accuracy (%)")
    ax.set_title("Table 3: accuracy vs ablation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    out.append(Figure("Table 3: accuracy vs ablation", _save(fig, pdir / "table3_accuracy_vs_ablation.png"),
                      "paper (dashed, hollow) and measured (solid) per model"
                      + ("" if profiles else "; no Table 3 measurements in the store yet")))
    return out


COSTS = (("onebit_bytes", "deployed model size (bytes): binary models packed to 1 bit, float models in fp32",
          "log", "bytes"),
         ("deployed_latency_b1_ms", "latency at batch 1 (ms) of the deployed model (hollow: float, same widths)",
          "log", "latency"),
         ("energy_per_image_mj", "energy per image (mJ)", "log", "energy"))


def _deployed_latency(row) -> float | str | None:
    """What a user deploys: a binary model's packed 1-bit forward, a float model's own forward;
    for a binary model without a packed forward, the reason (the float-simulated training model's
    latency is not what deployment costs)."""
    if row.get("method") == "fp":
        return row.get("latency_b1_ms")
    return row.get("packed_latency_b1_ms")


def place_labels(ax, points: list[tuple[float, float, str, str]], fontsize: int = 7) -> list:
    """Annotate each ``(x, y, text, colour)`` at the first of a ring of offsets whose box overlaps
    no label placed before it and no point (greedy, in display pixels), so that neighbouring
    labels do not print over each other; returns the text artists."""
    fig = ax.figure
    fig.canvas.draw()  # fixes the axes' transforms (log scales, limits) before measuring
    renderer = fig.canvas.get_renderer()
    marks = [ax.transData.transform((x, y)) for x, y, _, _ in points]
    placed, texts = [], []
    offsets = [(dx * r, dy * r) for r in (6, 14, 24, 36) for dx, dy in
               ((1, 0.3), (1, -1), (-1, 0.3), (-1, -1), (0, 1.2), (0, -1.6), (1, 1.2), (-1, 1.2))]
    for x, y, text, colour in points:
        for dx, dy in offsets:
            t = ax.annotate(text, (x, y), fontsize=fontsize, color=colour, textcoords="offset points",
                            xytext=(dx, dy), ha="left" if dx >= 0 else "right")
            box = t.get_window_extent(renderer).expanded(1.05, 1.15)
            if not any(box.overlaps(b) for b in placed) and not any(box.contains(*m) for m in marks):
                break
            t.remove()
        else:  # no free place: the last try stays (an overlap beats a missing label)
            t = ax.annotate(text, (x, y), fontsize=fontsize, color=colour, textcoords="offset points",
                            xytext=offsets[-1])
            box = t.get_window_extent(renderer)
        placed.append(box)
        texts.append(t)
    return texts


def cost(results, pdir: Path) -> list[Figure]:
    """Measured accuracy against each cost figure, one point per run (reused runs once)."""
    f = results.frame
    if not f.empty:
        f = f.assign(deployed_latency_b1_ms=[_deployed_latency(r) for r in f.to_dict("records")])
    out = []
    for col, xlabel, scale, slug in COSTS:
        title = f"Accuracy vs {xlabel.split(' (')[0].split(':')[0]}"
        if f.empty or col not in f:
            out.append(Figure(title, None, "no measured results in the store yet"))
            continue
        rows = f[f["reused_from"].isna()] if "reused_from" in f else f
        ok = rows[rows[col].map(is_number) & rows["accuracy_pct"].map(is_number)]
        if ok.empty:
            reasons = sorted({str(v) for v in rows[col] if isinstance(v, str)})
            out.append(Figure(title, None, "; ".join(reasons) or "no measured values"))
            continue
        fig, ax = _new((9.0, 5.4))
        labels = []
        twins = col == "deployed_latency_b1_ms" and "float_physical_latency_b1_ms" in ok
        for i, ((profile, method), g) in enumerate(ok.groupby(["profile", "method"], sort=True)):
            colour = f"C{i % 10}"
            ax.scatter(g[col].astype(float), g["accuracy_pct"].astype(float), color=colour,
                       label=f"{method} ({profile})", s=28, zorder=3)
            for _, r in g.sort_values(col).iterrows():
                x, y = float(r[col]), float(r["accuracy_pct"])
                twin = r.get("float_physical_latency_b1_ms") if twins and method != "fp" else None
                if is_number(twin):  # the float model of the same widths, joined to its 1-bit model
                    ax.scatter([twin], [y], facecolors="none", edgecolors=colour, s=28, zorder=3)
                    ax.plot([twin, x], [y, y], color=colour, lw=0.8, alpha=0.6)
                # a short label (stages and data set; the legend says the method)
                labels.append((x, y, f"{r['stages']} {r['dataset']}" if r.get("stages") else str(r["experiment_id"]),
                               colour))
        ax.set_xscale(scale)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%) (Table 2: 100 − error; Table 5: top-1)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        place_labels(ax, labels)
        caption = "one point per trained model; see the hardware table for the conventions"
        if twins:
            backends = sorted({str(b) for b in ok["packed_backend"] if isinstance(b, str) and
                               not b.startswith("unavailable")}) if "packed_backend" in ok else []
            devices = sorted({str(d) for d in ok.get("device_name", []) if isinstance(d, str)})
            caption = (f"filled: the deployed model (binary models as packed 1-bit forwards on "
                       f"{', '.join(backends) or 'no packed backend'}; float models as trained); hollow, joined by a "
                       f"line: the float model of the same physical widths, measured beside it. A filled point right "
                       f"of its hollow twin is a 1-bit model slower than float on {', '.join(devices) or 'this machine'}. "
                       f"Binary models without a packed forward are left out (their float-simulated training "
                       f"model's latency is not what deployment costs)")
        out.append(Figure(title, _save(fig, pdir / f"accuracy_vs_{slug}.png"), caption))
    return out


def paper_vs_measured(results, reference: dict | None, pdir: Path) -> list[Figure]:
    """One dot plot per table: the paper's number (x) against ours (y), with the seeds' standard
    deviation as error bars, the committed reference result hollow; the diagonal is "reproduced",
    the band around it the verdicts' smallest tolerance (``cbcn.harness.verdicts``)."""
    from cbcn.harness.tables import TABLE_COLUMNS
    from cbcn.harness.verdicts import TOLERANCE_FLOOR
    s = results.summary
    ref_rows = (reference or {}).get("rows") or {}
    out = []
    for table, metrics in TABLE_COLUMNS.items():
        metric = metrics[0]
        exps = [e for e in BY_ID.values() if e.table == table and e.paper.get(metric) is not None]
        mine = s[s["experiment_id"].isin([e.id for e in exps])] if len(s) else s
        refs = [(e, ref_rows[e.id]) for e in exps if e.id in ref_rows]
        if mine.empty and not refs:
            continue
        fig, ax = _new((7.0, 6.0))
        values = [e.paper[metric] for e in exps if e.id in ref_rows or e.id in set(mine["experiment_id"])]
        labels = []
        for i, (profile, g) in enumerate(mine.groupby("profile", sort=True) if len(mine) else ()):
            xs = [BY_ID[x].paper[metric] for x in g["experiment_id"]]
            std = g[f"{metric}_std"].fillna(0.0).astype(float) if f"{metric}_std" in g else None
            ax.errorbar(xs, g[metric].astype(float), yerr=std, fmt="o", color=f"C{i}", ms=5, capsize=3,
                        label=f"this store ({profile})", zorder=3)
            values += g[metric].astype(float).tolist()
            labels += [(x, float(v), f"{BY_ID[e].row.split(' ')[-1]} {BY_ID[e].column}", f"C{i}")
                       for x, v, e in zip(xs, g[metric], g["experiment_id"])]
        if refs:
            ax.errorbar([e.paper[metric] for e, _ in refs], [r[metric] for _, r in refs],
                        yerr=[r.get(f"{metric}_std") or 0.0 for _, r in refs], fmt="D", mfc="none", color="k",
                        ms=6, capsize=3, label=f"reference ({reference.get('source')})", zorder=2)
            values += [r[metric] for _, r in refs]
            if mine.empty:
                labels += [(e.paper[metric], r[metric], f"{e.row.split(' ')[-1]} {e.column}", "k") for e, r in refs]
        lo, hi = min(values), max(values)
        pad = 0.05 * (hi - lo or 1.0)
        line = [lo - pad, hi + pad]
        ax.plot(line, line, color="grey", lw=1, label="measured = paper")
        ax.fill_between(line, [v - TOLERANCE_FLOOR for v in line], [v + TOLERANCE_FLOOR for v in line],
                        color="grey", alpha=0.15, label=f"±{TOLERANCE_FLOOR} points")
        ax.set_xlabel(f"paper {metric} (%)")
        ax.set_ylabel(f"measured {metric} (%)")
        ax.set_title(f"Table {table}: paper against measured {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        place_labels(ax, labels)
        worse = "above" if metric == "error" else "below"
        out.append(Figure(f"Table {table}: paper against measured", _save(fig, pdir / f"table{table}_paper_vs_measured.png"),
                          f"one dot per row; error bars: the standard deviation over seeds; hollow diamonds: the "
                          f"committed reference result (the paper's recipe); a dot {worse} the diagonal is worse than "
                          f"the paper; the grey band is the verdicts' smallest tolerance (±{TOLERANCE_FLOOR} points)"))
    return out


def make_all(results, pdir: Path, reference: dict | None = None) -> list[Figure]:
    pdir.mkdir(parents=True, exist_ok=True)
    return (paper_vs_measured(results, reference, pdir) + curves(results, pdir) + table3(results, pdir)
            + cost(results, pdir))
