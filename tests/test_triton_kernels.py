"""Every Triton kernel equals its PyTorch reference exactly, run in the Triton interpreter on CPU
tensors (odd spatial sizes, channels not a multiple of 32, stride 2, padding 0/1, batch 1 and >1,
K in {1, 2, 4, 8}).

``triton_kernels`` loads its kernel modules in interpreter mode for CPU tensors whatever
``TRITON_INTERPRET`` was when Triton was first imported (see ``triton_kernels/_runtime.py``), so
these tests do not depend on test order; ``test_triton_compile.py`` also runs them with the
variable set before any import, in a subprocess.
"""
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from _conv_cases import CONV_CASES, FUSED_CASES, KSUM_CASES, WORST_CASES, _epilogue_args, _fused_case, _rand  # noqa: E402
from _conv_cases import EXTRA_CASES, UNPACK_MAPS, _unpack_case, _worst_case, gpu_tile  # noqa: E402

import triton_kernels as tk  # noqa: E402
from cbcn.nn import cif as cif_ref  # noqa: E402
from cbcn.nn.binarize import sign  # noqa: E402
from cbcn.onebit.backends import reference  # noqa: E402
from triton_kernels._runtime import interpreter_problem  # noqa: E402

if interpreter_problem():
    pytest.skip(interpreter_problem(), allow_module_level=True)


# --- packing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 37, 5, 3), (1, 64, 7, 7), (3, 5, 2, 2), (1, 100, 3, 3), (4, 33, 1, 1)])
def test_pack_unpack(shape):
    x = _rand(*shape, seed=shape[1])
    x.view(-1)[:3] = torch.tensor([0.0, -0.0, float("nan")])
    p = tk.pack_signs(x)
    assert torch.equal(p, reference.pack_signs(x))
    assert torch.equal(tk.pack_signs(x.contiguous(memory_format=torch.channels_last)), p)
    assert torch.equal(tk.pack_signs(x.half()), reference.pack_signs(x.half()))
    assert torch.equal(tk.unpack_signs(p, shape[1]), reference.unpack_signs(p, shape[1]))
    assert torch.equal(tk.unpack_signs(p, shape[1], torch.bfloat16), reference.unpack_signs(p, shape[1], torch.bfloat16))


def test_pack_weights():
    w = _rand(9, 70, 3, 3, seed=3)
    assert torch.equal(tk.pack_signs(w), reference.pack_signs(w))


# --- packed convolution -----------------------------------------------------------------------
@pytest.mark.parametrize("path", ["mma", "mma_fp8", "popcount", "mma_packed"])
@pytest.mark.parametrize("i", range(len(CONV_CASES)))
def test_packed_conv_equals_reference(path, i):
    N, C, H, W, Co, k, s, p = CONV_CASES[i]
    x, w = _rand(N, C, H, W, seed=i), _rand(Co, C, k, k, seed=100 + i)
    xp, wp = reference.pack_signs(x), reference.pack_signs(w)
    for j in (i, i + 1):  # two epilogue variants per shape
        kw = _epilogue_args(j, Co)
        ref = reference.packed_conv2d_reference(xp, wp, C, s, p, **kw)
        out = tk.packed_conv2d(xp, wp, C, s, p, path=path, **kw)
        assert out.shape == ref.shape and out.dtype == ref.dtype
        assert torch.equal(out, ref), (path, CONV_CASES[i], sorted(kw))
    # and the reference is F.conv2d on ±1 with zero padding
    assert torch.equal(
        tk.packed_conv2d(xp, wp, C, s, p, path=path), F.conv2d(sign(x), sign(w), None, s, p)
    )


@pytest.mark.parametrize("path", ["mma", "mma_fp8", "popcount", "mma_regs", "mma_packed"])
def test_zero_padding_borders(path):
    C = 40  # two words, 24 padding bits in the second
    x, w = -torch.ones(2, C, 4, 5), torch.ones(3, C, 3, 3)
    out = tk.packed_conv2d(reference.pack_signs(x), reference.pack_signs(w), C, 1, 1, path=path)
    assert out[0, 0, 0, 0] == -4 * C and out[1, 2, 3, 4] == -4 * C  # corners: 4 valid taps
    assert out[0, 0, 0, 2] == -6 * C  # edge
    assert out[0, 0, 1, 2] == -9 * C  # interior
    assert torch.equal(out, F.conv2d(x, w, None, 1, 1))


