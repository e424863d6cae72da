"""The pure-PyTorch reference path of the packed binary layers (cbcn.bitpack): packing convention,
packed convolution == F.conv2d on ±1 with zero padding, epilogue, CiF bank, errors."""
import pytest
import torch
import torch.nn.functional as F

from cbcn.nn.binarize import sign
from cbcn.nn.cif import cif_expand, rotated_bank
from cbcn.onebit.backends import reference
from cbcn.onebit.backends.epilogue import fold_batchnorm


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def test_bit_convention():
    # channel c -> word c // 32, bit c % 32; set iff value < 0; sign(0) = +1 packs as 0
    x = torch.ones(1, 70, 1, 1)
    x[0, 0] = -1.0
    x[0, 31] = -2.0
    x[0, 33] = -0.5
    x[0, 5] = 0.0
    x[0, 6] = -0.0
    p = reference.pack_signs(x)
    assert p.shape == (1, 1, 1, 3) and p.dtype == torch.int32
    words = [int(v) & 0xFFFFFFFF for v in p.view(-1)]
    assert words == [(1 << 0) | (1 << 31), 1 << 1, 0]


def test_nan_packs_like_sign():
    x = torch.tensor([float("nan"), 1.0, -1.0]).view(1, 3, 1, 1)
    assert torch.equal(reference.unpack_signs(reference.pack_signs(x), 3), sign(x))


@pytest.mark.parametrize("shape", [(2, 37, 5, 3), (1, 64, 7, 7), (3, 1, 2, 2), (2, 100, 1, 9), (4, 33, 3, 3)])
def test_roundtrip(shape):
    x = _rand(*shape)
    p = reference.pack_signs(x)
    assert p.shape == (shape[0], *shape[2:], reference.num_words(shape[1]))
    assert torch.equal(reference.unpack_signs(p, shape[1]), sign(x))
    assert reference.unpack_signs(p, shape[1], torch.float16).dtype == torch.float16


