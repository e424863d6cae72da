"""Core library: circulant filters, binarization, the binary-conv family and the backbones.

Random inputs are drawn fresh on every run (no fixed seed) and integer arithmetic is checked
with exact equality.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from cbcn.nn.binarize import SURROGATES, binarize, get_surrogate, sign
from cbcn.nn.cif import (cif_backward, cif_expand, inverse_transfer_matrix, ring_cells, rotate, rotated_bank,
                         transfer_matrix)
from cbcn.nn.layers import BinaryConv2d, reference_forward
from cbcn.nn.methods import METHODS
from cbcn.nn.models import MODELS, build_model, describe_model

# ---------------------------------------------------------------- orientations (SPEC §2)


@pytest.mark.parametrize("H", [3, 5, 7])
def test_k4_orientation_is_rot90(H):
    w = torch.randn(3, 2, H, H)
    for j in range(4):
        assert torch.equal(rotate(w, j, 4), torch.rot90(w, j, dims=(-2, -1)))


@pytest.mark.parametrize("H", [3, 5])
def test_k8_two_steps_is_rot90_and_k2_is_rot180(H):
    w = torch.randn(4, H, H)
    assert torch.equal(rotate(w, 2, 8), torch.rot90(w, 1, dims=(-2, -1)))
    assert torch.equal(rotate(w, 1, 2), torch.rot90(w, 2, dims=(-2, -1)))


@pytest.mark.parametrize("K", [1, 2, 4, 8])
@pytest.mark.parametrize("H", [1, 3, 5])
def test_orientations_compose_and_P_inverts_M(K, H):
    w = torch.randn(2, H, H)
    for j in range(K):
        for jj in range(K):
            assert torch.equal(rotate(rotate(w, j, K), jj, K), rotate(w, (j + jj) % K, K))
    M, P = transfer_matrix(H, K), inverse_transfer_matrix(H, K)
    assert M.shape == P.shape == (K, H * H)
    ident = torch.arange(H * H)
    for j in range(K):
        assert torch.equal(M[j][P[j]], ident) and torch.equal(P[j][M[j]], ident)
        flat = w.reshape(2, -1)
        assert torch.equal(rotate(w, j, K).reshape(2, -1)[:, P[j]], flat)


def test_ring_shift_sizes_and_fixed_centre():
    # H=5, K=8, one 45° step: ring 1 moves by 1 place, ring 2 by 2 places; centre fixed.
    M = transfer_matrix(5, 8)[1]
    assert M[12] == 12
    for r in (1, 2):
        cells = ring_cells(5, r)
        assert len(cells) == 8 * r
        for i, (row, col) in enumerate(cells):
            src = cells[(i - r) % len(cells)]
            assert M[row * 5 + col] == src[0] * 5 + src[1]
    # H=1 kernels are their own rotations
    w = torch.randn(3, 1, 1)
    for j in range(8):
        assert torch.equal(rotate(w, j, 8), w)


def test_paper_fig3_m1_is_cyclic_shift_for_3x3():
    # Fig. 3 / Eq. 1: m_1 maps ring position p to p+1 (mod 8) for K=8, 3x3.
    cells = ring_cells(3, 1)
    M = transfer_matrix(3, 8)
    w = torch.zeros(3, 3)
    for p, (r, c) in enumerate(cells):
        w[r, c] = p
    rotated = rotate(w, 1, 8)
    for p, (r, c) in enumerate(cells):
        assert rotated[r, c] == (p - 1) % 8  # the value at p moved to p+1
    assert M.shape == (8, 9)


# ---------------------------------------------------------------- CiF layout and Eq. 8


@pytest.mark.parametrize("K", [1, 2, 4, 8])
def test_cif_layout_index_by_index(K):
    C_out, C_in, H = 2, 3, 3
    W = torch.randn(C_out, C_in, H, H)
    G = cif_expand(W, K)
    assert G.shape == (C_out * K, C_in * K, H, H)
    for h in range(C_out):
        for j in range(K):
            for g in range(C_in):
                for k in range(K):
                    assert torch.equal(G[h * K + j, g * K + k], rotate(W[h, g], j, K))
    assert torch.equal(rotated_bank(W, K), G[:, ::K])


@pytest.mark.parametrize("K", [2, 4, 8])
def test_sign_commutes_with_cif(K):
    W = torch.randn(4, 3, 5, 5)
    W[0, 0, 1, 1] = 0.0  # sign(0) = +1 on both sides
    assert torch.equal(sign(cif_expand(W, K)), cif_expand(sign(W), K))


@pytest.mark.parametrize("K", [1, 2, 4, 8])
@pytest.mark.parametrize("H", [1, 3, 5])
def test_explicit_eq8_equals_autograd(K, H):
    W = torch.randn(3, 2, H, H, dtype=torch.float64, requires_grad=True)
    G = cif_expand(W, K)
    grad_G = torch.randn_like(G)
    G.backward(grad_G)
    torch.testing.assert_close(cif_backward(grad_G, K), W.grad, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- binarization


def test_sign_of_zero_is_plus_one():
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-30, 3.0])
    assert sign(x).tolist() == [-1.0, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "name, formula",
    [
        ("ste", lambda x: (x.abs() <= 1).double()),
        ("approx", lambda x: torch.where(x.abs() <= 1, 2 - 2 * x.abs(), torch.zeros_like(x))),
        ("gauss", lambda x: 3 * math.sqrt(2 * math.pi) / math.sqrt(math.pi) * torch.exp(-(x**2))),
        ("identity", lambda x: torch.ones_like(x)),
    ],
)
def test_surrogate_gradients_match_formulas(name, formula):
    x = (torch.rand(1000, dtype=torch.float64) * 6 - 3).requires_grad_()
    y = binarize(x, name)
    assert torch.equal(y.detach(), sign(x.detach()))
    g = torch.randn_like(x)
    y.backward(g)
    torch.testing.assert_close(x.grad, g * formula(x.detach()), rtol=1e-12, atol=1e-12)


def test_gauss_parameters():
    x = torch.linspace(-2, 2, 101, dtype=torch.float64, requires_grad=True)
    binarize(x, "gauss", sigma=0.5, amplitude=2.0).sum().backward()
    expected = 2.0 / (0.5 * math.sqrt(math.pi)) * torch.exp(-(x.detach() ** 2) / 0.25)
    torch.testing.assert_close(x.grad, expected)


def test_unknown_surrogate_lists_choices():
    with pytest.raises(ValueError, match="valid choices.*approx"):
        get_surrogate("tanh")
    assert set(SURROGATES) >= {"ste", "approx", "gauss"}


# ---------------------------------------------------------------- the layer family


def _random_case(method, K):
    in_maps, out_maps = torch.randint(1, 5, (2,)).tolist()
    H = [1, 3, 5][torch.randint(0, 3, ()).item()]
    stride = torch.randint(1, 3, ()).item()
    padding = torch.randint(0, H // 2 + 1, ()).item()
    layer = BinaryConv2d(in_maps, out_maps, H, stride, padding, bias=bool(torch.randint(0, 2, ())), method=method, K=K)
    if layer.bias is not None:
        torch.nn.init.normal_(layer.bias)
    size = torch.randint(H, 12, ()).item()
    x = torch.randn(torch.randint(1, 4, ()).item(), layer.physical_in_channels, size, size)
    return layer, x


@pytest.mark.parametrize("method", ["bnn", "xnor", "bireal", "cbcn"])
@pytest.mark.parametrize("trial", range(4))
def test_binary_layer_equals_float_conv_on_signs(method, trial):
    """larq-style oracle: the binary layer == F.conv2d(sign x, sign W) * α, exactly."""
    K = [1, 2, 4, 8][trial % 4] if method == "cbcn" else 1
    layer, x = _random_case(method, K)
    y = layer(x)
    xb, wb = sign(x), layer.effective_weight().detach()
    assert set(wb.unique().tolist()) <= {-1.0, 1.0}
    expected = F.conv2d(xb, wb, None, layer.stride, layer.padding)
    alpha = layer.scale()
    if method == "bnn":
        assert alpha is None
    else:
        expected = expected * alpha.view(1, -1, 1, 1)
    if layer.bias is not None:
        expected = expected + layer.bias.view(1, -1, 1, 1)
    assert torch.equal(y, expected)
    assert torch.equal(y, reference_forward(layer, x))


def test_bwn_and_fp_layers():
    layer = BinaryConv2d(3, 4, 3, padding=1, method="bwn")
    x = torch.randn(2, 3, 7, 7)
    alpha = layer.weight.abs().mean(dim=(1, 2, 3))
    expected = F.conv2d(x, sign(layer.weight), padding=1) * alpha.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    fp = BinaryConv2d(3, 4, 3, padding=1, method="fp", bias=True)
    torch.testing.assert_close(fp(x), F.conv2d(x, fp.weight, fp.bias, padding=1), rtol=0, atol=0)


def test_xnor_scale_is_mean_abs_per_output_channel():
    layer = BinaryConv2d(3, 5, 3, method="xnor")
    torch.testing.assert_close(layer.scale(), layer.weight.abs().mean(dim=(1, 2, 3)))
    cb = BinaryConv2d(3, 5, 3, method="cbcn", K=4)
    assert torch.equal(cb.scale(), cb.weight.abs().mean(dim=(1, 2, 3)).repeat_interleave(4))


@pytest.mark.parametrize("K", [2, 4, 8])
def test_k_sum_identity(K):
    """CBConv on C_in summed maps == the full C_in·K convolution with the CiF bank (SPEC §2)."""
    C_in, C_out = 3, 2
    W = sign(torch.randn(C_out, C_in, 3, 3))
    x = sign(torch.randn(2, C_in * K, 9, 9))
    full = F.conv2d(x, cif_expand(W, K), padding=1)
    summed = F.conv2d(x.reshape(2, C_in, K, 9, 9).sum(2), rotated_bank(W, K), padding=1)
    assert torch.equal(full, summed)


@pytest.mark.parametrize("K", [1, 4])
def test_cbconv_layer_gradient_is_eq8(K):
    """Autograd through the layer gives W the Eq. 8 gradient of the bank (weight surrogate applied)."""
    layer = BinaryConv2d(2, 3, 3, padding=1, method="cbcn", K=K, weight_surrogate="identity")
    x = torch.randn(2, 2 * K, 6, 6)
    bank = cif_expand(sign(layer.weight.detach()), K).requires_grad_()
    y = F.conv2d(sign(x), bank, padding=1) * layer.scale().detach().view(1, -1, 1, 1)
    g = torch.randn_like(y)
    y.backward(g)
    layer.scale = lambda: layer.weight.abs().mean(dim=(1, 2, 3)).detach().repeat_interleave(layer.K)
    layer(x).backward(g)
    torch.testing.assert_close(layer.weight.grad, cif_backward(bank.grad, K), rtol=1e-5, atol=1e-5)


def test_activation_surrogate_reaches_input():
    layer = BinaryConv2d(1, 1, 1, method="bnn", act_surrogate="approx")
    with torch.no_grad():
        layer.weight.fill_(1.0)
    x = torch.tensor([[[[0.5, -2.0]]]], requires_grad=True)
    layer(x).sum().backward()
    assert x.grad.flatten().tolist() == [1.0, 0.0]  # 2 - 2|0.5| = 1; outside [-1, 1] -> 0


# ---------------------------------------------------------------- backbones


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", list(METHODS))
def test_every_backbone_and_method_runs(name, method):
    K = 2 if method == "cbcn" else 1
    in_ch = 1 if name == "lenet" else 3
    stages = (2, 3, 4, 5) if name == "lenet" else (4, 4, 8, 8)
    model = build_model(name, method, stages=stages, K=K, in_channels=in_ch, num_classes=7)
    x = torch.randn(2, in_ch, 32, 32)
    logits, feats = model(x, return_features=True)
    assert logits.shape == (2, 7) and feats.shape == (2, model.feature_dim)
    logits.sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    info = describe_model(model)
    assert info["learned_parameters"] == sum(p.numel() for p in model.parameters())


def test_imagenet_stem():
    model = build_model("resnet18", "xnor", stages=(4, 4, 8, 8), stem="imagenet", num_classes=5)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    assert build_model("resnet18", "fp", stem="imagenet").stages == (64, 128, 256, 512)


def test_lenet_5_10_20_40_parameter_count():
    """By hand (3x3 convs without bias; BN in front of convs 2-4; dropout + linear on 2x2 maps).
    fp/xnor: convs 1*5*9 + 5*10*9 + 10*20*9 + 20*40*9 = 45 + 450 + 1800 + 7200 = 9495;
    BN 2*(5 + 10 + 20) = 70; linear 40*2*2*10 + 10 = 1610. Total 11175.
    cbcn K=4: same learned conv weights 9495; BN on physical channels 2*4*(5+10+20) = 280;
    linear 40*4*2*2*10 + 10 = 6410. Total 16185."""
    for method in ("fp", "xnor", "bnn"):
        assert describe_model(build_model("lenet", method, (5, 10, 20, 40), in_channels=1))["learned_parameters"] == 11175
    cb = describe_model(build_model("lenet", "cbcn", (5, 10, 20, 40), K=4, in_channels=1))
    assert cb["learned_parameters"] == 16185
    assert cb["binary_weight_parameters"] == 450 + 1800 + 7200  # first conv stays full precision
    assert cb["stages_physical_channels"] == "20-40-80-160"
    # the hidden-FC reading: + FC 160*500 + 500, and the classifier reads 500 units: 500*10 + 10
    hidden = describe_model(build_model("lenet", "xnor", (5, 10, 20, 40), in_channels=1, lenet_classifier="hidden"))
    assert hidden["learned_parameters"] == 11175 - 1610 + 80500 + 5010 and hidden["lenet_classifier"] == "hidden"


def test_resnet18_16_16_32_64_parameter_count():
    """By hand, CIFAR stem, 10 classes (3x3 convs without bias, BN = 2 params per channel,
    downsampling shortcut = avg-pool + 1x1 conv + BN):
      stem: 3*16*9 = 432 + BN 32                                   = 464
      stage 1 (16->16): 2 blocks * (2*16*16*9 + 2*32)              = 9344
      stage 2 (16->16, s2): 4672 + shortcut 16*16 + 32, + 4672     = 9632
      stage 3 (16->32, s2): 16*32*9 + 32*32*9 + 2*64 + 16*32 + 64 = 14528, + 2*9216 + 128 = 33088
      stage 4 (32->64, s2): 18432 + 36864 + 256 + 2048 + 128 = 57728, + 2*36864 + 256 = 131712
      linear: 64*10 + 10                                           = 650
      total                                                        = 184890
    cbcn K=4: BatchNorm params x4 (1280 -> 5120, +3840), linear 256*10 + 10 (+1920) = 190650."""
    assert describe_model(build_model("resnet18", "xnor", (16, 16, 32, 64)))["learned_parameters"] == 184890
    assert describe_model(build_model("resnet18", "fp", (16, 16, 32, 64)))["learned_parameters"] == 184890
    cb = describe_model(build_model("resnet18", "cbcn", (16, 16, 32, 64), K=4))
    assert cb["learned_parameters"] == 190650
    assert cb["stages_physical_channels"] == "64-64-128-256"


def test_wrn_depths():
    def blocks(m):
        return sum(1 for mod in m.modules() if type(mod).__name__ == "BasicBlock")

    assert blocks(build_model("wrn22")) == 9 and blocks(build_model("wrn40")) == 18


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, pattern",
    [
        (lambda: BinaryConv2d(2, 2, 3, method="cbcn", K=3), r"one of \(1, 2, 4, 8\)"),
        (lambda: BinaryConv2d(2, 2, 4, method="cbcn", K=4), "odd square kernel"),
        (lambda: BinaryConv2d(2, 2, 3, method="xnr"), "valid choices.*xnor"),
        (lambda: BinaryConv2d(2, 2, 3, method="xnor", K=4), "needs circulant layers"),
        (lambda: BinaryConv2d(2, 2, 3, groups=2), "groups=1"),
        (lambda: BinaryConv2d(2, 2, (3, 5)), "square"),
        (lambda: BinaryConv2d(2, 2, 3, method="cbcn", K=4)(torch.randn(1, 2, 5, 5)), r"\(N, 8, H, W\)"),
        (lambda: build_model("vgg"), "valid choices.*resnet18"),
        (lambda: build_model("lenet", "magic"), "valid choices.*cbcn"),
        (lambda: build_model("lenet", "cbcn", K=3), r"one of \(1, 2, 4, 8\)"),
        (lambda: build_model("resnet18", "cbcn", stages="16-16-32"), "four positive"),
        (lambda: build_model("resnet18", stem="tiny"), "valid choices"),
        (lambda: build_model("resnet18", shortcut="triple"), "valid choices"),
        (lambda: build_model("lenet", lenet_classifier="mlp"), "valid choices.*hidden"),
        (lambda: build_model("resnet18", lenet_classifier="hidden"), "LeNet's"),
        (lambda: build_model("lenet", in_channels=1)(torch.randn(1, 3, 32, 32)), r"\(N, 1, H, W\)"),
    ],
)
def test_bad_input_raises_clear_errors(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()


# ---------------------------------------------------------------- center loss


def test_center_loss_value_and_wen_update():
    from cbcn.nn.center_loss import CenterLoss

    loss_fn = CenterLoss(num_classes=3, feat_dim=4, lam=0.5, alpha=0.5)
    loss_fn.centers.copy_(torch.randn(3, 4))
    c0 = loss_fn.centers.clone()
    f = torch.randn(5, 4, dtype=torch.float32, requires_grad=True)
    y = torch.tensor([0, 0, 2, 2, 2])
    loss = loss_fn(f, y)
    expected = 0.5 / 2 * ((f - c0[y]) ** 2).sum(dim=1).mean()
    torch.testing.assert_close(loss, expected)
    loss.backward()
    torch.testing.assert_close(f.grad, 0.5 * (f - c0[y]).detach() / 5)
    # Wen et al. Eq. 4: c_j <- c_j - alpha * sum_{y_i=j} (c_j - f_i) / (1 + n_j); class 1 unseen stays put
    fd = f.detach()
    for j, n in ((0, 2), (2, 3)):
        delta = (c0[j] - fd[y == j]).sum(dim=0) / (1 + n)
        torch.testing.assert_close(loss_fn.centers[j], c0[j] - 0.5 * delta)
    assert torch.equal(loss_fn.centers[1], c0[1])
    loss_fn.eval()
    before = loss_fn.centers.clone()
    loss_fn(fd, y)
    assert torch.equal(loss_fn.centers, before)  # no update in eval mode


def test_training_after_inference_mode_first_use():
    """Caches first filled under ``torch.inference_mode`` (a model profiled or summarised before it
    is trained) must not hand inference tensors to a later backward."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import torch
        from cbcn.nn.models import build_model
        from cbcn.onebit.convert import convert_to_onebit
        model = build_model("resnet18", method="cbcn", stages=(2, 2, 4, 4), K=4)
        with torch.inference_mode():
            model.eval()(torch.randn(1, 3, 8, 8))
            convert_to_onebit(model)(torch.randn(1, 3, 8, 8))
        model.train()
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        print("OK")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-2000:]