@pytest.mark.parametrize(
    "path,config",
    [
        ("mma", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32)),  # several M tiles, N tiles past C_out
        ("mma", dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=32)),  # CP = 96: three K-steps per tap
        ("mma_fp8", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32)),
        ("mma_regs", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_W=1)),  # the first tensor-core kernel
        ("mma_regs", dict(BLOCK_M=32, BLOCK_N=64, BLOCK_W=4)),  # K-steps wider than the 3 words
        # the shape variants of the GEMM: swapped operands, split-K (3 parts of 27 K-steps: 9/9/9;
        # 8 parts: uneven), both
        ("mma", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, SWAP_AB=True)),
        ("mma_fp8", dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=32, SWAP_AB=True)),
        ("mma", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, SPLIT_K=3)),
        ("mma_fp8", dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, SPLIT_K=8)),
        ("mma", dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, SPLIT_K=4, SWAP_AB=True)),
        ("mma_packed", dict(BLOCK_M=16, BLOCK_N=32)),  # 70 channels: three words, K-steps, per tap
        ("mma", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, PERSISTENT=True)),  # 2 programs walk 7 tiles
        ("mma_fp8", dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, PERSISTENT=True, SWAP_AB=True)),
    ],
)
def test_mma_tiles(path, config):
    x, w = _rand(2, 70, 5, 5, seed=5), _rand(40, 70, 3, 3, seed=6)
    xp, wp = reference.pack_signs(x), reference.pack_signs(w)
    ref = reference.packed_conv2d_reference(xp, wp, 70, 2, 1, binarize_output=True)
    assert torch.equal(tk.packed_conv2d(xp, wp, 70, 2, 1, binarize_output=True, path=path, config=config), ref)
    sc = _rand(40, seed=7).abs()
    ref = reference.packed_conv2d_reference(xp, wp, 70, 1, 1, scale=sc)
    assert torch.equal(tk.packed_conv2d(xp, wp, 70, 1, 1, scale=sc, path=path, config=config), ref)
    if config.get("SPLIT_K", 1) > 1:  # the split-K workspace and counters are left zero for the next launch
        from triton_kernels.conv import _SPLIT_K_WORKSPACE

        ws, counters = _SPLIT_K_WORKSPACE["cpu"]
        assert not ws.any() and not counters.any()


@pytest.mark.parametrize("config", [dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, PERSISTENT=True, TMA_STORE=True),
                                    dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, TMA_STORE=True, SWAP_AB=True)])
