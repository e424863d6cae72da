"""The CPU engine's kernels for another architecture, run through ``native_driver.c`` under
qemu-user, as an engine of the ``cbcn`` operators (``native_remote_shim.c``), so a cross-compiled
variant goes through the same operators and the same random sweep as the kernels this machine
runs.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from cbcn.fileio import atomic_path
from cbcn.onebit.backends.cpu import native

HERE = Path(__file__).resolve().parent
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


def remote_engine(variant: str, driver: Path) -> native.NativeLibrary:
    """The engine ``"<variant> (qemu)"`` of the ``cbcn`` operators: ``native_remote_shim.c`` built
    for this machine (once per source), which runs ``driver`` under the variant's emulator for
    every call."""
    source = HERE / "native_remote_shim.c"
    key = hashlib.sha256(source.read_bytes() + (native.FOLDER / "bconv.h").read_bytes()).hexdigest()[:16]
    shim = native.cache_dir() / "remote-shim" / key / "libcbcn_remote.so"
    if not shim.exists():
        with atomic_path(shim) as tmp:
            cmd = [native.compiler(), *native.BASE_FLAGS, f"-I{native.FOLDER}", "-o", str(tmp), str(source)]
            subprocess.run(cmd, check=True, capture_output=True, text=True)
    os.environ["CBCN_REMOTE_EMULATOR"] = shutil.which(CROSS[variant][2])
    os.environ["CBCN_REMOTE_DRIVER"] = str(driver)
    return native.NativeLibrary(shim, native.variant(variant), False, name=f"{variant} (qemu)")
