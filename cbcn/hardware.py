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
- Speed: the model, its 1-bit version (``convert_to_onebit`` on the device's default backend:
  the CPU engine or the Triton kernels) and the float model of the same physical widths
  (method fp, random weights, channels-last) are timed side by side, interleaved; the 1-bit
  model's speed-ups are ratios of those medians.
- Energy: NVML's counter on NVIDIA GPUs, RAPL's package counters on CPUs (``cbcn.rapl``; the
  whole package, other processes included), over a timed window.
- Bytes: fp32 = 4 bytes per parameter and float buffer; 1-bit = binary weights at 1 bit (packed
  densely across layers, as the 1-bit checkpoint stores them) plus their per-map α in fp32,
  everything else fp32. Measured on-disk
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
    "of timed forward passes after warm-up (CUDA events on a GPU); the model, its 1-bit version "
    "(packed_*: the CPU engine on a CPU, the Triton kernels on a GPU) and the float model of the same "
    "physical widths (float_physical_*: method fp, channels-last) timed in turn in every round, the "
    "speed-ups being ratios of their medians. Energy: NVML's total-energy counter on a GPU, RAPL's package "
    "counters on a CPU (the whole package, other processes included), over a timed window, divided by "
    "the images processed in it."
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


# --- operation counts and bytes, per layer and in total --------------------------------------
def _binary_conv_class():
    from .layers import BinaryConv2d
    return BinaryConv2d


def _holds_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or \
        any(b.is_floating_point() for b in module.buffers(recurse=False))


def _layer_record(name: str, module: nn.Module) -> dict:
    """What a layer is and what it stores (see ``layer_costs`` for the fields)."""
    BinaryConv2d = _binary_conv_class()
    params = sum(p.numel() for p in module.parameters(recurse=False))
    floats = sum(b.numel() for b in module.buffers(recurse=False) if b.is_floating_point())
    r = {"name": name, "type": type(module).__name__, "input_precision": "", "weight_precision": "",
         "in_maps": None, "out_maps": None, "in_channels": None, "out_channels": None, "K": 1,
         "output_shape": None, "calls": 0, "macs": 0, "binary": False, "macs_ksum": 0,
         "binary_weights": 0, "fp32_values": params + floats, "onebit_values": params + floats}
    if isinstance(module, BinaryConv2d):
        r.update(input_precision="1-bit" if module.binary_acts else "fp32",
                 weight_precision="1-bit" if module.binary_weights else "fp32",
                 in_maps=module.in_maps, out_maps=module.out_maps, in_channels=module.physical_in_channels,
                 out_channels=module.physical_out_channels, K=module.K if module.cbconv else 1,
                 binary=bool(module.binary_weights and module.binary_acts))
        if module.binary_weights:
            r["binary_weights"] = module.weight.numel()
            r["onebit_values"] -= module.weight.numel()
            if module.scaled:
                r["onebit_values"] += module.out_maps  # α per learned output map, fp32
    elif isinstance(module, nn.Conv2d):
        r.update(input_precision="fp32", weight_precision="fp32", in_channels=module.in_channels,
                 out_channels=module.out_channels)
    elif isinstance(module, nn.Linear):
        r.update(input_precision="fp32", weight_precision="fp32", in_channels=module.in_features,
                 out_channels=module.out_features)
    return r


def layer_records(model: nn.Module) -> list[dict]:
    """``layer_costs`` without the forward pass: every layer's kind and stored values."""
    BinaryConv2d = _binary_conv_class()
    return [_layer_record(n, m) for n, m in model.named_modules()
            if isinstance(m, (BinaryConv2d, nn.Conv2d, nn.Linear)) or _holds_state(m)]


