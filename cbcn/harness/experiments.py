"""Every row of the paper's Tables 2–5 as an experiment, in plain data (SPEC §6).

Why data and not scripts: a table row is a configuration (model, method, K, ablation switches,
dataset) plus the number the paper printed. Keeping both in one frozen record lets the runner
train it, the store key it, and the report put the measurement beside the paper's number without
any of them knowing about the others. ``EXPERIMENTS`` is the registry, in table order; ``select``
filters it for the CLI (``cbcn list``, ``cbcn reproduce``).

Decisions where the paper is silent (also in the experiments' ``notes``):

- Table 2 and Table 4 "CBCN" = method ``cbcn`` with its defaults (CBConv, doubled shortcuts,
  Gaussian gradients, no center loss) and K = 4; XNOR and fp use K = 1.
- Table 3's switches: ConvComp = CBConv on (CBCN rows) / off (XNOR row), standard shortcuts,
  activation surrogate ``approx`` for CBCN rows and ``ste`` for the XNOR row, weight surrogate
  ``ste``; S = doubled shortcuts; C = center loss (λ = 0.01); G = Gaussian surrogate for
  activations and weights.
- Table 4's BNN and BWN rows have no kernel stage in the paper: ResNet18 16-16-32-64 is used.
- Table 5 uses ResNet18 64-128-256-512 with the ImageNet stem; all rows but CBCN are numbers the
  paper quotes from other papers (BinaryNet's via ABC-Net [8]). ABC-Net runs as method ``abcnet``
  with M = N = 1 (one weight and one activation base: the setting whose 42.7 / 67.6 the paper quotes).
"""
from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

#: tables reproduced, with the metric their numbers are in
TABLE_METRICS = {2: "error", 3: "accuracy", 4: "accuracy", 5: "accuracy"}
TABLE_TITLES = {
    2: "Table 2 — test error (%) on MNIST / CIFAR10 and their rotated versions, K = 4",
    3: "Table 3 — ablation: CIFAR10 accuracy (%), ResNet18 16-16-32-64",
    4: "Table 4 — CIFAR10 / CIFAR100 accuracy (%), K = 4",
    5: "Table 5 — ImageNet accuracy (%), ResNet18, top-1 / top-5",
}
#: methods the paper compares against that this package does not implement
UNIMPLEMENTED_METHODS: dict[str, str] = {}  # method -> why it cannot run (every method of Tables 2-5 runs now)
CENTER_LOSS_LAMBDA = 0.01


@dataclass(frozen=True)
class Experiment:
    """One cell group of a paper table: what to train and what the paper reports for it.

    ``paper`` maps metric names to the paper's numbers in percent: ``{"error": 3.76}`` for
    Table 2, ``{"accuracy": 90.22}`` for Tables 3–4, ``{"top1": 61.4, "top5": 82.8}`` for Table 5.
    """

    id: str
    table: int
    row: str                      # the paper's row label
    column: str                   # the paper's column label
    model: str                    # lenet | resnet18 | wrn22 | wrn40
    method: str                   # fp | bnn | bwn | xnor | bireal | cbcn | abcnet
    K: int
    stages: tuple[int, ...]
    dataset: str
    paper: dict
    stem: str = "cifar"
    switches: dict = field(default_factory=dict)   # build_model switches: cbconv, shortcut, surrogates
    center_loss: float | None = None               # λ of the center loss, None = off
    quoted: bool = False                           # the paper quotes the number from another paper
    quoted_from: str = ""
    notes: str = ""

    @property
    def metric(self) -> str:
        return TABLE_METRICS[self.table]

    @property
    def stage_label(self) -> str:
        return "-".join(str(s) for s in self.stages)

    @property
    def runnable(self) -> bool:
        return self.method not in UNIMPLEMENTED_METHODS

    @property
    def not_runnable_reason(self) -> str | None:
        if self.runnable:
            return None
        return (f"{UNIMPLEMENTED_METHODS[self.method]}; the paper's number is "
                f"{'quoted from ' + self.quoted_from if self.quoted else 'shown'} without a measurement")

    def config_key(self, stages: tuple[int, ...] | None = None) -> tuple:
        """What determines the trained model: experiments with equal keys are the same run
        (e.g. Table 2's CBCN 16-16-32-64 on CIFAR10 and Table 3's K=4 S+G). The method's
        defaults are resolved, so explicit switches equal to them do not make a new run."""
        spec: object = (self.method, tuple(sorted(self.switches.items())))
        if self.runnable:
            from cbcn.nn.methods import get_method
            spec = get_method(self.method).with_switches(**self.switches)
            spec = (spec.binary_weights, spec.binary_acts, spec.scaled, spec.act_surrogate,
                    spec.weight_surrogate, spec.cbconv, spec.shortcut, spec.bases)
        return (self.model, spec, self.K, tuple(stages or self.stages), self.dataset, self.stem,
                self.center_loss)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stages"] = list(self.stages)
        d["metric"] = self.metric
        d["runnable"] = self.runnable
        return d


