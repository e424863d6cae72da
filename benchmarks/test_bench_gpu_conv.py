"""(d) On a GPU: the packed 1-bit convolution kernels vs cuDNN in fp32, TF32 and fp16.

One group per shape (3×3, stride 1, pad 1, ``C_in = C_out``); rows ``cudnn-fp32`` (the baseline,
TF32 off), ``cudnn-tf32``, ``cudnn-fp16`` (channels-last ±1 tensors) and ``packed-mma`` /
``packed-mma-fp8`` / ``packed-popcount`` (``triton_kernels.conv.packed_conv2d`` on pre-packed operands, no epilogue).
Every output is checked against ``cbcn.onebit.backends.reference.packed_conv2d_reference``: exactly for the packed
kernels; to a tolerance for cuDNN (its Winograd/FFT algorithms round even on ±1 data).
Skipped without CUDA; ``CBCN_BENCH_INTERPRET=1`` runs the packed rows in the Triton interpreter
on one tiny shape, to check this file on a CPU machine.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import optional
import settings
import workloads
from cbcn.nn.binarize import sign

SIZE = settings.bench_size()
SHAPES = [(2, 64, 8)] if optional.interpreting() and not torch.cuda.is_available() else workloads.GPU_CONV_SHAPES[SIZE]
PATHS = {
    "cudnn-fp32": dict(dtype=torch.float32, tf32=False),
    "cudnn-tf32": dict(dtype=torch.float32, tf32=True),
    "cudnn-fp16": dict(dtype=torch.float16, tf32=False),
    "packed-mma": dict(kernel="mma"),
    "packed-mma-fp8": dict(kernel="mma_fp8"),
    "packed-popcount": dict(kernel="popcount"),
}


@pytest.fixture
def tf32_restored():
    saved = torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{c}x{hw}x{hw}" for n, c, hw in SHAPES])
def test_gpu_conv(benchmark, record, device, tf32_restored, shape, path):
    N, C, hw = shape
    spec = PATHS[path]
    if "kernel" in spec:
        optional.require_cuda(device, "the packed binary convolution kernels")
    elif device.type != "cuda":
        pytest.skip("cuDNN rows need a CUDA device")
    pack = optional.function("cbcn.onebit.backends.reference", "pack_signs")
    reference = optional.function("cbcn.onebit.backends.reference", "packed_conv2d_reference")
    x, w = sign(torch.randn(N, C, hw, hw, device=device)), sign(torch.randn(C, C, 3, 3, device=device))
    x_packed, w_packed = pack(x), pack(w)
    expected = reference(x_packed, w_packed, C, 1, 1)
    record("gpu-conv", f"{N}x{C}x{hw}x{hw} -> {C}, 3x3", shape=[N, C, hw, hw], path=path,
           baseline=path == "cudnn-fp32", flops=2 * N * hw * hw * C * C * 9)
    if "kernel" in spec:
        conv = optional.function("triton_kernels.conv", "packed_conv2d")
        fn = lambda: conv(x_packed, w_packed, C, 1, 1, path=spec["kernel"])  # noqa: E731
    else:
        torch.backends.cudnn.allow_tf32 = spec["tf32"]
        xd = x.to(spec["dtype"]).contiguous(memory_format=torch.channels_last)
        wd = w.to(spec["dtype"]).contiguous(memory_format=torch.channels_last)
        fn = lambda: F.conv2d(xd, wd, None, 1, 1)  # noqa: E731
    fn()  # warm-up outside the timer: Triton autotuning, cuDNN algorithm choice
    out = benchmark(fn)
    if "kernel" in spec:
        assert torch.equal(out, expected)  # integer arithmetic: bit-exact
    else:
        # cuDNN may choose Winograd/FFT algorithms, which round even on ±1 integer data
        # (measured on an H100: max |diff| 6e-5 for fp32 at 128x28x28); fp16 rounds its output
        atol = 1.0 if spec.get("dtype") == torch.float16 else 1e-2
        torch.testing.assert_close(out.float(), expected, rtol=1e-3, atol=atol)
