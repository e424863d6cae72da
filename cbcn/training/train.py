"""Training and evaluation: SGD with the paper's recipes, center loss, checkpoints and resume,
single process or data-parallel under ``torchrun``.

Why the design: configuration is one plain dataclass (so it can be saved, compared on resume and
printed in reports); the training order comes from a ``DistributedSampler`` seeded by
``seed + epoch`` in one process too, so that a run on N ranks sees, batch for batch, the same
samples as one process with the same global batch, and a resumed run the same as an
uninterrupted one. Everything random that is not a function of (seed, epoch) lives in the torch/
numpy/python generators, whose states are saved in every checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from cbcn.data import dataset_info, load_dataset
from cbcn.fileio import atomic_write_text
from cbcn.nn.cif import VALID_K
from cbcn.nn.methods import SWITCHES
from cbcn.training.checkpoint import (CheckpointError, config_mismatches, load_checkpoint, model_signature, rng_state,
                                      save_checkpoint, set_rng_state)
from cbcn.training.distributed import (DistInfo, all_reduce_mean_, all_reduce_sum, barrier, cleanup, gather_objects,
                                       init_distributed)
from cbcn.training.profiles import PROFILES, Profile, get_profile
from cbcn.training.progress import Progress

CHECKPOINT_NAME = "last.pt"


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults: LeNet fp on MNIST (offline subset when
    ``data_root`` is None), the ``quick`` profile's optimiser and schedule."""
    # model (cbcn.nn.models.build_model)
    model: str = "lenet"
    method: str = "fp"
    stages: tuple[int, ...] | None = None
    K: int = 1
    cbconv: bool | None = None              # Table 3 switches; None = the method's default
    shortcut: str | None = None
    act_surrogate: str | None = None
    weight_surrogate: str | None = None
    weight_bases: int = 1                   # ABC-Net's M and N (method abcnet)
    act_bases: int = 1
    dropout: float | None = None            # override every nn.Dropout's p (None = backbone default)
    lenet_classifier: str = "linear"        # LeNet's classifier reading (cbcn.nn.models.LENET_CLASSIFIERS)
    sync_bn: bool = False                   # torchrun on GPUs: SyncBatchNorm (batch statistics over all ranks)
    freeze_bn: bool = False                 # BatchNorm uses running statistics while training (affine still learns)
    # data (cbcn.data.load_dataset)
    dataset: str = "mnist"
    data_root: str | None = None
    download: bool = False
    subset: bool | None = None
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    data_seed: int = 0                      # rotation angles of -rot data sets (not the training order)
    rotation: str = "fixed"                 # -rot training images: fixed seeded angles, or per-epoch (cbcn.data.rotation)
    # optimisation (the profile's recipe, cbcn.training.profiles)
    profile: str = "quick"
    epochs: int = 2
    batch_size: int = 128                   # global batch: divided among torchrun ranks
    eval_batch_size: int = 512
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_step: int | None = None              # multiply lr by lr_gamma every lr_step epochs
    lr_gamma: float = 0.1
    center_loss: bool = False
    center_lambda: float = 0.01
    center_alpha: float = 0.5
    bn_recalibration_batches: int = 50      # before each evaluation, re-estimate BatchNorm statistics on
                                            # this many training batches (0: keep the moving averages)
    # run
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    cpu_threads: int | None = None          # torch intra-op threads on a CPU (None: torch's default);
                                            # quick/smoke use 1: on a shared 2-core machine LeNet
                                            # trained 10x faster with 1 thread than with 2
    compile: bool = False                   # train through torch.compile (inductor); evaluation and
                                            # the BatchNorm re-estimation stay eager (_compiled)
    output_dir: str | None = None           # checkpoints, history.csv/json, result.json, train.log
    resume: bool | str = False              # True: output_dir/last.pt; or a checkpoint path
    overwrite: bool = False                 # allow replacing an existing checkpoint in output_dir
    stop_after_epoch: int | None = None     # stop (as if killed) after this epoch's checkpoint
    progress: str = "auto"                  # auto | bar | lines | none
    log_every: int = 0                      # batches between progress lines (0: ~10 per epoch)

    @classmethod
    def from_recipe(cls, profile: str | Profile = "quick", model: str = "lenet", dataset: str = "mnist",
                    **overrides) -> "TrainConfig":
        """The profile's recipe for ``dataset`` (``cbcn.training.profiles``), then ``overrides``."""
        fields = get_profile(profile).recipe(dataset)
        return cls(**{**fields, "model": model, "dataset": dataset, **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["stages"] = list(self.stages) if self.stages is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if d.get("stages") is not None:
            d["stages"] = tuple(d["stages"])
        return cls(**d)


#: fields that must be equal to resume a checkpoint (others — epochs, paths, device, display —
#: may change, e.g. to extend a run or move the data)
IDENTITY_FIELDS = ("model", "method", "stages", "K", *SWITCHES, "weight_bases", "act_bases", "dropout", "lenet_classifier",
                   "freeze_bn",
                   "dataset", "subset", "max_train_samples", "max_test_samples", "data_seed", "rotation", "batch_size", "lr", "momentum",
                   "weight_decay", "lr_step", "lr_gamma", "center_loss", "center_lambda", "center_alpha", "seed")


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]]
    final: dict[str, Any]
    data_description: str
    wall_time_s: float
    config: dict[str, Any] = field(default_factory=dict)
    model_description: dict[str, Any] = field(default_factory=dict)
    recipe_description: str = ""
    checkpoint: str | None = None
    stopped_early: bool = False

    def summary(self) -> dict[str, Any]:
        """JSON-ready record of the run (everything but the model)."""
        return dict(final=self.final, history=self.history, data_description=self.data_description,
                    wall_time_s=self.wall_time_s, config=self.config,
                    model_description=self.model_description, recipe=self.recipe_description,
                    checkpoint=self.checkpoint, stopped_early=self.stopped_early)


