"""The speed anchors a 1-bit model is measured against on a CPU: the fastest fp32 and the fastest
int8 model of its physical widths — what a practitioner would deploy instead of binarizing.

- ``plain_float_model(model)``: the float twin (method fp at the physical widths) with every
  ``BinaryConv2d`` swapped for a plain ``nn.Conv2d`` holding the same weights — the same
  logits, but ordinary modules that PyTorch's own tools (quantization, ``torch.compile``) know.
- ``fp32_contenders``: that model eager in channels-last, and compiled by ``torch.compile``
  (inductor), which was the faster one on an AVX2 EPYC (45 against 62 ms).
- ``int8_contenders``: post-training int8 quantization by PyTorch's x86 engine: ``torch.ao`` FX
  (``get_default_qconfig_mapping("x86")``, FBGEMM), and where ``torchao`` is installed PT2E with
  ``X86InductorQuantizer`` and ``torch.compile`` (the path PyTorch recommends on VNNI / AMX).

Each contender is ``(callable taking the input, None)`` or ``(None, reason)`` when it cannot be
built here; the benchmark times the available ones and reports the others as unavailable, with
the reason. Calibration uses random inputs: these models are timed, not evaluated.
"""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from cbcn.nn.layers import BinaryConv2d

Contender = tuple[Callable | None, str | None]


class PlainForward(nn.Module):
    """``classifier(forward_features(x))`` of a width-1 ``CBCNNet``: its forward without the input
    check, whose data-dependent branch symbolic tracing (FX quantization) cannot follow."""

    def __init__(self, net: nn.Module):
        super().__init__()
        if getattr(getattr(net, "factory", None), "width", 1) != 1:
            raise ValueError("a plain float model has width 1 (no CiF copies of the input)")
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.classifier(self.net.forward_features(x))


def plain_float_model(model: nn.Module) -> nn.Module:
    """A copy of a float model (method fp) whose ``BinaryConv2d`` layers are ``nn.Conv2d``, as a
    ``PlainForward``."""
    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, BinaryConv2d):
                continue
            if child.binary_weights or child.binary_acts or child.cbconv or child.bases:
                raise ValueError(f"{name} is not a full-precision conv ({child.method}); build the fp twin first")
            conv = nn.Conv2d(child.physical_in_channels, child.physical_out_channels, child.kernel_size,
                             child.stride, child.padding, bias=child.bias is not None)
            with torch.no_grad():
                conv.weight.copy_(child.binarized_weight())
                if child.bias is not None:
                    conv.bias.copy_(child.bias)
            setattr(parent, name, conv)
    return PlainForward(model).eval()


def fp32_contenders(model: nn.Module, x: torch.Tensor, compile_model: bool = True,
                    aoti: bool = False) -> dict[str, Contender]:
    """``fp32 eager (channels-last)``, ``fp32 compiled`` and (``aoti``) ``fp32 AOTInductor`` for
    ``plain_float_model(model)``."""
    plain = plain_float_model(model).to(memory_format=torch.channels_last)
    out: dict[str, Contender] = {"fp32 eager (channels-last)": (plain, None)}
    if compile_model:
        out["fp32 compiled"] = compiled_contender(plain, x.contiguous(memory_format=torch.channels_last))
    if aoti:
        out["fp32 AOTInductor"] = aoti_contender(plain, x.contiguous(memory_format=torch.channels_last))
    return out


