"""Shapes and epilogues shared by the kernel tests (``test_triton_kernels.py`` in the interpreter,
``test_kernels_gpu.py`` on a GPU). A plain module — no skips at import — so that one file's skip
never hides the other's tests."""
import torch

from cbcn.nn.binarize import sign
from cbcn.onebit.backends import reference


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


CONV_CASES = [  # N, C_in, H, W, C_out, k, stride, padding
    (1, 37, 7, 7, 20, 3, 1, 1),
    (2, 64, 5, 5, 33, 3, 2, 1),
    (3, 5, 7, 5, 40, 3, 2, 0),
    (2, 70, 5, 3, 64, 3, 1, 1),
    (1, 100, 3, 3, 9, 1, 1, 0),
    (2, 33, 9, 9, 16, 3, 2, 1),
]

KSUM_CASES = [  # N, maps, H, W, C_out (learned), stride, padding, K
    (2, 5, 7, 7, 3, 1, 1, 4),
    (1, 9, 6, 5, 4, 2, 1, 2),
    (3, 33, 5, 5, 2, 2, 0, 8),
    (2, 17, 3, 7, 5, 1, 0, 4),
]


def _epilogue_args(case_index, C_out):
    """One of four epilogues (none; scale + bias; scale + fused batch-norm; scale + bias +
    re-binarisation), by case index."""
    options = [
        {},
        {"scale": _rand(C_out, seed=11).abs(), "bias": _rand(C_out, seed=12)},
        {"scale": _rand(C_out, seed=13).abs(), "bn_scale": _rand(C_out, seed=14), "bn_shift": _rand(C_out, seed=15)},
        {"scale": _rand(C_out, seed=16).abs(), "bias": _rand(C_out, seed=17), "binarize_output": True},
    ]
    return options[case_index % len(options)]


# every product +1·−1: each interior output is −KH·KW·C_in, the largest |sum| the layer allows —
# where Hopper's reduced-precision fp8 accumulation would lose bits if it were left unchecked
WORST_CASES = [  # C_in (physical), K (ksum), output value expected inside
    (512, 1, -4608),   # ResNet18 conv5: the fast fp8 accumulation (bound 4608 <= 2**13)
    (512, 8, -4608),   # K-sum over 64 maps with sums of 8
    (1024, 1, -9216),  # bound > 2**13: each K-step promoted to fp32 (PRECISE_FP8)
    (2048, 4, -18432),  # ImageNet CBCN K=4 at 512 maps
]


def _worst_case(C, K, device):
    x = -torch.ones(1, C, 3, 3)
    W = torch.ones(4, C // K, 3, 3)
    full = reference.cif_pack_bank_reference(W, K) if K > 1 else reference.pack_signs(W)
    weights = reference.cif_pack_bank_reference(W, K, ksum=True) if K > 1 else full
    ref = reference.packed_conv2d_reference(reference.pack_signs(x), full, C, 1, 1)
    return reference.pack_signs(x).to(device), weights.to(device), ref


UNPACK_MAPS = (9, 64, 72)  # operand maps of the unpack cases: a partial word, whole words, both


def _unpack_case(maps, K, seed=0):
    """Packed activations of ``maps·K`` channels, with every unused high bit of the last word set
    (they must not leak into the operand), and the ``unpack_activations`` operand expected at
    padding 1: the sum of each group of K signs (N, H+2, W+2, CP), zero halo and padding maps."""
    from triton_kernels.conv import padded_channels

    x = _rand(2, maps * K, 4, 5, seed=seed)
    sums = sign(x).reshape(2, maps, K, 4, 5).sum(dim=2).permute(0, 2, 3, 1)
    expect = torch.zeros(2, 6, 7, padded_channels(maps))
    expect[:, 1:5, 1:6, :maps] = sums
    packed = reference.pack_signs(x)
    tail = (maps * K) % 32
    if tail:
        packed[..., -1] |= -(1 << tail)
    return packed, expect


# fused layers (cbcn.onebit.backends.operands): N, input maps, their ksum, H (= W), C_out, stride,
# the next conv's ksum, fp8 operands, residual dtype, real-output dtype (None: operand only)
FUSED_CASES = [
    (2, 40, 1, 7, 64, 1, 1, False, torch.float16, torch.float16),
    (1, 16, 4, 6, 64, 2, 4, True, None, None),
    (2, 24, 2, 5, 96, 1, 8, False, torch.float32, torch.float32),
    (1, 32, 1, 4, 33, 1, 1, True, torch.float16, torch.float32),
    (3, 9, 1, 5, 40, 2, 1, False, None, torch.float16),
]


def _fused_case(case, seed=0):
    """Inputs of one fused-layer case on the CPU, and the reference's real output and next operand:
    ``(kwargs for triton_kernels.conv.unpacked_conv2d, layouts, expected_real, expected_operand)``."""
    from cbcn.onebit.backends import operands

    N, maps, ksum, H, C_out, stride, next_ksum, fp8, res_dtype, real_dtype = case
    layout = operands.OperandLayout(maps, ksum, 1, fp8)
    x_buf = layout.allocate(N, H, H, "cpu")
    operands.write_operand_reference(_rand(N, maps * ksum, H, H, seed=seed), layout, x_buf)
    w_mat = operands.weight_matrix_reference(torch.where(_rand(C_out, maps, 3, 3, seed=seed + 1) >= 0, 1.0, -1.0), fp8)
    OH = (H + 2 - 3) // stride + 1
    A, B = _rand(C_out, seed=seed + 2), _rand(C_out, seed=seed + 3)
    residual = None if res_dtype is None else \
        _rand(N, C_out, OH, OH, seed=seed + 4).to(res_dtype).contiguous(memory_format=torch.channels_last)
    next_layout = operands.OperandLayout(C_out // next_ksum, next_ksum, 1, fp8)
    expected_op = next_layout.allocate(N, OH, OH, "cpu")
    expected = operands.operand_conv_reference(x_buf, layout, w_mat, 3, stride, A, B, residual, real_dtype,
                                               next_layout, expected_op)
    kwargs = dict(x_halo=layout.view(x_buf), w_mat=w_mat.view(layout.dtype), kernel_size=(3, 3), stride=stride,
                  out_size=(OH, OH), scale=A, bias=B, out_dtype=real_dtype or torch.float32, residual=residual,
                  store_out=real_dtype is not None, operand_pad=1, operand_ksum=next_ksum)
    return kwargs, next_layout, expected, expected_op


EXTRA_CASES = [  # N, C_in, H, W, C_out, k, stride, padding: ResNet-sized channel counts
    (2, 256, 9, 9, 128, 3, 1, 1),
    (1, 130, 8, 8, 96, 3, 2, 1),
    (4, 64, 15, 15, 64, 3, 1, 1),
]

# fixed tiles of tests/test_kernels_gpu.py on the GPU, per path
GPU_TILES = {
    "mma": dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3),
    "mma_fp8": dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3),
    "popcount": dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2),
    "mma_regs": dict(BLOCK_M=64, BLOCK_N=64, BLOCK_W=1, num_warps=4, num_stages=2),
    "mma_packed": dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3),
}


def gpu_tile(path, channels):
    """``GPU_TILES[path]`` for a GEMM over ``channels`` (physical, or the K-sum form's maps):
    BLOCK_K must divide the channels padded to 32, so 32 where 64 does not."""
    tile = dict(GPU_TILES[path])
    if "BLOCK_K" in tile and -(-channels // 32) % 2:
        tile["BLOCK_K"] = 32
    return tile
