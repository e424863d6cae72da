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

import triton_kernels as tk  # noqa: E402
from cbcn import bitpack  # noqa: E402
from cbcn import cif as cif_ref  # noqa: E402
from cbcn.binarize import sign  # noqa: E402


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


# --- packing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 37, 5, 3), (1, 64, 7, 7), (3, 5, 2, 2), (1, 100, 3, 3), (4, 33, 1, 1)])
def test_pack_unpack(shape):
    x = _rand(*shape, seed=shape[1])
    x.view(-1)[:3] = torch.tensor([0.0, -0.0, float("nan")])
    p = tk.pack_signs(x)
    assert torch.equal(p, bitpack.pack_signs(x))
    assert torch.equal(tk.pack_signs(x.contiguous(memory_format=torch.channels_last)), p)
    assert torch.equal(tk.pack_signs(x.half()), bitpack.pack_signs(x.half()))
    assert torch.equal(tk.unpack_signs(p, shape[1]), bitpack.unpack_signs(p, shape[1]))
    assert torch.equal(tk.unpack_signs(p, shape[1], torch.bfloat16), bitpack.unpack_signs(p, shape[1], torch.bfloat16))


def test_pack_weights():
    w = _rand(9, 70, 3, 3, seed=3)
    assert torch.equal(tk.pack_signs(w), bitpack.pack_signs(w))


# --- packed convolution -----------------------------------------------------------------------
CONV_CASES = [  # N, C_in, H, W, C_out, k, stride, padding
    (1, 37, 7, 7, 20, 3, 1, 1),
    (2, 64, 5, 5, 33, 3, 2, 1),
    (3, 5, 7, 5, 40, 3, 2, 0),
    (2, 70, 5, 3, 64, 3, 1, 1),
    (1, 100, 3, 3, 9, 1, 1, 0),
    (2, 33, 9, 9, 16, 3, 2, 1),
]


def _epilogue_args(case_index, C_out):
    options = [
        {},
        {"scale": _rand(C_out, seed=11).abs(), "bias": _rand(C_out, seed=12)},
        {"scale": _rand(C_out, seed=13).abs(), "bn_scale": _rand(C_out, seed=14), "bn_shift": _rand(C_out, seed=15)},
        {"scale": _rand(C_out, seed=16).abs(), "bias": _rand(C_out, seed=17), "binarize_output": True},
    ]
    return options[case_index % len(options)]


@pytest.mark.parametrize("path", ["mma", "popcount"])
@pytest.mark.parametrize("i", range(len(CONV_CASES)))
def test_packed_conv_equals_reference(path, i):
    N, C, H, W, Co, k, s, p = CONV_CASES[i]
    x, w = _rand(N, C, H, W, seed=i), _rand(Co, C, k, k, seed=100 + i)
    xp, wp = bitpack.pack_signs(x), bitpack.pack_signs(w)
    for j in (i, i + 1):  # two epilogue variants per shape
        kw = _epilogue_args(j, Co)
        ref = bitpack.packed_conv2d_reference(xp, wp, C, s, p, **kw)
        out = tk.packed_conv2d(xp, wp, C, s, p, path=path, **kw)
        assert out.shape == ref.shape and out.dtype == ref.dtype
        assert torch.equal(out, ref), (path, CONV_CASES[i], sorted(kw))
    # and the reference is F.conv2d on ±1 with zero padding
    assert torch.equal(
        tk.packed_conv2d(xp, wp, C, s, p, path=path), F.conv2d(sign(x), sign(w), None, s, p)
    )


@pytest.mark.parametrize("path", ["mma", "popcount"])
def test_zero_padding_borders(path):
    C = 40  # two words, 24 padding bits in the second
    x, w = -torch.ones(2, C, 4, 5), torch.ones(3, C, 3, 3)
    out = tk.packed_conv2d(bitpack.pack_signs(x), bitpack.pack_signs(w), C, 1, 1, path=path)
    assert out[0, 0, 0, 0] == -4 * C and out[1, 2, 3, 4] == -4 * C  # corners: 4 valid taps
    assert out[0, 0, 0, 2] == -6 * C  # edge
    assert out[0, 0, 1, 2] == -9 * C  # interior
    assert torch.equal(out, F.conv2d(x, w, None, 1, 1))


@pytest.mark.parametrize(
    "config",
    [dict(BLOCK_M=16, BLOCK_N=32, BLOCK_W=1), dict(BLOCK_M=32, BLOCK_N=64, BLOCK_W=4)],
)
def test_mma_tiles(config):
    # other tilings: one word per K-step, and K-steps wider than the 3 words present
    x, w = _rand(2, 70, 5, 5, seed=5), _rand(40, 70, 3, 3, seed=6)
    xp, wp = bitpack.pack_signs(x), bitpack.pack_signs(w)
    ref = bitpack.packed_conv2d_reference(xp, wp, 70, 2, 1, binarize_output=True)
    assert torch.equal(tk.packed_conv2d(xp, wp, 70, 2, 1, binarize_output=True, path="mma", config=config), ref)


def test_conv_errors():
    xp = bitpack.pack_signs(_rand(1, 40, 4, 4))
    wp = bitpack.pack_signs(_rand(8, 40, 3, 3))
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


# --- CiF --------------------------------------------------------------------------------------
@pytest.mark.parametrize("K", [1, 2, 4, 8])
@pytest.mark.parametrize("shape", [(3, 5, 3), (2, 9, 3), (4, 3, 1), (2, 3, 5)])
def test_cif_pack_bank(K, shape):
    co, ci, H = shape
    W = _rand(co, ci, H, H, seed=K)
    W[0, 0, 0, 0] = 0.0
    ref = bitpack.cif_pack_bank_reference(W, K)
    assert torch.equal(tk.cif_pack_bank(W, K), ref)
    assert torch.equal(tk.cif_pack_bank(bitpack.pack_signs(W), K, in_channels=ci), ref)


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
        tk.cif_pack_bank(bitpack.pack_signs(_rand(2, 3, 3, 3)), 4)
    with pytest.raises(TypeError):
        tk.cif_pack_bank(torch.zeros(2, 3, 3, 3, dtype=torch.int64), 4)
    with pytest.raises(ValueError, match="gradient"):
        tk.cif_backward(_rand(6, 8, 3, 3), 4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_packed_conv_half_outputs(dtype):
    x, w = _rand(2, 37, 5, 5, seed=21), _rand(20, 37, 3, 3, seed=22)
    xp, wp = bitpack.pack_signs(x), bitpack.pack_signs(w)
    sc = _rand(20, seed=23).abs()
    ref = bitpack.packed_conv2d_reference(xp, wp, 37, 1, 1, scale=sc, out_dtype=dtype)
    for path in ("mma", "popcount"):
        assert torch.equal(tk.packed_conv2d(xp, wp, 37, 1, 1, scale=sc, out_dtype=dtype, path=path), ref)
