"""Claims: one process at a time trains an experiment of a results store, however many sweeps share it.

Before a sweep trains an experiment it claims it: it opens ``<out>/results/.claims/<key>.claim``
and takes an exclusive POSIX record lock on it (``fcntl.lockf``, non-blocking), then writes who
it is (host, pid, start time, command). Another sweep that cannot take the lock skips the
experiment — its owner will store the record. The claim is released (the file deleted, the lock
dropped) once the experiment is stored or abandoned.

Why a kernel lock rather than a lock file's mere existence: the operating system drops the lock
when its process dies, however it dies (SIGKILL included), so a claim can never go stale; POSIX
locks also work across hosts on NFS (lockd / NFSv4), which is what a shared cluster store needs.
After taking the lock the claimer checks that the path still names the file it locked (a
releasing owner deletes it), so two processes never both hold one key.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ClaimHolder:
    """Who holds a claim, as read from its file."""

    host: str
    pid: int
    started: str
    command: str
    job: str | None = None  # the Slurm (or submitit local) job, when the holder runs as one

    def __str__(self) -> str:
        return (f"{f'job {self.job}, ' if self.job else ''}pid {self.pid} on {self.host} "
                f"(since {self.started})")


class Claim:
    """A held claim; ``release()`` it (or use it as a context manager)."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()  # while still locked: a waiting claimer then sees a new file
        except FileNotFoundError:
            pass
        os.close(self._fd)  # drops the lock
        self._fd = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(path: Path) -> ClaimHolder | None:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return None
    return ClaimHolder(str(info.get("host", "?")), int(info.get("pid", -1)), str(info.get("started", "?")),
                       str(info.get("command", "")), info.get("job"))


def current_job() -> str | None:
    """This process's Slurm array task (``<array job>_<task>``) or job, or submitit local job."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID") or None


def held_claims(claims_dir: Path) -> dict[str, ClaimHolder]:
    """``{key: holder}`` for every claim a live process holds now (for ``cbcn status``).

    Asks the kernel whether the file is locked (``F_GETLK``) without taking the lock, so looking
    never makes a sweep's claim fail. A claim file whose lock is gone (its holder was killed
    before it could delete the file) is not listed."""
    held = {}
    for path in sorted(claims_dir.glob("*.claim")) if claims_dir.is_dir() else []:
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            query = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)  # Linux struct flock
            l_type = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, query))[0]
        except OSError:
            continue
        finally:
            os.close(fd)
        if l_type != fcntl.F_UNLCK:
            held[path.name[:-len(".claim")]] = _holder(path) or ClaimHolder("?", -1, "?", "")
    return held


def try_claim(claims_dir: Path, key: str) -> tuple[Claim | None, ClaimHolder | None]:
    """``(Claim, None)`` if this process now holds ``key``; ``(None, holder)`` if a live process does."""
    claims_dir.mkdir(parents=True, exist_ok=True)
    path = claims_dir / f"{key}.claim"
    while True:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held by a running process
            os.close(fd)
            return None, _holder(path) or ClaimHolder("?", -1, "?", "")
        try:
            same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if not same_file:  # its owner released (deleted) it between our open and our lock: retry
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                 "command": " ".join(sys.argv)[:500], "job": current_job()}).encode())
        return Claim(path, fd), None
