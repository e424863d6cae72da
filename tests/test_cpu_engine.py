"""The CPU engine (``cbcn.onebit.backends.cpu``) against the reference, bit for bit.

Per conv: random shapes (odd spatial sizes, channel counts that are not multiples of 8/32/64,
strides 1 and 2, padding 0/1/2, kernels 1/3/5, batch 1 and more) with every epilogue step, on
each path the machine can run and on every native variant: natively where this CPU executes it,
through SIMDe's emulation of the x86 instructions (``CBCN_SIMDE``) where it does not, and for
AArch64 NEON cross-compiled and run under qemu-user (``_native_remote``). Every variant's object
code is checked for the instructions it exists for. Per model: the 1-bit logits ``torch.equal``
to the training model's in eval mode for every packable method, K and backbone. Then the choice
of path and variant, its fallbacks and its repr.
"""
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cbcn.nn.models import build_model
from cbcn.onebit.backends import cpu, reference
from cbcn.onebit.backends.cpu import intmm, native
from cbcn.onebit.backends.epilogue import BatchNormEval, Epilogue
from cbcn.onebit.convert import OneBitConv2d, carried_packed_signs, convert_to_onebit

import _native_remote as remote
from _trained import trained_model

ROOT = Path(__file__).resolve().parents[1]
NATIVE = native.load() is not None
SIMDE_HEADER = Path("/usr/include/simde/x86/avx512.h")  # Debian's libsimde-dev
SIMDE_FLAGS = ("-DCBCN_SIMDE", "-O1", "-mavx2", "-mfma")  # SIMDe fuses fmadd only with FMA; -O1: 17 s a build at -O3
AVX512 = tuple(v.name for v in native.VARIANTS if v.name.startswith("avx512"))


def _emulated(variant: str):
    """The x86 variant's kernels with SIMDe's emulation of its intrinsics (a ``NativeLibrary``),
    or ``pytest.skip`` where that cannot be built here."""
    if native.compiler() is None or native.machine_arch() != "x86_64":
        pytest.skip("needs a C compiler on x86-64")
    if not SIMDE_HEADER.exists():
        pytest.skip("SIMDe headers not found (apt-get install libsimde-dev)")
    v = native.variant(variant)
    return native.NativeLibrary(native.build(v, openmp=False, isa_flags=SIMDE_FLAGS), v, False, name=f"{variant} (SIMDe)")


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


def _sweep(run_conv, pack, seed: int, cases: int):
    """``cases`` random convs through ``run_conv(x, w, C, s, p, ep, memory_format)`` and a few
    packings through ``pack(x)``, each equal to the reference."""
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    for i in range(cases):
        x, w, C, s, p, ep = random_case(rng, g)
        fmt = torch.channels_last if i % 2 else torch.contiguous_format
        _assert_same(reference.fused_conv2d_reference(x, w, C, s, p, ep), run_conv(x, w, C, s, p, ep, fmt),
                     (i, tuple(x.shape), tuple(w.shape), s, p, ep.pool))
    v = torch.randn(3, 37, 5, 4, generator=g)
    for t in (v, v.contiguous(memory_format=torch.channels_last), torch.randn(2, 64, 3, 17, generator=g)):
        assert torch.equal(pack(t), reference.pack_signs(t))


@pytest.mark.parametrize("variant", native.VARIANT_NAMES)
def test_every_variant_this_cpu_runs_is_exact(variant):
    """Each native variant this CPU executes (the chosen one, and every slower one), forced."""
    why = native.cannot_run(native.variant(variant))
    if why:
        pytest.skip(why)
    if native.compiler() is None:
        pytest.skip("no C compiler here")
    assert native.load(variant).variant == variant
    _sweep(lambda x, w, C, s, p, ep, fmt: cpu.fused_conv2d(x, w, C, s, p, ep, memory_format=fmt, cpu_variant=variant),
           lambda t: cpu.pack_signs(t, cpu_variant=variant), seed=11, cases=25)