def _stages(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split("-"))


# --- Table 2 -------------------------------------------------------------------------------
_T2 = [  # dataset, backbone, stage, fp, XNOR, CBCN, fp-rot, XNOR-rot, CBCN-rot (error %)
    ("mnist", "lenet", "5-10-20-40", 0.91, 3.76, 1.91, 2.77, 17.26, 5.76),
    ("mnist", "lenet", "10-20-40-80", 0.69, 1.50, 1.24, 1.89, 7.77, 4.95),
    ("cifar10", "resnet18", "16-16-32-64", 8.94, 22.88, 10.9, 19.07, 40.75, 19.68),
    ("cifar10", "resnet18", "32-32-64-128", 6.63, 15.55, 8.13, 12.96, 33.69, 16.2),
    ("cifar10", "resnet18", "32-64-128-256", 5.27, 13.43, 8.09, 10.47, 21.93, 15.11),
]
_PRETTY = {"mnist": "MNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100", "imagenet": "ImageNet",
           "lenet": "LeNet", "resnet18": "ResNet18", "wrn22": "WRN22", "wrn40": "WRN40"}
_METHOD_LABEL = {"fp": "fp", "xnor": "XNOR", "cbcn": "CBCN", "bnn": "BNN", "bwn": "BWN",
                 "bireal": "Bi-Real", "abcnet": "ABC-Net"}


def _table2() -> list[Experiment]:
    out = []
    for ds, model, stage, *errs in _T2:
        row = f"{_PRETTY[ds]} {_PRETTY[model]} {stage}"
        for rot, values in ((False, errs[:3]), (True, errs[3:])):
            dataset = f"{ds}-rot" if rot else ds
            for method, err in zip(("fp", "xnor", "cbcn"), values):
                K = 4 if method == "cbcn" else 1
                notes = ("CBCN = method defaults: CBConv, doubled shortcuts, Gaussian gradients, no "
                         "center loss (Table 3's S+G)" if method == "cbcn" else "")
                out.append(Experiment(
                    id=f"t2-{dataset}-{model}-{stage}-{method}", table=2, row=row,
                    column=_METHOD_LABEL[method] + ("-rot" if rot else ""), model=model, method=method,
                    K=K, stages=_stages(stage), dataset=dataset, paper={"error": err}, notes=notes))
    return out


# --- Table 3 -------------------------------------------------------------------------------
_T3_COLUMNS = ("ConvComp", "S", "S+C", "S+G", "S+C+G")
_T3 = [("XNOR", 1, (76.3, 80.53, 80.97, 81.65, 82.32)),
       ("CBCN K=2", 2, (81.84, 85.79, 86.23, 86.67, 87.56)),
       ("CBCN K=4", 4, (84.79, 89.10, 89.6, 90.22, 90.83)),
       ("CBCN K=8", 8, (86.79, 90.80, 91.27, 91.53, 92.02))]


