"""The Triton kernels compiled for a CUDA device, bit for bit against the CPU reference.

``test_triton_kernels.py`` checks every kernel in the Triton interpreter; this file runs the same
shape sweep (plus ResNet-sized channels) through the *compiled* kernels on a GPU, compares each
result with ``cbcn.onebit.backends.reference``'s reference computed on the CPU, and runs a trained model converted
to 1 bit through the kernels on the GPU. Skipped without CUDA, so CI (CPU only) never runs it;
``benchmarks/device_check.sh`` runs it on a lent GPU. ``CBCN_GPU_TESTS_ON_CPU=1`` runs it on CPU
tensors (kernels in the interpreter) to check this file itself on a machine without a GPU.

Tiles: fixed small tiles (``config=``) for the sweep, so each epilogue variant compiles once, plus
one autotuned call per path at a ResNet-sized shape (what ``packed_conv2d`` does by default).
"""
import os

import pytest
import torch

pytest.importorskip("triton")

from _conv_cases import CONV_CASES, FUSED_CASES, KSUM_CASES, WORST_CASES, _epilogue_args, _fused_case, _rand  # noqa: E402
from _conv_cases import EXTRA_CASES, GPU_TILES, UNPACK_MAPS, _unpack_case, _worst_case, gpu_tile  # noqa: E402
from test_onebit import _train_a_few_steps  # noqa: E402

import triton_kernels as tk  # noqa: E402
from cbcn.nn import cif as cif_ref  # noqa: E402
from cbcn.nn.models import build_model  # noqa: E402
from cbcn.onebit.backends import reference  # noqa: E402
from cbcn.onebit.convert import convert_to_onebit  # noqa: E402

ON_CPU = os.environ.get("CBCN_GPU_TESTS_ON_CPU", "0") == "1"
if torch.cuda.is_available():
    DEVICE = torch.device("cuda", torch.cuda.current_device())  # indexed, as tensors report it (cuda:0)
elif ON_CPU:
    DEVICE = torch.device("cpu")
else:
    pytest.skip("needs a CUDA device (CBCN_GPU_TESTS_ON_CPU=1 runs it in the interpreter)", allow_module_level=True)

GPU = DEVICE.type == "cuda"
if not GPU:
    from triton_kernels._runtime import interpreter_problem

    if interpreter_problem():
        pytest.skip(interpreter_problem(), allow_module_level=True)
PATHS = list(GPU_TILES)


def _tile(path, channels):
    """The fixed GPU tile of ``path`` for ``channels`` (``_conv_cases.gpu_tile``; None in the
    interpreter, which has its own tiles)."""
    return gpu_tile(path, channels) if GPU else None


def _on_device(kwargs):
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


@pytest.mark.parametrize("path", PATHS)
def test_packed_conv_sweep(path):
    for i, (N, C, H, W, Co, k, s, p) in enumerate(CONV_CASES + EXTRA_CASES):
        x, w = _rand(N, C, H, W, seed=i), _rand(Co, C, k, k, seed=100 + i)
        xp, wp = reference.pack_signs(x), reference.pack_signs(w)
        config = _tile(path, C)
        for j in (i, i + 1):  # two epilogue variants per shape
            kw = _epilogue_args(j, Co)
            ref = reference.packed_conv2d_reference(xp, wp, C, s, p, **kw)
            out = tk.packed_conv2d(xp.to(DEVICE), wp.to(DEVICE), C, s, p, path=path, config=config, **_on_device(kw))
            assert out.device.type == DEVICE.type
            assert torch.equal(out.cpu(), ref), (path, (N, C, H, W, Co, k, s, p), sorted(kw))
        for dtype in (torch.float16, torch.bfloat16):
            sc = _rand(Co, seed=200 + i).abs()
            ref = reference.packed_conv2d_reference(xp, wp, C, s, p, scale=sc, out_dtype=dtype)
            out = tk.packed_conv2d(xp.to(DEVICE), wp.to(DEVICE), C, s, p, scale=sc.to(DEVICE), out_dtype=dtype,
                                   path=path, config=config)
            assert torch.equal(out.cpu(), ref), (path, dtype, (N, C, H, W, Co, k, s, p))


