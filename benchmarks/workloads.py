"""What the benchmarks time: shapes per size, and the layer / training-step callables.

Shared by the pytest-benchmark suites (``benchmarks/test_bench_*.py``) and by
``benchmarks/overhead.py``, so that the overhead figures and the regression suites time the same
workloads. Sizes (``settings.bench_size()``):

- ``small``: a timed CPU run of the whole suite takes about 2 minutes, the correctness pass
  (benchmarks disabled, part of the normal test suite) about 15 s;
- ``paper``: the paper's widths and the recipes' batch sizes (SPEC §4–5), meant for a GPU.

Layer shapes are one representative 3×3 binary conv of each backbone (the most expensive one:
the first stage, where activations are largest). ``maps`` count learned feature maps; a ``cbcn``
layer has ``maps * K`` physical channels (SPEC §2), a plain layer ``maps``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cbcn.nn.layers import BinaryConv2d, reference_forward
from cbcn.nn.models import build_model

# ----------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class ConvShape:
    """One 3×3 conv: ``batch × in_maps × hw × hw -> out_maps`` (maps, not physical channels)."""

    name: str
    batch: int
    in_maps: int
    out_maps: int
    hw: int
    kernel: int = 3
    stride: int = 1
    padding: int = 1

    def __str__(self) -> str:
        return f"{self.batch}x{self.in_maps}x{self.hw}x{self.hw}->{self.out_maps} k{self.kernel}s{self.stride}"

    def flops(self, width: int = 1, ksum: bool = False) -> int:
        """Multiply-adds ×2 of the convolution at ``width`` physical channels per map.

        ``ksum``: the CBCN layer convolves ``in_maps`` (the K-sum identity, SPEC §2), not ``in_maps*K``.
        """
        out_hw = (self.hw + 2 * self.padding - self.kernel) // self.stride + 1
        cin = self.in_maps if ksum else self.in_maps * width
        return 2 * self.batch * out_hw * out_hw * self.out_maps * width * cin * self.kernel**2


@dataclass(frozen=True)
class TrainShape:
    """A backbone trained on a batch of images."""

    name: str
    model: str
    stages: str
    batch: int
    in_channels: int = 3
    image_size: int = 32
    num_classes: int = 10
    stem: str = "cifar"

    def __str__(self) -> str:
        stem = " imagenet-stem" if self.stem == "imagenet" else ""
        return f"{self.model} {self.stages}{stem} b{self.batch} {self.in_channels}x{self.image_size}x{self.image_size}"


LAYER_SHAPES = {
    "small": [
        ConvShape("lenet", 32, 10, 20, 16),  # LeNet 10-20-40-80, second conv
        ConvShape("cifar-resnet18", 16, 16, 16, 32),  # ResNet18 16-16-32-64, stage 1
        ConvShape("imagenet-resnet18", 1, 64, 64, 56),  # ResNet18 64-128-256-512, stage 1
    ],
    "paper": [
        ConvShape("lenet", 128, 10, 20, 16),
        ConvShape("cifar-resnet18", 128, 16, 16, 32),
        ConvShape("imagenet-resnet18", 32, 64, 64, 56),
    ],
}

TRAIN_SHAPES = {
    "small": [
        TrainShape("lenet", "lenet", "5-10-20-40", 32, in_channels=1),
        TrainShape("resnet18", "resnet18", "16-16-32-64", 16),
        TrainShape("wrn22", "wrn22", "16-16-32-64", 16),
        TrainShape("wrn40", "wrn40", "16-16-32-64", 8),
    ],
    "paper": [
        TrainShape("lenet", "lenet", "5-10-20-40", 128, in_channels=1),
        TrainShape("resnet18", "resnet18", "16-16-32-64", 128),
        TrainShape("wrn22", "wrn22", "16-16-32-64", 128),
        TrainShape("wrn40", "wrn40", "16-16-32-64", 128),
        TrainShape("resnet18-imagenet", "resnet18", "64-128-256-512", 32, image_size=224, num_classes=1000, stem="imagenet"),
    ],
}

# CiF weights (C_out, C_in, H): learned maps of one conv
CIF_SHAPES = {
    "small": [(16, 16, 3), (64, 64, 3)],
    "paper": [(64, 64, 3), (512, 512, 3), (64, 3, 7)],
}
ORIENTATIONS = {"small": (4,), "paper": (2, 4, 8)}

# activations (N, C, H, W) to pack: CBCN K=4 physical channels
PACK_SHAPES = {
    "small": [(16, 64, 32, 32), (1, 256, 56, 56)],
    "paper": [(128, 64, 32, 32), (32, 256, 56, 56), (32, 2048, 7, 7)],
}

# packed binary conv on a GPU: (N, C_in = C_out, hw), ImageNet ResNet18 stages and CBCN K=4 widths
GPU_CONV_SHAPES = {
    "small": [(8, 64, 56), (8, 256, 14)],
    "paper": [(32, 64, 56), (32, 128, 28), (32, 256, 14), (32, 512, 7), (32, 256, 56), (32, 2048, 7)],
}

# (method, K) for layers and training steps; "conv2d" is plain nn.Conv2d (the baseline)
BINARY_METHODS = ("fp", "bnn", "bwn", "xnor", "bireal", "cbcn")


def layer_cases(size: str) -> list[tuple[str, int]]:
    """nn.Conv2d at the learned width (the baseline), each method, CBCN at each K and nn.Conv2d
    with the same physical channels as that CBCN layer (the overhead target of issue 6)."""
    cases = [("conv2d", 1)] + [(m, 1) for m in BINARY_METHODS if m != "cbcn"]
    for K in ORIENTATIONS[size]:
        cases += [("cbcn", K), ("conv2d", K)]
    return cases


def train_cases(size: str) -> list[tuple[str, int]]:
    return [(m, 1) for m in BINARY_METHODS if m != "cbcn"] + [("cbcn", K) for K in ORIENTATIONS[size]]


def case_id(method: str, K: int) -> str:
    return f"{method}-K{K}" if method == "cbcn" or K > 1 else method


# ----------------------------------------------------------------------------- layers


def make_layer(method: str, K: int, shape: ConvShape, device) -> nn.Module:
    """``nn.Conv2d`` with ``maps*K`` physical channels for ``conv2d``, else ``BinaryConv2d``."""
    if method == "conv2d":
        layer = nn.Conv2d(shape.in_maps * K, shape.out_maps * K, shape.kernel, shape.stride, shape.padding, bias=False)
    else:
        layer = BinaryConv2d(shape.in_maps, shape.out_maps, shape.kernel, shape.stride, shape.padding, method=method, K=K)
    return layer.to(device)


def physical_in(layer: nn.Module) -> int:
    return layer.in_channels if isinstance(layer, nn.Conv2d) else layer.physical_in_channels


def layer_input(layer: nn.Module, shape: ConvShape, device, requires_grad: bool = False) -> torch.Tensor:
    """A batch-normalised-like input (binary layers see BN outputs, SPEC §3)."""
    x = torch.randn(shape.batch, physical_in(layer), shape.hw, shape.hw, device=device)
    return x.requires_grad_(requires_grad)


def reference_output(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The plain oracle with gradients: full effective bank (CiF for CBCN, no K-sum), ``F.conv2d``
    (``cbcn.nn.layers.reference_forward``); ``nn.Conv2d`` rows are their own reference."""
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding)
    return reference_forward(layer, x)