@pytest.mark.parametrize("path", ["mma", "mma_fp8"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_tma_store_epilogue(path, config, dtype):
    """The real output through a TMA store of whole tiles: rows past M (50 pixels) and columns past
    C_out (40 channels) are clipped by the descriptor, nothing else is written."""
    x, w = _rand(2, 70, 5, 5, seed=5), _rand(40, 70, 3, 3, seed=6)
    xp, wp = reference.pack_signs(x), reference.pack_signs(w)
    sc, bs = _rand(40, seed=7).abs(), _rand(40, seed=8)
    for stride in (1, 2):
        ref = reference.packed_conv2d_reference(xp, wp, 70, stride, 1, scale=sc, bias=bs, out_dtype=dtype)
        out = tk.packed_conv2d(xp, wp, 70, stride, 1, scale=sc, bias=bs, out_dtype=dtype, path=path, config=config)
        assert torch.equal(out, ref), (path, config, dtype, stride)
    with pytest.raises(ValueError, match="TMA_STORE needs a real"):
        tk.packed_conv2d(xp, wp, 70, 1, 1, binarize_output=True, path=path, config=config)
    w36 = reference.pack_signs(_rand(36, 70, 3, 3, seed=9))  # 36 fp16 channels: 72-byte rows
    with pytest.raises(ValueError, match="multiple of 16 bytes"):
        tk.packed_conv2d(xp, w36, 70, 1, 1, out_dtype=torch.float16, path=path, config=config)


def test_split_k_needs_the_workspace():
    x, w = _rand(1, 32, 40, 40, seed=8), _rand(700, 32, 3, 3, seed=9)  # 1600 x 700 sums: over the workspace
    xp, wp = reference.pack_signs(x), reference.pack_signs(w)
    with pytest.raises(ValueError, match="SPLIT_K=2 needs at most"):
        tk.packed_conv2d(xp, wp, 32, 1, 1, config=dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, SPLIT_K=2))


def test_autotuner_candidates():
    """``select_i8_configs``: what the autotuner may try per ResNet18 shape (no GPU needed)."""
    from triton_kernels._runtime import load

    k = load("conv_kernels", interpret=True)

    def candidates(CP, C_out, M):
        return [c.kwargs for c in k.select_i8_configs(k.I8_CONFIGS, CP, C_out, M, 9, 132)]

    conv2_b256 = candidates(64, 64, 256 * 56 * 56)  # C_out = 64: swapped tiles are tried
    assert any(c.get("SWAP_AB") for c in conv2_b256) and not any(c.get("SPLIT_K", 1) > 1 for c in conv2_b256)
    conv4_b256 = candidates(256, 256, 256 * 14 * 14)  # wide layers: no swap, no split, >= 2 waves
    assert conv4_b256 and not any(c.get("SWAP_AB") or c.get("SPLIT_K", 1) > 1 for c in conv4_b256)
    conv5_b1 = candidates(512, 512, 7 * 7)  # batch 1: 8 tiles of 64x64 on 132 SMs -> split-K
    splits = [c["SPLIT_K"] for c in conv5_b1 if c.get("SPLIT_K", 1) > 1]
    assert splits and max(splits) * 8 <= 4 * 132
    ksum_b1 = candidates(32, 64, 56 * 56)  # CBCN K-sum form over 16 maps: BLOCK_K 32, 9 K-steps
    assert {c["BLOCK_K"] for c in ksum_b1} == {32}
    assert all(9 >= 2 * c.get("SPLIT_K", 1) for c in ksum_b1)
    assert any(c.get("PERSISTENT") and c.get("TMA_STORE") for c in conv4_b256)  # persistent: >= 2 waves
    assert not any(c.get("PERSISTENT") for c in conv5_b1)
    packed_out = [c.kwargs for c in k.select_i8_configs(k.I8_CONFIGS, 256, 256, 256 * 14 * 14, 9, 132, tma=False)]
    assert packed_out and not any(c.get("TMA_STORE") for c in packed_out)
    assert k.tma_store_allowed(True, False, 64, 2) and not k.tma_store_allowed(True, False, 36, 2)
    assert not k.tma_store_allowed(True, True, 64, 4) and not k.tma_store_allowed(False, False, 64, 2)


def test_every_candidate_tile_divides_the_padded_channels():
    """Each K-step of the GEMMs covers BLOCK_K whole channels of one tap, so a candidate whose
    BLOCK_K does not divide CP would skip channels (CP = 192 with BLOCK_K = 128) or run no K-step at
    all (CP = 64). Swept over every padded channel count up to 1024 (multiples of 32, as
    ``padded_channels`` makes them), output widths and batch sizes, for mma / mma_fp8 and mma_async."""
    from triton_kernels._runtime import load
    from triton_kernels.async_mma import select_async_mma_configs

    k = load("conv_kernels", interpret=True)
    try:
        async_configs = load("async_mma_kernels", interpret=False).ASYNC_MMA_CONFIGS
    except Exception:  # noqa: BLE001 - a Triton without Gluon's Hopper API
        async_configs = []
    for CP in range(32, 1025, 32):
        for C_out in (16, 64, 96, 128, 512):
            for M in (49, 256 * 56 * 56):
                chosen = [c.kwargs for c in k.select_i8_configs(k.I8_CONFIGS, CP, C_out, M, 9, 132)]
                chosen += [c.kwargs for c in select_async_mma_configs(async_configs, CP, C_out)]
                assert chosen and all(CP % c["BLOCK_K"] == 0 for c in chosen), (CP, C_out, M, chosen)
                assert all(c["BLOCK_K"] == 32 for c in chosen) == (CP % 64 != 0), (CP, C_out, M)


def test_unpack_activations_halo():
    from triton_kernels.conv import padded_channels, unpack_activations

    x = _rand(2, 70, 4, 5, seed=30)
    xh = unpack_activations(reference.pack_signs(x), 70, 2)
    assert xh.dtype == torch.int8 and xh.shape == (2, 8, 9, padded_channels(70)) == (2, 8, 9, 96)
    # ±1 inside (sign(0) = +1), 0 in the 2-pixel halo and in channels 70..95
    expect = torch.zeros(2, 8, 9, 96, dtype=torch.int8)
    expect[:, 2:6, 2:7, :70] = sign(x).permute(0, 2, 3, 1).to(torch.int8)
    assert torch.equal(xh, expect)
    # fp8 e4m3 operands: the same values, bytes 0x38 (+1), 0xB8 (-1), 0x00 (0)
    x8 = unpack_activations(reference.pack_signs(x), 70, 2, dtype=torch.float8_e4m3fn)
    assert x8.dtype == torch.float8_e4m3fn and torch.equal(x8.float(), expect.float())
    assert set(x8.view(torch.uint8).unique().tolist()) == {0x00, 0x38, 0xB8}
    with pytest.raises(TypeError, match="int8 or float8_e4m3fn"):
        unpack_activations(reference.pack_signs(x), 70, 2, dtype=torch.float16)


def test_unpack_weights_cache():
    from triton_kernels.conv import unpack_weights

    wp = reference.pack_signs(_rand(6, 40, 3, 3, seed=31))
    wm = unpack_weights(wp, 40)
    assert wm.shape == (6, 9 * 64) and wm.dtype == torch.int8
    expect = torch.zeros(6, 3, 3, 64, dtype=torch.int8)
    expect[..., :40] = reference.unpack_signs(wp, 40).permute(0, 2, 3, 1).to(torch.int8)
    assert torch.equal(wm, expect.reshape(6, -1))
    assert unpack_weights(wp, 40) is wm  # cached per weight tensor
    wp[0, 0, 0, 0] ^= 1  # in-place change: the cache sees the new version
    wm2 = unpack_weights(wp, 40)
    assert wm2 is not wm and wm2[0, 0] == -wm[0, 0]
    assert torch.equal(unpack_weights(wp.clone(), 40), wm2)
    w8 = unpack_weights(wp, 40, dtype=torch.float8_e4m3fn)  # cached per dtype too
    assert w8.dtype == torch.float8_e4m3fn and torch.equal(w8.float(), wm2.float())
    assert unpack_weights(wp, 40, dtype=torch.float8_e4m3fn) is w8 and unpack_weights(wp, 40) is wm2


def test_unpacked_conv2d_direct():
    """The GEMM alone on unpacked operands (what the benchmark times as conv-only)."""
    from triton_kernels.conv import unpack_activations, unpack_weights, unpacked_conv2d

    x, w = _rand(2, 37, 6, 7, seed=32), _rand(20, 37, 3, 3, seed=33)
    xp, wp = reference.pack_signs(x), reference.pack_signs(w)
    sc, bs = _rand(20, seed=34).abs(), _rand(20, seed=35)
    ref = reference.packed_conv2d_reference(xp, wp, 37, 2, 1, scale=sc, bias=bs)
    out = unpacked_conv2d(unpack_activations(xp, 37, 1), unpack_weights(wp, 37), (3, 3), 2, tuple(ref.shape[2:]),
                      scale=sc, bias=bs)
    assert torch.equal(out, ref)
    out8 = unpacked_conv2d(unpack_activations(xp, 37, 1, torch.float8_e4m3fn),
                           unpack_weights(wp, 37, dtype=torch.float8_e4m3fn), (3, 3), 2, tuple(ref.shape[2:]),
                           scale=sc, bias=bs)
    assert torch.equal(out8, ref)
    with pytest.raises(ValueError, match="both int8 or both float8"):
        unpacked_conv2d(unpack_activations(xp, 37, 1), unpack_weights(wp, 37, dtype=torch.float8_e4m3fn),
                        (3, 3), 2, tuple(ref.shape[2:]))
    with pytest.raises(ValueError, match="reads past"):
        unpacked_conv2d(unpack_activations(xp, 37, 0), unpack_weights(wp, 37), (3, 3), 1, (6, 7))
    with pytest.raises(ValueError, match="BLOCK_K"):
        tk.packed_conv2d(xp, wp, 37, 1, 1, path="mma", config=dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128))