VARIANTS = {  # the GEMM's shape variants, as fixed tiles on the GPU (the autotuner picks them per shape)
    "swap": dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, SWAP_AB=True, num_warps=4, num_stages=4),
    "split": dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, SPLIT_K=4, num_warps=4, num_stages=4),
    "persistent": dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, PERSISTENT=True, num_warps=4, num_stages=4),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("path", ["mma", "mma_fp8"])
def test_gemm_variants_on_device(path, variant):
    """Swapped operands and split-K on the sweep, bit for bit; split-K leaves its workspace zero."""
    config = VARIANTS[variant] if GPU else {k: v for k, v in VARIANTS[variant].items() if k.isupper()}
    for i, (N, C, H, W, Co, k, s, p) in enumerate(CONV_CASES + EXTRA_CASES):
        x, w = _rand(N, C, H, W, seed=i), _rand(Co, C, k, k, seed=100 + i)
        xp, wp = reference.pack_signs(x), reference.pack_signs(w)
        for j in (i, i + 1):
            kw = _epilogue_args(j, Co)
            ref = reference.packed_conv2d_reference(xp, wp, C, s, p, **kw)
            tile = dict(config)
            if variant == "persistent" and not kw.get("binarize_output") and (Co * 4) % 16 == 0:
                tile["TMA_STORE"] = True  # fp32 rows of 16-byte multiples: through TMA stores
            out = tk.packed_conv2d(xp.to(DEVICE), wp.to(DEVICE), C, s, p, path=path, config=tile, **_on_device(kw))
            assert torch.equal(out.cpu(), ref), (path, variant, (N, C, H, W, Co, k, s, p), sorted(kw), tile)
    if variant == "split":
        from triton_kernels.conv import _SPLIT_K_WORKSPACE

        ws, counters = _SPLIT_K_WORKSPACE[str(DEVICE)]
        assert not ws.any() and not counters.any()


@pytest.mark.parametrize("path", ["mma", "mma_fp8", "popcount", "mma_packed"])
def test_packed_conv_autotuned(path):
    """The default launch (autotuned tiles on the GPU) at a ResNet-sized shape, with every epilogue."""
    x, w = _rand(2, 128, 14, 14, seed=300), _rand(128, 128, 3, 3, seed=301)
    xp, wp = reference.pack_signs(x), reference.pack_signs(w)
    for j in range(4):
        kw = _epilogue_args(j, 128)
        ref = reference.packed_conv2d_reference(xp, wp, 128, 1, 1, **kw)
        out = tk.packed_conv2d(xp.to(DEVICE), wp.to(DEVICE), 128, 1, 1, path=path, **_on_device(kw))
        assert torch.equal(out.cpu(), ref), (path, sorted(kw))


@pytest.mark.parametrize("path", ["mma", "mma_fp8"])
def test_packed_conv_ksum_form(path):
    """CBConv's K-sum form (the 1-bit CBCN layers' default on these paths) against the full-CiF-bank
    reference: fixed tiles on the sweep, the autotuned launch on a ResNet-sized layer."""
    cases = KSUM_CASES + [(2, 64, 14, 14, 64, 1, 1, 4), (2, 32, 14, 14, 64, 2, 1, 8)]
    for i, (N, maps, H, W, C_out, s, p, K) in enumerate(cases):
        x, Wl = _rand(N, maps * K, H, W, seed=i), _rand(C_out, maps, 3, 3, seed=40 + i)
        xp = reference.pack_signs(x)
        full = reference.cif_pack_bank_reference(Wl, K)
        rot = tk.cif_pack_bank(Wl.to(DEVICE), K, ksum=True)
        assert torch.equal(rot.cpu(), reference.cif_pack_bank_reference(Wl, K, ksum=True))
        for j in (i, i + 1):
            kw = _epilogue_args(j, C_out * K)
            ref = reference.packed_conv2d_reference(xp, full, maps * K, s, p, **kw)
            for config in (_tile(path, maps), None):
                out = tk.packed_conv2d(xp.to(DEVICE), rot, maps * K, s, p, path=path, ksum=K, config=config,
                                       **_on_device(kw))
                assert torch.equal(out.cpu(), ref), (path, cases[i], sorted(kw), config)