# --- validation -------------------------------------------------------------------------------

def model_names() -> tuple[str, ...]:
    from cbcn.nn.models import MODELS
    return tuple(MODELS)


def method_names() -> tuple[str, ...]:
    from cbcn.nn.methods import METHODS
    return tuple(METHODS)


def validate_config(c: TrainConfig) -> None:
    """Raise ValueError naming the valid choices for any unknown name or impossible number."""
    from cbcn.data import DATASETS
    checks = [("model", c.model, model_names()), ("method", c.method, method_names()),
              ("dataset", c.dataset, tuple(DATASETS)), ("profile", c.profile, tuple(PROFILES)),
              ("progress", c.progress, ("auto", "bar", "lines", "none"))]
    for what, value, valid in checks:
        if value not in valid:
            raise ValueError(f"unknown {what} {value!r}; valid choices: {', '.join(valid)}")
    if c.method != "abcnet" and (c.weight_bases, c.act_bases) != (1, 1):
        raise ValueError(f"weight_bases/act_bases (M, N) are ABC-Net's (method abcnet); method {c.method!r} "
                         f"has one base each, got M={c.weight_bases}, N={c.act_bases}")
    if c.weight_bases < 1 or c.act_bases < 1:
        raise ValueError(f"weight_bases and act_bases must be >= 1, got M={c.weight_bases}, N={c.act_bases}")
    if c.K not in VALID_K:
        raise ValueError(f"K must be one of {', '.join(map(str, VALID_K))} (orientations), got {c.K}")
    for name in ("epochs", "batch_size", "eval_batch_size"):
        if getattr(c, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(c, name)}")
    for name in ("lr", "lr_gamma", "momentum", "weight_decay", "center_lambda", "center_alpha"):
        value = getattr(c, name)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value}")
    if c.lr <= 0 or c.lr_gamma <= 0 or (c.lr_step is not None and c.lr_step < 1):
        raise ValueError(f"need lr > 0, lr_gamma > 0 and lr_step >= 1 or None (got {c.lr}, {c.lr_gamma}, {c.lr_step})")
    if not 0 <= c.momentum < 1 or c.weight_decay < 0:
        raise ValueError(f"need 0 <= momentum < 1 and weight_decay >= 0 (got {c.momentum}, {c.weight_decay})")
    if c.dropout is not None and not 0 <= c.dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {c.dropout}")
    if c.compile and not _cuda_device(c.device) and not any(
            shutil.which(cc) for cc in (os.environ.get("CXX") or "g++", "g++", "clang++", "c++")):
        raise ValueError("--compile needs a C++ compiler on a CPU (torch.compile's inductor builds C++ "
                         "kernels); install g++ or set CXX, or train without --compile")
    if c.sync_bn and c.device == "cpu":
        raise ValueError("sync_bn needs GPUs (PyTorch's SyncBatchNorm does not run on CPU)")
    if c.stop_after_epoch is not None and c.stop_after_epoch < 1:
        raise ValueError(f"stop_after_epoch must be >= 1, got {c.stop_after_epoch}")
    build_model_for(c)  # method, K, stages and switches that cannot make a model fail here, before any file


