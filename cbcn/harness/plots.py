"""The report's figures, drawn with matplotlib's Agg canvas (no display, no global backend switch).

- training/test error curves per dataset and backbone, as the paper's Fig. 8–9 (CBCN vs XNOR);
- Table 3: accuracy vs K and vs the ablation switches, paper (dashed) and measured (solid);
- accuracy vs cost: 1-bit model bytes, batch-1 latency, energy per image.

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
         ("latency_b1_ms", "latency at batch 1 (ms)", "log", "latency"),
         ("energy_per_image_mj", "energy per image (mJ)", "log", "energy"))


def cost(results, pdir: Path) -> list[Figure]:
    """Measured accuracy against each cost figure, one point per run (reused runs once)."""
    f = results.frame
    out = []
    for col, xlabel, scale, slug in COSTS:
        title = f"Accuracy vs {xlabel.split(' (')[0].split(':')[0]}"
        if f.empty or col not in f:
            out.append(Figure(title, None, "no measured results in the store yet"))
            continue
        rows = f[f["reused_from"].isna()] if "reused_from" in f else f
        ok = rows[rows[col].map(lambda v: isinstance(v, (int, float)) and v == v)
                  & rows["accuracy_pct"].map(lambda v: isinstance(v, (int, float)) and v == v)]
        if ok.empty:
            reasons = sorted({str(v) for v in rows[col] if isinstance(v, str)})
            out.append(Figure(title, None, "; ".join(reasons) or "no measured values"))
            continue
        fig, ax = _new((9.0, 5.4))
        n = 0
        for i, ((profile, method), g) in enumerate(ok.groupby(["profile", "method"], sort=True)):
            ax.scatter(g[col].astype(float), g["accuracy_pct"].astype(float), color=f"C{i % 10}",
                       label=f"{method} ({profile})", s=28)
            for _, r in g.sort_values(col).iterrows():
                # a short label (stages and data set; the legend says the method), staggered so that
                # neighbours do not print over each other
                label = f"{r['stages']} {r['dataset']}" if r.get("stages") else str(r["experiment_id"])
                ax.annotate(label, (float(r[col]), float(r["accuracy_pct"])), fontsize=7, color=f"C{i % 10}",
                            textcoords="offset points", xytext=(5, (n % 4) * 7 - 10))
                n += 1
        ax.set_xscale(scale)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%) (Table 2: 100 − error; Table 5: top-1)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        out.append(Figure(title, _save(fig, pdir / f"accuracy_vs_{slug}.png"),
                          "one point per trained model; see the hardware table for the conventions"))
    return out


def make_all(results, pdir: Path) -> list[Figure]:
    pdir.mkdir(parents=True, exist_ok=True)
    return curves(results, pdir) + table3(results, pdir) + cost(results, pdir)