@pytest.mark.parametrize("K", [1, 2, 4, 8])
def test_unpack_activations_on_device(K):
    """The compiled SWAR unpack (signs, and K-sums by bit-parallel popcount) against torch, int8
    and fp8 bytes, with the packed words' unused bits set."""
    from triton_kernels.conv import unpack_activations

    for maps in UNPACK_MAPS + (256,):
        packed, expect = _unpack_case(maps, K, seed=K + maps)
        for dtype in (torch.int8, torch.float8_e4m3fn):
            got = unpack_activations(packed.to(DEVICE), maps * K, 1, dtype, ksum=K)
            assert got.dtype == dtype and torch.equal(got.float().cpu(), expect), (maps, K, dtype)


@pytest.mark.parametrize("C,K,inside", WORST_CASES)
@pytest.mark.parametrize("path", ["mma", "mma_fp8"])
def test_largest_sums_exact(path, C, K, inside):
    """Every product +1·−1, so each interior output is the largest |sum| the layer allows: the
    fp8 path stays exact on the hardware (fast accumulation up to 2**13, per-K-step promotion
    beyond), with fixed tiles and autotuned."""
    xp, wp, ref = _worst_case(C, K, DEVICE)
    assert ref[0, 0, 1, 1] == inside
    for config in (_tile(path, C // K), None):
        out = tk.packed_conv2d(xp, wp, C, 1, 1, path=path, ksum=K, config=config)
        assert torch.equal(out.cpu(), ref), (path, C, K, config)


def test_pack_unpack():
    for shape in [(2, 37, 5, 3), (1, 64, 7, 7), (3, 5, 2, 2), (4, 256, 9, 9)]:
        x = _rand(*shape, seed=shape[1])
        x.view(-1)[:3] = torch.tensor([0.0, -0.0, float("nan")])
        p = tk.pack_signs(x.to(DEVICE))
        assert torch.equal(p.cpu(), reference.pack_signs(x))
        assert torch.equal(tk.pack_signs(x.to(DEVICE).contiguous(memory_format=torch.channels_last)).cpu(), p.cpu())
        assert torch.equal(tk.unpack_signs(p, shape[1]).cpu(), reference.unpack_signs(p.cpu(), shape[1]))


@pytest.mark.parametrize("K", [1, 2, 4, 8])
def test_cif_kernels(K):
    for co, ci, H in [(3, 5, 3), (2, 9, 3), (4, 3, 1), (16, 40, 3)]:
        W = _rand(co, ci, H, H, seed=K + ci)
        W[0, 0, 0, 0] = 0.0
        ref = reference.cif_pack_bank_reference(W, K)
        assert torch.equal(tk.cif_pack_bank(W.to(DEVICE), K).cpu(), ref)
        packed = reference.pack_signs(W).to(DEVICE)
        assert torch.equal(tk.cif_pack_bank(packed, K, in_channels=ci).cpu(), ref)
        assert torch.equal(tk.cif_expand(W.to(DEVICE), K).cpu(), cif_ref.cif_expand(W, K))
        # dyadic gradients: every summation order is exact
        g = torch.randint(-64, 64, (co * K, ci * K, H, H), generator=torch.Generator().manual_seed(K)).float() / 8
        assert torch.equal(tk.cif_backward(g.to(DEVICE), K).cpu(), cif_ref.cif_backward(g, K))


@pytest.mark.parametrize("path", ["mma", "mma_fp8", "mma_async", "popcount"])
@pytest.mark.parametrize("name,method,stages,K,image", [
    ("resnet18", "cbcn", (4, 4, 8, 8), 4, 8),
    ("resnet18", "xnor", (8, 8, 16, 16), 1, 9),
])
def test_onebit_model_on_device(path, name, method, stages, K, image):
    """A model trained a few steps, converted to 1 bit: through the kernels on the device it gives
    the training model's logits on the same device bit for bit. cuDNN is off for both runs: its
    Winograd/FFT algorithms would round the training model's float convolution of ±1 tensors,
    while PyTorch's own GEMM convolution (no TF32) computes those integer sums exactly."""
    if path == "mma_async":
        from triton_kernels.async_mma import async_mma_problem

        if async_mma_problem(DEVICE):
            pytest.skip(async_mma_problem(DEVICE))
    torch.manual_seed(0)
    model = build_model(name, method=method, stages=stages, K=K)
    x = _train_a_few_steps(model, (4, 3, image, image), steps=2)
    onebit = convert_to_onebit(model, backend="triton", path=path).to(DEVICE).eval()
    model = model.to(DEVICE).eval()
    x = x.to(DEVICE)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=False):
        expected = model(x)
        got = onebit(x)
    assert "backend=triton->triton" in repr(onebit)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: "-".join(map(str, c[:8])))
