"""Ahead-of-time compilation of every kernel for Hopper (``GPUTarget("cuda", 90, 32)``) on this
CPU-only machine, and what the generated PTX contains: the int8 tensor-core MMA in the tensor-core
path, ``popc`` in the popcount path (plain SWAR ops folded by LLVM, and the inline-asm variant),
no FMA contraction in the epilogue (so results match the reference's separately rounded ops)."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

from triton_kernels.compile import KERNELS, compile_kernel, ptx_instructions  # noqa: E402
from triton_kernels.conv import compile_unpacked_conv  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
S8_MMA = r"wgmma\.mma_async[\w.]*\.s8|mma\.sync[\w.]*\.s8"



def _assert_fits_registers(ptx: str, max_registers: int):
    """``ptxas -v`` (sm_90a): no spills and at most ``max_registers`` (skip if no ptxas accepts the PTX)."""
    from triton_kernels.conv import ptxas_report

    report = ptxas_report(ptx)
    if report is None:
        pytest.skip("no ptxas here that accepts this PTX")
    assert report["spill_stores"] == 0 and report["spill_loads"] == 0, report
    assert report["registers"] <= max_registers, report

@pytest.fixture(scope="module")
def can_compile():
    try:
        compile_kernel("unpack_signs_kernel")
    except Exception as exc:  # no CUDA backend / ptxas in this Triton build
        pytest.skip(f"cannot compile for cuda sm_90 here: {type(exc).__name__}: {exc}")


@pytest.mark.parametrize(
    "tile",
    [
        dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, num_warps=8, num_stages=3),
        dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4, out_type="*fp16"),
    ],
)
def test_int8_path_wgmma_async_copies_no_spills(can_compile, tile):
    """path="mma": int8 wgmma fed by 16-byte cp.async copies (the operand tiles are proven aligned
    and contiguous), no FMA contraction, no local memory; ptxas -v: no spills, <= 128 registers
    (two 8-warp or four 4-warp CTAs fit an SM's 64K registers)."""
    from triton_kernels.conv import compile_unpacked_conv

    ptx = compile_unpacked_conv(**tile).asm["ptx"]
    found = ptx_instructions(ptx, S8_MMA)
    assert found and all("wgmma" in f and ".s32.s8.s8" in f for f in found), found
    assert re.search(r"cp\.async\.cg\.shared\.global \[[^]]*\], \[[^]]*\], 0x10", ptx), "A/B tiles not copied as 16 B"
    assert "ld.global.u8" not in ptx and "ld.global.s8" not in ptx  # no byte-wise operand loads
    assert "fma.rn.f32" not in ptx
    assert "ld.local" not in ptx and "st.local" not in ptx
    _assert_fits_registers(ptx, 128)


@pytest.mark.parametrize("tile", [dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, num_warps=8, num_stages=3),
                                  dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4)])
