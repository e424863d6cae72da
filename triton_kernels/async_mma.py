"""``path="mma_async"``: the int8 GEMM of ``path="mma"`` with one wgmma kept in flight (Gluon).

Host side of ``async_mma_kernels.async_mma_conv_kernel``: same operands as ``unpacked_conv2d``
(``unpack_activations``' halo tensor, ``unpack_weights``' matrix; int8 only), the same real
output and the same fused-layer outputs (residual, next int8 operand; ``cbcn.onebit.runner``'s
fused mode takes it for layers set to ``path="mma_async"``); packed signs are not built for it.
It exists to settle issue 13's item 1 in one device run: if the fp8 GEMM (``mma_fp8``) does not
beat the int8 one by 10 %, this is the other way to keep an int8 MMA in flight, timed beside both
(``benchmarks/gpu_conv_bench.py``). Gluon has no interpreter, so it runs on Hopper GPUs only;
``async_mma_problem`` says why not elsewhere.
"""
from __future__ import annotations

import torch

from ._runtime import load

# BinaryConv2d's epilogue order needs every op rounded on its own
_LAUNCH = {"enable_fp_fusion": False}
_TUNED: list = []


def async_mma_problem(device) -> str | None:
    """Why ``path="mma_async"`` cannot run on ``device``, or None."""
    device = torch.device(device)
    if device.type != "cuda":
        return ("path 'mma_async' is a Gluon kernel, which the Triton interpreter cannot run: "
                "it needs a CUDA GPU of compute capability 9.x (Hopper wgmma)")
    major, minor = torch.cuda.get_device_capability(device)
    if major != 9:
        return f"path 'mma_async' issues Hopper wgmma (sm_90); this GPU is sm_{major}{minor}"
    try:
        load("async_mma_kernels", interpret=False)
    except Exception as exc:  # noqa: BLE001 - reported as the reason
        import triton

        return f"path 'mma_async' needs Gluon's Hopper API, which Triton {triton.__version__} lacks ({exc})"[:300]
    return None


def select_async_mma_configs(configs, CP, C_out):
    """The autotuner's candidates for one GEMM shape: BLOCK_K divides CP (each K-step is BLOCK_K
    channels of one tap; 32 only where 64 does not divide it), BLOCK_N at most one tile past C_out."""
    block_k = tuple(b for b in (64, 128) if CP % b == 0) or (32,)
    return [c for c in configs if c.kwargs["BLOCK_K"] in block_k and c.kwargs["BLOCK_N"] <= max(64, C_out)]


def _prune(configs, named_args, **kwargs):
    return select_async_mma_configs(configs, named_args["CP"], named_args["C_out"])


def tuned_kernel():
    """``async_mma_conv_kernel`` behind Triton's autotuner (built on first use)."""
    if not _TUNED:
        k = load("async_mma_kernels", interpret=False)
        conv = load("conv_kernels", interpret=False)
        key = ["M", "C_out", "CP", "OH", "OW", "stride", "KH", "KW", "HAS_SCALE", "HAS_BIAS", "HAS_AFFINE",
               "HAS_RESIDUAL", "STORE_OUT", "OPERAND", "OP_KSUM"]
        _TUNED.append(conv._autotune(k.ASYNC_MMA_CONFIGS, key, prune_configs_by={"early_config_prune": _prune})(
            k.async_mma_conv_kernel))
    return _TUNED[0]