def test_fused_layer_on_device(case):
    """The fused layer (residual, real output, the next conv's operand in its halo buffer) on the
    device equals ``operands.operand_conv_reference`` on the CPU bit for bit, fixed tile and
    autotuned."""
    from triton_kernels.conv import unpacked_conv2d

    configs = ((dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3) if GPU else None), None)
    _check_fused_layer(unpacked_conv2d, case, lambda CP: configs)


def _check_fused_layer(gemm, case, configs):
    """``gemm`` (``unpacked_conv2d`` or ``async_mma_conv2d``) as the fused layer of ``case`` with each
    tile of ``configs(CP)`` (None: autotuned): real output and next operand bit-equal to the reference."""
    kwargs, next_layout, expected, expected_operand = _fused_case(case)
    kwargs = _on_device(kwargs)
    N, (OH, OW), CP = kwargs["x_halo"].shape[0], kwargs["out_size"], kwargs["x_halo"].shape[3]
    for config in configs(CP):
        operand = next_layout.allocate(N, OH, OW, DEVICE)
        out = gemm(**kwargs, operand=next_layout.view(operand), config=config)
        assert torch.equal(operand.cpu(), expected_operand), (case, config)
        assert (out is None) == (expected is None)
        if expected is not None:
            assert torch.equal(out.cpu(), expected), (case, config)


@pytest.mark.parametrize("case", [c for c in FUSED_CASES if not c[7]], ids=lambda c: "-".join(map(str, c[:8])))
def test_fused_layer_async_on_device(case):
    """The fused layer on ``path="mma_async"`` (Gluon: its own epilogue layouts, the Triton
    kernels' operand code) equals ``operands.operand_conv_reference`` bit for bit, with every
    tile that fits the padded channels and autotuned: int8 operands, plain and K-sum."""
    from triton_kernels.async_mma import async_mma_conv2d, async_mma_problem

    problem = async_mma_problem(DEVICE)
    if problem:
        pytest.skip(problem)
    _check_fused_layer(async_mma_conv2d, case,
                       lambda CP: [t for t in _async_mma_tiles() if CP % t["BLOCK_K"] == 0] + [None])