def test_weight_layout():
    w = _rand(5, 40, 3, 3)
    p = reference.pack_signs(w)
    assert p.shape == (5, 3, 3, 2)
    # the word of (o, kh, kw) holds the signs of w[o, :, kh, kw]
    bits = [(int(p[2, 1, 0, c // 32]) >> (c % 32)) & 1 for c in range(40)]
    assert bits == [int(w[2, c, 1, 0] < 0) for c in range(40)]


CASES = [  # N, C_in, H, W, C_out, k, stride, padding
    (1, 37, 7, 5, 20, 3, 1, 1),
    (2, 64, 6, 6, 33, 3, 2, 1),
    (3, 5, 5, 7, 8, 3, 2, 0),
    (2, 70, 3, 3, 40, 1, 1, 0),
    (1, 32, 9, 9, 16, 5, 2, 2),
]


@pytest.mark.parametrize("case", CASES)
def test_reference_conv_matches_conv2d(case):
    N, C, H, W, Co, k, s, p = case
    x, w = _rand(N, C, H, W, seed=1), _rand(Co, C, k, k, seed=2)
    out = reference.packed_conv2d_reference(reference.pack_signs(x), reference.pack_signs(w), C, s, p)
    assert torch.equal(out, F.conv2d(sign(x), sign(w), None, s, p))


def test_zero_padding_borders():
    # all -1 input, all +1 weights, 3x3 pad 1: zero padding counts 0 (not -1) at the borders
    C = 40
    x, w = -torch.ones(1, C, 4, 5), torch.ones(3, C, 3, 3)
    out = reference.packed_conv2d_reference(reference.pack_signs(x), reference.pack_signs(w), C, 1, 1)
    assert out[0, 0, 0, 0] == -4 * C  # corner: 4 valid taps
    assert out[0, 0, 0, 2] == -6 * C  # edge: 6 valid taps
    assert out[0, 0, 1, 2] == -9 * C  # interior
    assert torch.equal(out, F.conv2d(x, w, None, 1, 1))


def test_epilogue_and_rebinarisation():
    N, C, Co = 2, 37, 40
    x, w = _rand(N, C, 5, 5, seed=3), _rand(Co, C, 3, 3, seed=4)
    xp, wp = reference.pack_signs(x), reference.pack_signs(w)
    sc, b, m, a = _rand(Co, seed=5).abs(), _rand(Co, seed=6), _rand(Co, seed=7), _rand(Co, seed=8)
    y = F.conv2d(sign(x), sign(w), None, 1, 1)
    expect = ((y * sc.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)) * m.view(1, -1, 1, 1)) + a.view(1, -1, 1, 1)
    out = reference.packed_conv2d_reference(xp, wp, C, 1, 1, scale=sc, bias=b, bn_scale=m, bn_shift=a)
    assert torch.equal(out, expect)
    packed = reference.packed_conv2d_reference(xp, wp, C, 1, 1, scale=sc, bias=b, bn_scale=m, bn_shift=a, binarize_output=True)
    assert packed.shape == (N, 5, 5, 2)
    assert torch.equal(packed, reference.pack_signs(expect))
    assert reference.packed_conv2d_reference(xp, wp, C, 1, 1, out_dtype=torch.bfloat16).dtype == torch.bfloat16


def test_fold_batchnorm():
    bn = torch.nn.BatchNorm2d(6).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_()
        bn.bias.normal_()
    mul, shift = fold_batchnorm(bn)
    y = _rand(2, 6, 3, 3)
    torch.testing.assert_close(y * mul.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1), bn(y), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("K", [1, 2, 4, 8])
@pytest.mark.parametrize("H", [1, 3, 5])
def test_cif_pack_bank_reference(K, H):
    W = _rand(3, 9, H, H, seed=K)
    W[0, 0, 0, 0] = 0.0
    bank = reference.cif_pack_bank_reference(W, K)
    assert bank.shape == (3 * K, H, H, reference.num_words(9 * K))
    assert torch.equal(bank, reference.pack_signs(cif_expand(sign(W), K)))
    assert torch.equal(reference.cif_pack_bank_reference(reference.pack_signs(W), K, in_channels=9), bank)


@pytest.mark.parametrize("K", [2, 4, 8])
@pytest.mark.parametrize("case", [(2, 5, 7, 6, 4, 1, 1), (1, 9, 6, 6, 3, 2, 1), (3, 33, 5, 7, 2, 2, 0)])
def test_ksum_form_equals_full_cif_bank(K, case):
    """CBConv's K-sum form (SPEC §2): conv of the physical channels with the full CiF bank ==
    conv of each map's K-channel sum with the rotated bank alone (exact integers)."""
    N, maps, H, W, C_out, stride, pad = case
    x, Wl = _rand(N, maps * K, H, W, seed=K), _rand(C_out, maps, 3, 3, seed=10 + K)
    xp = reference.pack_signs(x)
    full = reference.cif_pack_bank_reference(Wl, K)
    rot = reference.cif_pack_bank_reference(Wl, K, ksum=True)
    assert rot.shape == (C_out * K, 3, 3, reference.num_words(maps))
    assert torch.equal(rot, reference.pack_signs(rotated_bank(sign(Wl), K)))
    assert torch.equal(reference.cif_pack_bank_reference(reference.pack_signs(Wl), K, in_channels=maps, ksum=True), rot)
    scale = _rand(C_out * K, seed=3).abs()
    expected = reference.packed_conv2d_reference(xp, full, maps * K, stride, pad, scale=scale)
    assert torch.equal(expected, F.conv2d(sign(x), cif_expand(sign(Wl), K), None, stride, pad) * scale.view(1, -1, 1, 1))
    got = reference.packed_conv2d_reference(xp, rot, maps * K, stride, pad, scale=scale, ksum=K)
    assert torch.equal(got, expected)
    assert torch.equal(reference.packed_conv2d_reference(xp, rot, maps * K, stride, pad, ksum=K, binarize_output=True),
                       reference.packed_conv2d_reference(xp, full, maps * K, stride, pad, binarize_output=True))


def test_errors():
    xp = reference.pack_signs(_rand(1, 40, 4, 4))
    wp = reference.pack_signs(_rand(8, 40, 3, 3))
    with pytest.raises(TypeError, match="int32"):
        reference.packed_conv2d_reference(xp.float(), wp, 40)
    with pytest.raises(ValueError, match="channel count mismatch"):
        reference.packed_conv2d_reference(xp, wp, 70)
    with pytest.raises(ValueError, match="channel count mismatch"):
        reference.packed_conv2d_reference(xp, reference.pack_signs(_rand(8, 70, 3, 3)), 40)
    with pytest.raises(ValueError, match="shape"):
        reference.packed_conv2d_reference(xp, wp, 40, scale=torch.ones(7))
    with pytest.raises(ValueError, match="both"):
        reference.packed_conv2d_reference(xp, wp, 40, bn_scale=torch.ones(8))
    with pytest.raises(ValueError, match="too small"):
        reference.packed_conv2d_reference(reference.pack_signs(_rand(1, 40, 2, 2)), wp, 40)
    with pytest.raises(ValueError, match="does not match"):
        reference.unpack_signs(xp, 70)
    with pytest.raises(TypeError):
        reference.pack_signs(torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="K"):
        reference.cif_pack_bank_reference(_rand(2, 3, 3, 3), 3)
    with pytest.raises(ValueError, match="ksum=8 must divide"):
        reference.packed_conv2d_reference(reference.pack_signs(_rand(1, 36, 4, 4)), wp, 36, ksum=8)
    for bad in (0, 3, True):
        with pytest.raises(ValueError, match="ksum must be 1 or"):
            reference.packed_conv2d_reference(xp, wp, 40, ksum=bad)
    with pytest.raises(ValueError, match="weight words"):  # a full bank passed as a K-sum bank
        reference.packed_conv2d_reference(reference.pack_signs(_rand(1, 128, 4, 4)), reference.pack_signs(_rand(8, 128, 3, 3)),
                                        128, ksum=4)
    with pytest.raises(ValueError, match="in_channels"):
        reference.cif_pack_bank_reference(reference.pack_signs(_rand(2, 3, 3, 3)), 4)
    with pytest.raises(ValueError, match="odd"):
        reference.cif_pack_bank_reference(_rand(2, 3, 2, 2), 4)
