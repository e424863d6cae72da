"""The hardware profile of a trained model (SPEC §7): size, operations, latency, memory, energy.

Why one record: a reproduction is only useful when accuracy comes with its cost. This module
assembles the figures that ``cbcn.harness.cost`` counts, ``cbcn.harness.measure`` times and ``cbcn.harness.energy``
reads, for the model, its 1-bit version (``convert_to_onebit`` on the device's default backend:
the CPU engine or the Triton kernels) and the float model of the same physical widths (method
fp, random weights, channels-last), timed side by side, interleaved. Every figure is either
measured/computed or reported as unavailable with its reason, never as zero, so that a CPU-only
run and a GPU run can share one report. The profile is plain JSON (a dict) so that it goes into
the results store unchanged. Its conventions are ``CONVENTIONS``, printed in every report.
"""
from __future__ import annotations

import gc
import statistics
from dataclasses import asdict

import torch
import torch.nn as nn

from cbcn.harness.cost import checkpoint_bytes, count_operations, model_bytes
from cbcn.harness.energy import NvmlCounter, load_nvml, measure_energy, nvml_handle, rapl_counter
from cbcn.harness.machine import device_description
from cbcn.harness.measure import cuda_peak_memory, interleaved_times, max_rss_bytes
from cbcn.nn.models import build_model, describe_model
from cbcn.onebit.backends import describe_backend
from cbcn.onebit.convert import convert_to_onebit, model_build_kwargs
from cbcn.training.profiles import HardwareSettings

CONVENTIONS = (
    "MACs counted with forward hooks on conv and linear layers (BatchNorm, pooling, activations "
    "and additions not counted); circulant layers at their physical width C_in·K × C_out·K. "
    "BOPs = MACs of layers with binary weights and binary activations (ABC-Net: its M·N binary convs); FLOPs = 2 × MACs of all "
    "other layers; OPs = FLOPs + BOPs/64 (the field's convention; with FLOPs counted as MACs, as "
    "many papers do, use macs_real + BOPs/64). fp32 bytes: 4 per parameter and float buffer; "
    "1-bit bytes: binary weights at 1 bit plus per-map α in fp32, the rest fp32 (binary weights with "
    "real activations, as in BWN, counted at 1 bit too); *_checkpoint_bytes: files on disk (torch.save "
    "of the fp32 state dict; cbcn.onebit's packed 1-bit checkpoint). Latency: median "
    "of timed forward passes after warm-up (the wall clock synchronising the GPU); the model, its 1-bit version "
    "(packed_*: the CPU engine on a CPU, the Triton kernels on a GPU) and the float model of the same "
    "physical widths (float_physical_*: method fp, channels-last) timed in turn in every round, the "
    "speed-ups being ratios of their medians. Energy: NVML's total-energy counter on a GPU, RAPL's package "
    "counters on a CPU (the whole package, other processes included), over a timed window, divided by "
    "the images processed in it."
)


class _Profile:
    """Collects values and unavailable reasons; ``as_dict`` gives the JSON form."""

    def __init__(self):
        self.values: dict = {}
        self.missing: dict[str, str] = {}

    def set(self, key, value):
        self.values[key] = value

    def na(self, key, reason):
        self.values[key] = None
        self.missing[key] = reason

    def as_dict(self) -> dict:
        return {**self.values, "unavailable": dict(self.missing)}


def _model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def measure_side_by_side(models: dict[str, tuple[nn.Module, torch.memory_format]], input_shape: tuple[int, ...],
                         batch: int, settings: HardwareSettings) -> dict[str, dict]:
    """Latency of several models on the same input (each in its memory format), interleaved
    (``cbcn.harness.measure.interleaved_times``, wall clock)."""
    device = _model_device(next(iter(models.values()))[0])
    x = torch.randn((batch, *input_shape), device=device)
    inputs = {name: x.contiguous(memory_format=fmt) for name, (_, fmt) in models.items()}
    fns = {name: (lambda m=m, xi=inputs[name]: m(xi)) for name, (m, _) in models.items()}
    with torch.inference_mode():
        times = interleaved_times(fns, rounds=settings.repeats, warmup=settings.warmup,
                                  max_seconds=settings.max_seconds)
    out = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = {"median_s": med, "runs": len(ts), "min_s": min(ts), "images_per_s": batch / med}
    return out


