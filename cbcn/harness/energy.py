"""Energy per image from the hardware's own counters: NVML on NVIDIA GPUs, RAPL on CPUs.

Why counters and a window: both count joules since some origin and update every few ms to tens
of ms, so a reading is the difference over a window much longer than that, divided by the images
processed in it (``measure_energy``).

- NVML's ``nvmlDeviceGetTotalEnergyConsumption`` (Volta and newer): the GPU board, in mJ.
- RAPL (Running Average Power Limit), through the Linux powercap interface: Intel CPUs since
  Sandy Bridge and AMD CPUs since Zen expose a package energy counter per socket as
  ``/sys/class/powercap/intel-rapl:N/energy_uj`` (microjoules, wrapping at
  ``max_energy_range_uj``). It measures the whole package, every core and process and the idle
  power included, so a reading is the machine's cost of running the workload, not the
  workload's alone. Since Linux 5.10 ``energy_uj`` is readable by root only (CVE-2020-8694);
  virtual machines usually expose no RAPL at all. Where a counter cannot be read, the reason is
  returned, and the hardware profile reports the energy as unavailable with it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch


# --- NVIDIA GPUs: NVML ------------------------------------------------------------------------
def load_nvml():
    """``(pynvml module, None)`` after ``nvmlInit``, or ``(None, reason)``."""
    try:
        import pynvml
    except ImportError as e:
        return None, f"pynvml (nvidia-ml-py) is not installed ({e})"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        return None, f"NVML could not be initialised ({type(e).__name__}: {e})"
    return pynvml, None


def nvml_handle(nvml, device: torch.device):
    """The NVML handle of a torch CUDA device: by UUID when torch exposes it (CUDA_VISIBLE_DEVICES
    renumbers devices), else by index."""
    index = device.index if device.index is not None else 0
    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        return nvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    except Exception:
        return nvml.nvmlDeviceGetHandleByIndex(index)


class NvmlCounter:
    """Joules from NVML's total-energy counter of one GPU (mJ since the driver loaded)."""

    name = "nvmlDeviceGetTotalEnergyConsumption"
    hint = "it needs a Volta or newer GPU"

    def __init__(self, nvml, handle):
        self.nvml, self.handle = nvml, handle

    def read_j(self) -> float:
        return self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1000.0

    def extra(self) -> dict:
        try:
            return {"power_limit_w": self.nvml.nvmlDeviceGetEnforcedPowerLimit(self.handle) / 1000.0}
        except Exception:
            return {}


# --- CPUs: RAPL through powercap ------------------------------------------------------------
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


# --- the measurement -------------------------------------------------------------------------
def measure_energy(run: Callable[[], object], images_per_call: int, counter, min_window_s: float = 2.0,
                   clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] = lambda: None,
                   max_calls: int = 1_000_000) -> dict:
    """Energy per image and mean power from an energy counter (``NvmlCounter``,
    ``RaplCounter``: ``read_j()`` joules, ``extra()`` fields).

    ``run`` processes ``images_per_call`` images; it is repeated until ``min_window_s`` have
    passed (the counters update every few ms to tens of ms, so short windows are noise) and the
    counter has moved. ``sync`` waits for queued GPU work before each counter read.
    """
    try:
        sync()
        e0, t0 = counter.read_j(), clock()
    except Exception as e:
        hint = getattr(counter, "hint", None)
        return {"unavailable": f"{counter.name} failed ({type(e).__name__}: {e})" + (f"; {hint}" if hint else "")}
    calls = 0
    while True:
        run()
        calls += 1
        if calls % 4 == 0 or calls >= max_calls:
            sync()
            t1 = clock()
            if t1 - t0 >= min_window_s or calls >= max_calls:
                e1 = counter.read_j()
                if e1 > e0 or calls >= max_calls:
                    break
    window = t1 - t0
    energy_j = e1 - e0
    images = calls * images_per_call
    if energy_j <= 0:
        return {"unavailable": f"{counter.name} did not advance in {window:.2f} s"}
    out = {"energy_j": energy_j, "window_s": window, "images": images,
           "energy_per_image_j": energy_j / images, "power_w": energy_j / window if window > 0 else None}
    out.update(counter.extra())
    return out
