"""(e) Bit-packing throughput: signs of activations to int32 words and back (``cbcn.onebit.backends.reference``
reference vs ``triton_kernels.pack``, GPU only). ``items`` = values packed or unpacked, so the
table reports values per second.

Checks: a pack is right when the reference ``unpack_signs`` gives back ``sign(x)`` (and a kernel
pack equals the reference pack bit for bit); an unpack is right when it gives ``sign(x)``.
"""
from __future__ import annotations

import pytest
import torch

import optional
import settings
import workloads
from cbcn.nn.binarize import sign

SIZE = settings.bench_size()
SHAPES = workloads.PACK_SHAPES[SIZE]
MODULES = {"reference": "cbcn.onebit.backends.reference", "kernel": "triton_kernels.pack"}


@pytest.mark.parametrize("path", list(MODULES))
@pytest.mark.parametrize("op", ["pack", "unpack"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_bitpack(benchmark, record, device, shape, op, path):
    if path == "kernel":
        optional.require_cuda(device, "the Triton packing kernel")
    pack = optional.function(MODULES[path], "pack_signs")
    unpack = optional.function(MODULES[path], "unpack_signs")
    ref_pack = optional.function("cbcn.onebit.backends.reference", "pack_signs")
    ref_unpack = optional.function("cbcn.onebit.backends.reference", "unpack_signs")
    x = torch.randn(*shape, device=device)
    x.view(-1)[:: 97] = 0.0  # sign(0) = +1 must pack as 0
    C = shape[1]
    record(f"bitpack-{op}", "x".join(map(str, shape)), shape=list(shape), path=path, baseline=path == "reference",
           items=x.numel(), unit="values")
    if op == "pack":
        packed = benchmark(pack, x)
        assert torch.equal(ref_unpack(packed, C), sign(x))
        if path != "reference":
            assert torch.equal(packed, ref_pack(x))
    else:
        packed = ref_pack(x)
        assert torch.equal(benchmark(unpack, packed, C), sign(x))