def table3_switches(cbcn: bool, column: str) -> tuple[dict, float | None]:
    """build_model switches and center-loss λ for a Table 3 cell (see module docstring)."""
    parts = set(column.split("+")) - {"ConvComp"}
    gauss = "G" in parts
    switches = {
        "cbconv": cbcn,
        "shortcut": "double" if "S" in parts else "standard",
        "act_surrogate": "gauss" if gauss else ("approx" if cbcn else "ste"),
        "weight_surrogate": "gauss" if gauss else "ste",
    }
    return switches, (CENTER_LOSS_LAMBDA if "C" in parts else None)


def _table3() -> list[Experiment]:
    out = []
    for label, K, values in _T3:
        cbcn = label.startswith("CBCN")
        for column, acc in zip(_T3_COLUMNS, values):
            switches, lam = table3_switches(cbcn, column)
            slug = "convcomp" if column == "ConvComp" else column.lower().replace("+", "")
            out.append(Experiment(
                id=f"t3-{'cbcn-k%d' % K if cbcn else 'xnor'}-{slug}", table=3, row=label, column=column,
                model="resnet18", method="cbcn" if cbcn else "xnor", K=K, stages=(16, 16, 32, 64),
                dataset="cifar10", paper={"accuracy": acc}, switches=switches, center_loss=lam,
                notes="ablation switches: ConvComp = CBConv vs BConv with standard shortcuts; S = doubled "
                      "shortcuts; C = center loss λ=0.01; G = Gaussian gradient (acts and weights); "
                      "without G: activation gradient " + ("approx" if cbcn else "ste") + ", weight gradient ste"))
    return out


# --- Table 4 -------------------------------------------------------------------------------
_T4 = [  # label, model, method, stage, CIFAR10, CIFAR100, notes
    ("BNN", "resnet18", "bnn", "16-16-32-64", 89.85, None,
     "the paper gives no backbone/stage for BNN; ResNet18 16-16-32-64 used here"),
    ("BWN", "resnet18", "bwn", "16-16-32-64", 90.12, None,
     "the paper gives no backbone/stage for BWN; ResNet18 16-16-32-64 used here"),
    ("XNOR (ResNet18)", "resnet18", "xnor", "64-64-128-256", 87.1, 66.08, ""),
    ("XNOR (WRN40)", "wrn40", "xnor", "64-64-128-256", 91.58, 73.18, ""),
    ("ResNet18 (fp)", "resnet18", "fp", "16-16-32-64", 94.84, 75.37,
     "Table 2 gives 91.06 % (error 8.94) for the same fp model on CIFAR10"),
    ("CBCN (ResNet18)", "resnet18", "cbcn", "16-16-32-64", 90.22, 69.97,
     "CBCN = method defaults (S+G); the CIFAR10 number equals Table 3's S+G cell"),
    ("CBCN (ResNet18)", "resnet18", "cbcn", "32-64-128-256", 91.60, 70.07, "CBCN = method defaults (S+G)"),
    ("WRN40 (fp)", "wrn40", "fp", "16-16-32-64", 95.8, 79.41, ""),
    ("WRN22 (fp)", "wrn22", "fp", "16-16-32-64", 90.32, 67.19, ""),
    ("CBCN (WRN40)", "wrn40", "cbcn", "16-16-32-64", 93.42, 74.80, "CBCN = method defaults (S+G)"),
]


def _table4() -> list[Experiment]:
    out = []
    for label, model, method, stage, c10, c100, notes in _T4:
        for ds, acc in (("cifar10", c10), ("cifar100", c100)):
            if acc is None:
                continue
            out.append(Experiment(
                id=f"t4-{ds}-{model}-{stage}-{method}", table=4, row=f"{label} {stage}",
                column=_PRETTY[ds], model=model, method=method, K=4 if method == "cbcn" else 1,
                stages=_stages(stage), dataset=ds, paper={"accuracy": acc}, notes=notes))
    return out


