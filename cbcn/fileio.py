"""Writing files so that no reader — another process, a crash, a concurrent sweep — ever sees half of one.

Every file cbcn writes for others to read (checkpoints, result records, reports, plots, downloads)
goes through ``atomic_path``: the content is written to a temporary file beside the target whose
name is unique to this process and call (pid plus a random suffix, so two sweeps writing the same
report at once cannot trip over each other's temporary file), flushed to disk, then moved over
the target with ``os.replace`` (atomic on POSIX and Windows).
"""
from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temporary_name(path: Path) -> Path:
    """A hidden file beside ``path``, unique to this process and call."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` atomically, on failure it
    is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