# --- pieces -----------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Step schedule: ``lr · gamma^(epoch // lr_step)`` (epoch 0-based); constant if no step."""
    if not config.lr_step:
        return config.lr
    return config.lr * config.lr_gamma ** (epoch // config.lr_step)


def _cuda_device(device: str) -> bool:
    """Whether ``device`` ('auto', 'cpu', 'cuda', 'cuda:N') means a GPU here."""
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def build_model_for(config: TrainConfig) -> nn.Module:
    """The model of a config, via the core's ``build_model``."""
    from cbcn.nn.models import build_model
    info = dataset_info(config.dataset)
    switches = {k: getattr(config, k) for k in SWITCHES
                if getattr(config, k) is not None}
    model = build_model(config.model, method=config.method,
                        stages=tuple(config.stages) if config.stages else None, K=config.K,
                        num_classes=info.num_classes, in_channels=info.in_channels,
                        stem="imagenet" if info.family == "imagenet" else "cifar",
                        weight_bases=config.weight_bases, act_bases=config.act_bases,
                        lenet_classifier=config.lenet_classifier, **switches)
    if config.dropout is not None:
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = config.dropout
    return model


def describe(model: nn.Module) -> dict[str, Any]:
    from cbcn.nn.models import describe_model
    d = dict(describe_model(model))
    d.setdefault("parameters", sum(p.numel() for p in model.parameters()))
    return json.loads(json.dumps(d, default=str))


def _topk_correct(logits: torch.Tensor, y: torch.Tensor, ks) -> list[int]:
    maxk = min(max(ks), logits.shape[1])
    pred = logits.topk(maxk, dim=1).indices
    hit = pred.eq(y[:, None])
    return [int(hit[:, :min(k, maxk)].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, dataset, batches: int, batch_size: int,
                          device: torch.device | str, sample_seed: int = 0) -> int:
    """Re-estimate every BatchNorm's running statistics with the current weights.

    Why: the exponential moving average that BatchNorm keeps during training mixes statistics of
    many past weight states. Binary weights flip sign, so the activation statistics move quickly,
    and a BatchNorm that feeds ``sign`` turns a small error of its mean into flipped bits: a CBCN
    LeNet measured 7.9 % training error but 42.5 % test error with the moving averages, and 7.5 %
    test error after this re-estimation. We recompute the statistics as a plain average over the
    ``batches`` training batches of a fixed random sample (data sets are often stored sorted by
    class, so the first images would cover few classes), augmentation as in training, dropout off
    and all random streams restored afterwards, so training itself is unchanged. ``sample_seed``
    picks the sample (training uses 0; ``benchmarks/bn_recalibration_study.py`` varies it to
    measure how much the choice moves a test error). Returns the number of images used (0: nothing
    to do).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if batches <= 0 or not bns:
        return 0
    n = min(len(dataset), batches * batch_size)
    sample = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(sample_seed))[:n].tolist()
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sample)
    device = torch.device(device)
    was_training = model.training
    momenta = [m.momentum for m in bns]
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        model.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
            m.train()
        for x, _ in loader:
            model(x.to(device, non_blocking=True))
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was_training)
    return n


@torch.no_grad()
def evaluate(model: nn.Module, dataset, batch_size: int = 512, device: torch.device | str | None = None,
             topk: tuple[int, ...] = (1, 5), dist_info: DistInfo | None = None,
             num_workers: int = 0) -> dict[str, float]:
    """Loss and top-k accuracy (%) of ``model`` on ``dataset``; ``error`` = 100 − top-1.
    Under torchrun each rank evaluates a disjoint shard and the counts are summed."""
    info = dist_info or DistInfo()
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    was_training = model.training
    model.eval()
    shard = list(range(info.rank, len(dataset), info.world_size))
    loader = DataLoader(dataset, batch_size=batch_size, sampler=shard, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    ks = tuple(sorted(set(topk) | {1}))
    sums = torch.zeros(2 + len(ks), dtype=torch.float64)
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        sums[0] += float(F.cross_entropy(logits, y, reduction="sum"))
        sums[1] += y.shape[0]
        for i, c in enumerate(_topk_correct(logits, y, ks)):
            sums[2 + i] += c
    sums = all_reduce_sum(sums, info)
    model.train(was_training)
    n = max(float(sums[1]), 1.0)
    out = {"loss": float(sums[0]) / n, "n": int(sums[1])}
    for i, k in enumerate(ks):
        out[f"top{k}"] = 100.0 * float(sums[2 + i]) / n
    out["error"] = 100.0 - out["top1"]
    return out


def _write_history(out: Path, history: list[dict]) -> None:
    buf = io.StringIO()
    if history:
        w = csv.DictWriter(buf, fieldnames=list(history[0].keys()))
        w.writeheader()
        w.writerows(history)
    atomic_write_text(out / "history.csv", buf.getvalue())
    atomic_write_text(out / "history.json", json.dumps(history, indent=1))


def _resume_path(config: TrainConfig) -> Path | None:
    if config.resume is True:
        if not config.output_dir:
            raise ValueError("resume=True needs output_dir (where the run's last.pt is) or a checkpoint path")
        return Path(config.output_dir) / CHECKPOINT_NAME
    if config.resume:
        return Path(config.resume)
    return None


# --- the training loop ------------------------------------------------------------------------

def train(config: TrainConfig) -> TrainResult:
    """Train ``config`` to ``config.epochs`` (or ``stop_after_epoch``) and evaluate; see module doc."""
    validate_config(config)
    t_start = time.time()
    dinfo, device = init_distributed(config.device)
    try:
        return _train(config, dinfo, device, t_start)
    finally:
        cleanup(dinfo)


def _train(config: TrainConfig, dinfo: DistInfo, device: torch.device, t_start: float) -> TrainResult:
    resume_path = _resume_path(config)
    if resume_path is not None and not config.output_dir:
        config = replace(config, output_dir=str(resume_path.parent))
    out = Path(config.output_dir) if config.output_dir else None
    if out is not None and resume_path is None and (out / CHECKPOINT_NAME).exists() and not config.overwrite:
        raise CheckpointError(f"{out / CHECKPOINT_NAME} exists from an earlier run; resume it (--resume), "
                              f"choose another output folder, or pass overwrite=True (--overwrite)")
    if out is not None and dinfo.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if resume_path is None and (out / "train.log").exists():
            (out / "train.log").unlink()  # a new run (overwrite) starts a new log; a resumed one appends
    progress = Progress(config.progress, enabled=dinfo.is_main, log_every=config.log_every,
                        log_file=str(out / "train.log") if out is not None else None)
    try:
        return _run(config, dinfo, device, t_start, progress, resume_path, out)
    finally:
        progress.close()


def _data_origin(ds) -> str:
    """Where the images come from, in a few words (the full description goes to the log)."""
    text = str(getattr(ds, "description", ""))
    return text.split(" (")[0].split(";")[0][:100]


@dataclass
class _Run:
    """Everything one training run holds between its steps (``_run``)."""

    config: TrainConfig
    dinfo: DistInfo
    device: torch.device
    progress: Progress
    out: Path | None
    train_ds: Any
    test_ds: Any
    data_description: str
    recipe_text: str
    model: nn.Module
    model_desc: dict
    optimizer: torch.optim.Optimizer
    center: nn.Module | None
    rank_batch: int
    net: nn.Module | None = None          # the model, or its DistributedDataParallel wrapper
    start_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    checkpoint: str | None = None


def _run(config: TrainConfig, dinfo: DistInfo, device: torch.device, t_start: float, progress: Progress,
         resume_path: Path | None, out: Path | None) -> TrainResult:
    """Set up, resume, then epoch after epoch: train, evaluate, checkpoint; then finish."""
    run = _set_up(config, dinfo, device, progress, out)
    if resume_path is not None:
        _resume(run, resume_path)
    _wrap_for_ranks(run)
    sampler = DistributedSampler(run.train_ds, num_replicas=dinfo.world_size, rank=dinfo.rank, shuffle=True,
                                 seed=config.seed, drop_last=False)
    loader = DataLoader(run.train_ds, batch_size=run.rank_batch, sampler=sampler, num_workers=config.num_workers,
                        pin_memory=device.type == "cuda", drop_last=False)
    stopped = False
    for epoch in range(run.start_epoch, config.epochs):
        lr = lr_at(config, epoch)
        sampler.set_epoch(epoch)
        sums, train_seconds = _train_epoch(run, loader, epoch, lr)
        _evaluate_epoch(run, epoch, lr, sums, train_seconds)
        _save_epoch(run, epoch)
        if config.stop_after_epoch is not None and epoch + 1 >= config.stop_after_epoch and epoch + 1 < config.epochs:
            stopped = True
            progress.log(f"stopping after epoch {epoch + 1} as asked (stop_after_epoch); resume to continue")
            break
    return _finish(run, t_start, stopped)


def _set_up(config: TrainConfig, dinfo: DistInfo, device: torch.device, progress: Progress,
            out: Path | None) -> _Run:
    """Threads, data, the model (seeded), center loss, optimizer; the run's header in the log."""
    if device.type == "cpu" and config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    if config.batch_size % dinfo.world_size:
        raise ValueError(f"global batch size {config.batch_size} is not divisible by the "
                         f"{dinfo.world_size} torchrun processes")
    ds_args = dict(root=config.data_root, seed=config.data_seed, download=config.download and dinfo.is_main,
                   subset=config.subset)
    if config.download and dinfo.enabled:  # rank 0 downloads, the others wait then read
        if dinfo.is_main:
            load_dataset(config.dataset, train=True, max_samples=1, **ds_args)
        barrier(dinfo)
        ds_args["download"] = False
    train_ds = load_dataset(config.dataset, train=True, max_samples=config.max_train_samples,
                            rotation=config.rotation, **ds_args)
    test_ds = load_dataset(config.dataset, train=False, max_samples=config.max_test_samples, **ds_args)
    data_description = f"train: {train_ds.description} | test: {test_ds.description}"
    recipe_text = get_profile(config.profile).describe_recipe(config.dataset) + \
        f" (this run: {len(train_ds)} training, {len(test_ds)} test images)"

    seed_everything(config.seed)
    model = build_model_for(config).to(device)
    model_desc = describe(model)
    center = _center_loss(config, model, device) if config.center_loss else None
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    if dinfo.enabled and dinfo.rank > 0:
        torch.manual_seed(config.seed + 1_000_003 * dinfo.rank)  # own augmentation/dropout stream per rank
    run = _Run(config, dinfo, device, progress, out, train_ds, test_ds, data_description, recipe_text, model,
               model_desc, optimizer, center, rank_batch=config.batch_size // dinfo.world_size)
    if dinfo.is_main:  # the run's header, before anything it does (resuming included)
        _log_header(run)
        if out is not None:
            atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=1))
    return run


def _center_loss(config: TrainConfig, model: nn.Module, device: torch.device) -> nn.Module:
    """The center loss (SPEC §4) for the model's feature size, found without touching any RNG."""
    from cbcn.nn.center_loss import CenterLoss

    info = dataset_info(config.dataset)
    model.eval()
    with torch.no_grad():
        probe = torch.zeros(1, info.in_channels, info.image_size, info.image_size, device=device)
        _, feats = model(probe, return_features=True)
    model.train()
    return CenterLoss(info.num_classes, feats.shape[1], config.center_lambda, config.center_alpha).to(device)


def _log_header(run: _Run) -> None:
    config, dinfo, progress, desc = run.config, run.dinfo, run.progress, run.model_desc
    progress.log(f"cbcn train: {config.model} {config.method} K={config.K} stages={config.stages or 'default'} "
                 f"on {config.dataset}, device {run.device}" + (f", {dinfo.world_size} ranks ({dinfo.backend})"
                                                                if dinfo.enabled else ""))
    progress.log(f"data: {config.dataset}, {len(run.train_ds)} training and {len(run.test_ds)} test images "
                 f"({_data_origin(run.train_ds)})")
    progress.detail(f"data (full description): {run.data_description}")
    progress.log(f"recipe: {run.recipe_text}; run: epochs {config.epochs}, batch {config.batch_size}, "
                 f"seed {config.seed}"
                 + (f", center loss lambda {config.center_lambda}" if run.center is not None else ""))
    progress.log(f"model: {desc.get('learned_parameters', desc.get('parameters')):,} learned "
                 f"parameters ({desc.get('binary_weight_parameters', 0):,} binary), stages "
                 f"{desc.get('stages_maps', '?')} (physical channels "
                 f"{desc.get('stages_physical_channels', '?')})")
    progress.detail(f"model (full description): {json.dumps(desc)}")


def _resume(run: _Run, resume_path: Path) -> None:
    """Model, optimizer, center loss, epoch, history and random streams from ``resume_path``,
    after checking that it belongs to this run."""
    config, dinfo = run.config, run.dinfo
    ckpt = load_checkpoint(resume_path, map_location="cpu")
    saved = {**asdict(TrainConfig()), **ckpt["config"]}  # fields added since the checkpoint: their defaults
    bad = config_mismatches(saved, config.to_dict(), IDENTITY_FIELDS)
    if bad:
        raise CheckpointError(f"{resume_path} belongs to a different run; differing settings:\n  "
                              + "\n  ".join(bad))
    if ckpt["model_signature"] != model_signature(run.model.state_dict()):
        raise CheckpointError(f"{resume_path}: the checkpoint's model parameters (names/shapes) differ from "
                              f"the model this cbcn version builds for {config.model}/{config.method}")
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if run.center is not None:
        run.center.load_state_dict(ckpt["center_loss"])
    run.start_epoch, run.history = int(ckpt["epoch"]), list(ckpt["history"])
    states = ckpt["rng"]
    if len(states) != dinfo.world_size:
        run.progress.log(f"note: checkpoint written by {len(states)} process(es), resuming with "
                         f"{dinfo.world_size}; random streams continue from rank 0's")
    set_rng_state(states[dinfo.rank] if dinfo.rank < len(states) else states[0])
    run.progress.log(f"resumed {resume_path} after epoch {run.start_epoch}")


def _wrap_for_ranks(run: _Run) -> None:
    """``run.net``: the model itself, or under ``torchrun`` its DistributedDataParallel wrapper
    (with SyncBatchNorm if asked)."""
    run.net = run.model
    if run.dinfo.enabled:
        if run.config.sync_bn:
            if run.device.type != "cuda":
                raise ValueError("sync_bn needs GPUs (PyTorch's SyncBatchNorm does not run on CPU)")
            run.model = nn.SyncBatchNorm.convert_sync_batchnorm(run.model)
        run.net = nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    if run.config.compile:
        run.net = _compiled(run.net)


def _compiled(net: nn.Module) -> nn.Module:
    """The training forward through ``torch.compile`` (inductor): the same math, fused.

    Why: on a CPU the LeNets' elementwise chains (BatchNorm, sign and its surrogate, α, pooling,
    ReLU) are many small memory-bound passes; fused, the paper's MNIST recipe trains 1.2-1.5x
    more images/s (the six Table 2 LeNets, one thread; ``benchmarks/train_throughput.py --compile``)
    after up to a minute of compiling. ``fallback_random`` keeps eager PyTorch's random stream for dropout,
    so the masks, the checkpointed random state and exact resume are those of an eager run. Results
    agree with eager training up to floating-point rounding: a float LeNet within 1e-5
    (``tests/test_train.py``); a binary LeNet drifts further, because a rounding difference can flip
    the sign of an activation near zero.
    """
    return torch.compile(net, options={"fallback_random": True})


def _train_epoch(run: _Run, loader: DataLoader, epoch: int, lr: float) -> tuple[torch.Tensor, float]:
    """One epoch of SGD at ``lr``; returns (loss·n, errors, n) summed over ranks, and its seconds."""
    config, dinfo, device, model, net, center = run.config, run.dinfo, run.device, run.model, run.net, run.center
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    net.train()
    if config.freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    if center is not None:
        center.train()
    sums = torch.zeros(3, dtype=torch.float64)  # loss·n, errors, n
    t0 = time.time()
    n_batches = len(loader)
    for i, (x, y) in enumerate(loader, 1):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if center is not None:
            logits, feats = net(x, return_features=True)
            loss = F.cross_entropy(logits, y) + center(feats, y)
        else:
            logits = net(x)
            loss = F.cross_entropy(logits, y)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        if center is not None:
            all_reduce_mean_(center.centers, dinfo)
        loss_value = loss.detach().item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"loss became {loss_value} at epoch {epoch + 1} batch {i}; "
                                     f"lower the learning rate")
        b = y.shape[0]
        sums[0] += loss_value * b
        sums[1] += int((logits.argmax(1) != y).sum())
        sums[2] += b
        run.progress.batch(epoch + 1, config.epochs, i, n_batches, float(sums[0] / sums[2]),
                           100.0 * float(sums[1] / sums[2]), float(sums[2]) * dinfo.world_size / (time.time() - t0))
    return all_reduce_sum(sums, dinfo), time.time() - t0