def forward_backward(layer: nn.Module, x: torch.Tensor, grad_out: torch.Tensor, fn=None):
    """One forward and backward of ``fn`` (default: the layer); returns ``(out, x.grad, weight.grad)``."""
    layer.weight.grad = None
    x.grad = None
    out = (fn or layer)(x)
    out.backward(grad_out)
    return out.detach(), x.grad, layer.weight.grad


# ----------------------------------------------------------------------------- training step


class TrainStep:
    """One SGD step (the paper's recipe: momentum 0.9, weight decay 1e-4, lr 0.01) on a fixed batch.

    Cross-entropy only (no center loss), so that methods differ by their layers alone.
    """

    lr, momentum, weight_decay = 0.01, 0.9, 1e-4

    def __init__(self, shape: TrainShape, method: str, K: int, device):
        self.shape, self.method, self.K, self.device = shape, method, K, torch.device(device)
        self.model = build_model(
            shape.model, method=method, stages=shape.stages, K=K, num_classes=shape.num_classes,
            in_channels=shape.in_channels, stem=shape.stem, image_size=shape.image_size,
        ).to(device).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        self.x = torch.randn(shape.batch, shape.in_channels, shape.image_size, shape.image_size, device=device)
        self.y = torch.randint(0, shape.num_classes, (shape.batch,), device=device)

    def __call__(self) -> torch.Tensor:
        self.opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def check_first_step(self, seed: int = 0) -> None:
        """Run the first step and check it against a reference: the loss and gradients of a copy of
        the model taken before the step, and SGD's first update ``p - lr * (g + wd * p)``."""
        ref = copy.deepcopy(self.model)
        before = [p.detach().clone() for p in self.model.parameters()]
        torch.manual_seed(seed)  # same dropout masks (LeNet)
        loss = self()
        torch.manual_seed(seed)
        ref_loss = F.cross_entropy(ref(self.x), self.y)
        grads = torch.autograd.grad(ref_loss, list(ref.parameters()))
        torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-5, atol=1e-6)
        for p, p0, g in zip(self.model.parameters(), before, grads):
            expected = p0 - self.lr * (g + self.weight_decay * p0)
            torch.testing.assert_close(p.detach(), expected, rtol=1e-4, atol=1e-6)