def packed_inference(model: nn.Module):
    """``(1-bit model, None)`` from ``cbcn.onebit.convert`` on the device's default backend (the CPU
    engine for CPU tensors, the Triton kernels for CUDA tensors), or ``(None, reason)``."""
    try:
        return convert_to_onebit(model), None
    except ValueError as e:       # fp / bwn models have no fully binary layer
        return None, str(e)
    except Exception as e:
        backend = describe_backend(None, _model_device(model))
        return None, f"1-bit conversion failed on {backend} ({type(e).__name__}: {e})"


def float_twin(model: nn.Module):
    """``(model, None)``: the float model (method fp) of ``model``'s physical widths, random
    weights, channels-last, eval mode — what a binary model's speed is compared with; or
    ``(None, reason)``."""
    try:
        kwargs = model_build_kwargs(model)
    except ValueError as e:
        return None, str(e)
    if kwargs["method"] == "fp":
        return None, "the model is itself full precision"
    width = model.factory.width
    twin = {k: kwargs[k] for k in ("num_classes", "in_channels", "stem", "image_size") if k in kwargs}
    twin_model = build_model(kwargs["name"], method="fp", stages=tuple(s * width for s in kwargs["stages"]), **twin)
    return twin_model.to(_model_device(model)).eval().to(memory_format=torch.channels_last), None


def profile_model(model: nn.Module, input_shape: tuple[int, ...],
                  settings: HardwareSettings = HardwareSettings(), nvml_loader=load_nvml) -> dict:
    """Everything SPEC §7 asks for one trained model, as JSON-ready data; figures that cannot be
    measured here are ``None`` with a reason in ``unavailable``."""
    prof = _Profile()
    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        prof.values.update(device_description(device))
        _sizes_and_counts(prof, model, input_shape, settings)
        if device.type == "cuda":
            gc.collect()
            torch.cuda.synchronize(device)
            prof.set("memory_before_bytes", torch.cuda.memory_allocated(device))
        contenders, packed_reason = _speed(prof, model, input_shape, settings)
        _memory(prof, model, input_shape, settings)
        _energy(prof, contenders, packed_reason, input_shape, settings, nvml_loader)
        del contenders
    finally:
        model.train(was_training)
    prof.set("settings", asdict(settings))
    return prof.as_dict()


def _sizes_and_counts(prof: _Profile, model: nn.Module, input_shape, settings: HardwareSettings) -> None:
    """What the model is, its bytes (counted and on disk) and its operations (``cbcn.harness.cost``)."""
    try:
        prof.set("model", describe_model(model))
    except Exception as e:  # a model not built by cbcn.nn.models
        prof.na("model", f"describe_model failed ({type(e).__name__}: {e})")
    prof.values.update(model_bytes(model))
    disk = checkpoint_bytes(model)
    prof.set("fp32_checkpoint_bytes", disk["fp32_checkpoint_bytes"])
    if "unavailable" in disk:
        prof.na("onebit_checkpoint_bytes", disk["unavailable"])
    else:
        prof.set("onebit_checkpoint_bytes", disk["onebit_checkpoint_bytes"])
    prof.values.update(count_operations(model, input_shape))
    prof.set("input_shape", list(input_shape))
    prof.set("throughput_batch", settings.throughput_batch)


