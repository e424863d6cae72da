"""path="mma_async" (the Gluon int8 GEMM with one wgmma in flight) where no GPU is: it says why in
one line, and its tile selection. Its PTX is checked in ``test_triton_compile.py``, its results bit
for bit on a GPU in ``test_kernels_gpu.py::test_async_mma_path_on_device``."""
import pytest
import torch

pytest.importorskip("triton")

import triton_kernels as tk  # noqa: E402
from cbcn.onebit.backends import reference  # noqa: E402
from triton_kernels import conv as tkconv  # noqa: E402
from triton_kernels._runtime import load  # noqa: E402


def test_cpu_tensors_get_one_clear_error():
    xp = reference.pack_signs(torch.randn(1, 32, 5, 5))
    wp = reference.pack_signs(torch.randn(8, 32, 3, 3))
    with pytest.raises(RuntimeError, match="Gluon kernel, which the Triton interpreter cannot run"):
        tk.packed_conv2d(xp, wp, 32, 1, 1, path="mma_async")
    with pytest.raises(ValueError, match="interpreter cannot run"):
        load("async_mma_kernels", interpret=True)


def test_gemm_function_per_path():
    from triton_kernels.async_mma import async_mma_conv2d

    assert tkconv.gemm_function("mma") is tkconv.unpacked_conv2d
    assert tkconv.gemm_function("mma_fp8") is tkconv.unpacked_conv2d
    assert tkconv.gemm_function("mma_async") is async_mma_conv2d
    with pytest.raises(ValueError, match="no separate GEMM stage"):
        tkconv.gemm_function("popcount")
    assert tkconv.OPERAND_DTYPES["mma_async"] == torch.int8 and "mma_async" in tkconv.EXTRA_PATHS


def test_tile_selection():
    """BLOCK_K divides the padded channels (32 only where 64 does not), BLOCK_N at most one tile
    past C_out; every tile has >= 3 stages (one slot per wgmma in flight, one filling, one ready)."""
    from triton_kernels.async_mma import select_async_mma_configs

    try:
        configs = load("async_mma_kernels", interpret=False).ASYNC_MMA_CONFIGS
    except Exception as exc:  # noqa: BLE001 - a Triton without Gluon's Hopper API
        pytest.skip(f"no Gluon Hopper API here: {exc}")
    assert all(c.kwargs["STAGES"] >= 3 for c in configs)
    wide = select_async_mma_configs(configs, CP=256, C_out=256)
    assert wide and all(c.kwargs["BLOCK_K"] in (64, 128) for c in wide)
    narrow = select_async_mma_configs(configs, CP=32, C_out=64)
    assert narrow and all(c.kwargs["BLOCK_K"] == 32 and c.kwargs["BLOCK_N"] == 64 for c in narrow)
