"""The CPU engine (``cbcn.onebit.backends.cpu``) against the reference, bit for bit.

Per conv: random shapes (odd spatial sizes, channel counts that are not multiples of 8/32/64,
strides 1 and 2, padding 0/1/2, kernels 1/3/5, batch 1 and more) with every epilogue step, on
each path the machine can run: the native kernels as built for this CPU (AVX-512 where it has
it), the same kernels built portable (scalar popcount), ``torch._int_mm`` and the reference.
Per model: the 1-bit logits ``torch.equal`` to the training model's in eval mode for every
packable method, K and backbone. Then the choice of path, its fallbacks and its repr.
"""
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cbcn.nn.models import build_model
from cbcn.onebit.backends import cpu, reference
from cbcn.onebit.backends.cpu import intmm, native
from cbcn.onebit.backends.epilogue import BatchNormEval, Epilogue
from cbcn.onebit.convert import OneBitConv2d, carried_packed_signs, convert_to_onebit

ROOT = Path(__file__).resolve().parents[1]
NATIVE = native.load() is not None


def _rand(*shape, g):
    return torch.randn(*shape, generator=g)


def random_case(rng: random.Random, g: torch.Generator):
    """One random conv with a random epilogue: ``(x_packed, w_packed, C_in, stride, padding, epilogue)``."""
    while True:
        N = rng.choice([1, 2, 3])
        C = rng.choice([1, 3, 5, 8, 15, 16, 17, 31, 32, 33, 40, 63, 64, 65, 100, 130])
        C_out = rng.choice([1, 3, 9, 16, 17, 20, 32, 33, 48, 64, 80])
        H, W = rng.randint(1, 11), rng.randint(1, 11)
        k = rng.choice([1, 3, 3, 3, 5])
        stride = rng.choice([1, 2])
        pad = rng.choice([0, 1, 2]) if k > 1 else rng.choice([0, 1])
        if H + 2 * pad >= k and W + 2 * pad >= k:
            break
    OH, OW = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    x = reference.pack_signs(_rand(N, C, H, W, g=g))
    w = reference.pack_signs(_rand(C_out, C, k, k, g=g))
    bn = torch.nn.BatchNorm2d(C_out).eval()
    with torch.no_grad():
        bn.running_mean.normal_(generator=g)
        bn.running_var.uniform_(0.05, 3.0, generator=g)
        bn.weight.normal_(generator=g)
        bn.bias.normal_(generator=g)
    pool = rng.choice(["max2", "avg2"]) if OH >= 2 and OW >= 2 and rng.random() < 0.4 else ""
    if pool == "" and rng.random() < 0.1:
        pool = "avg2"  # also on outputs smaller than 2x2 (ceil mode: one-element windows)
    PH, PW = Epilogue(pool=pool).output_size(OH, OW)
    residual = _rand(N, C_out, PH, PW, g=g)
    if rng.random() < 0.5:
        residual = residual.contiguous(memory_format=torch.channels_last)
    ep = Epilogue(
        scale=torch.rand(C_out, generator=g) + 0.1 if rng.random() < 0.7 else None,
        bias=_rand(C_out, g=g) if rng.random() < 0.3 else None,
        pool=pool, relu=rng.random() < 0.3,
        bn=BatchNormEval.from_module(bn) if rng.random() < 0.5 else None,
        residual=residual if rng.random() < 0.5 else None,
        real=True, packed=rng.random() < 0.6,
    )
    if rng.random() < 0.2:  # the folded form of the keyword API instead of the exact batch-norm
        ep = ep.with_(bn=None, affine=(_rand(C_out, g=g), _rand(C_out, g=g)))
    if rng.random() < 0.2:
        ep = ep.with_(real=False, packed=True)
    return x, w, C, stride, pad, ep


def _assert_same(expected, got, what):
    for name, a, b in zip(("real", "packed"), expected, got):
        assert (a is None) == (b is None), (what, name)
        if a is not None:
            assert torch.equal(a, b), (what, name, (a.float() - b.float()).abs().max())