def _run_with(lib):
    return lambda x, w, C, s, p, ep, fmt: cpu.run_native(lib, ep, fmt, cpu.fused_batchnorm_mode(), conv=(x, w, C, s, p, 1))


@pytest.mark.parametrize("variant", AVX512)
def test_avx512_variants_are_exact_under_simde_emulation(variant):
    """The AVX-512 variants' code with every intrinsic emulated (SIMDe): the kernels of an ISA this
    CPU may lack, exercised here; the object code test checks that the real build uses the
    instructions."""
    lib = _emulated(variant)
    _sweep(_run_with(lib), lambda t: cpu.pack_native(lib, t), seed=12, cases=25)


@pytest.mark.parametrize("variant", sorted(remote.CROSS))
def test_cross_compiled_variants_are_exact_under_qemu(variant, tmp_path):
    """NEON, cross-compiled (static) and run under qemu-user through the same Python path."""
    missing = remote.missing_tools(variant)
    if missing:
        pytest.skip(missing)
    lib = remote.remote_engine(variant, remote.build_driver(variant, tmp_path))
    _sweep(_run_with(lib), lambda t: cpu.pack_native(lib, t), seed=13, cases=20)
    y = torch.randn(2, 40, 9, 8, generator=torch.Generator().manual_seed(3))
    ep = Epilogue(pool="max2", relu=True, packed=True)
    _assert_same(reference.run_epilogue(y, ep), cpu.run_native(lib, ep, torch.contiguous_format, 1, src=y), "src")


@pytest.mark.parametrize("variant", native.VARIANT_NAMES)
def test_variant_object_code_has_its_instructions(variant):
    """Every variant is compiled — also those this CPU cannot run — and its object code holds the
    instructions it exists for (and none of a wider ISA)."""
    v = native.variant(variant)
    if v.arch in ("x86_64", "any") and native.machine_arch() == "x86_64":
        cc, objdump = native.compiler(), shutil.which("objdump")
    elif v.name in remote.CROSS:
        if remote.missing_tools(v.name):
            pytest.skip(remote.missing_tools(v.name))
        cc, objdump = remote.CROSS[v.name][0], remote.CROSS[v.name][1]
    else:
        pytest.skip(f"{v.arch} variant on a {native.machine_arch()} machine")
    if cc is None or objdump is None:
        pytest.skip("needs a C compiler and objdump")
    host = cc == native.compiler()  # the build load() makes (with OpenMP), reused from the cache
    code = subprocess.run([objdump, "-d", str(native.build(v, openmp=host, cc=cc))], capture_output=True,
                          text=True, check=True).stdout
    for pattern in v.object_code:
        assert re.search(pattern, code), f"{variant}: no {pattern!r} in its object code"
    for pattern in v.not_in_object_code:
        assert not re.search(pattern, code), f"{variant}: {pattern!r} in its object code"


def test_a_forced_variant_this_cpu_cannot_run_is_one_line(monkeypatch):
    """Refused before anything loads (no SIGILL), in one line naming what the CPU lacks."""
    foreign = next(v for v in native.VARIANTS if native.cannot_run(v))
    with pytest.raises(native.VariantError, match=f"variant '{foreign.name}' was requested but cannot run here") as err:
        native.load(foreign.name)
    assert "\n" not in str(err.value)
    with pytest.raises(native.VariantError, match=r"unknown CPU engine variant 'avx9' .*; valid: avx512-bitalg"):
        native.load("avx9")
    assert issubclass(native.VariantError, ValueError)  # the CLI prints it as one line, exit 2


