"""``cbcn summary``: the per-layer table of a model built from the options or read from a checkpoint
(the table itself: ``cbcn.harness.summary``)."""
from __future__ import annotations

import argparse
import sys

from cbcn.cli.options import Formatter, add_model_arguments, model_K
from cbcn.harness.summary import Summary, model_title, summarize, summary_of_checkpoint
from cbcn.nn.methods import SWITCHES


def add_subcommands(subparsers) -> None:
    p = subparsers.add_parser(
        "summary", help="per-layer summary: precision, shapes, parameters, bytes, BOPs and MACs",
        formatter_class=Formatter,
        description="One row per layer of a model, as larq's lq.models.summary: input and weight precision, "
                    "CBConv maps and physical channels, output shape, binary and real parameters, bytes in "
                    "the 1-bit checkpoint, BOPs (full CiF bank and K-sum form) and real MACs; then the fp32 "
                    "and 1-bit sizes and the share of the 1-bit bytes that the non-binary parts take. The "
                    "model comes from the options (as 'cbcn train') or from CHECKPOINT (a training or a "
                    "1-bit checkpoint).")
    p.add_argument("checkpoint", nargs="?", default=None, metavar="CHECKPOINT",
                   help="a training checkpoint (runs/<run>/last.pt) or a 1-bit checkpoint; instead of the model options")
    add_model_arguments(p)
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help="data set whose image size, channels and classes the model is built for "
                        "(default: mnist for lenet, cifar10 otherwise; imagenet gives the ImageNet stem)")
    p.add_argument("--format", default="table", choices=("table", "markdown", "csv", "json"),
                   help="output: a plain table, Markdown, CSV or JSON (default: %(default)s)")
    p.set_defaults(func=cmd_summary)


def cmd_summary(args: argparse.Namespace) -> int:
    if args.checkpoint is not None:
        summary = summary_of_checkpoint(args.checkpoint)
    else:
        summary = summary_of_options(args)
    text = summary.render(args.format)
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `cbcn summary | head`
        sys.stderr.close()
    return 0


def summary_of_options(args) -> Summary:
    from cbcn.data import dataset_info
    from cbcn.nn.models import build_model

    dataset = args.dataset or ("mnist" if args.model == "lenet" else "cifar10")
    info = dataset_info(dataset)
    switches = {k: getattr(args, k) for k in SWITCHES
                if getattr(args, k, None) is not None}
    model = build_model(args.model, method=args.method, stages=args.stages, K=model_K(args), num_classes=info.num_classes,
                        in_channels=info.in_channels, stem="imagenet" if info.family == "imagenet" else "cifar",
                        image_size=info.image_size if args.model == "lenet" else 32,
                        weight_bases=args.weight_bases, act_bases=args.act_bases, **switches)
    return summarize(model, (info.in_channels, info.image_size, info.image_size),
                     f"{model_title(model)} ({dataset}: {info.in_channels}x{info.image_size}x{info.image_size}, "
                     f"{info.num_classes} classes)")