def test_fp8_path_keeps_wgmma_in_flight(can_compile, tile):
    """path="mma_fp8": fp8 e4m3 wgmma with an fp32 accumulator, and Triton waits with
    ``wgmma.wait_group 1`` inside the K-loop (one MMA group stays in flight across K-steps), while
    the int8 kernel of the same tile only ever waits with 0 — why the fp8 variant exists."""
    from triton_kernels.conv import compile_unpacked_conv

    ptx = compile_unpacked_conv(operand="fp8e4nv", out_type="*fp16", **tile).asm["ptx"]
    found = ptx_instructions(ptx, r"wgmma\.mma_async[\w.]*")
    assert found and all(f.endswith(".f32.e4m3.e4m3") for f in found), found
    assert "1" in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)
    i8 = compile_unpacked_conv(operand="i8", out_type="*fp16", **tile).asm["ptx"]
    assert set(re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", i8)) == {"0"}
    assert re.search(r"cp\.async\.cg\.shared\.global \[[^]]*\], \[[^]]*\], 0x10", ptx)
    assert "fma.rn.f32" not in ptx and "ld.local" not in ptx and "st.local" not in ptx
    _assert_fits_registers(ptx, 128)


@pytest.mark.parametrize("CP", [32, 64, 128])
@pytest.mark.parametrize("ksum,fp8", [(1, False), (1, True), (2, False), (2, True), (4, False), (4, True), (8, False), (8, True)])
def test_unpack_kernel_ksum_and_fp8(can_compile, CP, ksum, fp8):
    """The unpacking stage with the tiles it is launched with (``conv.unpack_tile``): no local
    memory, no spills. Every form expands by SWAR on whole 32-bit words and stores 16 bytes per
    thread: signs (``ksum`` = 1) by the ``0x00204081`` multiply, K-sums by the bit-parallel
    popcount (the ``0x55555555`` step). Registers: signs ≤ 48 (32-34), int8 K-sums ≤ 64 (34-48;
    Triton 3.6: 34-55), fp8 K-sums, converted by the hardware e4m3 conversion, ≤ 128 (32-80; 3.6:
    32-106). The per-lane K-sum expansion this replaced took 47-96 (3.6: 47-107) for 1/4 to 1/16
    of the bytes."""
    from triton_kernels.conv import unpack_tile

    block_p, block_c = unpack_tile(CP)
    ptx = compile_kernel("unpack_halo_kernel", num_warps=4, KSUM=ksum, FP8=fp8, BLOCK_C=block_c,
                         BLOCK_P=block_p).asm["ptx"]
    assert ("cvt.rn.satfinite.e4m3x2.f32" in ptx) == (fp8 and ksum > 1)
    assert ptx_instructions(ptx, r"st\.global[\w.]*") == ["st.global.v4.b32"]
    if ksum == 1:
        assert str(0x00204081) in ptx or fp8  # fp8: LLVM folds the << 7 into the constant
    else:
        assert str(0x55555555) in ptx
    assert "ld.local" not in ptx and "st.local" not in ptx
    _assert_fits_registers(ptx, 48 if ksum == 1 else 128 if fp8 else 64)


@pytest.mark.parametrize("tile", [dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, num_warps=8, num_stages=3),
                                  dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4),
                                  dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=4)])
def test_fp8_precise_accumulation_compiles(can_compile, tile):
    """PRECISE_FP8 (sums that may pass 2**13): the fp8 GEMM adds each K-step's wgmma result into
    the fp32 accumulator — still pipelined (``wait_group 1``), no spills."""
    ptx = compile_unpacked_conv(operand="fp8e4nv", out_type="*fp16", PRECISE_FP8=True, **tile).asm["ptx"]
    assert ptx_instructions(ptx, r"wgmma\.mma_async[\w.]*")
    assert "1" in re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)
    assert "ld.local" not in ptx and "st.local" not in ptx
    _assert_fits_registers(ptx, 255)


@pytest.mark.parametrize("operand,tile,instruction", [
    ("i8", dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4), "m64n128k32.s32.s8.s8"),
    ("i8", dict(BLOCK_M=256, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=4), "m64n128k32.s32.s8.s8"),
    ("fp8e4nv", dict(BLOCK_M=256, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=4), "m64n256k32.f32.e4m3.e4m3"),
    ("i8", dict(BLOCK_M=256, BLOCK_N=64, BLOCK_K=32, num_warps=8, num_stages=4), "m64n128k32.s32.s8.s8"),
])
def test_swapped_operands_put_pixels_on_the_wide_mma_side(can_compile, operand, tile, instruction):
    """SWAP_AB (C_out = 64): the wgmma's N is the pixel tile (n128 / n256) instead of the 64 output
    channels (n64 without the swap); operands still 16-byte cp.async; no spills."""
    ptx = compile_unpacked_conv(operand=operand, out_type="*fp16", SWAP_AB=True, **tile).asm["ptx"]
    found = ptx_instructions(ptx, r"wgmma\.mma_async[\w.]*")
    assert found == [f"wgmma.mma_async.sync.aligned.{instruction}"], found
    plain = compile_unpacked_conv(operand=operand, out_type="*fp16", **tile).asm["ptx"]
    assert all(".m64n64k32." in f for f in ptx_instructions(plain, r"wgmma\.mma_async[\w.]*"))
    assert re.search(r"cp\.async\.cg\.shared\.global \[[^]]*\], \[[^]]*\], 0x10", ptx)
    assert "fma.rn.f32" not in ptx and "ld.local" not in ptx and "st.local" not in ptx
    _assert_fits_registers(ptx, 128 if tile["num_warps"] == 8 or tile["BLOCK_M"] == 128 else 255)