@pytest.mark.parametrize("label", ["xnor", "cbcn", "bireal"])
def test_runner_on_device(label):
    """``OneBitRunner`` on the device: the exact mode (CUDA graph) gives the training model's logits
    bit for bit; the fused mode on the kernels equals the fused mode's PyTorch reference on the
    same device, fp32 activations, with and without a graph, fp8 operands in fp32 and fp16, and
    fp16 activations on 2,000 inputs.
    The fp16 fused mode's agreement with the (fp32) training model is printed, with a loose bar:
    fp16 activations flip near-zero pre-activations, and the reference in fp16 agrees with the
    training model on 95.7 % (XNOR), 96.8 % (CBCN K=4) and 99.92 % (Bi-Real) of these inputs
    (``tests/test_runner.py::test_fp16_fused_reference_agreement`` measures and checks that on the
    CPU)."""
    from test_runner import _random_batchnorm

    from cbcn.onebit.runner import OneBitRunner
    from triton_kernels.async_mma import async_mma_problem

    model, _ = _random_batchnorm(label)  # random batch-norm statistics, in fp16's range
    model = model.to(DEVICE)
    onebit = convert_to_onebit(model, backend="triton")
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=False):
        expected = model(x)
        assert torch.equal(OneBitRunner(onebit, x, mode="exact")(x), expected)
        fused_ref = OneBitRunner(onebit, x, backend="reference", dtype=torch.float32, graphs=False)(x)
        for graphs in ((True, False) if GPU else (False,)):
            fused = OneBitRunner(onebit, x, backend="triton", dtype=torch.float32, graphs=graphs)
            assert torch.equal(fused(x), fused_ref), graphs
            assert torch.equal(fused(x), fused_ref), graphs  # replayed: the halos stayed zero
        onebit_fp8 = convert_to_onebit(model, backend="triton", path="mma_fp8")  # fp8 operands, whole model
        for dtype in (torch.float32, torch.float16):
            fused = OneBitRunner(onebit_fp8, x, backend="triton", dtype=dtype, graphs=False)(x)
            assert torch.equal(fused, OneBitRunner(onebit_fp8, x, backend="reference", dtype=dtype, graphs=False)(x))
        if async_mma_problem(DEVICE) is None:  # the Gluon GEMM's fused layers, whole model, in a graph
            onebit_async = convert_to_onebit(model, backend="triton", path="mma_async")
            for dtype in (torch.float32, torch.float16):
                fused = OneBitRunner(onebit_async, x, backend="triton", dtype=dtype, graphs=True)
                expected_fused = OneBitRunner(onebit_async, x, backend="reference", dtype=dtype, graphs=False)(x)
                assert torch.equal(fused(x), expected_fused), dtype
        # cuDNN is off (bit-equal float convs), so CUDA convolves one image at a time: 2,000 inputs
        # keep this test short, and the 90 % bar stays far below the 95.7 % measured on 10,000
        n = 2_000 if GPU else 64
        xs = torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(2)).to(DEVICE)
        half = OneBitRunner(onebit, xs, graphs=False)
        got, expected = half(xs), model(xs)
        half_ref = OneBitRunner(onebit, xs, backend="reference", dtype=half.dtype, graphs=False)(xs)
    assert torch.equal(got, half_ref)
    agree = (got.argmax(1) == expected.argmax(1)).float().mean().item()
    print(f"{label}: fused {half.dtype} vs training model on {n} inputs: max |dlogit| "
          f"{(got - expected).abs().max().item():.3g} (largest logit {expected.abs().max().item():.3g}), "
          f"argmax agreement {agree:.3%}")
    assert agree >= 0.9


def _async_mma_tiles():
    from triton_kernels._runtime import load

    return [dict(c.kwargs, num_warps=c.num_warps) for c in load("async_mma_kernels", interpret=False).ASYNC_MMA_CONFIGS]


