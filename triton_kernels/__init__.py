"""Triton kernels for packed 1-bit inference and circulant filters (issue 4).

Public functions mirror the pure-PyTorch reference backend ``cbcn.onebit.backends.reference`` / ``cbcn.nn.cif``
(same signatures, bit-identical results):

- ``pack_signs(x)`` / ``unpack_signs(packed, channels)`` — signs packed 32 per int32 word, NHWC;
- ``packed_conv2d(x_packed, w_packed, in_channels, stride, padding, scale, bias, bn_scale,
  bn_shift, binarize_output, out_dtype, path="mma"|"popcount")`` — implicit-GEMM binary conv;
- ``cif_pack_bank(W, K, in_channels=None)`` — fused CiF expansion to the packed filter bank;
- ``cif_expand(W, K)``, ``cif_backward(grad_G, K)`` (Eq. 8), ``cif_expand_autograd(W, K)``.

CUDA tensors run compiled (autotuned) kernels; CPU tensors run them in the Triton interpreter
(exact, slow: for tests). ``triton_kernels.compile.compile_kernel`` lowers any kernel to PTX for
a GPU target without a GPU.
"""
from .cif import CiFExpand, cif_backward, cif_expand, cif_expand_autograd, cif_pack_bank
from .conv import KSUM_PATHS, PATHS, packed_conv2d
from .pack import pack_signs, unpack_signs

__all__ = [
    "pack_signs", "unpack_signs", "packed_conv2d", "PATHS", "KSUM_PATHS",
    "cif_pack_bank", "cif_expand", "cif_backward", "cif_expand_autograd", "CiFExpand",
]
