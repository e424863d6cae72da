"""The speed anchors of the CPU benchmark (``cbcn.harness.anchors``): the plain float twin computes
what the fp model computes, the int8 contenders build where PyTorch's x86 engine exists, and a
contender that cannot be built says why instead of failing."""
import pytest
import torch

from cbcn.harness import anchors
from cbcn.nn.models import build_model


def _fp_model(name="resnet18"):
    torch.manual_seed(0)
    if name == "lenet":
        return build_model("lenet", method="fp", stages=(4, 4, 8, 8), in_channels=1, image_size=16).eval()
    return build_model("resnet18", method="fp", stages=(4, 4, 8, 8)).eval()


@pytest.mark.parametrize("name", ["resnet18", "lenet"])
def test_plain_float_model_has_only_plain_convs_and_the_same_logits(name):
    model = _fp_model(name)
    plain = anchors.plain_float_model(model)
    assert not any(type(m).__name__ == "BinaryConv2d" for m in plain.modules())
    assert any(isinstance(m, torch.nn.Conv2d) for m in plain.modules())
    x = torch.randn(3, 1 if name == "lenet" else 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))
    torch.fx.symbolic_trace(plain)  # what FX quantization needs


def test_plain_float_model_refuses_a_binary_model():
    with pytest.raises(ValueError, match="not a full-precision conv"):
        anchors.plain_float_model(build_model("resnet18", method="xnor", stages=(4, 4, 8, 8)))


def test_contenders_are_callables_or_reasons():
    model, x = _fp_model(), torch.randn(2, 3, 16, 16)
    fp32 = anchors.fp32_contenders(model, x, compile_model=False)
    assert list(fp32) == ["fp32 eager (channels-last)"]
    int8 = anchors.int8_contenders(model, x, calibration_batches=1)
    assert set(int8) == {"int8 fx (x86)", "int8 pt2e (x86 inductor)"}
    for name, (fn, why) in int8.items():
        assert (fn is None) != (why is None), name
        if why is not None:
            assert why and "\n" not in why
    fx, why = int8["int8 fx (x86)"]
    if "x86" not in torch.backends.quantized.supported_engines:
        assert "x86 quantized engine" in why
        return
    assert fx is not None, why
    with torch.inference_mode():
        got, want = fx(x), model(x)
    assert got.shape == want.shape and (got - want).abs().max() < 0.1 * want.abs().max() + 1e-3  # int8, not exact
