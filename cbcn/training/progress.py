"""Progress display that stays readable in a log file.

Why two modes: on a terminal a single self-updating bar line (carriage return) is pleasant; in a
log file (stdout redirected, CI, nohup, torchrun's per-rank logs) carriage returns turn into one
giant line, so there the same information is printed as ordinary lines at a fixed interval.
Only rank 0 of a distributed run reports (the caller passes ``enabled=False`` elsewhere).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """``mode``: 'auto' (bar on a TTY, lines otherwise), 'bar', 'lines' or 'none'.
    ``log_file``: optional path that receives every line (never bars)."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None, enabled: bool = True,
                 log_every: int = 0, log_file: str | None = None):
        if mode not in ("auto", "bar", "lines", "none"):
            raise ValueError(f"unknown progress mode {mode!r}; valid choices: auto, bar, lines, none")
        self.stream = stream if stream is not None else sys.stdout
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "lines"
        self.enabled = enabled
        self.mode = mode if enabled else "none"
        self.log_every = log_every
        self._bar_open = False
        self._log = open(log_file, "a", encoding="utf-8") if (log_file and enabled) else None
        self._t0 = time.time()

    def _write_line(self, text: str) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def log(self, text: str) -> None:
        """One line to the display and the log file."""
        if self._log is not None:
            self._log.write(time.strftime("%Y-%m-%d %H:%M:%S ") + text + "\n")
            self._log.flush()
        if self.mode != "none":
            self._write_line(text)

    def detail(self, text: str) -> None:
        """A line for the log file only (long descriptions the console would drown in)."""
        if self._log is not None:
            self._log.write(time.strftime("%Y-%m-%d %H:%M:%S ") + text + "\n")
            self._log.flush()

    def result(self, text: str) -> None:
        """A line shown even with mode 'none' (the run's outcome), and logged."""
        if self._log is not None:
            self._log.write(time.strftime("%Y-%m-%d %H:%M:%S ") + text + "\n")
            self._log.flush()
        if self.enabled:
            self._write_line(text)

    def batch(self, epoch: int, epochs: int, i: int, n: int, loss: float, error: float,
              images_per_s: float) -> None:
        """Report batch ``i`` (1-based) of ``n`` in an epoch."""
        if self.mode == "none":
            return
        text = (f"epoch {epoch}/{epochs} batch {i}/{n} loss {loss:.4f} err {error:.2f}% "
                f"{images_per_s:.0f} img/s")
        if self.mode == "bar":
            width = 24
            done = int(width * i / max(n, 1))
            self.stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {text}   ")
            self.stream.flush()
            self._bar_open = True
            if i == n:
                self.stream.write("\n")
                self._bar_open = False
        else:
            every = self.log_every or max(1, -(-n // 10))
            if i % every == 0 or i == n:
                self._write_line(text)

    def close(self) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
        if self._log is not None:
            self._log.close()
            self._log = None