# --- Table 5 -------------------------------------------------------------------------------
_T5 = [  # label, method, top1, top5, quoted_from
    ("Full-Precision", "fp", 69.3, 89.2, "the ResNet18 literature (the paper names no source)"),
    ("XNOR", "xnor", 51.2, 73.2, "XNOR-Net, Rastegari et al. 2016 [10]"),
    ("ABC-Net", "abcnet", 42.7, 67.6, "ABC-Net, Lin et al. 2017 [8]"),
    ("BinaryNet", "bnn", 42.2, 67.1, "ABC-Net, Lin et al. 2017 [8] (BinaryNet on ResNet18)"),
    ("Bi-Real", "bireal", 56.4, 79.5, "Bi-Real Net, Liu et al. 2018 [20]"),
    ("CBCN", "cbcn", 61.4, 82.80, ""),
]


def _table5() -> list[Experiment]:
    return [Experiment(
        id=f"t5-imagenet-resnet18-{method}", table=5, row="ResNet18 64-128-256-512", column=label,
        model="resnet18", method=method, K=4 if method == "cbcn" else 1, stages=(64, 128, 256, 512),
        dataset="imagenet", stem="imagenet", paper={"top1": top1, "top5": top5},
        quoted=bool(src), quoted_from=src,
        notes=("CBCN has the same learned filters as ResNet18 (64-128-256-512 maps), so K=4 times its "
               "physical width" if method == "cbcn" else "")) for label, method, top1, top5, src in _T5]


EXPERIMENTS: tuple[Experiment, ...] = tuple(_table2() + _table3() + _table4() + _table5())
BY_ID: dict[str, Experiment] = {e.id: e for e in EXPERIMENTS}
assert len(BY_ID) == len(EXPERIMENTS), "experiment ids must be unique"


def get_experiment(exp_id: str) -> Experiment:
    try:
        return BY_ID[exp_id]
    except KeyError:
        raise KeyError(f"unknown experiment {exp_id!r}; `cbcn list` shows the ids") from None


def _as_list(v) -> list:
    if v is None:
        return []
    if isinstance(v, (str, int)):
        return [v]
    return list(v)


def select(table: int | Iterable[int] | None = None, row: str | Iterable[str] | None = None,
           dataset: str | Iterable[str] | None = None, method: str | Iterable[str] | None = None,
           experiments: Sequence[Experiment] = EXPERIMENTS) -> list[Experiment]:
    """Experiments matching every given filter (each filter: any of its values), in table order.

    ``row`` values match an experiment id (shell-style patterns allowed, e.g. ``t3-cbcn-k4-*``) or
    the paper's row label (case-insensitive, e.g. ``"CBCN K=4"``). A filter value that matches
    nothing at all is an error, so that a typo does not silently select nothing.
    """
    tables = [int(t) for t in _as_list(table)]
    for t in tables:
        if t not in TABLE_METRICS:
            raise ValueError(f"unknown table {t}; the paper's reproduced tables are {sorted(TABLE_METRICS)}")
    rows, datasets, methods = _as_list(row), _as_list(dataset), _as_list(method)
    known_ds = {e.dataset for e in experiments}
    for d in datasets:
        if d not in known_ds:
            raise ValueError(f"no experiment uses dataset {d!r}; datasets in the tables: {sorted(known_ds)}")
    known_m = {e.method for e in experiments}
    for m in methods:
        if m not in known_m:
            raise ValueError(f"no experiment uses method {m!r}; methods in the tables: {sorted(known_m)}")

    def row_match(e: Experiment, r: str) -> bool:
        return fnmatch.fnmatchcase(e.id, r) or e.row.lower() == r.lower()

    for r in rows:
        if not any(row_match(e, r) for e in experiments):
            raise ValueError(f"no experiment id or row label matches {r!r}; `cbcn list` shows them")
    return [e for e in experiments
            if (not tables or e.table in tables)
            and (not rows or any(row_match(e, r) for r in rows))
            and (not datasets or e.dataset in datasets)
            and (not methods or e.method in methods)]