@pytest.mark.parametrize("path", ["mma", "mma_fp8"])
@pytest.mark.parametrize("i", range(len(KSUM_CASES)))
def test_packed_conv_ksum_form(path, i):
    """CBConv's K-sum form on the kernels: unpacking sums each map's K channel signs, the GEMM runs
    over the maps with the rotated bank; equals the full-CiF-bank reference exactly."""
    N, maps, H, W, C_out, s, p, K = KSUM_CASES[i]
    x, Wl = _rand(N, maps * K, H, W, seed=i), _rand(C_out, maps, 3, 3, seed=40 + i)
    xp = reference.pack_signs(x)
    rot = tk.cif_pack_bank(Wl, K, ksum=True)
    assert torch.equal(rot, reference.cif_pack_bank_reference(Wl, K, ksum=True))
    full = reference.cif_pack_bank_reference(Wl, K)
    for j in (i, i + 1):
        kw = _epilogue_args(j, C_out * K)
        ref = reference.packed_conv2d_reference(xp, full, maps * K, s, p, **kw)
        assert torch.equal(tk.packed_conv2d(xp, rot, maps * K, s, p, path=path, ksum=K, **kw), ref), (path, sorted(kw))


@pytest.mark.parametrize("C,K,inside", WORST_CASES)
@pytest.mark.parametrize("path", ["mma", "mma_fp8"])
def test_largest_sums_exact(path, C, K, inside):
    """The largest |sum| a layer allows, on both GEMM paths (fp8 switches to per-K-step promotion
    above 2**13; the interpreter checks the arithmetic, ``test_kernels_gpu`` the hardware)."""
    xp, wp, ref = _worst_case(C, K, "cpu")
    assert ref[0, 0, 1, 1] == inside
    assert torch.equal(tk.packed_conv2d(xp, wp, C, 1, 1, path=path, ksum=K), ref)