@pytest.mark.parametrize("path", ["native", "intmm", "reference"])
def test_fused_conv_equals_reference_on_random_shapes(path):
    if path == "native" and not NATIVE:
        pytest.skip(f"native kernels unavailable here: {native.problem()}")
    if path == "intmm" and not intmm.available():
        pytest.skip("torch._int_mm unavailable")
    rng, g = random.Random(7), torch.Generator().manual_seed(7)
    for i in range(60):
        x, w, C, s, p, ep = random_case(rng, g)
        fmt = torch.channels_last if i % 2 else torch.contiguous_format
        expected = reference.fused_conv2d_reference(x, w, C, s, p, ep)
        got = cpu.fused_conv2d(x, w, C, s, p, ep, memory_format=fmt, cpu_path=path)
        _assert_same(expected, got, (i, tuple(x.shape), tuple(w.shape), s, p, ep.pool))
        if got[0] is not None:
            assert got[0].is_contiguous(memory_format=fmt)


def test_portable_native_kernels_are_exact_too(tmp_path):
    """The kernels built without AVX-512 (scalar popcount loops; what a CPU without AVX-512 gets)."""
    code = textwrap.dedent("""
        import random, torch
        from cbcn.onebit.backends import cpu, reference
        from cbcn.onebit.backends.cpu import native
        import test_cpu_engine as t
        lib = native.load()
        assert lib is not None, native.problem()
        assert lib.variant == "scalar", lib.variant
        rng, g = random.Random(11), torch.Generator().manual_seed(11)
        for i in range(25):
            x, w, C, s, p, ep = t.random_case(rng, g)
            t._assert_same(reference.fused_conv2d_reference(x, w, C, s, p, ep),
                           cpu.fused_conv2d(x, w, C, s, p, ep, cpu_path="native"), i)
        v = torch.randn(3, 37, 5, 4)
        assert torch.equal(cpu.pack_signs(v), reference.pack_signs(v))
        print("OK", lib.variant)
    """)
    env = {**os.environ, "CBCN_NATIVE_FLAGS": "-mpopcnt -mno-avx512f", "CBCN_CACHE_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    if "could not build" in res.stderr + res.stdout:
        pytest.skip("no C compiler here")
    assert res.returncode == 0 and "OK scalar" in res.stdout, res.stderr[-3000:]


def test_keyword_api_equals_reference():
    g = torch.Generator().manual_seed(3)
    x = reference.pack_signs(_rand(2, 37, 7, 6, g=g))
    w = reference.pack_signs(_rand(20, 37, 3, 3, g=g))
    kw = dict(scale=torch.rand(20, generator=g), bias=_rand(20, g=g), bn_scale=_rand(20, g=g), bn_shift=_rand(20, g=g))
    for binarize in (False, True):
        assert torch.equal(cpu.packed_conv2d(x, w, 37, 2, 1, binarize_output=binarize, **kw),
                           reference.packed_conv2d_reference(x, w, 37, 2, 1, binarize_output=binarize, **kw))
    # the K-sum form: the engine expands a K-sum bank to the full bank it convolves
    maps, K = 9, 4
    W = _rand(6, maps, 3, 3, g=g)
    xs = reference.pack_signs(_rand(2, maps * K, 5, 5, g=g))
    rot = reference.cif_pack_bank_reference(W, K, ksum=True)
    assert torch.equal(cpu.packed_conv2d(xs, rot, maps * K, 1, 1, ksum=K),
                       reference.packed_conv2d_reference(xs, rot, maps * K, 1, 1, ksum=K))


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_run_epilogue_on_float_tensors(layout):
    """A float source (a full-precision layer's output) through pool, ReLU, batch-norm and packing."""
    g = torch.Generator().manual_seed(5)
    bn = torch.nn.BatchNorm2d(40).eval()
    with torch.no_grad():
        bn.running_mean.normal_(generator=g)
        bn.running_var.uniform_(0.1, 2, generator=g)
    for shape, pool in (((3, 40, 9, 8), "max2"), ((2, 40, 5, 5), ""), ((1, 40, 32, 32), "max2"), ((2, 40, 7, 5), "avg2")):
        x = _rand(*shape, g=g)
        if layout == "nhwc":
            x = x.contiguous(memory_format=torch.channels_last)
        ep = Epilogue(pool=pool, relu=True, bn=BatchNormEval.from_module(bn), packed=True)
        _assert_same(reference.run_epilogue(x, ep), cpu.run_epilogue(x, ep), shape)


def test_pack_signs_matches_reference_in_any_layout():
    g = torch.Generator().manual_seed(9)
    for shape in ((2, 37, 5, 3), (1, 64, 32, 32), (3, 16, 17, 1), (2, 1, 4, 4), (1, 200, 2, 3)):
        x = _rand(*shape, g=g)
        x[0, 0, 0, 0] = float("nan")  # NaN packs as -1, as sign() maps it
        x.view(-1)[1] = -0.0  # -0.0 >= 0: packs as +1
        for t in (x, x.contiguous(memory_format=torch.channels_last), x.transpose(2, 3).contiguous().transpose(2, 3)):
            assert torch.equal(cpu.pack_signs(t), reference.pack_signs(t)), shape


def test_batchnorm_fusion_is_exact_where_it_is_used():
    """The native batch-norm is fused only in the arithmetic the probe found equal to PyTorch's."""
    if not NATIVE:
        pytest.skip(native.problem())
    mode = cpu.fused_batchnorm_mode()
    assert mode in (0, 1, None)
    g = torch.Generator().manual_seed(13)
    bn = torch.nn.BatchNorm2d(24).eval()
    with torch.no_grad():
        bn.running_mean.normal_(generator=g)
        bn.running_var.uniform_(0.01, 5, generator=g)
        bn.weight.normal_(generator=g)
        bn.bias.normal_(generator=g)
    y = _rand(4, 24, 6, 6, g=g) * 50
    ep = Epilogue(bn=BatchNormEval.from_module(bn))
    # the affine read from PyTorch reproduces its batch-norm (as one fused multiply-add, or not)
    assert torch.equal(cpu.run_epilogue(y, ep, torch.contiguous_format)[0], bn(y))


@pytest.mark.parametrize(
    "name,method,stages,K,image,stem",
    [
        ("resnet18", "xnor", (8, 8, 16, 16), 1, 9, "cifar"),
        ("resnet18", "bnn", (4, 4, 8, 8), 1, 8, "cifar"),
        ("resnet18", "bireal", (8, 8, 16, 40), 1, 9, "cifar"),
        ("resnet18", "cbcn", (2, 2, 4, 4), 1, 7, "cifar"),
        ("resnet18", "cbcn", (2, 3, 4, 4), 2, 7, "cifar"),
        ("resnet18", "cbcn", (4, 4, 8, 8), 4, 8, "cifar"),
        ("resnet18", "cbcn", (2, 2, 2, 4), 8, 6, "cifar"),
        ("resnet18", "xnor", (8, 8, 16, 16), 1, 33, "imagenet"),
        ("resnet18", "cbcn", (4, 4, 4, 8), 4, 32, "imagenet"),
        ("wrn22", "xnor", (8, 8, 16, 16), 1, 8, "cifar"),
        ("wrn22", "cbcn", (4, 4, 8, 8), 4, 8, "cifar"),
        ("lenet", "xnor", (5, 10, 20, 40), 1, 32, None),
        ("lenet", "bnn", (3, 5, 7, 9), 1, 16, None),
        ("lenet", "cbcn", (5, 10, 20, 40), 4, 32, None),
        ("lenet", "cbcn", (2, 3, 4, 5), 8, 16, None),
    ],
)
def test_onebit_models_on_the_cpu_backend_are_exact(name, method, stages, K, image, stem):
    torch.manual_seed(0)
    in_ch = 1 if name == "lenet" else 3
    extra = {} if stem is None else {"stem": stem}
    model = build_model(name, method=method, stages=stages, K=K, in_channels=in_ch,
                        image_size=image if name == "lenet" else 32, **extra)
    g = torch.Generator().manual_seed(1)
    x, y = _rand(4, in_ch, image, image, g=g), torch.randint(0, 10, (4,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(2):  # non-trivial batch-norm statistics and weights
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    onebit = convert_to_onebit(model, backend="cpu")
    assert onebit.fused_blocks > 0
    for batch in (1, 3):
        xb = _rand(batch, in_ch, image, image, g=g)
        with torch.no_grad():
            assert torch.equal(onebit(xb), model(xb)), (batch, name, method, K)
        with torch.inference_mode():
            assert torch.equal(onebit(xb), model(xb))
    unfused = convert_to_onebit(model, backend="cpu", fuse=False)
    with torch.no_grad():
        assert torch.equal(unfused(xb), model(xb))


def test_cbcn_bank_is_cached_until_the_weights_change():
    model = build_model("resnet18", method="cbcn", stages=(2, 2, 4, 4), K=4).eval()
    onebit = convert_to_onebit(model, backend="cpu")
    layer = next(m for m in onebit.modules() if isinstance(m, OneBitConv2d))
    bank = layer.weight_bank()
    assert layer.weight_bank() is bank  # no re-expansion per forward
    with torch.no_grad():
        layer.packed_weight.bitwise_not_()  # every sign flips, in place
    assert layer.weight_bank() is not bank
    assert torch.equal(layer.weight_bank(), cpu.cif_pack_bank(layer.packed_weight, 4, in_channels=layer.in_maps,
                                                               ksum=layer.ksum > 1))


def test_fused_blocks_carry_packed_signs_between_layers():
    model = build_model("resnet18", method="xnor", stages=(4, 4, 8, 8)).eval()
    onebit = convert_to_onebit(model, backend="cpu")
    with torch.no_grad():
        h = onebit.blocks[0](onebit.stem(torch.randn(2, 3, 8, 8)))
    packed = carried_packed_signs(h)
    assert packed is not None and torch.equal(packed, reference.pack_signs(h))
    assert h.is_contiguous(memory_format=torch.channels_last)  # no NCHW round trip between blocks
    h.add_(1.0)  # modified in place: the carried signs are stale and no longer offered
    assert carried_packed_signs(h) is None


def _run_engine_probe(env_extra: dict, code: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CBCN_CACHE_DIR": str(tmp_path), **env_extra,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for k in ("CBCN_CPU_PATH", "CBCN_BACKEND"):
        if k not in env_extra:
            env.pop(k, None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=env, timeout=600)


PROBE = """
    import torch
    from cbcn.onebit.backends import cpu
    from cbcn.nn.models import build_model
    from cbcn.onebit.convert import convert_to_onebit
    model = build_model("resnet18", method="cbcn", stages=(2, 2, 4, 4), K=4).eval()
    onebit = convert_to_onebit(model)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(onebit(x), model(x))
    print("PATH", cpu.engine_path(), "|", repr(onebit).count("backend=auto->cpu[" + cpu.describe() + "]"))
"""


def test_path_choice_falls_back_and_shows_in_the_repr(tmp_path):
    """No compiler: torch._int_mm. No compiler and no _int_mm: the reference. Always exact, and
    the repr says which path runs."""
    no_cc = _run_engine_probe({"CC": "/bin/false", "PATH": "/nonexistent"}, PROBE, tmp_path / "a")
    assert no_cc.returncode == 0, no_cc.stderr[-2000:]
    assert "PATH intmm |" in no_cc.stdout and "| 0" not in no_cc.stdout, no_cc.stdout
    forced = _run_engine_probe({"CBCN_CPU_PATH": "reference"}, PROBE, tmp_path / "b")
    assert forced.returncode == 0 and "PATH reference |" in forced.stdout, forced.stderr[-2000:]
    no_int_mm = _run_engine_probe({"CBCN_NATIVE": "0"}, "import torch; del torch._int_mm\n" + textwrap.dedent(PROBE),
                                  tmp_path / "c")
    assert no_int_mm.returncode == 0 and "PATH reference |" in no_int_mm.stdout, no_int_mm.stderr[-2000:]
    if NATIVE:
        auto = _run_engine_probe({}, PROBE, tmp_path / "d")
        assert auto.returncode == 0 and "PATH native |" in auto.stdout, auto.stderr[-2000:]


def test_a_forced_path_that_cannot_run_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CBCN_CPU_PATH", "fastest")
    with pytest.raises(ValueError, match="unknown CPU engine path 'fastest'"):
        cpu.engine_path()
    monkeypatch.setattr(intmm, "available", lambda: False)
    monkeypatch.setenv("CBCN_CPU_PATH", "intmm")
    with pytest.raises(RuntimeError, match="cannot run here"):
        cpu.engine_path()


def test_native_build_failure_says_why(tmp_path):
    code = """
        from cbcn.onebit.backends.cpu import native
        assert native.load() is None
        print("WHY", native.problem())
    """
    res = _run_engine_probe({"CC": "/bin/false", "PATH": "/nonexistent"}, code, tmp_path)
    assert res.returncode == 0 and "WHY could not build the native kernels" in res.stdout, res.stdout + res.stderr
