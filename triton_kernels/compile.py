"""Ahead-of-time compilation of the kernels for a GPU target — no GPU needed.

``triton.compile`` lowers a kernel to PTX for, e.g., ``GPUTarget("cuda", 90, 32)`` (Hopper) on a
CPU-only machine. Tests use it to check what the hardware would execute: the int8 tensor-core
instruction (``mma.sync``/``wgmma`` ``.s8``) in the tensor-core path, ``popc`` in the popcount path.
"""
from __future__ import annotations

import re

from ._runtime import load

_CONV_INTS = ["M", "IH", "IW", "OH", "OW", "C_in", "C_out", "XW", "OWORDS", "stride", "pad",
              "so_n", "so_c", "so_h", "so_w"]
_CONV_PTRS = {"x_ptr": "*i32", "w_ptr": "*i32", "scale_ptr": "*fp32", "bias_ptr": "*fp32",
              "mul_ptr": "*fp32", "add_ptr": "*fp32", "out_ptr": "*fp32"}

# kernel name -> (module, pointer/int signature without constexprs, default constexprs)
KERNELS = {
    "pack_signs_kernel": (
        "pack_kernels",
        {"x_ptr": "*fp32", "out_ptr": "*i32", "C": "i32", "P": "i32", "WORDS": "i32",
         "stride_n": "i32", "stride_c": "i32", "stride_p": "i32"},
        {"BLOCK_P": 128, "BLOCK_W": 1},
    ),
    "unpack_signs_kernel": (
        "pack_kernels",
        {"packed_ptr": "*i32", "out_ptr": "*fp32", "C": "i32", "P": "i32", "WORDS": "i32",
         "stride_n": "i32", "stride_c": "i32", "stride_p": "i32"},
        {"BLOCK_P": 64, "BLOCK_C": 64},
    ),
    "packed_conv_mma_kernel": (
        "conv_kernels",
        {**_CONV_PTRS, **{k: "i32" for k in _CONV_INTS}},
        {"KH": 3, "KW": 3, "HAS_SCALE": True, "HAS_BIAS": True, "HAS_AFFINE": False, "BINARIZE": False,
         "BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_W": 2},
    ),
    "packed_conv_popcount_kernel": (
        "conv_kernels",
        {**_CONV_PTRS, **{k: "i32" for k in _CONV_INTS}},
        {"KH": 3, "KW": 3, "HAS_SCALE": True, "HAS_BIAS": True, "HAS_AFFINE": False, "BINARIZE": False,
         "BLOCK_M": 64, "BLOCK_N": 64, "USE_ASM_POPC": False},
    ),
    "packed_input_conv_kernel": (
        "conv_kernels",
        {"x_ptr": "*i32", "w_ptr": "*i8", "scale_ptr": "*fp32", "bias_ptr": "*fp32", "mul_ptr": "*fp32",
         "add_ptr": "*fp32", "out_ptr": "*fp16", **{k: "i32" for k in ["M", "IH", "IW", "OH", "OW", "C_out",
                                                                       "OWORDS", "stride", "pad", "XW", "KTOT"]}},
        {"KH": 3, "KW": 3, "HAS_SCALE": True, "HAS_BIAS": False, "HAS_AFFINE": False, "BINARIZE": False,
         "BLOCK_M": 128, "BLOCK_N": 128},
    ),
    "cif_pack_bank_kernel": (
        "cif_kernels",
        {"w_ptr": "*fp32", "m_ptr": "*i32", "out_ptr": "*i32", "C_in": "i32", "HH": "i32",
         "IN_WORDS": "i32", "OUT_WORDS": "i32"},
        {"K": 4, "COPIES": 4, "FROM_PACKED": False, "BLOCK_T": 16, "BLOCK_W": 1},
    ),
    "unpack_halo_kernel": (
        "conv_kernels",
        {"x_ptr": "*i32", "out_ptr": "*i8", "P": "i32", "IH": "i32", "IW": "i32", "HP": "i32", "WP": "i32",
         "XW": "i32", "C_in": "i32", "CP": "i32", "pad": "i32"},
        {"BLOCK_P": 64, "BLOCK_C": 128, "KSUM": 1, "FP8": False},
    ),
    "cif_expand_kernel": (
        "cif_kernels",
        {"w_ptr": "*fp32", "m_ptr": "*i32", "out_ptr": "*fp32", "C_in": "i32", "HH": "i32", "TOTAL": "i32"},
        {"K": 4, "BLOCK": 256},
    ),
    "cif_backward_kernel": (
        "cif_kernels",
        {"g_ptr": "*fp32", "p_ptr": "*i32", "out_ptr": "*fp32", "C_in": "i32", "HH": "i32", "TOTAL": "i32"},
        {"K": 4, "BLOCK": 256},
    ),
}


# arguments a launch specialises as divisible by 16 (pointers from PyTorch's allocator, channel
# counts padded to multiples of 32), so that compiled code matches what the GPU runs
ALIGNED = {"unpack_halo_kernel": ["x_ptr", "out_ptr", "CP"],
           "packed_input_conv_kernel": ["x_ptr", "w_ptr", "scale_ptr", "bias_ptr", "mul_ptr", "add_ptr", "out_ptr",
                                        "C_out", "KTOT"]}


def compile_kernel(name: str, target=None, num_warps: int | None = None, signature: dict | None = None,
                   num_stages: int | None = None, **constexprs):
    """Compile kernel ``name`` for ``target`` (default Hopper ``cuda:90``); returns Triton's
    compiled kernel (``.asm["ptx"]``, ``.asm["ttgir"]``, ...). Keyword arguments override constexprs
    (and pointer types through ``signature``); arguments in ``ALIGNED`` are marked divisible by 16."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; valid: {sorted(KERNELS)}")
    module, sig, consts = KERNELS[name]
    fn = getattr(load(module, interpret=False), name)
    consts = {**consts, **constexprs}
    sig = {**sig, **(signature or {}), **{k: "constexpr" for k in consts}}
    missing = [a for a in fn.arg_names if a not in sig]
    if missing:
        raise ValueError(f"no signature for arguments {missing} of {name}")
    sig = {a: sig[a] for a in fn.arg_names}
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a in ALIGNED.get(name, [])}
    src = ASTSource(fn=fn, signature=sig, constexprs={k: v for k, v in consts.items()}, attrs=attrs)
    options = {k: v for k, v in (("num_warps", num_warps), ("num_stages", num_stages)) if v is not None}
    options["enable_fp_fusion"] = False
    return triton.compile(src, target=target or GPUTarget("cuda", 90, 32), options=options)


def ptx_instructions(ptx: str, pattern: str) -> list[str]:
    """Distinct instructions of ``ptx`` whose mnemonic matches the regular expression ``pattern``."""
    return sorted(set(re.findall(rf"\b((?:{pattern})[\w.]*)", ptx)))
