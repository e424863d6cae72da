"""Hardware profile: operation counts and sizes by hand and against torch's FLOP counter, timing,
the machine description, and the NVML / RAPL energy paths with fakes."""
import math

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from cbcn.harness import energy
from cbcn.harness.cost import count_operations, layer_costs, model_bytes
from cbcn.harness.energy import NvmlCounter, load_nvml, measure_energy
from cbcn.harness.hardware import HardwareSettings, profile_model
from cbcn.harness.machine import device_description, host_description
from cbcn.harness.measure import interleaved_times, time_calls
from cbcn.nn.layers import BinaryConv2d
from cbcn.nn.models import build_model

FAST = HardwareSettings(warmup=1, repeats=3, max_seconds=0.2, throughput_batch=2, energy_window_s=0.1)


class Tiny(nn.Module):
    """fp conv 1->4 (3x3, pad 1) on 8x8, xnor conv 4->6 (3x3, pad 1), bwn conv 6->6 (1x1), linear 6*64->10."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.c2 = BinaryConv2d(4, 6, 3, padding=1, method="xnor")
        self.c3 = BinaryConv2d(6, 6, 1, method="bwn")
        self.fc = nn.Linear(6 * 64, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.c3(self.c2(self.c1(x))), 1))


def test_operation_counts_by_hand():
    ops = count_operations(Tiny(), (1, 8, 8))
    real = 64 * 4 * 1 * 9 + 64 * 6 * 6 * 1 + 6 * 64 * 10      # c1, c3 (bwn: real activations), fc
    binary = 64 * 6 * 4 * 9                                    # c2: binary weights and activations
    assert ops["macs_real"] == real and ops["flops"] == 2 * real
    assert ops["bops"] == binary
    assert ops["ops"] == 2 * real + binary / 64
    assert ops["ops_field_macs"] == real + binary / 64
    assert (ops["binary_layers_counted"], ops["real_layers_counted"]) == (1, 3)


def test_circulant_layers_count_physical_channels():
    K = 4
    conv = BinaryConv2d(3, 5, 3, padding=1, method="cbcn", K=K)
    ops = count_operations(nn.Sequential(conv), (3 * K, 6, 6))
    assert ops["bops"] == 36 * (5 * K) * (3 * K) * 9 and ops["macs_real"] == 0


def test_resnet18_imagenet_fp_matches_the_literature():
    ops = count_operations(build_model("resnet18", "fp", stem="imagenet", num_classes=1000), (3, 224, 224))
    assert 1.80e9 < ops["macs_real"] < 1.83e9        # ResNet18: 1.8 GMACs (He et al.; Bi-Real Net's "1.81e9 FLOPs")


def test_model_bytes():
    m = Tiny()
    b = model_bytes(m)
    n = sum(p.numel() for p in m.parameters())
    assert b["parameters"] == n and b["fp32_bytes"] == 4 * n
    binary = 6 * 4 * 9 + 6 * 6                                 # c2 (xnor) and c3 (bwn) weights
    alpha = 4 * 6 + 4 * 6                                       # one fp32 α per output map of each
    assert b["binary_weights"] == binary
    assert b["onebit_bytes"] == math.ceil(216 / 8) + math.ceil(36 / 8) + alpha + 4 * (n - binary)
    assert b["compression"] == pytest.approx(b["fp32_bytes"] / b["onebit_bytes"])


@pytest.mark.parametrize("kwargs, shape", [
    (dict(name="lenet", method="fp", stages=(5, 10, 20, 40), in_channels=1, image_size=32), (1, 32, 32)),
    (dict(name="lenet", method="xnor", stages=(5, 10, 20, 40), in_channels=1, image_size=32), (1, 32, 32)),
    (dict(name="lenet", method="cbcn", K=4, stages=(5, 10, 20, 40), in_channels=1, image_size=32), (1, 32, 32)),
    (dict(name="resnet18", method="fp", stages=(4, 4, 8, 8)), (3, 32, 32)),
    (dict(name="resnet18", method="bireal", stages=(4, 4, 8, 8)), (3, 32, 32)),
    (dict(name="resnet18", method="cbcn", K=2, stages=(4, 4, 8, 8)), (3, 32, 32)),
])
def test_macs_agree_with_torch_flop_counter(kwargs, shape):
    """torch's FlopCounterMode counts 2 FLOPs per multiply-accumulate of every conv and matmul the
    forward runs: that is 2 × our MACs, where a circulant layer runs in the K-sum form, so its
    ``macs_ksum`` (our ``macs`` count it at the physical width, CBConv's definition, K× more)."""
    kwargs = dict(kwargs)
    model = build_model(kwargs.pop("name"), **kwargs).eval()
    layers = layer_costs(model, shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    assert counter.get_total_flops() == 2 * sum(r["macs_ksum"] for r in layers)
    K = kwargs.get("K", 1)
    binary_convs = [r for r in layers if r["type"] == "BinaryConv2d" and r["K"] > 1]
    assert all(r["macs"] == K * r["macs_ksum"] for r in binary_convs)
    if K == 1:
        assert counter.get_total_flops() == 2 * sum(r["macs"] for r in layers)


def test_time_calls_keeps_at_least_three_runs():
    calls = []
    t = time_calls(lambda: calls.append(1), warmup=2, rounds=50, max_seconds=0.0)
    assert len(t) == 3 and len(calls) == 5 and all(x >= 0 for x in t)


def test_interleaved_times_one_sample_per_round_in_shuffled_orders():
    seen = []
    fns = {name: (lambda name=name: seen.append(name)) for name in "abc"}
    times = interleaved_times(fns, rounds=6, warmup=0, clock="cpu")
    assert {k: len(v) for k, v in times.items()} == {"a": 6, "b": 6, "c": 6}
    rounds = [seen[i:i + 3] for i in range(0, 18, 3)]
    assert all(sorted(r) == ["a", "b", "c"] for r in rounds)          # every function once per round
    assert len({tuple(r) for r in rounds}) > 1                         # in orders that change
    with pytest.raises(ValueError, match="clock must be one of"):
        interleaved_times(fns, clock="sundial")


def test_interleaved_times_loops_short_calls():
    calls = []
    times = interleaved_times({"f": lambda: calls.append(1)}, rounds=3, warmup=0, min_sample_s=0.001)
    assert len(times["f"]) == 3 and len(calls) > 3 * 10               # each sample repeats the call


def test_machine_description():
    host = host_description()
    assert set(host) == {"hostname", "platform", "cpu", "cpu_count"} and host["cpu"]
    dev = device_description(torch.device("cpu"))
    assert dev["device"] == "cpu" and dev["device_name"] == host["cpu"]
    assert dev["torch_threads"] == torch.get_num_threads()


class FakeNVML:
    """Stands in for pynvml: an energy counter (mJ) that advances 250 mJ per call of the workload."""

    def __init__(self, supported=True):
        self.energy_mj = 1_000_000
        self.supported = supported
        self.shutdown = False

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        assert handle == "handle0"
        if not self.supported:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return self.energy_mj

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return 300_000

    def nvmlShutdown(self):
        self.shutdown = True


def test_energy_from_nvml_counter_with_fakes():
    nvml = FakeNVML()
    now = [100.0]

    def run():                      # one call: 8 images, 250 mJ, 1/16 s
        nvml.energy_mj += 250
        now[0] += 0.0625

    e = measure_energy(run, 8, NvmlCounter(nvml, "handle0"), min_window_s=1.0, clock=lambda: now[0])
    calls = e["images"] // 8
    assert calls == 16 and e["window_s"] == 1.0                     # checked every 4 calls, stops at >= 1 s
    assert e["energy_j"] == pytest.approx(0.25 * calls)
    assert e["energy_per_image_j"] == pytest.approx(0.25 / 8)
    assert e["power_w"] == pytest.approx(4.0)                        # 0.25 J per 1/16 s
    assert e["power_limit_w"] == 300.0


def test_energy_unsupported_counter_is_unavailable():
    e = measure_energy(lambda: None, 8, NvmlCounter(FakeNVML(supported=False), "handle0"), min_window_s=0.0)
    assert e["unavailable"].startswith("nvmlDeviceGetTotalEnergyConsumption failed")


def test_profile_on_cpu_reports_unavailable_with_reasons(monkeypatch, tmp_path):
    m = build_model("lenet", "xnor", stages=(2, 2, 4, 4), in_channels=1)
    monkeypatch.setattr(energy, "POWERCAP", tmp_path / "no-powercap")
    monkeypatch.setattr(energy.rapl_counter, "__defaults__", (tmp_path / "no-powercap",))
    prof = profile_model(m, (1, 32, 32), FAST, nvml_loader=lambda: pytest.fail("NVML loaded for a CPU model"))
    for k in ("energy_per_image_j", "power_w", "packed_energy_per_image_j"):
        assert prof[k] is None and "no RAPL energy counters" in prof["unavailable"][k]
    assert prof["peak_memory_bytes"] is None and "CPU" in prof["unavailable"]["peak_memory_bytes"]
    # the 1-bit model on the CPU engine, and the float model of the same widths, side by side
    assert prof["packed_latency_b1_s"] > 0 and prof["packed_throughput_images_per_s"] > 0
    assert prof["packed_backend"].startswith("auto->cpu[") and prof["packed_logits_equal"] is True
    assert prof["float_physical_throughput_images_per_s"] > 0
    assert prof["onebit_speedup_vs_float_physical_batch"] == pytest.approx(
        prof["packed_throughput_images_per_s"] / prof["float_physical_throughput_images_per_s"], rel=1e-9)
    assert prof["onebit_speedup_vs_training_b1"] > 0
    assert prof["latency_b1_s"] > 0 and prof["throughput_images_per_s"] > 0
    assert prof["bops"] > 0 and prof["onebit_bytes"] < prof["fp32_bytes"]
    assert prof["model"]["stages_physical_channels"] == "2-2-4-4" and prof["device"] == "cpu"
    assert m.training                                                  # mode restored


def test_nvml_absent_gives_reason():
    nvml, why = load_nvml()
    if nvml is not None:
        nvml.nvmlShutdown()
        pytest.skip("NVML is present on this machine")
    assert why and ("NVML" in why or "pynvml" in why)
    prof = profile_model(build_model("lenet", "fp", stages=(2, 2, 4, 4), in_channels=1), (1, 32, 32), FAST)
    # a CPU model's energy comes from RAPL, which this machine may or may not expose
    assert prof["energy_per_image_j"] is not None or "RAPL" in prof["unavailable"]["energy_per_image_j"]
    assert "full precision" in prof["unavailable"]["float_physical_latency_b1_s"]
    assert "no layer with binary weights" in prof["unavailable"]["packed_latency_b1_s"]


def _fake_powercap(root, packages=((1_000_000, 2**32),), subzone=True):
    """A /sys/class/powercap tree: package zones intel-rapl:N with energy_uj and its range."""
    for i, (energy_uj, wrap) in enumerate(packages):
        zone = root / f"intel-rapl:{i}"
        zone.mkdir(parents=True)
        (zone / "name").write_text(f"package-{i}\n")
        (zone / "energy_uj").write_text(f"{energy_uj}\n")
        (zone / "max_energy_range_uj").write_text(f"{wrap}\n")
        if subzone:  # core / uncore subzones are inside the package's count: ignored
            sub = root / f"intel-rapl:{i}:0"
            sub.mkdir()
            (sub / "name").write_text("core\n")
            (sub / "energy_uj").write_text("5\n")
            (sub / "max_energy_range_uj").write_text(f"{wrap}\n")
    return root


def _add_uj(root, zone, delta, wrap):
    f = root / f"intel-rapl:{zone}" / "energy_uj"
    f.write_text(f"{(int(f.read_text()) + delta) % wrap}\n")


def test_rapl_counter_sums_packages_and_survives_wraparound(tmp_path):
    root = _fake_powercap(tmp_path / "powercap", packages=((1_000, 10_000_000), (9_999_000, 10_000_000)))
    counter, why = energy.rapl_counter(root)
    assert why is None and len(counter.zones) == 2 and "package-0" in counter.extra()["energy_counter"]
    assert counter.read_j() == 0.0
    _add_uj(root, 0, 500_000, 10_000_000)
    _add_uj(root, 1, 2_000, 10_000_000)  # wraps around: 9_999_000 + 2_000 -> 1_000
    assert counter.read_j() == pytest.approx(0.502)


def test_rapl_energy_per_image_with_a_fake_tree(tmp_path):
    root = _fake_powercap(tmp_path / "powercap")
    counter, _ = energy.rapl_counter(root)
    now = [0.0]

    def run():  # each call: 8 images, 2 J, 1/8 s
        _add_uj(root, 0, 2_000_000, 2**32)
        now[0] += 0.125

    e = measure_energy(run, 8, counter, min_window_s=1.0, clock=lambda: now[0])
    assert e["energy_per_image_j"] == pytest.approx(0.25) and e["power_w"] == pytest.approx(16.0)
    assert "whole CPU package" in e["energy_scope"]


def test_rapl_unavailable_reasons(tmp_path, monkeypatch):
    assert "does not exist" in energy.rapl_counter(tmp_path / "none")[1]
    (tmp_path / "empty").mkdir()
    assert "no package-level RAPL zone" in energy.rapl_counter(tmp_path / "empty")[1]
    root = _fake_powercap(tmp_path / "powercap")
    real_read = energy.RaplCounter._read

    def root_only(path):
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied")
        return real_read(path)

    monkeypatch.setattr(energy.RaplCounter, "_read", staticmethod(root_only))
    counter, why = energy.rapl_counter(root)
    assert counter is None and "root-only" in why and "CVE-2020-8694" in why