def layer_costs(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict]:
    """One record per module that holds parameters or does counted operations, in module order:
    what it is, its output shape, MACs per image (binary or real), its parameters and bytes.

    The single source of the hardware profile's counts and sizes (``count_operations``,
    ``model_bytes``) and of ``cbcn summary``'s rows. One forward pass of one image of
    ``input_shape`` (C, H, W) with hooks, where the model is. A module called twice counts twice.
    Fields: ``name``, ``type``, ``input_precision`` / ``weight_precision`` ("1-bit", "fp32" or
    "" for layers without weights), ``in_maps``/``out_maps`` (learned maps of BinaryConv2d) and
    ``in_channels``/``out_channels`` (physical), ``K`` (circulant orientations, 1 otherwise),
    ``output_shape`` (C, H, W), ``calls``, ``macs``, ``binary`` (weights and activations binary: the
    MACs are BOPs), ``macs_ksum`` (a CBConv's MACs in the K-sum form, 1/K of them; the others'
    MACs), ``binary_weights`` (weights stored at 1 bit), ``fp32_values`` (parameters + float
    buffers), ``onebit_values`` (the 32-bit values a 1-bit model keeps: everything but the binary
    weights, plus α per learned map).
    """
    BinaryConv2d = _binary_conv_class()
    modules = dict(model.named_modules())
    records = {r["name"]: r for r in layer_records(model)}

    def hook(name):
        def fn(module, inputs, output):
            r = records[name]
            r["calls"] += 1
            r["output_shape"] = list(output.shape[1:])
            if isinstance(module, BinaryConv2d):
                kk = module.kernel_size ** 2
                macs = output[0].numel() * module.physical_in_channels * kk  # per image: outputs × fan-in
                ksum = output[0].numel() * module.in_maps * kk if module.cbconv else macs
            elif isinstance(module, nn.Conv2d):
                macs = ksum = output[0].numel() * (module.in_channels // module.groups) * \
                    module.kernel_size[0] * module.kernel_size[1]
            elif isinstance(module, nn.Linear):
                macs = ksum = output[0].numel() * module.in_features
            else:
                macs = ksum = 0
            r["macs"] += macs
            r["macs_ksum"] += ksum
        return fn

    handles = [modules[name].register_forward_hook(hook(name)) for name in records]
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
    return list(records.values())


def count_operations(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """MACs / FLOPs / BOPs / OPs of one forward pass of a single image of ``input_shape`` (C, H, W):
    the sums of ``layer_costs``."""
    return operation_totals(layer_costs(model, input_shape))


def operation_totals(layers: list[dict]) -> dict:
    """The profile's operation counts from ``layer_costs`` records (see CONVENTIONS)."""
    counted = [r for r in layers if r["macs"]]
    macs_real = sum(r["macs"] for r in counted if not r["binary"])
    bops = sum(r["macs"] for r in counted if r["binary"])
    flops = 2 * macs_real
    return {"macs_real": macs_real, "flops": flops, "bops": bops, "ops": flops + bops / 64,
            "ops_field_macs": macs_real + bops / 64,
            "binary_layers_counted": sum(r["calls"] for r in counted if r["binary"]),
            "real_layers_counted": sum(r["calls"] for r in counted if not r["binary"])}


def byte_totals(layers: list[dict]) -> dict:
    """Model size as fp32 and as deployed 1-bit from layer records (see the module docstring):
    the binary weights at one bit each, packed densely as the 1-bit checkpoint stores them, every
    other value (α included) fp32."""
    fp32_values = sum(r["fp32_values"] for r in layers)
    binary = sum(r["binary_weights"] for r in layers)
    onebit = math.ceil(binary / 8) + 4 * sum(r["onebit_values"] for r in layers)
    return {"fp32_bytes": 4 * fp32_values, "onebit_bytes": onebit, "binary_weights": binary,
            "compression": 4 * fp32_values / onebit if onebit else None}


def model_bytes(model: nn.Module) -> dict:
    """Model size as fp32 and as deployed 1-bit (``byte_totals`` of ``layer_records``)."""
    n_params = sum(p.numel() for p in model.parameters())
    n_buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return {"parameters": n_params, "float_buffers": n_buffers, **byte_totals(layer_records(model))}


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int,
               max_seconds: float) -> list[float]:
    """Seconds per call of ``fn``: ``warmup`` untimed calls, then up to ``repeats`` timed calls
    (at least 3, stopping early once ``max_seconds`` are spent). CUDA: events + synchronize."""
    return interleaved_times({"fn": fn}, device, warmup, repeats, max_seconds)["fn"]


def interleaved_times(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int,
                      max_seconds: float) -> dict[str, list[float]]:
    """Seconds per call of each function, all timed in turn in every round (drift on a shared
    machine hits them alike, so their ratios hold): ``warmup`` untimed rounds, then up to
    ``repeats`` timed rounds (at least 3, stopping once ``max_seconds`` are spent). CUDA:
    events + synchronize."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < max(repeats, 1):
        for name, fn in fns.items():
            if cuda:
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                times[name].append(a.elapsed_time(b) / 1000.0)
            else:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        rounds += 1
        if rounds >= 3 and time.perf_counter() - start > max_seconds:
            break
    return times


def measure_latency(model: nn.Module, input_shape: tuple[int, ...], batch: int,
                    settings: HardwareSettings) -> dict:
    return measure_side_by_side({"model": (model, torch.contiguous_format)}, input_shape, batch, settings)["model"]


def measure_side_by_side(models: dict[str, tuple[nn.Module, torch.memory_format]], input_shape: tuple[int, ...],
                         batch: int, settings: HardwareSettings) -> dict[str, dict]:
    """Latency of several models on the same input (each in its memory format), interleaved."""
    device = _model_device(next(iter(models.values()))[0])
    x = torch.randn((batch, *input_shape), device=device)
    inputs = {name: x.contiguous(memory_format=fmt) for name, (_, fmt) in models.items()}
    fns = {name: (lambda m=m, xi=inputs[name]: m(xi)) for name, (m, _) in models.items()}
    with torch.inference_mode():
        times = interleaved_times(fns, device, settings.warmup, settings.repeats, settings.max_seconds)
    out = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = {"median_s": med, "runs": len(ts), "min_s": min(ts), "images_per_s": batch / med}
    return out


# --- energy (NVML on NVIDIA GPUs, RAPL on CPUs) -----------------------------------------------
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


def measure_energy(run: Callable[[], object], images_per_call: int, counter, min_window_s: float = 2.0,
                   clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] = lambda: None,
                   max_calls: int = 1_000_000) -> dict:
    """Energy per image and mean power from an energy counter (``NvmlCounter``,
    ``cbcn.rapl.RaplCounter``: ``read_j()`` joules, ``extra()`` fields).

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
    """``(1-bit model, None)`` from ``cbcn.onebit`` on the device's default backend (the CPU
    engine for CPU tensors, the Triton kernels for CUDA tensors), or ``(None, reason)``."""
    from .backends import describe_backend
    from .onebit import convert_to_onebit

    device = _model_device(model)
    try:
        return convert_to_onebit(model), None
    except ValueError as e:       # fp / bwn models have no fully binary layer
        return None, str(e)
    except Exception as e:
        return None, f"1-bit conversion failed on {describe_backend(None, device)} ({type(e).__name__}: {e})"


def float_twin(model: nn.Module):
    """``(model, None)``: the float model (method fp) of ``model``'s physical widths, random
    weights, channels-last, eval mode — what a binary model's speed is compared with; or
    ``(None, reason)``."""
    from .models import build_model
    from .onebit import model_build_kwargs

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


def checkpoint_bytes(model: nn.Module) -> dict:
    """Measured on-disk sizes: ``torch.save`` of the fp32 state dict, and ``cbcn.onebit``'s packed
    1-bit checkpoint (or why there is none)."""
    import io
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    out = {"fp32_checkpoint_bytes": buf.tell()}
    from .onebit import checkpoint_size_report
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
            prof.set("memory_before_bytes", torch.cuda.memory_allocated(device))
        # the 1-bit model and the float model of the same physical widths, timed side by side
        packed, packed_reason = packed_inference(model)
        twin, twin_reason = float_twin(model)
        contenders = {"model": (model, torch.contiguous_format)}
        if packed is not None:
            contenders["packed"] = (packed, torch.contiguous_format)
            from .backends import describe_backend

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
                packed = None
                lat[batch] = measure_side_by_side(contenders, input_shape, batch, settings)
        lat1, latb = lat[1]["model"], lat[settings.throughput_batch]["model"]
        prof.set("latency_b1_s", lat1["median_s"])
        prof.set("latency_b1_runs", lat1["runs"])
        prof.set("latency_batch_s", latb["median_s"])
        prof.set("throughput_images_per_s", latb["images_per_s"])
        for name, prefix, reason in (("packed", "packed", packed_reason), ("float_physical", "float_physical", twin_reason)):
            if name in lat[1]:
                prof.set(f"{prefix}_latency_b1_s", lat[1][name]["median_s"])
                prof.set(f"{prefix}_throughput_images_per_s", lat[settings.throughput_batch][name]["images_per_s"])
            else:
                prof.na(f"{prefix}_latency_b1_s", reason)
                prof.na(f"{prefix}_throughput_images_per_s", reason)
        speedups = (("onebit_speedup_vs_float_physical", "float_physical"), ("onebit_speedup_vs_training", "model"))
        for key, other in speedups:
            for batch, suffix in ((settings.throughput_batch, "batch"), (1, "b1")):
                if "packed" in lat[batch] and other in lat[batch]:
                    prof.set(f"{key}_{suffix}", lat[batch][other]["median_s"] / lat[batch]["packed"]["median_s"])
                else:
                    prof.na(f"{key}_{suffix}", packed_reason if "packed" not in lat[batch] else twin_reason)
        if device.type == "cuda":  # the model's own forward at the throughput batch
            x = torch.randn((settings.throughput_batch, *input_shape), device=device)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            with torch.inference_mode():
                model(x)
            torch.cuda.synchronize(device)
            prof.set("peak_memory_bytes", torch.cuda.max_memory_allocated(device))
            del x
        else:
            prof.na("peak_memory_bytes", "PyTorch has no per-model peak-memory counter on CPU (process peak RSS "
                    "is in process_max_rss_bytes; benchmarks/cpu_engine_bench.py --memory measures each model "
                    "in a fresh process)")
        prof.set("process_max_rss_bytes", _max_rss_bytes())

        # energy: NVML on NVIDIA GPUs, RAPL on CPUs; for the model and its 1-bit version
        nvml, why = (None, None) if device.type != "cuda" else nvml_loader()
        try:
            if device.type == "cuda":
                counter = NvmlCounter(nvml, nvml_handle(nvml, device)) if nvml is not None else None
                sync = lambda: torch.cuda.synchronize(device)  # noqa: E731
            else:
                from .rapl import rapl_counter

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
        del packed, twin
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