@pytest.mark.parametrize("operand", ["i8", "fp8e4nv"])
@pytest.mark.parametrize("block_k", [64, 32])
def test_split_k_adds_partial_sums_with_atomics(can_compile, operand, block_k):
    """SPLIT_K: the partial sums go to the workspace as relaxed integer additions, a CTA barrier
    orders them before the acquire-release count of arrived parts, and the last part exchanges
    the sums for zeros; the fused epilogue (residual, operand) fits without spills."""
    ptx = compile_unpacked_conv(operand=operand, out_type="*fp16", SPLIT_K=4, BLOCK_M=64, BLOCK_N=64,
                                BLOCK_K=block_k, num_warps=4, num_stages=4, HAS_BIAS=True, HAS_RESIDUAL=True,
                                OPERAND=True).asm["ptx"]
    atomics = ptx_instructions(ptx, r"(?:atom|red)\.[\w.]*")
    # Triton >= 3.7 emits the unused-result add as red, 3.6 (the device image) as atom: same memory order
    assert {f"{op}.global.gpu.relaxed.add.{t}" for op in ("red", "atom") for t in ("u32", "s32")} & set(atomics), atomics
    assert any(a.startswith("atom.global.gpu.acq_rel.add") for a in atomics), atomics
    assert any(a.startswith("atom.global.gpu.relaxed.exch") for a in atomics), atomics
    assert "bar.sync" in ptx
    assert ptx_instructions(ptx, r"wgmma\.mma_async[\w.]*")
    assert "fma.rn.f32" not in ptx and "ld.local" not in ptx and "st.local" not in ptx
    _assert_fits_registers(ptx, 168)


@pytest.mark.parametrize("operand", ["i8", "fp8e4nv"])
@pytest.mark.parametrize("tile", [dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=4),
                                  dict(BLOCK_M=256, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=4, SWAP_AB=True),
                                  dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=4)])
def test_persistent_grid_with_tma_store(can_compile, operand, tile):
    """PERSISTENT + TMA_STORE: the output tile leaves through a 2-D bulk tensor store from shared
    memory, whose descriptor the kernel builds on the device (tensormap.replace); the K-loop keeps
    its pipelining (fp8: wait_group 1) and the kernel fits ≤ 128 registers without spills."""
    ptx = compile_unpacked_conv(operand=operand, out_type="*fp16", PERSISTENT=True, TMA_STORE=True, **tile).asm["ptx"]
    assert "cp.async.bulk.tensor.2d.global.shared::cta.bulk_group" in ptx
    assert ptx_instructions(ptx, r"tensormap\.replace[\w.:]*")
    assert ptx_instructions(ptx, r"wgmma\.mma_async[\w.]*")
    waits = set(re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx))
    assert ("1" in waits) == (operand == "fp8e4nv")
    assert not re.search(r"st\.global(\.v\d)?\.b16", ptx)  # no per-thread fp16 stores of the output
    assert "fma.rn.f32" not in ptx and "ld.local" not in ptx and "st.local" not in ptx
    _assert_fits_registers(ptx, 128)


@pytest.mark.parametrize("config", range(4))
def test_packed_input_gemm(can_compile, config):
    """path="mma_packed" with each of its autotuned tiles: one packed word per pixel and K-step
    (int32 offsets, masked at the image border), expanded in registers and fed to the int8 wgmma;
    no local memory, no spills (Triton 3.6 and 3.9: 128-192 registers)."""
    from triton_kernels._runtime import load

    tile = load("conv_kernels", interpret=False).PACKED_INPUT_CONFIGS[config]
    ptx = compile_kernel("packed_input_conv_kernel", num_warps=tile.num_warps, num_stages=tile.num_stages,
                         **tile.kwargs).asm["ptx"]
    found = ptx_instructions(ptx, S8_MMA)
    assert found and all("wgmma" in f and ".s32.s8.s8" in f for f in found), found
    assert "fma.rn.f32" not in ptx and "ld.local" not in ptx and "st.local" not in ptx
    _assert_fits_registers(ptx, 200)


