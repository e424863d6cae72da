"""The paper's backbones (SPEC §4), buildable for every method (SPEC §3).

- LeNet ``a-b-c-d``: four 3×3 convs, each followed by max-pool and ReLU; classifier with dropout
  (``LENET_CLASSIFIERS``: dropout then one linear layer by default, or a hidden FC layer first).
- ResNet18 ``a-b-c-d``: stem of ``a`` maps, four stages of two BasicBlocks (strides 1, 2, 2, 2);
  CIFAR stem 3×3/1 without max-pool, ImageNet stem 7×7/2 with max-pool.
- WRN22 / WRN40 ``a-b-c-d`` (depth factor 1): stem of ``a``, three stages of (depth−4)/6 blocks.

Design decisions where the paper is silent (also in docs/DESIGN.md):
- The first conv, the classifier and the 1×1 downsampling shortcuts stay full precision in every
  method. For circulant models these are full-precision circulant convs (CiF of the real W),
  so the whole network keeps the K-orientation layout; the image is replicated K times.
- Plain (LeNet) units follow XNOR-Net's order: BatchNorm → sign → binary conv → pool → ReLU.
- Residual units are ``[sign →] conv → BatchNorm``. Full precision adds the usual ReLUs; binary
  methods put no ReLU in front of a sign (it would make every sign +1). ``standard`` shortcuts
  add one shortcut around the two convs of a block, ``double`` one around each conv (Fig. 7).
- Downsampling shortcut: average pool (stride) → 1×1 full-precision conv → BatchNorm.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from cbcn.nn.cif import check_orientations
from cbcn.nn.layers import BinaryConv2d
from cbcn.nn.methods import MethodSpec, get_method

MODELS = ("lenet", "resnet18", "wrn22", "wrn40")
STEMS = ("cifar", "imagenet")
#: LeNet's two readings of the paper's "a dropout layer after the fully connected layer" (Sec. 4.1):
#: ``linear`` = dropout → linear classifier (the default: four conv units, then the classifier);
#: ``hidden`` = FC to ``LENET_HIDDEN_UNITS`` → ReLU → dropout → linear classifier, a hidden FC layer
#: as in Caffe's LeNet (500 units), full precision like the classifier. DESIGN.md has the ablation.
LENET_CLASSIFIERS = ("linear", "hidden")
LENET_HIDDEN_UNITS = 500
DEFAULT_STAGES = {
    "lenet": (5, 10, 20, 40),
    "resnet18": (16, 16, 32, 64),
    "wrn22": (16, 16, 32, 64),
    "wrn40": (16, 16, 32, 64),
}


@dataclass(frozen=True)
class ConvFactory:
    """Builds every conv of a model with one method spec and K (the model's only conv recipe)."""

    spec: MethodSpec
    K: int
    weight_bases: int = 1  # ABC-Net's M and N (method abcnet)
    act_bases: int = 1

    @property
    def width(self) -> int:
        """Physical channels per feature map."""
        return self.K if self.spec.cbconv else 1

    def conv(self, in_maps, out_maps, kernel_size, stride=1, padding=0, binary=True) -> BinaryConv2d:
        return BinaryConv2d(in_maps, out_maps, kernel_size, stride, padding, method=self.spec, K=self.K, binary=binary,
                            weight_bases=self.weight_bases, act_bases=self.act_bases)

    def bn(self, maps: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(maps * self.width)


def parse_stages(stages, name: str) -> tuple[int, ...]:
    """``"5-10-20-40"`` or a sequence of four positive ints."""
    if stages is None:
        return DEFAULT_STAGES[name]
    if isinstance(stages, str):
        try:
            stages = tuple(int(s) for s in stages.split("-"))
        except ValueError:
            raise ValueError(f"stages must look like '16-16-32-64', got {stages!r}") from None
    stages = tuple(stages)
    if len(stages) != 4 or not all(isinstance(s, int) and s > 0 for s in stages):
        raise ValueError(f"{name} needs four positive stage widths a-b-c-d, got {stages!r}")
    return stages


class CBCNNet(nn.Module):
    """Common base: replicates the image K times for circulant models, exposes features."""

    def __init__(self, name: str, factory: ConvFactory, stages, in_channels: int, num_classes: int):
        super().__init__()
        self.name, self.factory = name, factory
        self.method, self.K, self.stages = factory.spec.name, factory.K, tuple(stages)
        self.in_channels, self.num_classes = in_channels, num_classes

    def enter_layout(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self.name} expects images (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        # channel c*K + k = sub-channel k of map c (SPEC §2)
        return x.repeat_interleave(self.factory.width, dim=1) if self.factory.width > 1 else x

    def forward(self, x: torch.Tensor, return_features: bool = False):
        features = self.forward_features(self.enter_layout(x))
        logits = self.classifier(features)
        return (logits, features) if return_features else logits


class LeNet(CBCNNet):
    def __init__(self, factory: ConvFactory, stages, in_channels=1, num_classes=10, image_size=32, dropout=0.5,
                 classifier: str = "linear"):
        super().__init__("lenet", factory, stages, in_channels, num_classes)
        if image_size % 16:
            raise ValueError(f"LeNet halves the image four times: image_size must be a multiple of 16, got {image_size}")
        units, prev = [], in_channels
        for i, maps in enumerate(stages):
            first = i == 0
            unit = [] if first else [factory.bn(prev)]  # XNOR order: BN -> sign -> conv
            unit += [factory.conv(prev, maps, 3, padding=1, binary=not first), nn.MaxPool2d(2), nn.ReLU(inplace=False)]
            units.append(nn.Sequential(*unit))
            prev = maps
        self.units = nn.Sequential(*units)
        self.feature_dim = stages[-1] * factory.width * (image_size // 16) ** 2
        self.classifier_kind = classifier
        if classifier == "hidden":
            self.classifier = nn.Sequential(nn.Linear(self.feature_dim, LENET_HIDDEN_UNITS), nn.ReLU(),
                                            nn.Dropout(dropout), nn.Linear(LENET_HIDDEN_UNITS, num_classes))
        else:
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, num_classes))

    def forward_features(self, x):
        return torch.flatten(self.units(x), 1)


class BasicBlock(nn.Module):
    """Two 3×3 convs with BatchNorm after each; one shortcut per block or one per conv."""

    def __init__(self, factory: ConvFactory, in_maps: int, out_maps: int, stride: int, shortcut: str):
        super().__init__()
        self.full_precision = not (factory.spec.binary_acts or factory.spec.binary_weights)
        self.shortcut_kind = shortcut
        self.conv1, self.bn1 = factory.conv(in_maps, out_maps, 3, stride, 1), factory.bn(out_maps)
        self.conv2, self.bn2 = factory.conv(out_maps, out_maps, 3, 1, 1), factory.bn(out_maps)
        self.downsample = None
        if stride != 1 or in_maps != out_maps:
            pool = [nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)] if stride > 1 else []
            self.downsample = nn.Sequential(*pool, factory.conv(in_maps, out_maps, 1, binary=False), factory.bn(out_maps))

    def _act(self, x):
        return F.relu(x) if self.full_precision else x

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        if self.shortcut_kind == "double":
            y = self._act(self.bn1(self.conv1(x)) + identity)
            return self._act(self.bn2(self.conv2(y)) + y)
        y = self._act(self.bn1(self.conv1(x)))
        return self._act(self.bn2(self.conv2(y)) + identity)


class ResNet(CBCNNet):
    """ResNet18 (``blocks=(2, 2, 2, 2)``) and WRN (``blocks=(n, n, n)``) on one code path."""

    def __init__(self, name, factory: ConvFactory, stages, blocks, strides, in_channels=3, num_classes=10, stem="cifar"):
        super().__init__(name, factory, stages, in_channels, num_classes)
        if stem not in STEMS:
            raise ValueError(f"unknown stem {stem!r}; valid choices: {list(STEMS)}")
        self.stem_kind = stem
        fp = not (factory.spec.binary_acts or factory.spec.binary_weights)
        a = stages[0]
        stem_layers = (
            [factory.conv(in_channels, a, 3, 1, 1, binary=False), factory.bn(a)]
            if stem == "cifar"
            else [factory.conv(in_channels, a, 7, 2, 3, binary=False), factory.bn(a)]
        )
        if fp:
            stem_layers.append(nn.ReLU())
        if stem == "imagenet":
            stem_layers.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem_layers)
        widths = stages if len(blocks) == 4 else stages[1:]
        shortcut = factory.spec.shortcut
        layers, prev = [], a
        for width, n, stride in zip(widths, blocks, strides):
            for i in range(n):
                layers.append(BasicBlock(factory, prev, width, stride if i == 0 else 1, shortcut))
                prev = width
        self.blocks = nn.Sequential(*layers)
        self.feature_dim = prev * factory.width
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def forward_features(self, x):
        x = F.relu(self.blocks(self.stem(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def build_model(
    name: str,
    method: str = "fp",
    stages=None,
    K: int = 1,
    num_classes: int = 10,
    in_channels: int = 3,
    stem: str = "cifar",
    image_size: int = 32,
    cbconv: bool | None = None,
    shortcut: str | None = None,
    act_surrogate: str | None = None,
    weight_surrogate: str | None = None,
    weight_bases: int = 1,
    act_bases: int = 1,
    lenet_classifier: str = "linear",
) -> CBCNNet:
    """Build a backbone for a method, e.g.
    ``build_model("resnet18", method="cbcn", stages=(16, 16, 32, 64), K=4, num_classes=10)``.

    ``cbconv``, ``shortcut``, ``act_surrogate`` and ``weight_surrogate`` are the Table 3 ablation
    switches; ``None`` keeps the method's default (``cbcn.nn.methods.METHODS``). ``weight_bases``
    and ``act_bases`` are ABC-Net's M and N (``cbcn.nn.bases``; method ``abcnet`` only).
    ``lenet_classifier`` picks LeNet's classifier (``LENET_CLASSIFIERS``).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid choices: {list(MODELS)}")
    spec = get_method(method).with_switches(cbconv, shortcut, act_surrogate, weight_surrogate)
    check_orientations(K)
    if K != 1 and not spec.cbconv:
        raise ValueError(f"K={K} needs circulant layers (method 'cbcn' or cbconv=True); method {method!r} uses K=1")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
    if name == "resnet18" and stages is None and stem == "imagenet":
        stages = (64, 128, 256, 512)
    stages = parse_stages(stages, name)
    if not spec.bases and (weight_bases, act_bases) != (1, 1):
        raise ValueError(f"weight_bases/act_bases (M, N) are ABC-Net's (method 'abcnet'); method {method!r} "
                         f"has one base each")
    if lenet_classifier not in LENET_CLASSIFIERS:
        raise ValueError(f"unknown LeNet classifier {lenet_classifier!r}; valid choices: {list(LENET_CLASSIFIERS)}")
    if name != "lenet" and lenet_classifier != "linear":
        raise ValueError(f"lenet_classifier={lenet_classifier!r} is LeNet's; {name} has its own classifier")
    factory = ConvFactory(spec, K, weight_bases, act_bases)
    if name == "lenet":
        return LeNet(factory, stages, in_channels, num_classes, image_size, classifier=lenet_classifier)
    if name == "resnet18":
        return ResNet(name, factory, stages, (2, 2, 2, 2), (1, 2, 2, 2), in_channels, num_classes, stem)
    depth = int(name[3:])
    n = (depth - 4) // 6
    return ResNet(name, factory, stages, (n, n, n), (1, 2, 2), in_channels, num_classes, stem)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe_model(model: CBCNNet) -> dict:
    """What a report needs beside the accuracy: learned parameters, maps, physical channels."""
    convs = [m for m in model.modules() if isinstance(m, BinaryConv2d)]
    binary = [m for m in convs if m.binary_weights]
    return {
        "model": model.name,
        "method": model.method,
        "K": model.K,
        **({"weight_bases": model.factory.weight_bases, "act_bases": model.factory.act_bases}
           if model.factory.spec.bases else {}),
        "cbconv": model.factory.spec.cbconv,
        "shortcut": model.factory.spec.shortcut,
        **({"lenet_classifier": model.classifier_kind} if isinstance(model, LeNet) else {}),
        "stages_maps": "-".join(str(s) for s in model.stages),
        "stages_physical_channels": "-".join(str(s * model.factory.width) for s in model.stages),
        "learned_parameters": count_parameters(model),
        "binary_weight_parameters": sum(m.weight.numel() for m in binary),  # learned (ABC-Net: M bases each)
        "real_parameters": count_parameters(model) - sum(m.weight.numel() for m in binary),
        "binary_layers": len(binary),
        "conv_layers": len(convs),
    }
