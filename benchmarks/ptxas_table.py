#!/usr/bin/env python
"""Registers, spills, shared memory and resident CTAs of every autotuned GPU tile — no GPU needed.

Compiles each candidate tile of the packed-convolution GEMMs for Hopper (``sm_90``) with the
Triton this process imports, runs the ``ptxas -v`` Triton ships (``triton_kernels.conv.ptxas_report``)
and writes one table:

- ``unpacked_conv_kernel`` (paths ``mma`` / ``mma_fp8``): every ``I8_CONFIGS`` tile, int8 and fp8
  operands, the plain epilogue (α, fp16 store) and the fused layer's (bias, fp16 residual, real
  output and next operand);
- ``async_mma_conv_kernel`` (path ``mma_async``, Gluon): every ``ASYNC_MMA_CONFIGS`` tile, the plain
  and the fused epilogue;
- ``packed_input_conv_kernel`` (path ``mma_packed``): every ``PACKED_INPUT_CONFIGS`` tile;
- ``unpack_halo_kernel`` (the operand unpack of ``mma`` / ``mma_fp8``): its ``conv.unpack_tile``
  tiles for 64 and ≥ 128 channels, signs and K-sums 2/4/8, int8 and fp8 bytes.

Columns: registers per thread, spilled bytes (stores / loads), shared memory, the wgmma waits in
the PTX (``1`` = one MMA stays in flight), and the CTAs per SM that registers and shared memory
allow on an H100/H200 (64K registers, 228 KiB shared memory, 1 KiB reserved per CTA). The int8
GEMMs wait for every wgmma (0), so their MMA latency is hidden by resident CTAs: this is what the
table answers. Why it exists: the device image runs another Triton than the development machine
(3.6 against 3.9), and the same kernel compiles differently under them.

Usage:  python benchmarks/ptxas_table.py --out benchmarks/results/ptxas-sm90-<date>/
        (writes ``triton-<version>.csv`` and ``.md``; one Triton per run)
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402

from cbcn.fileio import atomic_write_text  # noqa: E402

SM_REGISTERS = 65536
SM_SHARED = 228 * 1024
CTA_RESERVED_SHARED = 1024
MAX_CTAS = 32
FUSED = dict(HAS_BIAS=True, HAS_RESIDUAL=True, OPERAND=True)
UNPACK_CHANNELS = (64, 128)  # output channels of the unpack tiles tabled (CP ≥ 128 takes the 128 tile)


def ctas_per_sm(registers: int, warps: int, shared: int) -> tuple[int, int]:
    """CTAs per SM allowed by registers (allocated per warp in units of 256) and by shared memory."""
    per_warp = -(-registers * 32 // 256) * 256
    by_regs = SM_REGISTERS // (per_warp * warps)
    by_smem = SM_SHARED // (shared + CTA_RESERVED_SHARED) if shared else MAX_CTAS
    return min(by_regs, MAX_CTAS), min(by_smem, MAX_CTAS)


def _tile_name(kwargs: dict) -> str:
    size = f"{kwargs['BLOCK_M']}x{kwargs['BLOCK_N']}" + (f"x{kwargs['BLOCK_K']}" if "BLOCK_K" in kwargs else "x32")
    flags = [k.lower() for k in ("SWAP_AB", "PERSISTENT", "TMA_STORE") if kwargs.get(k)]
    if kwargs.get("SPLIT_K", 1) > 1:
        flags.append(f"split_k={kwargs['SPLIT_K']}")
    return " ".join([size] + flags)


def _row(kernel, path, tile, warps, stages, operand, epilogue, compiled) -> dict:
    from triton_kernels.conv import ptxas_report

    ptx = compiled.asm["ptx"]
    report = ptxas_report(ptx) or {}
    shared = int(getattr(compiled.metadata, "shared", 0))
    row = dict(kernel=kernel, path=path, tile=tile, warps=warps, stages=stages, operand=operand,
               epilogue=epilogue, registers=report.get("registers"), spill_stores=report.get("spill_stores"),
               spill_loads=report.get("spill_loads"), shared_KiB=round(shared / 1024, 1),
               wgmma_waits=",".join(sorted(set(re.findall(r"wgmma\.wait_group\.sync\.aligned\s+(\d+)", ptx)))))
    if report:
        row["ctas_by_regs"], row["ctas_by_smem"] = ctas_per_sm(report["registers"], warps, shared)
        row["ctas_per_sm"] = min(row["ctas_by_regs"], row["ctas_by_smem"])
    return row


def collect(progress=print) -> list[dict]:
    from triton_kernels._runtime import load
    from triton_kernels.compile import compile_kernel
    from triton_kernels.conv import compile_unpacked_conv, unpack_tile

    conv = load("conv_kernels", interpret=False)
    rows = []
    for c in conv.I8_CONFIGS:
        for operand, path in (("i8", "mma"), ("fp8e4nv", "mma_fp8")):
            for epilogue, extra in (("plain", {}), ("fused", FUSED)):
                compiled = compile_unpacked_conv(num_warps=c.num_warps, num_stages=c.num_stages, out_type="*fp16",
                                                 operand=operand, **c.kwargs, **extra)
                rows.append(_row("unpacked_conv_kernel", path, _tile_name(c.kwargs), c.num_warps, c.num_stages,
                                 operand, epilogue, compiled))
        progress(f"[ptxas] {rows[-1]['tile']}: {rows[-1]['registers']} registers (fp8 fused)")
    try:
        from triton_kernels.async_mma import compile_async_mma_conv

        configs = load("async_mma_kernels", interpret=False).ASYNC_MMA_CONFIGS
    except Exception as exc:  # noqa: BLE001 - a Triton without Gluon's Hopper API: say so in the table
        rows.append(dict(kernel="async_mma_conv_kernel", path="mma_async", note=f"unavailable: {exc}"[:200]))
        configs = []
    for c in configs:
        for epilogue, extra in (("plain", {}), ("fused", FUSED)):
            compiled = compile_async_mma_conv(**c.kwargs, num_warps=c.num_warps, **extra)
            rows.append(_row("async_mma_conv_kernel", "mma_async", _tile_name(c.kwargs), c.num_warps,
                             c.kwargs["STAGES"], "i8", epilogue, compiled))
    for c in conv.PACKED_INPUT_CONFIGS:
        compiled = compile_kernel("packed_input_conv_kernel", num_warps=c.num_warps, num_stages=c.num_stages,
                                  **c.kwargs)
        rows.append(_row("packed_input_conv_kernel", "mma_packed", _tile_name(c.kwargs), c.num_warps,
                         c.num_stages, "i8", "plain", compiled))
    for CP in UNPACK_CHANNELS:
        for ksum in (1, 2, 4, 8):
            for operand, fp8 in (("i8", False), ("fp8e4nv", True)):
                block_p, block_c = unpack_tile(CP)
                compiled = compile_kernel("unpack_halo_kernel", num_warps=4, KSUM=ksum, FP8=fp8, BLOCK_P=block_p,
                                          BLOCK_C=block_c)
                rows.append(_row("unpack_halo_kernel", "unpack", f"{block_p}x{block_c} CP={CP} ksum={ksum}", 4, 1,
                                 operand, "-", compiled))
    return rows


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for triton-<version>.csv and .md")
    args = ap.parse_args(argv)
    try:
        import triton
        from triton_kernels.compile import compile_kernel

        compile_kernel("unpack_signs_kernel")
    except Exception as exc:  # noqa: BLE001 - no Triton, or no CUDA backend in it
        raise SystemExit(f"ptxas_table: cannot compile for sm_90 here ({type(exc).__name__}: {exc})")
    start = time.time()
    table = pd.DataFrame(collect())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"triton-{triton.__version__}"
    atomic_write_text(f"{stem}.csv", table.to_csv(index=False))
    header = (f"# ptxas -v for sm_90a, Triton {triton.__version__} (its bundled ptxas), "
              f"compiled on {time.strftime('%Y-%m-%d')} without a GPU\n\n"
              "`python benchmarks/ptxas_table.py --out <folder>`; CTAs per SM for an H100/H200 "
              "(64K registers, 228 KiB shared memory). Plain: α and an fp16 store; fused: bias, an fp16 "
              "residual, the real output and the next conv's operand. `unpack_halo_kernel`: the operand "
              "unpack before `mma` / `mma_fp8`, tile BLOCK_P×BLOCK_C (pixels × output channels).\n\n")
    atomic_write_text(f"{stem}.md", header + table.to_markdown(index=False) + "\n")
    print(f"[ptxas] {len(table)} kernels in {time.time() - start:.0f}s -> {stem}.csv / .md")
    return table


if __name__ == "__main__":
    main()