def test_async_mma_path_on_device():
    """``path="mma_async"`` (Gluon, one int8 wgmma in flight; Hopper only, no interpreter): the sweep
    with every real-output epilogue and output type, each of its tiles that fits the padded
    channels, every tile over a long K-loop and the BLOCK_K = 32 tiles over a single K-step, the
    K-sum form, the largest sums, and the autotuned launch — bit for bit."""
    from triton_kernels.async_mma import async_mma_problem

    problem = async_mma_problem(DEVICE)
    if problem:
        pytest.skip(problem)
    tiles = _async_mma_tiles()
    for i, (N, C, H, W, Co, k, s, p) in enumerate(CONV_CASES + EXTRA_CASES):
        x, w = _rand(N, C, H, W, seed=i), _rand(Co, C, k, k, seed=100 + i)
        xp, wp = reference.pack_signs(x), reference.pack_signs(w)
        CP = -(-C // 32) * 32
        fitting = [t for t in tiles if CP % t["BLOCK_K"] == 0]
        for j in (i, i + 1):  # the tiles in turn, two epilogues and output types per shape (few compilations)
            tile = fitting[j % len(fitting)]
            kw = _epilogue_args(j % 3, Co)  # no re-binarisation: real outputs only
            dtype = (torch.float32, torch.float16, torch.bfloat16)[j % 3]
            ref = reference.packed_conv2d_reference(xp, wp, C, s, p, out_dtype=dtype, **kw)
            out = tk.packed_conv2d(xp.to(DEVICE), wp.to(DEVICE), C, s, p, path="mma_async", config=tile,
                                   out_dtype=dtype, **_on_device(kw))
            assert torch.equal(out.cpu(), ref), ((N, C, H, W, Co, k, s, p), sorted(kw), dtype, tile)
    # every tile through a ring that wraps many times (CP = 256: 18-72 K-steps), and through fewer
    # K-steps than the prologue's copies (1x1 convs: 128 channels give every stage count 1-4 steps,
    # 20 channels the BLOCK_K = 32 tiles one step over padded channels)
    for i, (N, C, H, W, Co, k, s, p) in enumerate([(2, 256, 9, 9, 128, 3, 1, 1), (2, 128, 6, 6, 48, 1, 1, 0),
                                                   (2, 20, 6, 6, 48, 1, 1, 0)]):
        x, w = _rand(N, C, H, W, seed=60 + i), _rand(Co, C, k, k, seed=70 + i)
        xp, wp = reference.pack_signs(x), reference.pack_signs(w)
        kw = _epilogue_args(2, Co)
        ref = reference.packed_conv2d_reference(xp, wp, C, s, p, out_dtype=torch.float16, **kw)
        for tile in [t for t in tiles if (-(-C // 32) * 32) % t["BLOCK_K"] == 0]:
            out = tk.packed_conv2d(xp.to(DEVICE), wp.to(DEVICE), C, s, p, path="mma_async", config=tile,
                                   out_dtype=torch.float16, **_on_device(kw))
            assert torch.equal(out.cpu(), ref), ((N, C, H, W, Co, k, s, p), tile)
    for N, maps, H, W, C_out, s, p, K in KSUM_CASES + [(2, 64, 14, 14, 64, 1, 1, 4)]:
        x, Wl = _rand(N, maps * K, H, W, seed=maps), _rand(C_out, maps, 3, 3, seed=40 + maps)
        xp = reference.pack_signs(x)
        ref = reference.packed_conv2d_reference(xp, reference.cif_pack_bank_reference(Wl, K), maps * K, s, p)
        rot = tk.cif_pack_bank(Wl.to(DEVICE), K, ksum=True)
        out = tk.packed_conv2d(xp.to(DEVICE), rot, maps * K, s, p, path="mma_async", ksum=K)
        assert torch.equal(out.cpu(), ref), (N, maps, H, W, C_out, s, p, K)
    for C, K, _ in WORST_CASES:
        xp, wp, ref = _worst_case(C, K, DEVICE)
        assert torch.equal(tk.packed_conv2d(xp, wp, C, 1, 1, path="mma_async", ksum=K).cpu(), ref), (C, K)
    with pytest.raises(ValueError, match="real outputs only"):
        tk.packed_conv2d(xp, wp, C, 1, 1, path="mma_async", ksum=K, binarize_output=True)