def test_a_variant_the_compiler_rejects_falls_back_and_says_so(tmp_path):
    """A compiler that refuses the fastest runnable variant's flags: the next variant is built,
    and ``describe()`` names the one that did not build."""
    if not NATIVE:
        pytest.skip(native.problem())
    chosen = native.load().variant
    if chosen in ("scalar", "portable"):
        pytest.skip("no SIMD variant runs here to refuse")
    flag = native.variant(chosen).define  # passed to this variant's build only
    fake = tmp_path / "cc"
    fake.write_text(f"#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = \"{flag}\" ] && {{ echo 'error: unsupported {flag}' >&2; exit 1; }}; done\n"
                    f"exec {native.compiler()} \"$@\"\n")
    fake.chmod(0o755)
    res = _run_engine_probe({"CC": str(fake)}, """
        from cbcn.onebit.backends import cpu
        from cbcn.onebit.backends.cpu import native
        print("VARIANT", native.load().variant, "|", cpu.describe())
    """, tmp_path / "cache")
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{chosen} did not build" in res.stdout and f"VARIANT {chosen} " not in res.stdout, res.stdout


def test_a_large_output_written_with_streaming_stores_is_exact():
    """Float outputs over 2 MB are written with non-temporal stores (bconv.c, STREAM_BYTES)."""
    if not NATIVE:
        pytest.skip(native.problem())
    g = torch.Generator().manual_seed(21)
    x = reference.pack_signs(_rand(9, 64, 32, 32, g=g))
    w = reference.pack_signs(_rand(64, 64, 3, 3, g=g))
    residual = _rand(9, 64, 32, 32, g=g).contiguous(memory_format=torch.channels_last)
    ep = Epilogue(scale=torch.rand(64, generator=g) + 0.1, residual=residual, real=True, packed=True)
    assert 9 * 64 * 32 * 32 * 4 > 2 << 20
    _assert_same(reference.fused_conv2d_reference(x, w, 64, 1, 1, ep), cpu.fused_conv2d(x, w, 64, 1, 1, ep), "large")


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
    g = torch.Generator().manual_seed(1)
    model, in_ch = trained_model(name, method, stages, K, image, g, stem=stem, batch=4, steps=2)
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


WHOLE_MODELS = [  # (name, method, stages, K, image): one of each kind of fused block and epilogue
    ("resnet18", "xnor", (8, 8, 16, 16), 1, 9),
    ("resnet18", "cbcn", (4, 4, 8, 8), 4, 8),
    ("lenet", "cbcn", (2, 3, 4, 5), 4, 16),
]


@pytest.mark.parametrize("variant", list(native.VARIANT_NAMES) + [f"{v} (simde)" for v in AVX512]
                         + [f"{v} (qemu)" for v in sorted(remote.CROSS)])
def test_whole_models_are_exact_on_every_variant(variant, monkeypatch, tmp_path):
    """The 1-bit model's logits equal the training model's with every variant the engine can run
    here forced in place of its own choice, the AVX-512 ones also under SIMDe and NEON through
    qemu-user."""
    name = variant.split()[0]
    if variant.endswith("(simde)"):
        lib = _emulated(name)
    elif variant.endswith("(qemu)"):
        if remote.missing_tools(name):
            pytest.skip(remote.missing_tools(name))
        lib = remote.remote_engine(name, remote.build_driver(name, tmp_path))
    else:
        why = native.cannot_run(native.variant(name))
        if why or native.compiler() is None:
            pytest.skip(why or "no C compiler here")
        lib = native.load(name)
    monkeypatch.setattr(native, "load", lambda variant_name=None: lib)
    monkeypatch.setattr(cpu, "_auto_path", lambda: "native")
    g = torch.Generator().manual_seed(5)
    for model_name, method, stages, K, image in WHOLE_MODELS:
        model, in_ch = trained_model(model_name, method, stages, K, image, g)
        onebit = convert_to_onebit(model, backend="cpu")
        assert f"native[{lib.describe()}]" in repr(onebit)
        xb = _rand(3, in_ch, image, image, g=g)
        with torch.no_grad():
            assert torch.equal(onebit(xb), model(xb)), (variant, model_name, method, K)


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


