"""What a model costs, counted: operations (MACs, BOPs, FLOPs, OPs) and bytes (fp32, 1-bit, on disk).

Why counted with hooks on our own layers: a circulant layer's cost depends on how it is run
(the full rotated bank or the K-sum identity), and only ``BinaryConv2d`` knows whether its
weights and activations are binary. ``tests/test_hardware.py`` checks the real MACs against
``torch.utils.flop_counter.FlopCounterMode`` where the two count the same thing.

Conventions (the hardware profile prints them, ``cbcn.harness.hardware.CONVENTIONS``):

- MACs: multiply-accumulates of conv and linear layers, counted with forward hooks on
  ``BinaryConv2d``, ``nn.Conv2d`` and ``nn.Linear`` (BatchNorm, pooling, activations and
  additions are not counted). A circulant layer counts at its physical width
  (``C_in·K × C_out·K``), i.e. what CBConv defines; the K-sum identity the implementation uses
  does 1/K of them plus additions (``macs_ksum``).
- BOPs: MACs of layers whose weights AND activations are binary (one XNOR+popcount lane each);
  an ABC-Net layer with M weight and N activation bases counts its M·N binary convolutions, and
  stores M bits per weight plus its M α's.
- FLOPs: 2 × MACs of every other layer (a multiply and an add).
- OPs = FLOPs + BOPs / 64, as the field counts (Bi-Real Net, Liu et al. 2018; a 64-bit word
  does 64 binary operations per instruction). The field often counts FLOPs as MACs: ``macs_real``
  is recorded too, so its number is ``macs_real + bops/64``.
- Bytes: fp32 = 4 bytes per parameter and float buffer; 1-bit = binary weights at 1 bit (packed
  densely across layers, as the 1-bit checkpoint stores them) plus their per-map α in fp32,
  everything else fp32. Measured on-disk sizes too (``cbcn.onebit``'s 1-bit checkpoint vs
  ``torch.save`` of the fp32 state dict) for models with fully binary layers.
"""
from __future__ import annotations

import io
import math

import torch
import torch.nn as nn

from cbcn.nn.layers import BinaryConv2d
from cbcn.onebit.convert import checkpoint_size_report


def _holds_state(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False)) or \
        any(b.is_floating_point() for b in module.buffers(recurse=False))


def _layer_record(name: str, module: nn.Module) -> dict:
    """What a layer is and what it stores (see ``layer_costs`` for the fields)."""
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
            r["binary_weights"] = module.weight.numel() * module.weight_bases  # ABC-Net: M bases
            r["onebit_values"] -= module.weight.numel()
            if module.bases:
                r["onebit_values"] += module.weight_bases  # α_m, one per base (β, v are parameters)
            elif module.scaled:
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
                if module.bases:  # ABC-Net: M·N binary convs (the training layer runs them as one)
                    macs = ksum = macs * module.weight_bases * module.act_bases
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
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
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


def checkpoint_bytes(model: nn.Module) -> dict:
    """Measured on-disk sizes: ``torch.save`` of the fp32 state dict, and ``cbcn.onebit``'s packed
    1-bit checkpoint (or why there is none)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    out = {"fp32_checkpoint_bytes": buf.tell()}
    try:
        out["onebit_checkpoint_bytes"] = checkpoint_size_report(model)["onebit_checkpoint_bytes"]
    except ValueError as e:       # nothing to pack (fp, bwn)
        out["unavailable"] = str(e)
    except Exception as e:
        out["unavailable"] = f"1-bit checkpoint could not be written ({type(e).__name__}: {e})"
    return out