def paper_value(exp: Experiment, metric: str | None = None) -> float | None:
    """The paper's number for the experiment's main metric (``error``, ``accuracy`` or ``top1``)."""
    metric = metric or ("top1" if exp.table == 5 else exp.metric)
    return exp.paper.get(metric)


# --- the paper's claims and inconsistencies, as data the report checks -----------------------
@dataclass(frozen=True)
class Claim:
    """"``better`` beats ``worse``" on the experiments' main metric (lower error / higher accuracy;
    top-1 for Table 5), as the paper's text or table states it. With ``than = (b2, w2)`` the claim
    is about the size of the win: ``better``'s margin over ``worse`` exceeds ``b2``'s over ``w2``
    (e.g. CBCN gains more over XNOR on rotated data than on the original)."""

    table: int
    text: str
    better: str
    worse: str
    than: tuple[str, str] | None = None

    @property
    def metric(self) -> str:
        return "top1" if self.table == 5 else TABLE_METRICS[self.table]


def _claims() -> list[Claim]:
    out = []
    for ds, model, stage, *_ in _T2:
        for rot in ("", "-rot"):
            d = ds + rot
            out.append(Claim(2, f"CBCN beats XNOR on {_PRETTY[ds]}{rot} {_PRETTY[model]} {stage}",
                             f"t2-{d}-{model}-{stage}-cbcn", f"t2-{d}-{model}-{stage}-xnor"))
            out.append(Claim(2, f"fp beats CBCN on {_PRETTY[ds]}{rot} {_PRETTY[model]} {stage}",
                             f"t2-{d}-{model}-{stage}-fp", f"t2-{d}-{model}-{stage}-cbcn"))
        out.append(Claim(2, f"CBCN gains more over XNOR on {_PRETTY[ds]}-rot than on {_PRETTY[ds]} "
                            f"({_PRETTY[model]} {stage})",
                         f"t2-{ds}-rot-{model}-{stage}-cbcn", f"t2-{ds}-rot-{model}-{stage}-xnor",
                         than=(f"t2-{ds}-{model}-{stage}-cbcn", f"t2-{ds}-{model}-{stage}-xnor")))
    slug = {c: ("convcomp" if c == "ConvComp" else c.lower().replace("+", "")) for c in _T3_COLUMNS}
    for c in _T3_COLUMNS:
        out.append(Claim(3, f"CBCN K=4 beats XNOR ({c})", f"t3-cbcn-k4-{slug[c]}", f"t3-xnor-{slug[c]}"))
    for label, K, _ in _T3:
        r = f"t3-cbcn-k{K}" if label.startswith("CBCN") else "t3-xnor"
        for better, worse, what in (("S", "ConvComp", "doubled shortcuts (S) help"),
                                    ("S+C", "S", "center loss (C) helps"),
                                    ("S+G", "S", "the Gaussian gradient (G) helps"),
                                    ("S+C+G", "S+G", "center loss helps on top of S+G")):
            out.append(Claim(3, f"{label}: {what}", f"{r}-{slug[better]}", f"{r}-{slug[worse]}"))
    for c in _T3_COLUMNS:
        for hi, lo in ((8, 4), (4, 2)):
            out.append(Claim(3, f"more orientations help ({c}): K={hi} beats K={lo}",
                             f"t3-cbcn-k{hi}-{slug[c]}", f"t3-cbcn-k{lo}-{slug[c]}"))
    for ds in ("cifar10", "cifar100"):
        out.append(Claim(4, f"CBCN (WRN40 16-16-32-64) beats XNOR (WRN40 64-64-128-256) on {_PRETTY[ds]}",
                         f"t4-{ds}-wrn40-16-16-32-64-cbcn", f"t4-{ds}-wrn40-64-64-128-256-xnor"))
        out.append(Claim(4, f"CBCN (ResNet18 16-16-32-64) beats XNOR (ResNet18 64-64-128-256) on {_PRETTY[ds]}",
                         f"t4-{ds}-resnet18-16-16-32-64-cbcn", f"t4-{ds}-resnet18-64-64-128-256-xnor"))
    for m in ("bnn", "bwn"):
        out.append(Claim(4, f"CBCN (ResNet18 16-16-32-64) beats {_METHOD_LABEL[m]} on CIFAR10",
                         "t4-cifar10-resnet18-16-16-32-64-cbcn", f"t4-cifar10-resnet18-16-16-32-64-{m}"))
    for m in ("xnor", "abcnet", "bnn", "bireal"):
        out.append(Claim(5, f"CBCN beats {_METHOD_LABEL[m] if m != 'bnn' else 'BinaryNet'} (top-1)",
                         "t5-imagenet-resnet18-cbcn", f"t5-imagenet-resnet18-{m}"))
    return out