def _evaluate_epoch(run: _Run, epoch: int, lr: float, sums: torch.Tensor, train_seconds: float) -> None:
    """Re-estimate the batch-norm statistics, evaluate on the test set, add the epoch's row to
    the history and log it."""
    config = run.config
    t1 = time.time()
    if not config.freeze_bn:  # frozen statistics are part of training: leave them alone
        recalibrate_batchnorm(run.model, run.train_ds, config.bn_recalibration_batches, run.rank_batch, run.device)
    test = evaluate(run.model, run.test_ds, batch_size=config.eval_batch_size, device=run.device,
                    dist_info=run.dinfo, num_workers=config.num_workers)
    row = dict(epoch=epoch + 1, lr=lr, train_loss=float(sums[0] / sums[2]),
               train_error=100.0 * float(sums[1] / sums[2]), test_loss=test["loss"],
               test_error=test["error"], test_top5=test.get("top5"), seconds=train_seconds,
               eval_seconds=time.time() - t1)
    run.history.append(row)
    run.progress.log(f"epoch {epoch + 1}/{config.epochs} lr {lr:g} train loss {row['train_loss']:.4f} "
                     f"err {row['train_error']:.2f}% | test loss {row['test_loss']:.4f} err {row['test_error']:.2f}% "
                     f"top5 {test.get('top5', float('nan')):.2f}% | {train_seconds:.1f}s train "
                     f"{row['eval_seconds']:.1f}s eval")