def compiled_contender(model: nn.Module, x: torch.Tensor, fullgraph: bool = False, onebit: bool = False) -> Contender:
    """``torch.compile(model)``, compiled now (one call on ``x``, outside any timing), or the reason
    it cannot be (no C++ compiler, an Inductor or Dynamo failure).

    A 1-bit model (``onebit``) is compiled with Inductor's C++ wrapper (the graph's glue in C++,
    not Python) and calls the ``cbcn`` operators through their C shims, as an AOTInductor package
    does: XNOR ResNet18 at batch 1 took 1.30 ms instead of 1.7-2.5 ms on the AVX2 EPYC (variant
    avx2; docs/BENCHMARKS.md, "Batch 1"), the Python wrapper's per-operator cost being paid 16
    times a forward. Where that does not compile, and for any other model, the default Python
    wrapper (the float models' C++-wrapped form is their AOTInductor contender)."""
    attempts = [None]
    if onebit:
        from cbcn.onebit.backends.cpu import operators

        attempts.insert(0, {"cpp_wrapper": True, "aot_inductor.custom_ops_to_c_shims": operators.aoti_shims()})
    failure = None
    for options in attempts:
        try:
            compiled = torch.compile(model, fullgraph=fullgraph, options=options)
            with torch.inference_mode():
                compiled(x)
            return compiled, None
        except Exception as exc:  # reported, not fatal
            failure = f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
    return None, failure


def aoti_contender(model: nn.Module, x: torch.Tensor, onebit: bool = False) -> Contender:
    """``model`` exported with a dynamic batch and compiled by AOTInductor into a package (in a
    temporary folder), loaded back: a 1-bit model through ``cbcn.onebit.export`` and the ``cbcn``
    operators, any other model as is."""
    import tempfile

    from cbcn.onebit import ops
    from cbcn.onebit.export import write_package

    try:
        path = write_package(model, x, Path(tempfile.mkdtemp(prefix="cbcn-aoti-")) / "model.pt2",
                             require_operators=onebit)
        runner = ops.load_package(path) if onebit else ops.Package(torch._inductor.aoti_load_package(str(path)))
        with torch.inference_mode():
            runner(x)
        return runner, None
    except Exception as exc:  # no C++ compiler, an export or inductor failure: reported, not fatal
        return None, f"AOTInductor failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"


def int8_contenders(model: nn.Module, x: torch.Tensor, calibration_batches: int = 4) -> dict[str, Contender]:
    """``int8 fx (x86)`` and ``int8 pt2e (x86 inductor)``, each or the reason it is unavailable."""
    plain = plain_float_model(model)
    calibration = [torch.randn_like(x) for _ in range(calibration_batches)]
    return {"int8 fx (x86)": _int8_fx(plain, x, calibration),
            "int8 pt2e (x86 inductor)": _int8_pt2e(plain, x, calibration)}


def _int8_fx(plain: nn.Module, x: torch.Tensor, calibration) -> Contender:
    try:
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    except ImportError as exc:
        return None, f"torch.ao.quantization is not available ({exc})"
    if "x86" not in torch.backends.quantized.supported_engines:
        return None, f"PyTorch's x86 quantized engine is not in this build ({torch.backends.quantized.supported_engines})"
    try:
        torch.backends.quantized.engine = "x86"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notices
            prepared = prepare_fx(copy.deepcopy(plain).eval(), get_default_qconfig_mapping("x86"), (x,))
            with torch.inference_mode():
                for batch in calibration:
                    prepared(batch)
            quantized = convert_fx(prepared)
        with torch.inference_mode():
            quantized(x)
        return quantized, None
    except Exception as exc:
        return None, f"FX quantization failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"


def _int8_pt2e(plain: nn.Module, x: torch.Tensor, calibration) -> Contender:
    try:
        import torchao  # noqa: F401
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config)
    except ImportError as exc:
        return None, f"torchao is not installed ({exc.name or exc}): pip install torchao"
    try:
        with torch.no_grad():
            batch = {0: torch.export.Dim.AUTO}  # any batch size, as the other contenders
            exported = torch.export.export(copy.deepcopy(plain).eval(), (x,), dynamic_shapes=(batch,)).module()
            quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
            prepared = prepare_pt2e(exported, quantizer)
            for batch in calibration:
                prepared(batch)
            quantized = convert_pt2e(prepared)
        return compiled_contender(quantized, x)
    except Exception as exc:
        return None, f"PT2E quantization failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