def _run_engine_probe(env_extra: dict, code: str, tmp_path=None) -> subprocess.CompletedProcess:
    """``code`` in a fresh process with ``env_extra``; builds cached under ``tmp_path`` (a fresh
    cache) or, without it, where this process caches them."""
    cache = {"CBCN_CACHE_DIR": str(tmp_path if tmp_path is not None else native.cache_dir())}
    env = {**os.environ, **cache, **env_extra,
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
    print("PATH", cpu.engine_path(), "|", repr(onebit).count("backend=auto->cpu[" + cpu.describe() + "]"), "|",
          cpu.describe())
"""


def test_path_choice_falls_back_and_shows_in_the_repr(tmp_path):
    """No compiler: torch._int_mm where it is at least as fast as fp32, else the reference, and
    the repr says why. Always exact, and the repr says which path runs."""
    no_cc = _run_engine_probe({"CC": "/nonexistent/cc", "PATH": "/nonexistent"}, PROBE, tmp_path / "a")
    assert no_cc.returncode == 0, no_cc.stderr[-2000:]
    # which of the two depends on torch._int_mm's speed here, measured in that process
    assert ("PATH intmm |" in no_cc.stdout or "PATH reference |" in no_cc.stdout) and "| 0" not in no_cc.stdout, \
        no_cc.stdout
    if "PATH reference |" in no_cc.stdout:
        assert "slower than float" in no_cc.stdout and "no C compiler" in no_cc.stdout, no_cc.stdout
        assert "torch._int_mm" in no_cc.stdout, no_cc.stdout  # why intmm was passed over
    forced = _run_engine_probe({"CBCN_CPU_PATH": "reference"}, PROBE, tmp_path / "b")
    assert forced.returncode == 0 and "PATH reference |" in forced.stdout, forced.stderr[-2000:]
    no_int_mm = _run_engine_probe({"CBCN_NATIVE": "0"}, "import torch; del torch._int_mm\n" + textwrap.dedent(PROBE),
                                  tmp_path / "c")
    assert no_int_mm.returncode == 0 and "PATH reference |" in no_int_mm.stdout, no_int_mm.stderr[-2000:]
    if NATIVE:
        auto = _run_engine_probe({}, PROBE)
        assert auto.returncode == 0 and "PATH native |" in auto.stdout, auto.stderr[-2000:]


def test_intmm_is_chosen_only_where_it_is_fast(monkeypatch):
    """``torch._int_mm`` without VNNI/AMX ran at 0.8–1.5 GMAC/s against 24–36 for fp32 (AVX2 EPYC):
    the automatic choice passes it over there, and says why; a forced ``intmm`` still runs."""
    monkeypatch.setattr(intmm, "available", lambda: True)
    monkeypatch.setattr(intmm, "speed_vs_float", lambda: (0.5, 40.0))
    assert "0.5 GMAC/s here against 40.0 for fp32" in cpu._path_problem("intmm", auto=True)
    assert cpu._path_problem("intmm") is None
    monkeypatch.setattr(intmm, "speed_vs_float", lambda: (90.0, 40.0))
    assert cpu._path_problem("intmm", auto=True) is None


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


def test_native_ab_compares_a_revision_with_the_working_tree():
    """benchmarks/native_ab.py: a git revision's kernels built and timed beside the working tree's,
    logits checked; bad input is one line and exit status 2."""
    if not NATIVE or shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the native kernels and a git checkout")
    script = [sys.executable, str(ROOT / "benchmarks" / "native_ab.py")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run(script + ["--rev", "HEAD", "--models", "lenet", "--batch", "2", "--rounds", "2"],
                        capture_output=True, text=True, env=env, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.count("[ab] lenet") == 2 and "NOT exact" not in ok.stdout, ok.stdout
    bad = subprocess.run(script + ["--rev", "no-such-revision"], capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and bad.stderr.startswith("error: no-such-revision") and "Traceback" not in bad.stderr