def test_int8_path_rebinarising_epilogue(can_compile):
    from triton_kernels.conv import compile_unpacked_conv

    ptx = compile_unpacked_conv(num_warps=4, num_stages=4, BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, HAS_BIAS=True,
                                HAS_AFFINE=True, BINARIZE=True, out_type="*i32").asm["ptx"]
    assert ptx_instructions(ptx, S8_MMA)
    assert "fma.rn.f32" not in ptx and "st.local" not in ptx


def test_mma_path_uses_int8_tensor_cores(can_compile):
    ptx = compile_kernel("packed_conv_mma_kernel", num_warps=8).asm["ptx"]
    found = ptx_instructions(ptx, S8_MMA)
    assert found, "no int8 mma/wgmma in the tensor-core path"
    assert all(".s32.s8.s8" in f or ".s8.s8.s32" in f for f in found), found
    assert "fma.rn.f32" not in ptx  # epilogue: mul then add, each rounded (no FP contraction)


def test_mma_path_rebinarising_epilogue(can_compile):
    ptx = compile_kernel(
        "packed_conv_mma_kernel", num_warps=4, BLOCK_M=64, BLOCK_N=64, BLOCK_W=2, HAS_AFFINE=True, BINARIZE=True
    ).asm["ptx"]
    assert ptx_instructions(ptx, S8_MMA)
    assert "fma.rn.f32" not in ptx


@pytest.mark.parametrize("use_asm", [False, True])
def test_popcount_path_uses_popc(can_compile, use_asm):
    ptx = compile_kernel("packed_conv_popcount_kernel", num_warps=4, USE_ASM_POPC=use_asm).asm["ptx"]
    assert "popc.b32" in ptx
    assert not ptx_instructions(ptx, S8_MMA)


@pytest.mark.parametrize("name", ["pack_signs_kernel", "unpack_signs_kernel", "cif_pack_bank_kernel",
                                  "cif_expand_kernel", "cif_backward_kernel"])
def test_other_kernels_compile(can_compile, name):
    assert KERNELS[name]
    assert ".entry" in compile_kernel(name).asm["ptx"]


def test_cif_pack_bank_from_packed_signs_compiles(can_compile):
    ptx = compile_kernel("cif_pack_bank_kernel", FROM_PACKED=True, signature={"w_ptr": "*i32"}).asm["ptx"]
    assert ".entry" in ptx


