"""(f) The CPU engine (``cbcn.onebit.backends.cpu``): binary layers and whole 1-bit models against float.

Per layer, one group per shape (the binary convs of the three models of
``benchmarks/cpu_engine_bench.py``): ``float`` (the group's baseline: ``nn.Conv2d`` at the same
physical widths, channels-last, then the steps the 1-bit epilogue fuses as separate ops),
``1-bit cpu`` (the fused packed conv on the engine's path) and ``1-bit reference``. Per model:
``float (physical widths)`` (baseline), the binary training model and the 1-bit model.

Checks: every 1-bit output equals the reference's (layers) or the training model's logits
(models), bit for bit. ``benchmarks/cpu_engine_bench.py`` prints the side-by-side tables with
interleaved medians; this suite feeds the saved-baseline regression gate (docs/BENCHMARKS.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

import settings
from cbcn.onebit.backends import cpu, reference
from cbcn.onebit.backends.epilogue import BatchNormEval, Epilogue
from cbcn.nn.models import build_model
from cbcn.onebit.convert import convert_to_onebit

SIZE = settings.bench_size()
BATCH = {"small": 8, "paper": 64}[SIZE]


@dataclass(frozen=True)
class LayerCase:
    """One binary conv of the three models, with its fused epilogue."""

    name: str
    C_in: int
    C_out: int
    size: int
    stride: int = 1
    pool: bool = False  # LeNet: max-pool + ReLU + the next BN; ResNet: BN + residual
    residual: bool = True

    def __str__(self):
        return f"{self.C_in}->{self.C_out} {self.size}x{self.size} s{self.stride}"


LAYERS = [
    LayerCase("xnor-conv2_x", 16, 16, 32), LayerCase("xnor-conv3_x", 16, 16, 16),
    LayerCase("xnor-conv4_x", 32, 32, 8), LayerCase("xnor-conv5_x", 64, 64, 4),
    LayerCase("cbcn-conv2_x", 64, 64, 32), LayerCase("cbcn-conv5_x", 256, 256, 4),
    LayerCase("cbcn-down", 64, 128, 32, stride=2, residual=False),
    LayerCase("lenet-unit2", 40, 80, 16, pool=True, residual=False),
    LayerCase("lenet-unit4", 160, 320, 4, pool=True, residual=False),
]
MODELS = {
    "resnet18 16-16-32-64 xnor": dict(name="resnet18", method="xnor", stages=(16, 16, 32, 64), K=1, in_channels=3),
    "resnet18 16-16-32-64 cbcn K=4": dict(name="resnet18", method="cbcn", stages=(16, 16, 32, 64), K=4, in_channels=3),
    "lenet 10-20-40-80 cbcn K=4": dict(name="lenet", method="cbcn", stages=(10, 20, 40, 80), K=4, in_channels=1),
}


@pytest.fixture
def cpu_only(device):
    if device.type != "cpu":
        pytest.skip("the CPU engine's suite runs on the CPU (CBCN_BENCH_DEVICE=cpu)")


def _layer_inputs(case: LayerCase):
    g = torch.Generator().manual_seed(0)
    out = (case.size + 2 - 3) // case.stride + 1
    bn = nn.BatchNorm2d(case.C_out).eval()
    with torch.no_grad():
        bn.running_mean.normal_(generator=g)
        bn.running_var.uniform_(0.5, 2, generator=g)
    x = torch.randn(BATCH, case.C_in, case.size, case.size, generator=g).contiguous(memory_format=torch.channels_last)
    w = torch.randn(case.C_out, case.C_in, 3, 3, generator=g)
    final = out // 2 if case.pool else out
    residual = torch.randn(BATCH, case.C_out, final, final, generator=g).contiguous(memory_format=torch.channels_last)
    ep = Epilogue(scale=torch.rand(case.C_out, generator=g), bn=BatchNormEval.from_module(bn), packed=True,
                  pool="max2" if case.pool else "", relu=case.pool, residual=residual if case.residual else None)
    return x, w, bn, ep


def _float_layer(case: LayerCase, x, w, bn, ep):
    conv = nn.Conv2d(case.C_in, case.C_out, 3, case.stride, 1, bias=False).to(memory_format=torch.channels_last)
    with torch.no_grad():
        conv.weight.copy_(w)

    def run():
        y = conv(x)
        if case.pool:
            y = torch.relu(torch.max_pool2d(y, 2))
        y = bn(y)
        return y + ep.residual if ep.residual is not None else y

    return run


@pytest.mark.parametrize("path", ["float", "1-bit cpu", "1-bit reference"])
@pytest.mark.parametrize("case", LAYERS, ids=[c.name for c in LAYERS])
def test_cpu_layer(benchmark, record, cpu_only, case, path):
    x, w, bn, ep = _layer_inputs(case)
    xp, wp = reference.pack_signs(x), reference.pack_signs(w)
    macs = BATCH * ((case.size + 2 - 3) // case.stride + 1) ** 2 * case.C_out * case.C_in * 9
    record("cpu-layer", f"{case.name} {case}", shape=str(case), batch=BATCH, path=path, flops=2 * macs,
           engine=cpu.describe(), baseline=path == "float")
    if path == "float":
        with torch.no_grad():
            benchmark(_float_layer(case, x, w, bn, ep))
        return
    fn = cpu.fused_conv2d if path == "1-bit cpu" else reference.fused_conv2d_reference
    with torch.no_grad():
        real, packed = benchmark(fn, xp, wp, case.C_in, case.stride, 1, ep)
    exp_real, exp_packed = reference.fused_conv2d_reference(xp, wp, case.C_in, case.stride, 1, ep)
    assert torch.equal(real, exp_real) and torch.equal(packed, exp_packed)


@pytest.mark.parametrize("contender", ["float (physical widths)", "binary training model", "1-bit cpu"])
@pytest.mark.parametrize("label", list(MODELS))
def test_cpu_model(benchmark, record, cpu_only, label, contender):
    spec = MODELS[label]
    torch.manual_seed(0)
    trained = build_model(**spec).eval()
    x = torch.randn(BATCH, spec["in_channels"], 32, 32, generator=torch.Generator().manual_seed(1))
    record("cpu-model", label, model=label, batch=BATCH, path=contender, items=BATCH, unit="images",
           engine=cpu.describe(), baseline=contender == "float (physical widths)")
    if contender == "float (physical widths)":
        phys = tuple(s * spec["K"] for s in spec["stages"])
        fp = build_model(spec["name"], method="fp", stages=phys, in_channels=spec["in_channels"]).eval()
        fp = fp.to(memory_format=torch.channels_last)
        xc = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            benchmark(fp, xc)
        return
    model = trained if contender == "binary training model" else convert_to_onebit(trained, backend="cpu")
    with torch.no_grad():
        logits = benchmark(model, x)
        assert torch.equal(logits, trained(x))