def _save_epoch(run: _Run, epoch: int) -> None:
    """The checkpoint after ``epoch`` (every rank's random streams in it) and the history files."""
    config, model = run.config, run.model
    rngs = gather_objects(rng_state(), run.dinfo)
    if run.out is not None and run.dinfo.is_main:
        state = dict(epoch=epoch + 1, config=config.to_dict(), model=model.state_dict(),
                     optimizer=run.optimizer.state_dict(),
                     schedule=dict(kind="step", lr=config.lr, lr_step=config.lr_step,
                                   lr_gamma=config.lr_gamma, next_epoch=epoch + 1),
                     center_loss=run.center.state_dict() if run.center is not None else None,
                     rng=rngs, history=run.history, world_size=run.dinfo.world_size,
                     model_signature=model_signature(model.state_dict()),
                     model_description=json.dumps(run.model_desc), data_description=run.data_description)
        run.checkpoint = str(save_checkpoint(run.out / CHECKPOINT_NAME, state))
        _write_history(run.out, run.history)
    barrier(run.dinfo)


def _finish(run: _Run, t_start: float, stopped: bool) -> TrainResult:
    """The final evaluation, ``result.json`` and the ``TrainResult``."""
    config, out = run.config, run.out
    if out is not None and run.checkpoint is None and (out / CHECKPOINT_NAME).exists():
        run.checkpoint = str(out / CHECKPOINT_NAME)
    final_eval = evaluate(run.model, run.test_ds, batch_size=config.eval_batch_size, device=run.device,
                          dist_info=run.dinfo, num_workers=config.num_workers)
    history = run.history
    last = history[-1] if history else {}
    final = dict(test_error=final_eval["error"], top1=final_eval["top1"], top5=final_eval.get("top5"),
                 test_loss=final_eval["loss"], n_test=final_eval["n"], n_train=len(run.train_ds),
                 train_error=last.get("train_error"),
                 train_loss=last.get("train_loss"), epochs=len(history), profile=config.profile,
                 dataset=config.dataset)
    result = TrainResult(model=run.model, history=history, final=final, data_description=run.data_description,
                         wall_time_s=time.time() - t_start, config=config.to_dict(), model_description=run.model_desc,
                         recipe_description=run.recipe_text, checkpoint=run.checkpoint, stopped_early=stopped)
    if out is not None and run.dinfo.is_main:
        atomic_write_text(out / "result.json", json.dumps(result.summary(), indent=1, default=str))
    run.progress.result(f"final: test error {final['test_error']:.2f}% top-1 {final['top1']:.2f}% "
                        f"top-5 {final['top5']:.2f}% ({final['n_test']} test images, {len(history)} epochs, "
                        f"{result.wall_time_s:.1f}s)" + (" [stopped early]" if stopped else ""))
    return result


# --- using a trained checkpoint ----------------------------------------------------------------

def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig, dict]:
    """Rebuild the model of a training checkpoint and load its weights."""
    ckpt = load_checkpoint(path, map_location="cpu")
    config = TrainConfig.from_dict(ckpt["config"])
    model = build_model_for(config)
    if ckpt["model_signature"] != model_signature(model.state_dict()):
        raise CheckpointError(f"{path}: the checkpoint's parameters do not match the model this cbcn builds "
                              f"for {config.model}/{config.method} (written by cbcn {ckpt.get('cbcn_version')})")
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), config, ckpt
