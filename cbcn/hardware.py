"""The hardware profile of a trained model (SPEC §7): size, operations, latency, memory, energy.

Why one module: a reproduction is only useful when accuracy comes with its cost. Every figure
here is either measured/computed or reported as unavailable with its reason — never as zero — so
that a CPU-only run and a GPU run can share one report. The profile is plain JSON (a dict) so
that it goes into the results store unchanged.

Conventions (also printed in the reports, ``CONVENTIONS``):

- MACs: multiply-accumulates of conv and linear layers, counted with forward hooks on
  ``cbcn.layers.BinaryConv2d``, ``nn.Conv2d`` and ``nn.Linear`` (BatchNorm, pooling, activations
  and additions are not counted). A circulant layer counts at its physical width
  (``C_in·K × C_out·K``), i.e. what CBConv defines; the K-sum identity the implementation uses
  does 1/K of them plus additions.
- BOPs: MACs of layers whose weights AND activations are binary (one XNOR+popcount lane each).
- FLOPs: 2 × MACs of every other layer (a multiply and an add).
- OPs = FLOPs + BOPs / 64, as the field counts (Bi-Real Net, Liu et al. 2018; a 64-bit word
  does 64 binary operations per instruction). The field often counts FLOPs as MACs: ``macs_real``
  is recorded too, so its number is ``macs_real + bops/64``.
- Bytes: fp32 = 4 bytes per parameter and float buffer; 1-bit = binary weights at 1 bit (packed
  per layer to whole bytes) plus their per-map α in fp32, everything else fp32. Measured on-disk
  sizes too (``cbcn.onebit``'s 1-bit checkpoint vs ``torch.save`` of the fp32 state dict) for
  models with fully binary layers.
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn as nn

CONVENTIONS = (
    "MACs counted with forward hooks on conv and linear layers (BatchNorm, pooling, activations "
    "and additions not counted); circulant layers at their physical width C_in·K × C_out·K. "
    "BOPs = MACs of layers with binary weights and binary activations; FLOPs = 2 × MACs of all "
    "other layers; OPs = FLOPs + BOPs/64 (the field's convention; with FLOPs counted as MACs, as "
    "many papers do, use macs_real + BOPs/64). fp32 bytes: 4 per parameter and float buffer; "
    "1-bit bytes: binary weights at 1 bit plus per-map α in fp32, the rest fp32 (binary weights with "
    "real activations, as in BWN, counted at 1 bit too); *_checkpoint_bytes: files on disk (torch.save "
    "of the fp32 state dict; cbcn.onebit's packed 1-bit checkpoint). Latency: median "
    "of timed forward passes after warm-up (CUDA events on a GPU). Energy: NVML total-energy "
    "counter over a timed window, divided by the images processed in it."
)


@dataclass(frozen=True)
class HardwareSettings:
    """How long and how hard to measure; set per profile (smoke: seconds, paper: thorough)."""

    warmup: int = 3
    repeats: int = 20
    max_seconds: float = 10.0        # per latency measurement; at least 3 timed runs are kept
    throughput_batch: int = 64
    energy_window_s: float = 2.0     # NVML's energy counter needs a window much longer than its update period


def unavailable(reason: str) -> str:
    return f"unavailable: {reason}"


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


# --- operation counts ------------------------------------------------------------------------
def _binary_conv_class():
    try:
        from .layers import BinaryConv2d
        return BinaryConv2d
    except ImportError:  # pragma: no cover - the core is part of the package
        return None


def count_operations(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """MACs / FLOPs / BOPs / OPs of one forward pass of a single image of ``input_shape`` (C, H, W).

    Runs one forward pass with hooks on CPU copies of nothing: the model runs where it is.
    """
    BinaryConv2d = _binary_conv_class()
    counts = {"macs_real": 0, "macs_binary": 0, "layers_binary": 0, "layers_real": 0}
    handles = []

    def conv_hook(module, inputs, output):
        if BinaryConv2d is not None and isinstance(module, BinaryConv2d):
            cin, k = module.physical_in_channels, module.kernel_size
            kk = k * k if isinstance(k, int) else k[0] * k[1]
            binary = bool(module.binary_weights and module.binary_acts)
        else:  # nn.Conv2d
            cin = module.in_channels // module.groups
            kk = module.kernel_size[0] * module.kernel_size[1]
            binary = False
        macs = output[0].numel() * cin * kk   # per image: output elements × fan-in
        _add(macs, binary)

    def linear_hook(module, inputs, output):
        _add(output[0].numel() * module.in_features, False)

    def _add(macs, binary):
        if binary:
            counts["macs_binary"] += macs
            counts["layers_binary"] += 1
        else:
            counts["macs_real"] += macs
            counts["layers_real"] += 1

    for m in model.modules():
        if BinaryConv2d is not None and isinstance(m, BinaryConv2d) or isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        model.eval()
        device = _model_device(model)
        with torch.inference_mode():
            model(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    flops = 2 * counts["macs_real"]
    bops = counts["macs_binary"]
    return {"macs_real": counts["macs_real"], "flops": flops, "bops": bops, "ops": flops + bops / 64,
            "ops_field_macs": counts["macs_real"] + bops / 64,
            "binary_layers_counted": counts["layers_binary"], "real_layers_counted": counts["layers_real"]}


# --- sizes -----------------------------------------------------------------------------------
def model_bytes(model: nn.Module) -> dict:
    """Model size as fp32 and as deployed 1-bit (see module docstring for what counts)."""
    BinaryConv2d = _binary_conv_class()
    n_params = sum(p.numel() for p in model.parameters())
    n_buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    fp32 = 4 * (n_params + n_buffers)
    binary_weights, onebit_binary, alpha = 0, 0, 0
    if BinaryConv2d is not None:
        for m in model.modules():
            if isinstance(m, BinaryConv2d) and m.binary_weights:
                binary_weights += m.weight.numel()
                onebit_binary += math.ceil(m.weight.numel() / 8)
                if getattr(m, "scaled", False):
                    alpha += 4 * m.weight.shape[0]   # α stored per learned output map
    onebit = onebit_binary + alpha + 4 * (n_params + n_buffers - binary_weights)
    return {"parameters": n_params, "float_buffers": n_buffers, "binary_weights": binary_weights,
            "fp32_bytes": fp32, "onebit_bytes": onebit, "compression": fp32 / onebit if onebit else None}


# --- timing ----------------------------------------------------------------------------------
def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int,
               max_seconds: float) -> list[float]:
    """Seconds per call of ``fn``: ``warmup`` untimed calls, then up to ``repeats`` timed calls
    (at least 3, stopping early once ``max_seconds`` are spent). CUDA: events + synchronize."""
    for _ in range(warmup):
        fn()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max(repeats, 1):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1000.0)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        if len(times) >= 3 and time.perf_counter() - start > max_seconds:
            break
    return times


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], batch: int,
                    settings: HardwareSettings) -> dict:
    device = _model_device(model)
    x = torch.randn((batch, *input_shape), device=device)
    with torch.inference_mode():
        times = time_calls(lambda: model(x), device, settings.warmup, settings.repeats, settings.max_seconds)
    med = statistics.median(times)
    return {"median_s": med, "runs": len(times), "min_s": min(times), "images_per_s": batch / med}


# --- energy (NVML) ---------------------------------------------------------------------------
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


def measure_energy(run: Callable[[], object], images_per_call: int, nvml, handle,
                   min_window_s: float = 2.0, clock: Callable[[], float] = time.perf_counter,
                   sync: Callable[[], None] = lambda: None, max_calls: int = 1_000_000) -> dict:
    """Energy per image and mean power from NVML's total-energy counter (mJ since driver load).

    ``run`` processes ``images_per_call`` images; it is repeated until ``min_window_s`` have
    passed (the counter updates every few tens of ms, so short windows are noise) and the counter
    has moved. ``sync`` waits for queued GPU work before each counter read.
    """
    try:
        sync()
        e0, t0 = nvml.nvmlDeviceGetTotalEnergyConsumption(handle), clock()
    except Exception as e:
        return {"unavailable": f"nvmlDeviceGetTotalEnergyConsumption failed ({type(e).__name__}: {e}); "
                               "it needs a Volta or newer GPU"}
    calls = 0
    while True:
        run()
        calls += 1
        if calls % 4 == 0 or calls >= max_calls:
            sync()
            t1 = clock()
            if t1 - t0 >= min_window_s or calls >= max_calls:
                e1 = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                if e1 > e0 or calls >= max_calls:
                    break
    window = t1 - t0
    energy_j = (e1 - e0) / 1000.0
    images = calls * images_per_call
    if energy_j <= 0:
        return {"unavailable": f"NVML energy counter did not advance in {window:.2f} s"}
    out = {"energy_j": energy_j, "window_s": window, "images": images,
           "energy_per_image_j": energy_j / images, "power_w": energy_j / window if window > 0 else None}
    try:
        out["power_limit_w"] = nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0
    except Exception:
        pass
    return out


# --- machine ---------------------------------------------------------------------------------
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device) -> dict:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return {"device": str(device), "device_name": p.name, "device_memory_bytes": p.total_memory,
                "cuda": torch.version.cuda, "torch_threads": torch.get_num_threads()}
    return {"device": str(device), "device_name": cpu_name(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


# --- the whole profile -----------------------------------------------------------------------
def packed_inference(model: nn.Module):
    """``(packed 1-bit model on the Triton kernels, None)`` from ``cbcn.onebit``, or ``(None, reason)``."""
    try:
        from .backends import triton_available
        from .onebit import convert_to_onebit
    except ImportError as e:
        return None, f"cbcn.onebit (packed 1-bit models) is not available ({e})"
    if not triton_available():
        return None, "Triton (or triton_kernels) is not importable, so there are no packed kernels to time"
    try:
        return convert_to_onebit(model, backend="triton"), None
    except ValueError as e:       # fp / bwn models have no fully binary layer
        return None, str(e)
    except Exception as e:
        return None, f"packed conversion failed ({type(e).__name__}: {e})"


def checkpoint_bytes(model: nn.Module) -> dict:
    """Measured on-disk sizes: ``torch.save`` of the fp32 state dict, and ``cbcn.onebit``'s packed
    1-bit checkpoint (or why there is none)."""
    import io
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    out = {"fp32_checkpoint_bytes": buf.tell()}
    try:
        from .onebit import checkpoint_size_report
    except ImportError as e:
        return {**out, "unavailable": f"cbcn.onebit is not available ({e})"}
    try:
        out["onebit_checkpoint_bytes"] = checkpoint_size_report(model)["onebit_checkpoint_bytes"]
    except ValueError as e:       # nothing to pack (fp, bwn)
        out["unavailable"] = str(e)
    except Exception as e:
        out["unavailable"] = f"1-bit checkpoint could not be written ({type(e).__name__}: {e})"
    return out


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
        try:
            from .models import describe_model
            prof.set("model", describe_model(model))
        except Exception as e:  # a model not built by cbcn.models
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

        if device.type == "cuda":
            import gc
            gc.collect()
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            prof.set("memory_before_bytes", torch.cuda.memory_allocated(device))
        lat1 = measure_latency(model, input_shape, 1, settings)
        latb = measure_latency(model, input_shape, settings.throughput_batch, settings)
        prof.set("latency_b1_s", lat1["median_s"])
        prof.set("latency_b1_runs", lat1["runs"])
        prof.set("latency_batch_s", latb["median_s"])
        prof.set("throughput_images_per_s", latb["images_per_s"])
        if device.type == "cuda":
            prof.set("peak_memory_bytes", torch.cuda.max_memory_allocated(device))
        else:
            prof.na("peak_memory_bytes", "PyTorch has no per-model peak-memory counter on CPU "
                    "(process peak RSS is in process_max_rss_bytes)")
        prof.set("process_max_rss_bytes", _max_rss_bytes())

        # packed 1-bit kernels: GPU only (Triton)
        if device.type != "cuda":
            reason = f"packed Triton kernels need a CUDA GPU (model on {device.type})"
            prof.na("packed_latency_b1_s", reason)
            prof.na("packed_throughput_images_per_s", reason)
        else:
            packed, reason = packed_inference(model)
            if packed is None:
                prof.na("packed_latency_b1_s", reason)
                prof.na("packed_throughput_images_per_s", reason)
            else:
                try:
                    p1 = measure_latency(packed, input_shape, 1, settings)
                    pb = measure_latency(packed, input_shape, settings.throughput_batch, settings)
                    prof.set("packed_latency_b1_s", p1["median_s"])
                    prof.set("packed_throughput_images_per_s", pb["images_per_s"])
                except Exception as e:  # a kernel failure must not lose the rest of the profile
                    reason = f"packed 1-bit forward failed ({type(e).__name__}: {str(e)[:200]})"
                    prof.na("packed_latency_b1_s", reason)
                    prof.na("packed_throughput_images_per_s", reason)
                del packed

        # energy: NVML on NVIDIA GPUs only
        energy_fields = ("energy_per_image_j", "power_w")
        nvml, why = nvml_loader()
        try:
            if device.type != "cuda":
                reason = f"no NVIDIA GPU in use (model on {device.type}); " + (why or "NVML needs a CUDA device")
                e = {"unavailable": reason}
            elif nvml is None:
                e = {"unavailable": why}
            else:
                x = torch.randn((settings.throughput_batch, *input_shape), device=device)
                handle = nvml_handle(nvml, device)

                def run():
                    with torch.inference_mode():
                        model(x)

                e = measure_energy(run, settings.throughput_batch, nvml, handle, settings.energy_window_s,
                                   sync=lambda: torch.cuda.synchronize(device))
        finally:
            if nvml is not None:
                try:
                    nvml.nvmlShutdown()
                except Exception:
                    pass
        if "unavailable" in e:
            for f in energy_fields:
                prof.na(f, e["unavailable"])
        else:
            prof.set("energy_per_image_j", e["energy_per_image_j"])
            prof.set("power_w", e["power_w"])
            prof.set("energy_window_s", e["window_s"])
            prof.set("energy_images", e["images"])
    finally:
        model.train(was_training)
    prof.set("settings", asdict(settings))
    return prof.as_dict()


def _max_rss_bytes() -> int | None:
    try:
        import resource
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if platform.system() == "Darwin" else rss * 1024
    except Exception:  # pragma: no cover - Windows
        return None