def async_mma_conv2d(
    x_halo: torch.Tensor,
    w_mat: torch.Tensor,
    kernel_size: tuple[int, int],
    stride: int,
    out_size: tuple[int, int],
    scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    bn_scale: torch.Tensor | None = None,
    bn_shift: torch.Tensor | None = None,
    binarize_output: bool = False,
    out_dtype: torch.dtype = torch.float32,
    config: dict | None = None,
    max_abs_dot: int | None = None,
    residual: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    store_out: bool = True,
    operand: torch.Tensor | None = None,
    operand_pad: int = 0,
    operand_ksum: int = 1,
    checked: bool = False,
) -> torch.Tensor | None:
    """``unpacked_conv2d`` (same arguments, same result) with the Gluon kernel: int8 operands, a
    real channels-last ``(N, C_out, OH, OW)`` output in ``out_dtype``, and the fused layer's
    ``residual`` / ``out`` / ``store_out`` / ``operand`` (int8 only). ``config`` fixes the tile
    (``BLOCK_M``, ``BLOCK_N``, ``BLOCK_K``, ``STAGES``, ``num_warps``) instead of autotuning.
    ``max_abs_dot`` is accepted for the common signature and unused: int8 sums are exact in int32."""
    from .conv import _cdiv, _check_unpacked, _dummy, _epilogue_vectors, _output

    if not checked:
        problem = async_mma_problem(x_halo.device)
        if problem:
            raise RuntimeError(problem)
        if binarize_output:
            raise ValueError("path 'mma_async' writes real outputs only (packed signs: path 'mma')")
        if x_halo.dtype != torch.int8 or (operand is not None and operand.dtype != torch.int8):
            raise ValueError(f"path 'mma_async' takes and writes int8 operands, got {x_halo.dtype}"
                             + ("" if operand is None else f" and an {operand.dtype} operand buffer"))
        _check_unpacked(x_halo, w_mat, kernel_size, stride, out_size, residual, out, out_dtype, False, operand,
                        operand_pad, operand_ksum)
    N, HP, WP, CP = x_halo.shape
    C_out, KTOT = w_mat.shape
    (KH, KW), (OH, OW) = kernel_size, out_size
    device = x_halo.device
    if store_out:
        out = _output(N, C_out, OH, OW, out_dtype, False, device) if out is None else out
    else:
        out = None
    M = N * OH * OW
    if M * C_out == 0:
        return out
    dummy = _dummy(device)
    op = dummy if operand is None else operand
    args = (x_halo, w_mat, *_epilogue_vectors(device, scale, bias, bn_scale, bn_shift),
            dummy if out is None else out, dummy if residual is None else residual, op,
            M, HP, WP, OH, OW, C_out, stride, CP, KTOT,
            op.shape[1] if operand is not None else 0, op.shape[2] if operand is not None else 0, operand_pad,
            op.shape[3] if operand is not None else 32)
    flags = dict(KH=KH, KW=KW, HAS_SCALE=scale is not None, HAS_BIAS=bias is not None,
                 HAS_AFFINE=bn_scale is not None, HAS_RESIDUAL=residual is not None, STORE_OUT=out is not None,
                 OPERAND=operand is not None, OP_KSUM=operand_ksum)
    if config is not None:
        tile = dict(config)
        if CP % tile["BLOCK_K"]:
            raise ValueError(f"BLOCK_K={tile['BLOCK_K']} does not divide the {CP} padded channels")
        grid = (_cdiv(M, tile["BLOCK_M"]) * _cdiv(C_out, tile["BLOCK_N"]),)
        load("async_mma_kernels", interpret=False).async_mma_conv_kernel[grid](*args, **flags, **tile, **_LAUNCH)
    else:
        def grid(meta):
            return (_cdiv(M, meta["BLOCK_M"]) * _cdiv(C_out, meta["BLOCK_N"]),)

        tuned_kernel()[grid](*args, **flags, **_LAUNCH)
    return out


def compile_async_mma_conv(target=None, out_type: str = "*fp16", **constexprs):
    """Compile ``async_mma_conv_kernel`` for ``target`` (default Hopper ``cuda:90``) without a GPU,
    as a launch would specialise it (pointers, ``CP``, ``KTOT``, ``C_out`` divisible by 16);
    keyword arguments override the tile and flags. Returns Triton's compiled kernel (``.asm``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    fn = load("async_mma_kernels", interpret=False).async_mma_conv_kernel
    consts = dict(KH=3, KW=3, HAS_SCALE=True, HAS_BIAS=False, HAS_AFFINE=False, BLOCK_M=128, BLOCK_N=128,
                  BLOCK_K=64, STAGES=4, num_warps=8, HAS_RESIDUAL=False, STORE_OUT=True, OPERAND=False,
                  OP_KSUM=1) | constexprs
    ptrs = {p: "*fp32" for p in ("scale_ptr", "bias_ptr", "mul_ptr", "add_ptr")}
    sig = {"x_ptr": "*i8", "w_ptr": "*i8", **ptrs, "out_ptr": out_type, "res_ptr": out_type, "op_ptr": "*i8",
           **{n: "i32" for n in ("M", "HP", "WP", "OH", "OW", "C_out", "stride", "CP", "KTOT", "OPH", "OPW", "OPAD",
                                 "OPC")},
           **{k: "constexpr" for k in consts}}
    sig = {a: sig[a] for a in fn.arg_names}
    aligned = ["x_ptr", "w_ptr", *ptrs, "out_ptr", "res_ptr", "op_ptr", "C_out", "CP", "KTOT", "OPC"]
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in aligned}
    src = GluonASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=target or GPUTarget("cuda", 90, 32),
                          options={"num_warps": consts["num_warps"], **_LAUNCH})