@pytest.mark.parametrize("K", [1, 2, 4, 8])
@pytest.mark.parametrize("maps", UNPACK_MAPS)
def test_unpack_activations_ksum(K, maps):
    """Sums of each group of K signs (SWAR popcounts for K > 1) against torch, in the halo layout,
    with every padding bit of the packed words set: bits past ``C_in`` must not leak in."""
    from triton_kernels.conv import unpack_activations

    packed, expect = _unpack_case(maps, K, seed=60 + K + maps)
    for dtype in (torch.int8, torch.float8_e4m3fn):
        got = unpack_activations(packed, maps * K, 1, dtype, ksum=K)
        assert got.dtype == dtype and torch.equal(got.float(), expect), dtype


def test_conv_errors():
    xp = reference.pack_signs(_rand(1, 40, 4, 4))
    wp = reference.pack_signs(_rand(8, 40, 3, 3))
    with pytest.raises(ValueError, match="path"):
        tk.packed_conv2d(xp, wp, 40, path="xnor")
    with pytest.raises(ValueError, match="channel count mismatch"):
        tk.packed_conv2d(xp, wp, 70)
    with pytest.raises(TypeError, match="int32"):
        tk.packed_conv2d(xp.to(torch.int64), wp, 40)
    with pytest.raises(ValueError, match="interpreter"):
        tk.packed_conv2d(xp, wp, 40, path="popcount", use_asm_popcount=True)
    with pytest.raises(TypeError, match="out_dtype"):
        tk.packed_conv2d(xp, wp, 40, out_dtype=torch.int32)
    with pytest.raises(ValueError, match="K-sum form"):
        tk.packed_conv2d(xp, reference.pack_signs(_rand(8, 10, 3, 3)), 40, path="popcount", ksum=4)
    with pytest.raises(ValueError, match="ksum must be 1 or"):
        tk.packed_conv2d(xp, wp, 40, ksum=3)
    with pytest.raises(ValueError, match="must divide"):
        tk.packed_conv2d(reference.pack_signs(_rand(1, 36, 4, 4)), wp, 36, ksum=8)


