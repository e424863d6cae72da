"""The CPU engine's kernels for another architecture, run through ``native_driver.c`` under
qemu-user: a stand-in for ``native.NativeLibrary`` that ``cpu.run_native`` drives as it drives
the real one, so a cross-compiled variant goes through the same Python path and the same random
sweep as the kernels this machine runs.

Each call writes the ``ConvParams`` (pointers as blob offsets) and every tensor it points at to
a file, runs the driver, and copies the outputs back into the caller's tensors. The weights go
over unprepared; the driver prepares them in its own variant's layout.
"""
from __future__ import annotations

import ctypes
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from cbcn.onebit.backends.cpu import native

HERE = Path(__file__).resolve().parent
POINTER_FIELDS = tuple(f for f, t in native.ConvParams._fields_ if t is ctypes.c_void_p)
CROSS = {  # variant -> (compiler, objdump, emulator, the Debian packages that provide them)
    "neon": ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-objdump", "qemu-aarch64",
             "apt-get install gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu qemu-user"),
}


def missing_tools(variant: str) -> str | None:
    """Why the cross toolchain of ``variant`` is not usable here (``None`` if it is)."""
    cc, objdump, emulator, install = CROSS[variant]
    absent = [t for t in (cc, objdump, emulator) if shutil.which(t) is None]
    return f"{', '.join(absent)} not found ({install})" if absent else None


def build_driver(variant: str, out_dir: Path) -> Path:
    """``native_driver.c`` cross-compiled, statically linked, for ``variant``."""
    cc = CROSS[variant][0]
    exe = out_dir / f"driver-{variant}"
    v = native.variant(variant)
    cmd = [cc, *[f for f in native.BASE_FLAGS if f not in ("-shared", "-fPIC")], *v.flags, v.define, "-static",
           f"-I{native.FOLDER}", "-o", str(exe), str(HERE / "native_driver.c"), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return exe


def _extent(sizes, strides) -> int:
    """Elements spanned by a strided tensor view (non-negative strides)."""
    if any(s == 0 for s in sizes):
        return 0
    return 1 + sum((n - 1) * st for n, st in zip(sizes, strides))


class RemoteLibrary:
    """``cpu.run_native``'s view of a library: the variant's kernels, one driver run per call."""

    def __init__(self, variant: str, driver: Path):
        self.variant, self.driver, self.openmp = variant, driver, False
        self.emulator = CROSS[variant][2]

    def describe(self) -> str:
        return f"{self.variant} under {self.emulator}"

    def prepared_words(self, C_out, C_in, KH, KW) -> int:
        return C_out * KH * KW * ((C_in + 31) // 32)  # the plain bank: the driver prepares it

    def prepare_weights(self, w_ptr, C_out, C_in, KH, KW, out_ptr) -> None:
        ctypes.memmove(out_ptr, w_ptr, self.prepared_words(C_out, C_in, KH, KW) * 4)

    def _run(self, header: bytes, regions: dict, outputs: tuple[str, ...]) -> None:
        offsets, blob = {}, bytearray()
        for name, (ptr, nbytes) in regions.items():
            offsets[name] = len(blob)
            blob += ctypes.string_at(ptr, nbytes) if nbytes else b""
            blob += b"\0" * (-len(blob) % 64)
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in", Path(tmp) / "out"
            src.write_bytes(header(offsets) + struct.pack("<q", len(blob)) + bytes(blob))
            res = subprocess.run([self.emulator, str(self.driver), str(src), str(dst)], capture_output=True, timeout=300)
            if res.returncode != 0:
                raise RuntimeError(f"driver failed (exit {res.returncode}): {res.stderr.decode()[-500:]}")
            back = dst.read_bytes()
        for name in outputs:
            if name in regions and regions[name][1]:
                ptr, nbytes = regions[name]
                ctypes.memmove(ptr, back[offsets[name]:offsets[name] + nbytes], nbytes)

    def binary_conv(self, p: native.ConvParams) -> None:
        pooled = {0: lambda n: n, 2: lambda n: n // 2, 3: lambda n: (n + 1) // 2}[p.pool]
        PH, PW, C = pooled(p.OH), pooled(p.OW), p.C_out
        regions = {}

        def add(field, elements):
            ptr = getattr(p, field)
            if ptr:
                regions[field] = (ptr, 4 * elements)

        add("x", p.N * p.H * p.W * p.XW)
        add("w", self.prepared_words(C, p.C_in, p.KH, p.KW) if p.w else 0)
        for field in ("scale", "bias", "bn_mul", "bn_add"):
            add(field, C)
        add("residual", _extent((p.N, C, PH, PW), (p.rs_n, p.rs_c, p.rs_h, p.rs_w)))
        add("out", _extent((p.N, C, PH, PW), (p.os_n, p.os_c, p.os_h, p.os_w)))
        add("out_packed", p.N * PH * PW * ((C + 31) // 32))
        add("src", _extent((p.N, C, p.OH, p.OW), (p.ss_n, p.ss_c, p.ss_h, p.ss_w)))

        def header(offsets):
            q = native.ConvParams.from_buffer_copy(bytes(p))
            for field in POINTER_FIELDS:
                setattr(q, field, offsets[field] + 1 if field in regions else None)
            return struct.pack("<q", 1) + bytes(q)

        self._run(header, regions, ("out", "out_packed"))

    def pack_signs_f32(self, ptr, N, C, H, W, strides, out_ptr, threads) -> None:
        regions = {"x": (ptr, 4 * _extent((N, C, H, W), strides)), "out": (out_ptr, 4 * N * H * W * ((C + 31) // 32))}

        def header(offsets):
            return struct.pack("<11q", 2, N, C, H, W, *strides, offsets["x"] + 1, offsets["out"] + 1)

        self._run(header, regions, ("out",))
