"""Packed binary convolution with Triton; same signature and results as
``cbcn.bitpack.packed_conv2d_reference`` (the plain reference beside it).

``path="mma"`` (default) uses the int8 tensor-core kernel, ``path="popcount"`` the XOR+popcount
kernel. On CUDA tensors the tile configuration is autotuned; on CPU tensors the kernels run in
the Triton interpreter with one small fixed tile (for tests).
"""
from __future__ import annotations

import torch

from cbcn.bitpack import check_conv_args, num_words, packed_conv2d_reference  # noqa: F401

from ._runtime import kernels_for, use_interpreter

PATHS = ("mma", "popcount")
# fixed tiles for the interpreter: large tiles mean few (slow, Python-level) programs
INTERPRET_TILES = {"mma": dict(BLOCK_M=64, BLOCK_N=32, BLOCK_W=2), "popcount": dict(BLOCK_M=64, BLOCK_N=32)}


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def packed_conv2d(
    x_packed: torch.Tensor,
    w_packed: torch.Tensor,
    in_channels: int,
    stride: int = 1,
    padding: int = 0,
    scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    bn_scale: torch.Tensor | None = None,
    bn_shift: torch.Tensor | None = None,
    binarize_output: bool = False,
    out_dtype: torch.dtype = torch.float32,
    path: str = "mma",
    config: dict | None = None,
    use_asm_popcount: bool = False,
) -> torch.Tensor:
    """Binary convolution of NHWC-packed activations ``(N, H, W, ceil(C_in/32))`` with packed
    weights ``(C_out, KH, KW, ceil(C_in/32))``; zero padding counts as 0 (not −1).

    Returns ``(N, C_out, OH, OW)`` (stored channels-last) in ``out_dtype``, or the packed signs
    ``(N, OH, OW, ceil(C_out/32))`` of the result with ``binarize_output``.
    ``config`` fixes the tile (``BLOCK_M``, ``BLOCK_N``[, ``BLOCK_W``], ``num_warps``, ``num_stages``)
    instead of autotuning; ``use_asm_popcount`` selects inline ``popc.b32`` (GPU only).
    """
    OH, OW = check_conv_args(x_packed, w_packed, in_channels, stride, padding, scale, bias, bn_scale, bn_shift)
    if path not in PATHS:
        raise ValueError(f"unknown packed-conv path {path!r}; valid: {PATHS}")
    if out_dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    if use_interpreter(x_packed, w_packed) and out_dtype == torch.bfloat16 and not binarize_output:
        # the interpreter (numpy) cannot store bfloat16: compute fp32, round like the GPU cast (RNE)
        return packed_conv2d(
            x_packed, w_packed, in_channels, stride, padding, scale, bias, bn_scale, bn_shift,
            False, torch.float32, path, config, use_asm_popcount,
        ).to(torch.bfloat16)
    N, IH, IW, XW = x_packed.shape
    C_out, KH, KW, _ = w_packed.shape
    device = x_packed.device
    x_packed = x_packed.contiguous()
    w_packed = w_packed.contiguous()
    if binarize_output:
        out = torch.empty((N, OH, OW, num_words(C_out)), dtype=torch.int32, device=device)
        so = (0, 0, 0, 0)
    else:
        out = torch.empty((N, C_out, OH, OW), dtype=out_dtype, device=device, memory_format=torch.channels_last)
        so = out.stride()
    M = N * OH * OW
    if out.numel() == 0:
        return out
    dummy = torch.zeros(1, dtype=torch.float32, device=device)

    def vec(v):
        return dummy if v is None else v.detach().to(torch.float32).contiguous()

    k = kernels_for("conv_kernels", x_packed, w_packed)
    interpret = k.INTERPRET
    if interpret and use_asm_popcount:
        raise ValueError("use_asm_popcount emits inline PTX, which the Triton interpreter cannot run")
    args = (
        x_packed, w_packed, vec(scale), vec(bias), vec(bn_scale), vec(bn_shift), out,
        M, IH, IW, OH, OW, in_channels, C_out, XW, num_words(C_out), stride, padding,
        *so,
    )
    flags = dict(
        KH=KH, KW=KW, HAS_SCALE=scale is not None, HAS_BIAS=bias is not None,
        HAS_AFFINE=bn_scale is not None, BINARIZE=bool(binarize_output),
    )
    if path == "popcount":
        flags["USE_ASM_POPC"] = bool(use_asm_popcount)
    if interpret or config is not None:
        tile = dict(INTERPRET_TILES[path] if config is None else config)
        launch = {key: tile.pop(key) for key in ("num_warps", "num_stages") if key in tile}
        if not interpret:
            launch["enable_fp_fusion"] = False
        kernel = k.packed_conv_mma_kernel if path == "mma" else k.packed_conv_popcount_kernel
        grid = (_cdiv(M, tile["BLOCK_M"]), _cdiv(C_out, tile["BLOCK_N"]))
        kernel[grid](*args, **flags, **tile, **launch)
    else:
        kernel = k.packed_conv_mma_tuned if path == "mma" else k.packed_conv_popcount_tuned

        def grid(meta):
            return (_cdiv(M, meta["BLOCK_M"]), _cdiv(C_out, meta["BLOCK_N"]))

        kernel[grid](*args, **flags, enable_fp_fusion=False)
    return out