@pytest.mark.parametrize("case", FUSED_CASES, ids=lambda c: "-".join(map(str, c[:8])))
def test_fused_layer_equals_operand_reference(case):
    """The fused layer (``unpacked_conv2d`` with a residual, a real output and the next conv's
    operand written into its halo buffer) equals ``operands.operand_conv_reference`` bit for bit:
    the real output and every byte of the next operand, halo and padding channels included."""
    from triton_kernels.conv import unpacked_conv2d

    kwargs, next_layout, expected, expected_operand = _fused_case(case)
    N, (OH, OW) = kwargs["x_halo"].shape[0], kwargs["out_size"]
    for config in (None, dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32, SWAP_AB=True),
                   dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, SPLIT_K=3),
                   dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=32, PERSISTENT=True)):
        operand = next_layout.allocate(N, OH, OW, "cpu")
        out = unpacked_conv2d(**kwargs, operand=next_layout.view(operand), config=config)
        assert torch.equal(operand, expected_operand), config
        if expected is None:
            assert out is None
        else:
            assert out.dtype == expected.dtype and torch.equal(out, expected), config


def test_fused_layer_argument_errors():
    from triton_kernels.conv import unpacked_conv2d

    kwargs, next_layout, _, _ = _fused_case(FUSED_CASES[0])
    N, (OH, OW) = kwargs["x_halo"].shape[0], kwargs["out_size"]
    wrong = next_layout.allocate(N, OH + 1, OW, "cpu")
    with pytest.raises(ValueError, match="operand buffer must be"):
        unpacked_conv2d(**kwargs, operand=next_layout.view(wrong))
    with pytest.raises(ValueError, match="residual must be a channels-last"):
        unpacked_conv2d(**{**kwargs, "residual": kwargs["residual"].contiguous()})


def test_unpacked_operands_must_be_contiguous_and_aligned():
    """The GEMMs (``mma``, ``mma_fp8``, ``mma_async``) derive the operands' strides from their shapes
    and assume 16-byte aligned rows: a strided view or an offset one is refused in one line, not
    read wrongly."""
    from triton_kernels import conv as tkconv

    x_halo = torch.zeros(1, 4, 4, 32, dtype=torch.int8)
    w_mat = torch.zeros(16, 9 * 32, dtype=torch.int8)
    strided = torch.zeros(1, 4, 4, 64, dtype=torch.int8)[..., :32]
    with pytest.raises(ValueError, match="x_halo must be contiguous and 16-byte aligned"):
        tkconv.unpacked_conv2d(strided, w_mat, (3, 3), 1, (2, 2))
    offset = torch.zeros(9 * 32 * 16 + 1, dtype=torch.int8)[1:].view(16, 9 * 32)
    with pytest.raises(ValueError, match="w_mat must be contiguous and 16-byte aligned"):
        tkconv.unpacked_conv2d(x_halo, offset, (3, 3), 1, (2, 2))


