"""Where a number came from: code revision and package versions (the machine: ``cbcn.harness.machine``).

Why: a stored result is only comparable with another when both say which code, which library
versions and which machine produced them. Collected once per sweep (cheap, no network).
"""
from __future__ import annotations

import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGES = ("cbcn", "torch", "triton", "numpy", "pandas", "matplotlib", "nvidia-ml-py", "mlxtend", "pillow")


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@lru_cache(maxsize=1)
def git_revision() -> dict:
    """Commit of the cbcn source tree and whether it had uncommitted changes; 'unknown' when
    cbcn runs from an installed wheel rather than a git checkout."""
    src = Path(__file__).resolve().parent
    rev = _git("rev-parse", "HEAD", cwd=src)
    note = None
    if rev is None:
        # installed copy (pip install .): the README runs it from the cbcn checkout it was
        # installed from, so record that checkout's commit, saying where it came from
        cwd = Path.cwd()
        pyproject = cwd / "pyproject.toml"
        if pyproject.is_file() and 'name = "cbcn"' in pyproject.read_text(errors="replace"):
            rev, src = _git("rev-parse", "HEAD", cwd=cwd), cwd
            note = "commit of the cbcn checkout in the working directory; cbcn ran from an installed copy"
    if rev is None:
        return {"revision": "unknown (not a git checkout)", "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=src)
    out = {"revision": rev, "dirty": bool(status)}
    if note:
        out["source"] = note
    return out


@lru_cache(maxsize=1)
def package_versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    if out.get("cbcn") is None:
        from cbcn import __version__
        out["cbcn"] = __version__ + " (source tree, not installed)"
    import torch
    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    return out