def test_mode_independent_of_import_order(can_compile):
    """With TRITON_INTERPRET=1 set before Triton is imported, kernels still compile for the GPU
    and run in the interpreter on CPU tensors (and the reverse order is what this process does)."""
    from triton_kernels._runtime import interpreter_problem

    if interpreter_problem():
        pytest.skip(interpreter_problem())
    code = textwrap.dedent(
        """
        import os
        os.environ["TRITON_INTERPRET"] = "1"
        import torch, triton
        from cbcn.onebit.backends import reference
        import triton_kernels as tk
        from triton_kernels.compile import compile_kernel
        ptx = compile_kernel("packed_conv_popcount_kernel", num_warps=4, BLOCK_M=32, BLOCK_N=32).asm["ptx"]
        assert "popc.b32" in ptx
        x, w = torch.randn(1, 37, 5, 5), torch.randn(8, 37, 3, 3)
        xp, wp = tk.pack_signs(x), tk.pack_signs(w)
        ref = reference.packed_conv2d_reference(xp, wp, 37, 2, 1)
        assert torch.equal(tk.packed_conv2d(xp, wp, 37, 2, 1, path="mma"), ref)
        print("OK")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


def _async_mma_configs():
    from triton_kernels._runtime import load

    try:
        return load("async_mma_kernels", interpret=False).ASYNC_MMA_CONFIGS
    except Exception:  # noqa: BLE001 - a Triton without Gluon's Hopper API: the test says so
        return [None]


@pytest.mark.parametrize("config", _async_mma_configs())
def test_async_mma_keeps_one_wgmma_in_flight(can_compile, config):
    """path="mma_async" (Gluon) with each of its tiles: the K-loop issues the int8 wgmma, commits it
    and waits with wait_group 1 — the MMA of this K-step stays in flight while the 16-byte cp.async
    copies of the step STAGES-1 ahead are issued after it (Triton's own int8 loop waits with 0) —
    and only the loop's exit waits with 0; the copies wait with STAGES-2 groups outstanding; two
    CTA barriers per K-step (Triton's barrier pass adds none); no FMA contraction, no local
    memory, ≤ 128 registers (2 CTAs of 8 warps, or 4 of 4, per SM)."""
    if config is None:
        pytest.skip(f"Triton {triton.__version__} has no Gluon Hopper API")
    from triton_kernels.async_mma import compile_async_mma_conv

    tile = dict(config.kwargs, num_warps=config.num_warps)
    _assert_async_loop(compile_async_mma_conv(HAS_BIAS=True, HAS_AFFINE=True, **tile).asm["ptx"], tile)


def _assert_async_loop(ptx: str, tile: dict) -> str:
    """``test_async_mma_keeps_one_wgmma_in_flight``'s checks on one compiled tile; returns the PTX
    after the K-loop (the epilogue)."""
    loop = re.search(r"\$L__BB0_(\d+):[^\n]*(?:Inner Loop Header|lr\.ph).*?bra\s+\$L__BB0_\1;", ptx, re.S)
    assert loop, "no K-loop found"
    body = loop.group(0)
    mma = ptx_instructions(body, r"wgmma\.mma_async[\w.]*")
    assert len(mma) == 1 and ".s32.s8.s8" in mma[0], mma
    issued = body.count("wgmma.mma_async")  # one per k32 slice and per 64-row/N repetition of a warpgroup
    assert issued and issued % (tile["BLOCK_K"] // 32) == 0, issued
    assert re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", body) == ["1"]
    assert re.findall(r"cp\.async\.wait_group\s+(\d+)", body) == [str(tile["STAGES"] - 2)]
    copies = [m.start() for m in re.finditer(r"cp\.async\.cg\.shared\.global \[[^]]*\], \[[^]]*\], 0x10", body)]
    assert copies and min(copies) > body.index("wgmma.wait_group"), "the copies must follow the wgmma's wait"
    assert body.count("bar.sync") == 2, body.count("bar.sync")
    assert body.index("cp.async.wait_group") < body.index("bar.sync") < body.index("fence.proxy.async") \
        < body.index("wgmma.mma_async")
    epilogue = ptx[loop.end():]
    assert re.search(r"wgmma\.wait_group\.sync\.aligned\s+0", epilogue)
    assert "fma.rn.f32" not in ptx and "ld.local" not in ptx and "st.local" not in ptx
    _assert_fits_registers(ptx, 128)
    return epilogue


# a thread of the async kernel's epilogue holds 8 adjacent channels (``store_layout``): its share of
# the next operand is 8 / K bytes, one store
ASYNC_OPERAND_STORE = {1: "st.global.v2.b32", 2: "st.global.b32", 4: "st.global.b16", 8: "st.global.b8"}


@pytest.mark.parametrize("flags", [
    dict(HAS_RESIDUAL=True, OPERAND=True, OP_KSUM=1),
    dict(HAS_RESIDUAL=True, OPERAND=True, OP_KSUM=4, STORE_OUT=False),
    dict(OPERAND=True, OP_KSUM=8, STORE_OUT=False),
])
@pytest.mark.parametrize("tile", [dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, STAGES=4, num_warps=8),
                                  dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, STAGES=5, num_warps=4)])
def test_async_mma_fused_layer_keeps_its_pipeline(can_compile, flags, tile):
    """path="mma_async" as a fused layer (the runner's fused mode): the residual, the real output
    (or none) and the next conv's int8 operand bytes (plain or K-sums) leave the K-loop as it is
    (one wgmma in flight, two barriers, no spills, ≤ 128 registers). In the epilogue each thread
    stores its 8 / K operand bytes at once, its 8 fp16 outputs as one 16-byte vector (none
    without ``STORE_OUT``), and loads the fp16 residual as 16-byte vectors beside the epilogue's
    two fp32 vectors (scale, bias: 2 × 2 loads)."""
    if _async_mma_configs() == [None]:
        pytest.skip(f"Triton {triton.__version__} has no Gluon Hopper API")
    from collections import Counter

    from triton_kernels.async_mma import compile_async_mma_conv

    ptx = compile_async_mma_conv(HAS_BIAS=True, **flags, **tile).asm["ptx"]
    epilogue = _assert_async_loop(ptx, tile)
    ops = Counter(re.findall(r"\b((?:st|ld)\.global[\w.]*)", epilogue))
    assert ops[ASYNC_OPERAND_STORE[flags["OP_KSUM"]]] > 0, ops
    assert set(o for o in ops if o.startswith("st.")) == \
        {ASYNC_OPERAND_STORE[flags["OP_KSUM"]]} | ({"st.global.v4.b32"} if flags.get("STORE_OUT", True) else set()), ops
    assert set(ops) - {o for o in ops if o.startswith("st.")} == {"ld.global.v4.b32"}, ops
    assert (ops["ld.global.v4.b32"] > 4) == flags.get("HAS_RESIDUAL", False), ops


def test_async_mma_launch_binds_for_sm90(can_compile):
    """The Gluon kernel's launch as ``async_mma_conv2d`` makes it — tensors bound to the signature,
    ``num_warps`` both constexpr and launch option, ``enable_fp_fusion`` passed, the autotuner's
    pruned candidates; plain and as a fused layer (residual, K-sum operand) — compiles for sm_90
    (``warmup``: no launch), with a stand-in driver that
    reports a Hopper target (in a subprocess: the driver is process state)."""
    if _async_mma_configs() == [None]:
        pytest.skip(f"Triton {triton.__version__} has no Gluon Hopper API")
    code = textwrap.dedent(
        """
        import torch
        from triton.backends.compiler import GPUTarget
        from triton.runtime import driver

        class HopperStandIn:
            def get_current_device(self): return 0
            def get_current_stream(self, device=None): return 0
            def get_current_target(self): return GPUTarget("cuda", 90, 32)
            def get_active_torch_device(self): return torch.device("cpu")

        driver.set_active(HopperStandIn())
        from triton_kernels import async_mma
        from triton_kernels._runtime import load

        configs = load("async_mma_kernels", interpret=False).ASYNC_MMA_CONFIGS
        for N, H, CP, C_out in ((2, 8, 64, 64), (1, 5, 32, 96)):
            xh = torch.zeros(N, H + 2, H + 2, CP, dtype=torch.int8)
            wm = torch.zeros(C_out, 9 * CP, dtype=torch.int8)
            out = torch.empty(N, C_out, H, H, dtype=torch.float16).contiguous(memory_format=torch.channels_last)
            vec = torch.ones(C_out)
            op = torch.zeros(N, H + 2, H + 2, 32 * -(-C_out // 4 // 32), dtype=torch.int8)  # the K = 4 sums
            args = (xh, wm, vec, vec, vec, vec, out, out, op, N * H * H, H + 2, H + 2, H, H, C_out, 1, CP, 9 * CP,
                    H + 2, H + 2, 1, op.shape[3])
            for fused in (dict(), dict(HAS_RESIDUAL=True, OPERAND=True, OP_KSUM=4)):
                flags = dict(KH=3, KW=3, HAS_SCALE=True, HAS_BIAS=True, HAS_AFFINE=True, **fused)
                compiled = async_mma.tuned_kernel().warmup(*args, **flags, enable_fp_fusion=False, grid=(1,))
                assert len(compiled) == len(async_mma.select_async_mma_configs(configs, CP, C_out)) > 0
        print("OK")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TRITON_INTERPRET": "0"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