# --- CiF --------------------------------------------------------------------------------------
@pytest.mark.parametrize("K", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", [(3, 5, 3), (2, 9, 3), (4, 3, 1), (2, 3, 5), (2, 40, 3)])
def test_cif_pack_bank(K, shape):
    co, ci, H = shape
    W = _rand(co, ci, H, H, seed=K)
    W[0, 0, 0, 0] = 0.0
    for ksum in (False, True):  # the full CiF bank, and the K-sum (rotations only) bank
        ref = reference.cif_pack_bank_reference(W, K, ksum=ksum)
        assert torch.equal(tk.cif_pack_bank(W, K, ksum=ksum), ref)
        assert torch.equal(tk.cif_pack_bank(reference.pack_signs(W), K, in_channels=ci, ksum=ksum), ref)


@pytest.mark.parametrize("K", [1, 2, 4, 8])
def test_cif_expand_and_backward(K):
    W = _rand(3, 5, 3, 3, seed=K)
    assert torch.equal(tk.cif_expand(W, K), cif_ref.cif_expand(W, K))
    # dyadic values: every summation order is exact, so equality is exact
    g = torch.randint(-64, 64, (3 * K, 5 * K, 3, 3), generator=torch.Generator().manual_seed(K)).float() / 8
    assert torch.equal(tk.cif_backward(g, K), cif_ref.cif_backward(g, K))
    # random floats: same order of summation over j; torch may associate the k-sum differently
    g = _rand(3 * K, 5 * K, 3, 3, seed=50 + K)
    torch.testing.assert_close(tk.cif_backward(g, K), cif_ref.cif_backward(g, K), rtol=1e-6, atol=1e-5)


def test_cif_autograd_matches_autograd_through_gather():
    W = _rand(3, 4, 3, 3, seed=9).requires_grad_()
    g = torch.randint(-8, 8, (12, 16, 3, 3), generator=torch.Generator().manual_seed(1)).float()
    (tk.cif_expand_autograd(W, 4) * g).sum().backward()
    ours, W.grad = W.grad.clone(), None
    (cif_ref.cif_expand(W, 4) * g).sum().backward()
    assert torch.equal(ours, W.grad)


def test_cif_errors():
    with pytest.raises(ValueError, match="K"):
        tk.cif_pack_bank(_rand(2, 3, 3, 3), 3)
    with pytest.raises(ValueError, match="in_channels"):
        tk.cif_pack_bank(reference.pack_signs(_rand(2, 3, 3, 3)), 4)
    with pytest.raises(TypeError):
        tk.cif_pack_bank(torch.zeros(2, 3, 3, 3, dtype=torch.int64), 4)
    with pytest.raises(ValueError, match="gradient"):
        tk.cif_backward(_rand(6, 8, 3, 3), 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_packed_conv_half_outputs(dtype):
    x, w = _rand(2, 37, 5, 5, seed=21), _rand(20, 37, 3, 3, seed=22)
    xp, wp = reference.pack_signs(x), reference.pack_signs(w)
    sc = _rand(20, seed=23).abs()
    ref = reference.packed_conv2d_reference(xp, wp, 37, 1, 1, scale=sc, out_dtype=dtype)
    for path in ("mma", "mma_fp8", "popcount", "mma_packed"):
        assert torch.equal(tk.packed_conv2d(xp, wp, 37, 1, 1, scale=sc, out_dtype=dtype, path=path), ref)


def test_unpack_weights_cache_freed_with_weights():
    from triton_kernels import conv as tkconv

    wp = reference.pack_signs(_rand(4, 40, 3, 3, seed=36))
    tkconv.unpack_weights(wp, 40)
    tkconv.unpack_weights(wp, 40, dtype=torch.float8_e4m3fn)
    keys = [(id(wp), torch.int8), (id(wp), torch.float8_e4m3fn)]
    assert all(key in tkconv._W_CACHE for key in keys)
    del wp
    assert not any(key in tkconv._W_CACHE for key in keys)


def test_packed_input_path_refuses_inputs_past_int32_offsets():
    """mma_packed addresses packed words with int32 offsets (what keeps it within the registers);
    a packed input of 2**31 words or more gets one clear error (a stride-0 view: no memory)."""
    from triton_kernels import conv as tkconv

    huge = torch.zeros(1, 1, 1, 1, dtype=torch.int32).expand(2**11, 2**10, 2**10, 1)
    w_mat = torch.zeros(8, 9 * 32, dtype=torch.int8)
    with pytest.raises(ValueError, match="int32 offsets"):
        tkconv.packed_input_conv2d(huge, w_mat, 32, (3, 3), 1, 1, (2**10, 2**10))


def test_fused_layer_refuses_aliased_buffers():
    """The autotuner runs each candidate tile several times on the real arguments, so an output that
    is its own residual would get the residual added more than once; an operand written into the
    buffer the GEMM reads races between tiles. Both get one clear error."""
    from triton_kernels import conv as tkconv

    x_halo = torch.zeros(1, 4, 4, 32, dtype=torch.int8)
    w_mat = torch.zeros(16, 9 * 32, dtype=torch.int8)
    residual = torch.zeros(1, 16, 2, 2).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="must not be the residual"):
        tkconv.unpacked_conv2d(x_halo, w_mat, (3, 3), 1, (2, 2), residual=residual, out=residual)
    square = torch.zeros(1, 4, 4, 32, dtype=torch.int8)
    w_square = torch.zeros(32, 9 * 32, dtype=torch.int8)
    with pytest.raises(ValueError, match="must not be the input operand"):
        tkconv.unpacked_conv2d(square, w_square, (3, 3), 1, (2, 2), store_out=False, operand=square, operand_pad=1)


def test_tma_allocator_is_registered_in_every_thread():
    """Triton keeps its allocator (scratch for device-side TMA descriptors) in a context variable:
    each thread that launches needs it registered, not only the first (no GPU needed: only the
    registration runs)."""
    import threading

    from triton.runtime import _allocation

    from triton_kernels import conv as tkconv

    seen = []

    def launch_thread():
        before = isinstance(_allocation._allocator.get(), _allocation.NullAllocator)
        tkconv._ensure_allocator("cuda")
        seen.append((before, isinstance(_allocation._allocator.get(), _allocation.NullAllocator)))

    for _ in range(2):
        t = threading.Thread(target=launch_thread)
        t.start()
        t.join()
    assert seen == [(True, False), (True, False)]


def test_gpu_fixed_tiles_fit_every_gpu_test_shape():
    """``tests/test_kernels_gpu.py``'s fixed GPU tiles (``gpu_tile``), run here in the interpreter
    on every shape that file uses, so a tile that cannot serve a shape (BLOCK_K not dividing the
    padded channels) fails here instead of on a lent GPU; exact against the reference."""
    for i, (N, C, H, W, Co, k, s, p) in enumerate(CONV_CASES + EXTRA_CASES):
        x, w = _rand(N, C, H, W, seed=i), _rand(Co, C, k, k, seed=100 + i)
        xp, wp = reference.pack_signs(x), reference.pack_signs(w)
        ref = reference.packed_conv2d_reference(xp, wp, C, s, p)
        assert torch.equal(tk.packed_conv2d(xp, wp, C, s, p, path="mma", config=gpu_tile("mma", C)), ref)
    for N, maps, H, W, C_out, s, p, K in KSUM_CASES:
        x, Wl = _rand(N, maps * K, H, W, seed=maps), _rand(C_out, maps, 3, 3, seed=40 + maps)
        xp = reference.pack_signs(x)
        ref = reference.packed_conv2d_reference(xp, reference.cif_pack_bank_reference(Wl, K), maps * K, s, p)
        rot = reference.cif_pack_bank_reference(Wl, K, ksum=True)
        assert torch.equal(tk.packed_conv2d(xp, rot, maps * K, s, p, path="mma", ksum=K,
                                            config=gpu_tile("mma", maps)), ref)
    for C, K, _ in WORST_CASES[:2]:
        xp, wp, ref = _worst_case(C, K, "cpu")
        assert torch.equal(tk.packed_conv2d(xp, wp, C, 1, 1, path="mma", ksum=K, config=gpu_tile("mma", C // K)), ref)