def _speed(prof: _Profile, model: nn.Module, input_shape, settings: HardwareSettings):
    """Latency at batch 1 and throughput at ``settings.throughput_batch`` of the model, its 1-bit
    version and its float twin, side by side; returns the contenders that ran and, where the 1-bit
    model did not, why."""
    device = _model_device(model)
    packed, packed_reason = packed_inference(model)
    twin, twin_reason = float_twin(model)
    contenders = {"model": (model, torch.contiguous_format)}
    if packed is not None:
        contenders["packed"] = (packed, torch.contiguous_format)
        prof.set("packed_backend", describe_backend(None, device))
        probe = torch.randn((2, *input_shape), device=device)
        with torch.inference_mode():
            prof.set("packed_logits_equal", bool(torch.equal(packed(probe), model(probe))))
    else:
        for k in ("packed_backend", "packed_logits_equal"):
            prof.na(k, packed_reason)
    if twin is not None:
        contenders["float_physical"] = (twin, torch.channels_last)
    lat = {}
    for batch in (1, settings.throughput_batch):
        try:
            lat[batch] = measure_side_by_side(contenders, input_shape, batch, settings)
        except Exception as e:  # a kernel failure must not lose the rest of the profile
            if "packed" not in contenders:
                raise
            packed_reason = f"1-bit forward failed ({type(e).__name__}: {str(e)[:200]})"
            contenders.pop("packed")
            lat[batch] = measure_side_by_side(contenders, input_shape, batch, settings)
    lat1, latb = lat[1]["model"], lat[settings.throughput_batch]["model"]
    prof.set("latency_b1_s", lat1["median_s"])
    prof.set("latency_b1_runs", lat1["runs"])
    prof.set("latency_batch_s", latb["median_s"])
    prof.set("throughput_images_per_s", latb["images_per_s"])
    for name, reason in (("packed", packed_reason), ("float_physical", twin_reason)):
        if name in lat[1]:
            prof.set(f"{name}_latency_b1_s", lat[1][name]["median_s"])
            prof.set(f"{name}_throughput_images_per_s", lat[settings.throughput_batch][name]["images_per_s"])
        else:
            prof.na(f"{name}_latency_b1_s", reason)
            prof.na(f"{name}_throughput_images_per_s", reason)
    speedups = (("onebit_speedup_vs_float_physical", "float_physical"), ("onebit_speedup_vs_training", "model"))
    for key, other in speedups:
        for batch, suffix in ((settings.throughput_batch, "batch"), (1, "b1")):
            if "packed" in lat[batch] and other in lat[batch]:
                prof.set(f"{key}_{suffix}", lat[batch][other]["median_s"] / lat[batch]["packed"]["median_s"])
            else:
                prof.na(f"{key}_{suffix}", packed_reason if "packed" not in lat[batch] else twin_reason)
    return contenders, packed_reason


def _memory(prof: _Profile, model: nn.Module, input_shape, settings: HardwareSettings) -> None:
    """Peak GPU memory of the model's own forward at the throughput batch; the process's peak RSS."""
    device = _model_device(model)
    if device.type == "cuda":
        x = torch.randn((settings.throughput_batch, *input_shape), device=device)
        with torch.inference_mode():
            _, peak = cuda_peak_memory(lambda: model(x), device)
        prof.set("peak_memory_bytes", peak)
        del x
    else:
        prof.na("peak_memory_bytes", "PyTorch has no per-model peak-memory counter on CPU (process peak RSS "
                "is in process_max_rss_bytes; benchmarks/cpu_engine_bench.py --memory measures each model "
                "in a fresh process)")
    prof.set("process_max_rss_bytes", max_rss_bytes())


def _energy(prof: _Profile, contenders: dict, packed_reason, input_shape, settings: HardwareSettings,
            nvml_loader) -> None:
    """Energy per image and power of the model and its 1-bit version: NVML on NVIDIA GPUs, RAPL
    on CPUs (``cbcn.harness.energy``)."""
    device = _model_device(contenders["model"][0])
    nvml, why = (None, None) if device.type != "cuda" else nvml_loader()
    try:
        if device.type == "cuda":
            counter = NvmlCounter(nvml, nvml_handle(nvml, device)) if nvml is not None else None
            sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
        else:
            counter, why = rapl_counter()
            sync = lambda: None  # noqa: E731
        for name, prefix in (("model", ""), ("packed", "packed_")):
            if name not in contenders:
                e = {"unavailable": packed_reason}
            elif counter is None:
                e = {"unavailable": why}
            else:
                net = contenders[name][0]
                x = torch.randn((settings.throughput_batch, *input_shape), device=device)

                def run(net=net, x=x):
                    with torch.inference_mode():
                        net(x)

                e = measure_energy(run, settings.throughput_batch, counter, settings.energy_window_s, sync=sync)
            if "unavailable" in e:
                prof.na(f"{prefix}energy_per_image_j", e["unavailable"])
                prof.na(f"{prefix}power_w", e["unavailable"])
            else:
                prof.set(f"{prefix}energy_per_image_j", e["energy_per_image_j"])
                prof.set(f"{prefix}power_w", e["power_w"])
                prof.set(f"{prefix}energy_window_s", e["window_s"])
                if "energy_counter" in e:
                    prof.set("energy_counter", e["energy_counter"])
                    prof.set("energy_scope", e["energy_scope"])
    finally:
        if nvml is not None:
            try:
                nvml.nvmlShutdown()
            except Exception:
                pass
