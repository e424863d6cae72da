"""Options shared by several subcommands: valid names from the registries, number parsers, the
model options of ``cbcn train`` and ``cbcn summary``, and K's default.

Why here, in the command layer: ``cbcn.cli`` and the subcommand modules of ``cbcn.cli`` both
use them, and the core packages (``harness``, ``onebit``) must not import the command line.
"""
from __future__ import annotations

import argparse

def choices(kind: str) -> tuple:
    """Valid names (and orientations K), read from the registry that owns them."""
    if kind == "dataset":
        from cbcn.data import DATASETS
        return tuple(DATASETS)
    if kind == "method":
        from cbcn.nn.methods import METHODS
        return tuple(METHODS)
    if kind == "surrogate":
        from cbcn.nn.binarize import SURROGATES
        return tuple(SURROGATES)
    if kind == "model":
        from cbcn.nn.models import MODELS
        return tuple(MODELS)
    if kind == "profile":
        from cbcn.training.profiles import PROFILES
        return tuple(PROFILES)
    if kind == "K":
        from cbcn.nn.cif import VALID_K
        return VALID_K
    if kind == "rotation":
        from cbcn.data.rotation import ROTATION_DRAWS
        return ROTATION_DRAWS
    raise KeyError(kind)


def parse_stages(text: str) -> tuple[int, ...]:
    """'5-10-20-40' -> (5, 10, 20, 40)."""
    try:
        stages = tuple(int(s) for s in text.replace(",", "-").split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"stages must look like 5-10-20-40, got {text!r}") from None
    if not stages or any(s < 1 for s in stages):
        raise argparse.ArgumentTypeError(f"stages must be positive integers, got {text!r}")
    return stages


def optional_int(text: str) -> int:
    """A positive int, or 0 for 'none'/'off'/'0' (no schedule step)."""
    if text.lower() in ("none", "0", "off"):
        return 0
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 or 'none', got {v}")
    return v


def positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


class Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def dataset_epilog() -> str:
    from cbcn.data import DATASETS
    lines = ["data sets:"]
    for name, info in DATASETS.items():
        lines.append(f"  {name:14s} {info.summary}")
    lines += ["", "profiles (--profile): paper = the paper's Sec. 4.1 recipe; quick = minutes on a CPU; "
              "smoke = seconds, for tests.", "Options left unset take the profile's value; set ones override it.",
              "", "examples:",
              "  cbcn train                                   # LeNet fp, offline MNIST subset, quick profile",
              "  cbcn train --data-root ~/data --model lenet --stages 5-10-20-40 --method cbcn -K 4",
              "  cbcn train --dataset cifar10 --model resnet18 --stages 16-16-32-64 --method xnor --profile paper",
              "  torchrun --nproc_per_node=4 -m cbcn.cli train --dataset cifar10 --model resnet18 ...",
              "  cbcn eval runs/mnist_lenet_fp_K1_seed0/last.pt --dataset mnist-rot"]
    return "\n".join(lines)


def add_model_arguments(p: argparse.ArgumentParser):
    """The options that say which model to build (``cbcn train``, ``cbcn summary``); returns their group."""
    g = p.add_argument_group("model")
    g.add_argument("--model", default="lenet", choices=choices("model"), metavar="NAME",
                   help="backbone: %(choices)s (default: %(default)s)")
    g.add_argument("--stages", type=parse_stages, default=None, metavar="A-B-C-D",
                   help="feature maps per stage (kernel stage), e.g. 5-10-20-40 for LeNet or 16-16-32-64 "
                        "for ResNet18; for cbcn they count maps of K channels each (default: the backbone's)")
    g.add_argument("--method", default="fp", choices=choices("method"), metavar="NAME",
                   help="binarization method: %(choices)s (default: %(default)s)")
    g.add_argument("-K", "--K", type=int, default=None, choices=choices("K"), dest="K",
                   help="orientations of the circulant filters (default: the method's: 4 for cbcn, the paper's; "
                        "1 for the others)")
    g.add_argument("--cbconv", action=argparse.BooleanOptionalAction, default=None,
                   help="ablation: circulant (CBConv) vs plain binary convolutions (default: the method's)")
    g.add_argument("--shortcut", choices=("standard", "double"), default=None,
                   help="ablation: residual shortcut per block (standard) or per conv (double) (default: the method's)")
    g.add_argument("--act-surrogate", choices=choices("surrogate"), default=None,
                   help="ablation: gradient of sign() for activations (default: the method's)")
    g.add_argument("--weight-surrogate", choices=choices("surrogate"), default=None,
                   help="ablation: gradient of sign() for weights (default: the method's)")
    g.add_argument("-M", "--weight-bases", type=int, default=1, metavar="M",
                   help="abcnet: binary weight bases per layer (the paper uses 1, 3, 5; default: %(default)s)")
    g.add_argument("-N", "--act-bases", type=int, default=1, metavar="N",
                   help="abcnet: binary activation bases per layer (the paper uses 1, 3, 5; default: %(default)s)")
    return g


def model_K(args: argparse.Namespace) -> int:
    """The -K the user gave, else the method's own (``MethodSpec.default_K``: 4 for cbcn)."""
    from cbcn.nn.methods import get_method
    return args.K if args.K is not None else get_method(args.method).default_K


