"""1-bit models as PyTorch programs (cbcn.onebit.export): torch.export gives the eager model's
logits exactly; torch.compile (fullgraph) and the AOTInductor package of ``cbcn export`` agree with
the eager model within the stated tolerance (Inductor rounds the full-precision parts its own
way: argmax agreement >= 99.9% on 10,000 inputs, the largest logit difference reported); the
package runs in a fresh process with the operators and none of cbcn's model code; a layer the
operators cannot express, and a package loaded without them, get one line."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from cbcn.onebit.backends.cpu import native
from cbcn.onebit.convert import convert_to_onebit, save_onebit, set_backend
from cbcn.onebit.export import agreement, export_program, operator_problem, random_batches, write_package

from _trained import trained_model

ROOT = Path(__file__).resolve().parents[1]
NATIVE = native.load() is not None
pytestmark = pytest.mark.skipif(not NATIVE, reason=f"the cbcn operators cannot run here: {native.problem()}")
MODELS = [  # (name, method, stages, K, image)
    ("resnet18", "xnor", (8, 8, 16, 16), 1, 9),
    ("resnet18", "cbcn", (4, 4, 8, 8), 4, 16),
    ("lenet", "cbcn", (2, 3, 4, 5), 4, 16),
]
ARGMAX_AGREEMENT = 0.999  # the compiled forms (see the module docstring)


def _model(name, method, stages, K, image):
    g = torch.Generator().manual_seed(7)
    trained, in_ch = trained_model(name, method, stages, K, image, g)
    return trained, convert_to_onebit(trained, backend="cpu"), (in_ch, image, image)


@pytest.mark.parametrize("case", MODELS, ids=[f"{m[0]}-{m[1]}-K{m[3]}" for m in MODELS])
def test_exported_program_is_exact_with_a_dynamic_batch(case):
    trained, onebit, shape = _model(*case)
    program = export_program(onebit, torch.zeros(2, *shape))
    calls = {n.target.name() for n in program.graph.nodes if n.op == "call_function" and "cbcn" in str(n.target)}
    assert "cbcn::binary_conv2d" in calls, calls
    for batch in (1, 5):
        x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            got = program.module()(x)
            for want in (onebit(x), trained(x)):  # bit for bit (a NaN where the model has one)
                torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=f"{case}, batch {batch}")


def test_compiled_model_agrees_with_the_eager_model():
    _, onebit, shape = _model(*MODELS[0])
    compiled = torch.compile(onebit, fullgraph=True)
    result = agreement(onebit, compiled, random_batches(shape, 10_000, batch=1000))
    print("torch.compile:", result)
    assert result.inputs == 10_000 and result.argmax_agreement >= ARGMAX_AGREEMENT, result


def test_package_runs_in_a_fresh_process_without_the_model_code(tmp_path):
    _, onebit, shape = _model(*MODELS[1])
    package = write_package(onebit, torch.zeros(2, *shape), tmp_path / "cbcn.pt2")
    with zipfile.ZipFile(package) as archive:  # the operators called through their C shims, not boxed
        code = "".join(archive.read(n).decode() for n in archive.namelist() if n.endswith("wrapper.cpp"))
    assert "aoti_torch_cpu_binary_conv2d(" in code and "proxy_executor_call_function" not in code
    inputs = torch.cat(list(random_batches(shape, 10_000, batch=1000)))
    with torch.no_grad():
        torch.save({"x": inputs, "logits": onebit(inputs)}, tmp_path / "io.pt")
    script = f"""
import sys, torch
import cbcn.onebit.ops as ops
model = ops.load_package({str(package)!r})
io = torch.load({str(tmp_path / 'io.pt')!r})
with torch.no_grad():
    got = torch.cat([model(io['x'][i:i + 1000]) for i in range(0, len(io['x']), 1000)])
    one = model(io['x'][:1])
assert torch.allclose(one, got[:1], rtol=1e-5, atol=1e-6)  # batch 1 as in a batch of 1000
model_code = sorted(m for m in sys.modules if m.startswith(('cbcn.nn.models', 'cbcn.nn.layers', 'cbcn.onebit.convert')))
diff = (got - io['logits']).abs().max().item()
agree = (got.argmax(1) == io['logits'].argmax(1)).float().mean().item()
print('RESULT', diff, agree, model_code)
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT"))
    _, diff, agree, model_code = line.split(" ", 3)
    print("AOTInductor package:", line)
    assert model_code == "[]" and float(agree) >= ARGMAX_AGREEMENT, line
    # without the operators: one line that says what to install or import
    res = subprocess.run([sys.executable, "-c", f"import cbcn.onebit.ops as ops; ops.load_package({str(package)!r})"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "CBCN_NATIVE": "0"})
    assert res.returncode != 0 and "cbcn operators cannot run here: disabled by CBCN_NATIVE=0" in res.stderr


def test_a_layer_off_the_operators_is_named(tmp_path):
    _, onebit, _ = _model(*MODELS[0])
    set_backend(onebit, "reference")
    assert operator_problem(onebit).startswith("layer blocks.0.conv1 runs on reference")
    save_onebit(set_backend(onebit, "cpu"), tmp_path / "m.pt")
    bad = subprocess.run([sys.executable, "-m", "cbcn.cli", "export", str(tmp_path / "m.pt"), str(tmp_path / "m.zip")],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert bad.returncode == 2 and bad.stderr.strip() == f"cbcn: error: the package name must end in .pt2, got {tmp_path / 'm.zip'}"
