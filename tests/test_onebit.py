"""True 1-bit models: conversion, 1-bit checkpoint, identical predictions, backend dispatch."""
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cbcn.nn.layers import BinaryConv2d
from cbcn.nn.models import build_model
from cbcn.onebit import backends
from cbcn.onebit.backends import cpu as cpu_engine
from cbcn.onebit.convert import (OneBitConv2d, backend_summary, checkpoint_size_report, convert_to_onebit, load_onebit,
                                 save_onebit, set_backend)
from cbcn.training.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
HAVE_TRITON = importlib.util.find_spec("triton") is not None


def _train_a_few_steps(model, shape, steps=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    y = torch.randint(0, model.num_classes, (shape[0],), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return torch.randn(*shape, generator=g)


@pytest.mark.parametrize(
    "name,method,stages,K,image,kw",
    [
        ("resnet18", "cbcn", (4, 4, 8, 8), 4, 8, {}),
        ("resnet18", "xnor", (8, 8, 16, 16), 1, 8, {}),
        ("resnet18", "bireal", (8, 8, 16, 40), 1, 9, {}),
        ("resnet18", "bnn", (8, 8, 16, 16), 1, 8, {}),
        ("lenet", "cbcn", (2, 3, 4, 5), 2, 32, {}),
        ("lenet", "xnor", (2, 3, 4, 5), 1, 32, {"lenet_classifier": "hidden"}),
        ("wrn22", "cbcn", (4, 4, 8, 8), 8, 8, {}),
    ],
)
def test_convert_save_load_identical_predictions(tmp_path, name, method, stages, K, image, kw):
    torch.manual_seed(0)
    in_ch = 1 if name == "lenet" else 3
    model = build_model(name, method=method, stages=stages, K=K, num_classes=10, in_channels=in_ch, **kw)
    x = _train_a_few_steps(model, (4, in_ch, image, image))
    with torch.no_grad():
        logits = model(x)
    onebit = convert_to_onebit(model, backend="reference")
    n_binary = sum(isinstance(m, BinaryConv2d) and m.binary_weights and m.binary_acts for m in model.modules())
    assert sum(isinstance(m, OneBitConv2d) for m in onebit.modules()) == n_binary > 0
    assert not any(isinstance(m, BinaryConv2d) and m.binary_weights for m in onebit.modules())
    with torch.no_grad():
        assert torch.equal(onebit(x), logits)  # integer conv exact, float ops in the same order
    path = tmp_path / "model.1bit.pt"
    save_onebit(onebit, path)
    loaded = load_onebit(path)
    assert not loaded.training
    with torch.no_grad():
        out = loaded(x)
    assert torch.equal(out, logits)
    assert torch.equal(out.argmax(1), logits.argmax(1))


def test_onebit_layers_hold_only_bits():
    model = build_model("resnet18", method="cbcn", stages=(4, 4, 8, 8), K=4).eval()
    onebit = convert_to_onebit(model)
    layer = onebit.blocks[0].conv1
    assert isinstance(layer, OneBitConv2d)
    assert not list(layer.parameters())  # no float weights
    assert layer.packed_weight.dtype == torch.int32
    assert layer.packed_weight.shape == (4, 3, 3, 1)  # signs of the learned W (out_maps, H, H, words(in_maps))
    assert layer.alpha.shape == (4,)  # per learned map
    assert layer.packed_weight_bits() == 4 * 4 * 9


def test_checkpoint_size_resnet18_cbcn_k4(tmp_path):
    """ResNet18 16-16-32-64 CBCN K=4: 1-bit vs fp32 bytes on disk, and what the rest is.

    The binary weights shrink 32x; the checkpoint as a whole is bounded by the full-precision parts
    that stay exact (first conv, 1x1 shortcuts, classifier, batch-norm over K*maps channels).
    """
    model = build_model("resnet18", method="cbcn", stages=(16, 16, 32, 64), K=4).eval()
    report = checkpoint_size_report(model, directory=tmp_path)
    parts = report["onebit_breakdown_bytes"]
    n_bits = sum(m.weight.numel() for m in model.modules() if isinstance(m, BinaryConv2d) and m.binary_weights and m.binary_acts)
    assert parts["packed binary weights (1 bit each)"] <= n_bits // 8 + 16 * 8
    assert sum(parts.values()) == report["onebit_checkpoint_bytes"]
    assert 0 < parts["container (zip/pickle, index)"] < 4096
    assert report["ratio"] > 8.0, report
    print(report)


def test_backend_env_and_repr(monkeypatch):
    model = build_model("resnet18", method="xnor", stages=(4, 4, 8, 8)).eval()
    onebit = convert_to_onebit(model)
    monkeypatch.setenv("CBCN_BACKEND", "reference")
    assert backends.resolve_backend() == "reference"
    assert "backend=reference->reference (cpu)" in repr(onebit)
    monkeypatch.setenv("CBCN_BACKEND", "auto")
    expected = "triton" if torch.cuda.is_available() and backends.triton_available() else "cpu"
    assert backends.resolve_backend(device="cpu") == "cpu"  # the CPU engine for CPU tensors
    assert backends.resolve_backend() == expected
    assert backend_summary(onebit)["backends"] == [f"auto->cpu[{cpu_engine.describe()}] (cpu)"]
    assert f"backend=auto->cpu[{cpu_engine.describe()}] (cpu)" in repr(onebit)
    monkeypatch.setenv("CBCN_BACKEND", "gpu")
    with pytest.raises(ValueError, match="CBCN_BACKEND"):
        backends.resolve_backend()
    with pytest.raises(ValueError, match="backend"):
        backends.resolve_backend("fast")
    with pytest.raises(ValueError, match="path"):
        set_backend(onebit, "reference", path="xor")


@pytest.mark.skipif(not HAVE_TRITON, reason="Triton not installed")
@pytest.mark.parametrize("path", ["mma", "mma_fp8", "popcount"])
def test_forced_triton_backend_matches_on_cpu(path):
    """backend='triton' on CPU tensors runs the kernels in the interpreter: same logits."""
    from triton_kernels._runtime import interpreter_problem

    if interpreter_problem():
        pytest.skip(interpreter_problem())
    torch.manual_seed(1)
    model = build_model("resnet18", method="cbcn", stages=(2, 2, 4, 4), K=2)
    x = _train_a_few_steps(model, (2, 3, 7, 7), steps=2)
    with torch.no_grad():
        logits = model(x)
    onebit = convert_to_onebit(model, backend="triton", path=path)
    assert "backend=triton->triton (cpu)" in repr(onebit)
    with torch.no_grad():
        assert torch.equal(onebit(x), logits)


def test_cbcn_ksum_form_equals_full_bank():
    """A CBCN 1-bit layer convolves in the K-sum form on the GEMM paths and the reference (rotated
    bank over the learned maps) and with the full CiF bank on popcount paths (the Triton
    ``popcount`` path, the CPU engine's native kernels): the same logits either way."""
    torch.manual_seed(2)
    model = build_model("resnet18", method="cbcn", stages=(2, 3, 4, 4), K=4)
    x = _train_a_few_steps(model, (2, 3, 7, 7), steps=1)
    onebit = convert_to_onebit(model, backend="reference")
    layer = next(m for m in onebit.modules() if isinstance(m, OneBitConv2d))
    assert layer.ksum == 4 and "ksum=4" in repr(layer)
    assert layer.weight_bank().shape[-1] == 1 and layer.weight_bank().shape[0] == layer.out_maps * 4
    with torch.no_grad():
        ksum_logits = onebit(x)
        set_backend(onebit, "reference", path="popcount")
        assert layer.ksum == 1 and "ksum" not in repr(layer)
        assert torch.equal(onebit(x), ksum_logits)
        assert torch.equal(model(x), ksum_logits)
        set_backend(onebit, "cpu", path="mma")
        assert layer.ksum == (1 if cpu_engine.engine_path() == "native" else 4)
        assert torch.equal(onebit(x), ksum_logits)


def test_cbcn_imports_without_triton():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["triton"] = None  # make `import triton` fail
        import torch
        import cbcn, cbcn.onebit.backends, cbcn.onebit.backends.reference, cbcn.onebit.backends.cpu, cbcn.onebit.convert
        from cbcn.nn.models import build_model
        assert not cbcn.onebit.backends.triton_available()
        assert cbcn.onebit.backends.resolve_backend("auto", device="cpu") == "cpu"
        try:
            cbcn.onebit.backends.resolve_backend("triton")
        except RuntimeError as e:
            assert "Triton" in str(e)
        else:
            raise AssertionError("forcing triton without Triton must fail")
        m = cbcn.onebit.convert.convert_to_onebit(build_model("resnet18", method="xnor", stages=(4, 4, 8, 8)))
        m(torch.randn(1, 3, 8, 8))
        print("OK")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("CBCN_BACKEND", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


def test_errors(tmp_path):
    fp = build_model("resnet18", method="fp", stages=(4, 4, 8, 8))
    with pytest.raises(ValueError, match="no layer"):
        convert_to_onebit(fp)
    with pytest.raises(ValueError, match="converted"):
        save_onebit(fp, tmp_path / "x.pt")
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not a cbcn-onebit"):
        load_onebit(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="no 1-bit checkpoint"):
        load_onebit(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_onebit(tmp_path / "corrupt.pt")
    onebit = convert_to_onebit(build_model("resnet18", method="xnor", stages=(4, 4, 8, 8)))
    with pytest.raises(ValueError, match="expects input"):
        onebit.blocks[0].conv1(torch.randn(1, 5, 4, 4))
