"""ABC-Net (method ``abcnet``, ``cbcn.nn.bases``): each formula against a direct transcription, the
layer as the sum of its M·N convs, training, the 1-bit model, cost accounting and the CLI."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from cbcn.harness.cost import count_operations, layer_costs, model_bytes
from cbcn.harness.experiments import get_experiment
from cbcn.nn.bases import least_squares_alpha, shifted_activations, weight_bases, weight_shifts
from cbcn.nn.layers import BinaryConv2d, reference_forward
from cbcn.nn.models import build_model
from cbcn.onebit.convert import convert_to_onebit


def _layer(M, N, seed=0, bias=False):
    torch.manual_seed(seed)
    layer = BinaryConv2d(5, 7, 3, padding=1, method="abcnet", weight_bases=M, act_bases=N, bias=bias)
    with torch.no_grad():  # move v and β off their initial values
        layer.act_shift.add_(0.3 * torch.randn(N))
        layer.act_scale.uniform_(0.5, 1.5)
        if bias:
            layer.bias.normal_()
    return layer


def test_weight_shifts_spread_over_minus_one_one():
    assert weight_shifts(1).tolist() == [0.0]
    assert weight_shifts(3).tolist() == [-1.0, 0.0, 1.0]
    assert weight_shifts(5).tolist() == [-1.0, -0.5, 0.0, 0.5, 1.0]
    with pytest.raises(ValueError, match=">= 1"):
        weight_shifts(0)


@pytest.mark.parametrize("M", [1, 3, 5])
def test_weight_bases_and_least_squares_alpha_by_hand(M):
    torch.manual_seed(M)
    W = torch.randn(4, 3, 3, 3) * 0.1 + 0.02
    B = weight_bases(W, M)
    mean, std = W.mean().item(), W.std().item()
    u = [0.0] if M == 1 else [-1 + 2 * m / (M - 1) for m in range(M)]
    for m in range(M):  # B_m = sign(W - mean(W) + u_m std(W)), sign(0) = +1
        x = W - mean + u[m] * std
        assert torch.equal(B[m], torch.where(x >= 0, 1.0, -1.0))
    # α = argmin ||vec(W) - B α||²: the normal equations (BᵀB) α = Bᵀ vec(W), in float64
    Bm = B.reshape(M, -1).T.double()
    expected = torch.linalg.solve(Bm.T @ Bm, Bm.T @ W.reshape(-1).double())
    torch.testing.assert_close(least_squares_alpha(W, B).double(), expected, rtol=1e-5, atol=1e-7)
    if M == 1:  # one base: α = <W, B>/<B, B> = mean(W ⊙ B)
        torch.testing.assert_close(least_squares_alpha(W, B)[0], (W * B[0]).mean())


def test_weight_gradient_is_straight_through():
    W = (torch.randn(3, 2, 3, 3) * 0.2).requires_grad_()
    B = weight_bases(W, 3, "identity")
    g = torch.randn_like(B)
    (B * g).sum().backward()
    torch.testing.assert_close(W.grad, g.sum(dim=0))  # dB_m/dW = identity for each base; mean/std constant


def test_shifted_activation_forward_and_gradient_by_hand():
    x = torch.linspace(-2, 2, 401, dtype=torch.float32).requires_grad_()
    v = torch.tensor([0.5, 0.2, -0.3])
    A = shifted_activations(x, v)
    for n in range(3):  # H_v(x) = 2·1{clip(x + v, 0, 1) >= 0.5} - 1
        expected = 2 * (torch.clamp(x.detach() + v[n], 0, 1) >= 0.5).float() - 1
        assert torch.equal(A[n], expected)
    assert torch.equal(A[0], torch.where(x.detach() >= 0, 1.0, -1.0))  # v = 0.5: XNOR-Net's sign
    A[1].sum().backward()  # ste: the derivative of 2·clip(x + v, 0, 1) - 1
    inside = ((x.detach() + v[1]) >= 0) & ((x.detach() + v[1]) <= 1)
    torch.testing.assert_close(x.grad, 2 * inside.float())


def test_shifted_activation_threshold_is_exact_at_the_boundary():
    v = torch.tensor([0.3])
    boundary = torch.tensor([0.5]) - v  # x + v == 0.5 up to rounding: the bit must match the comparison
    xs = torch.cat([torch.nextafter(boundary, torch.tensor(-1.0)), boundary, torch.nextafter(boundary, torch.tensor(1.0))])
    expected = torch.where(xs + v >= 0.5, 1.0, -1.0)
    assert torch.equal(shifted_activations(xs, v)[0], expected)


@pytest.mark.parametrize("M,N", [(1, 1), (3, 1), (1, 3), (3, 3), (5, 5)])
def test_layer_output_equals_the_sum_of_its_MN_convs(M, N):
    layer = _layer(M, N, bias=True)
    x = torch.randn(2, 5, 6, 6)
    A = shifted_activations(x, layer.act_shift.detach())
    B = weight_bases(layer.weight.detach(), M)
    alpha = least_squares_alpha(layer.weight, B)
    by_hand = sum(alpha[m] * layer.act_scale[n] * F.conv2d(A[n], B[m], None, 1, 1)
                  for m, n in itertools.product(range(M), range(N))) + layer.bias.view(1, -1, 1, 1)
    out = layer(x)
    # float32: one conv of the combined tensors vs M·N convs summed
    torch.testing.assert_close(out, by_hand, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, reference_forward(layer, x), rtol=1e-5, atol=1e-5)
    if M * N == 1:  # one binary conv times α·β: the same operations as the 1-bit backends, bit for bit
        assert torch.equal(out, reference_forward(layer, x))


def test_bases_parameters_are_checked():
    with pytest.raises(ValueError, match="ABC-Net's"):
        BinaryConv2d(4, 4, 3, method="xnor", weight_bases=3)
    with pytest.raises(ValueError, match="circulant"):
        BinaryConv2d(4, 4, 3, method="abcnet", cbconv=True, K=4)
    with pytest.raises(ValueError, match="positive int"):
        BinaryConv2d(4, 4, 3, method="abcnet", act_bases=0)
    with pytest.raises(ValueError, match="ABC-Net's"):
        build_model("lenet", "cbcn", K=4, weight_bases=3)


@pytest.mark.parametrize("name, kwargs, shape", [
    ("lenet", dict(stages=(4, 4, 8, 8), in_channels=1), (1, 32, 32)),
    ("resnet18", dict(stages=(4, 4, 8, 8)), (3, 32, 32)),
])
@pytest.mark.parametrize("M,N", [(1, 1), (3, 3)])
def test_abcnet_models_train_and_their_loss_falls(name, kwargs, shape, M, N):
    torch.manual_seed(0)
    model = build_model(name, "abcnet", weight_bases=M, act_bases=N, **kwargs)
    x, y = torch.randn(32, *shape), torch.randint(0, 10, (32,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # tiny binary nets learn slowly: with M = N = 1 (XNOR's capacity) about as much as XNOR here (-0.1)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.05, losses
    shifts = [m.act_shift for m in model.modules() if isinstance(m, BinaryConv2d) and m.bases]
    assert shifts and all(s.grad is not None for s in shifts)  # v and β learn


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("name, kwargs, shape", [
    ("lenet", dict(stages=(4, 4, 8, 8), in_channels=1), (1, 32, 32)),
    ("resnet18", dict(stages=(4, 4, 8, 8)), (3, 32, 32)),
])
def test_onebit_model_equals_the_training_model_for_one_base(backend, name, kwargs, shape):
    torch.manual_seed(1)
    model = build_model(name, "abcnet", **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BinaryConv2d) and m.bases:
                m.act_shift.add_(0.3 * torch.randn(1))
                m.act_scale.uniform_(0.5, 2)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
    model.eval()
    onebit = convert_to_onebit(model, backend=backend)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        assert torch.equal(onebit(x), model(x))
    assert "act_shift" in dict(onebit.named_buffers()).__repr__() or any(
        getattr(m, "act_shift", None) is not None for m in onebit.modules())


def test_more_bases_stay_in_float_and_say_so():
    with pytest.raises(ValueError, match="stay in float"):
        convert_to_onebit(build_model("lenet", "abcnet", weight_bases=3, act_bases=3, stages=(4, 4, 8, 8),
                                      in_channels=1))


def test_cost_counts_the_MN_binary_convs_and_M_bits_per_weight():
    for M, N in [(1, 1), (3, 2)]:
        layer = BinaryConv2d(4, 6, 3, padding=1, method="abcnet", weight_bases=M, act_bases=N)
        xnor = BinaryConv2d(4, 6, 3, padding=1, method="xnor")
        ops, ops_x = count_operations(torch.nn.Sequential(layer), (4, 8, 8)), \
            count_operations(torch.nn.Sequential(xnor), (4, 8, 8))
        assert ops["bops"] == M * N * ops_x["bops"] == M * N * 64 * 6 * 4 * 9
        rec = layer_costs(torch.nn.Sequential(layer), (4, 8, 8))[0]
        assert rec["binary_weights"] == M * 6 * 4 * 9
        b = model_bytes(torch.nn.Sequential(layer))
        # M·216 bits, then fp32: the M α's and the learned v, β (2N values)
        assert b["onebit_bytes"] == -(-M * 216 // 8) + 4 * (M + 2 * N)


def test_table5_abcnet_row_is_runnable():
    exp = get_experiment("t5-imagenet-resnet18-abcnet")
    assert exp.runnable and exp.not_runnable_reason is None
    assert exp.config_key() != get_experiment("t5-imagenet-resnet18-xnor").config_key()
