"""The exceptions of the command line, and SIGTERM as one of them.

Why its own module: every subcommand raises ``CLIError`` and ``cbcn.cli.main`` catches it, printing
``cbcn: error: <message>`` with exit status 2. Defined here, it is one class even under
``python -m cbcn.cli``, where the CLI module runs as ``__main__`` and a class defined in it would
exist twice.
"""
from __future__ import annotations

import contextlib
import re
import signal


class CLIError(Exception):
    """A user error to print as ``cbcn: error: ...`` with exit status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that a command stops as cleanly as on Ctrl-C (batch
    schedulers send SIGTERM before SIGKILL); the commands exit with status 143 and say so."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def sigterm_raises():
    """Inside, SIGTERM raises ``Terminated`` (main thread only)."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exception_line(text: str) -> str:
    """The last exception line (``SomeError: why``) of a traceback or log, else its last
    non-empty line: what a failed job's log says in one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Failed|Interrupt)\b.*:", line)]
    return (errors or lines or ["unknown error"])[-1]