CLAIMS: tuple[Claim, ...] = tuple(_claims())


@dataclass(frozen=True)
class Inconsistency:
    """Cells of the paper that describe the same model but print different numbers (SPEC §6).
    ``cells`` are experiment ids; all are compared as accuracy (Table 2's error as 100 − error)."""

    text: str
    cells: tuple[str, ...]
    source: str = "SPEC §6"


INCONSISTENCIES: tuple[Inconsistency, ...] = (
    Inconsistency("fp ResNet18 16-16-32-64 on CIFAR10: Table 2 gives error 8.94 % (accuracy 91.06 %), "
                  "Table 4 gives 94.84 % for the same model",
                  ("t2-cifar10-resnet18-16-16-32-64-fp", "t4-cifar10-resnet18-16-16-32-64-fp")),
    Inconsistency("CBCN ResNet18 16-16-32-64 on CIFAR10: Table 4's 90.22 % equals Table 3's S+G cell "
                  "(without center loss), not the full S+C+G 90.83 %",
                  ("t4-cifar10-resnet18-16-16-32-64-cbcn", "t3-cbcn-k4-sg", "t3-cbcn-k4-scg")),
    Inconsistency("CBCN ResNet18 16-16-32-64 on CIFAR10: Table 2's error 10.9 % (accuracy 89.10 %) equals "
                  "Table 3's S cell (without the Gaussian gradient CBCN is defined with), not S+G 90.22 %",
                  ("t2-cifar10-resnet18-16-16-32-64-cbcn", "t3-cbcn-k4-s", "t3-cbcn-k4-sg")),
    Inconsistency("XNOR ResNet18 16-16-32-64 on CIFAR10 with standard shortcuts: Table 2's error 22.88 % "
                  "(accuracy 77.12 %) vs Table 3's ConvComp 76.3 %",
                  ("t2-cifar10-resnet18-16-16-32-64-xnor", "t3-xnor-convcomp"), source="noted by cbcn"),
)


def accuracy_of(exp: Experiment, values: dict) -> float | None:
    """Accuracy (%) from a metrics dict in the experiment's table's terms (Table 2: 100 − error)."""
    if exp.table == 2:
        v = values.get("error")
        return None if v is None else 100.0 - v
    if exp.table == 5:
        return values.get("top1")
    return values.get("accuracy")


def _check_registry() -> None:
    for c in CLAIMS:
        for i in (c.better, c.worse, *(c.than or ())):
            assert i in BY_ID, f"claim {c.text!r} names unknown experiment {i}"
    for inc in INCONSISTENCIES:
        for i in inc.cells:
            assert i in BY_ID, f"inconsistency names unknown experiment {i}"


_check_registry()
