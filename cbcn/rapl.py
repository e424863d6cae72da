"""CPU energy from the Linux powercap interface to RAPL (Running Average Power Limit).

Intel CPUs since Sandy Bridge and AMD CPUs since Zen expose a package energy counter per socket
as ``/sys/class/powercap/intel-rapl:N/energy_uj`` (microjoules, wrapping at
``max_energy_range_uj``). It measures the whole package — every core and process, and the idle
power — so a reading is the machine's cost of running the workload, not the workload's alone.
Since Linux 5.10 ``energy_uj`` is readable by root only (CVE-2020-8694); virtual machines
usually expose no RAPL at all. Where it cannot be read, ``rapl_counter`` says why, and the
hardware profile reports the energy as unavailable with that reason.
"""
from __future__ import annotations

from pathlib import Path

POWERCAP = Path("/sys/class/powercap")


class RaplCounter:
    """Joules used by the CPU packages since creation: the sum of every package zone's counter,
    each read as a difference modulo its wrap-around range (call at least once per wrap period,
    minutes at full power)."""

    name = "RAPL energy_uj"

    def __init__(self, zones: list[tuple[str, Path, int]]):
        self.zones = zones  # (label, energy_uj path, max_energy_range_uj)
        self._last = [self._read(path) for _, path, _ in zones]
        self._total_uj = 0

    @staticmethod
    def _read(path: Path) -> int:
        return int(path.read_text().strip())

    def read_j(self) -> float:
        for i, (_, path, wrap) in enumerate(self.zones):
            value = self._read(path)
            delta = value - self._last[i]
            if delta < 0:  # the counter wrapped around
                delta += wrap
            self._total_uj += delta
            self._last[i] = value
        return self._total_uj / 1e6

    def extra(self) -> dict:
        return {"energy_counter": "RAPL " + ", ".join(label for label, _, _ in self.zones),
                "energy_scope": "whole CPU package(s): every core and process, idle power included"}


def rapl_counter(root: Path | str = POWERCAP) -> tuple[RaplCounter | None, str | None]:
    """``(counter, None)`` over every package-level RAPL zone under ``root``, or ``(None, reason)``."""
    root = Path(root)
    if not root.is_dir():
        return None, (f"no RAPL energy counters: {root} does not exist (not Linux, no powercap driver, "
                      "or a virtual machine that hides RAPL)")
    packages = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
    if not packages:
        return None, f"no package-level RAPL zone (intel-rapl:N) under {root}"
    zones = []
    for zone in packages:
        energy, limit = zone / "energy_uj", zone / "max_energy_range_uj"
        try:
            RaplCounter._read(energy)
            wrap = RaplCounter._read(limit)
        except PermissionError:
            return None, (f"{energy} is not readable by this user: since Linux 5.10 it is root-only "
                          "(CVE-2020-8694); run as root or make it readable")
        except (OSError, ValueError) as exc:
            return None, f"{energy} could not be read ({type(exc).__name__}: {exc})"
        try:
            label = f"{zone.name} [{(zone / 'name').read_text().strip()}]"
        except OSError:
            label = zone.name
        zones.append((label, energy, wrap))
    return RaplCounter(zones), None
