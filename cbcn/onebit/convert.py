"""True 1-bit inference models: packed binary layers, conversion and a compact checkpoint.

``convert_to_onebit(model)`` replaces every ``BinaryConv2d`` whose weights *and* activations are
binary by a ``OneBitConv2d`` that holds only packed bits, the per-map scale α and the bias; the
full-precision layers (first conv, 1×1 shortcuts, classifier, batch-norm) stay as they are. For
circulant (CBConv) layers the module keeps the packed signs of the learned ``W`` only
(``(out_maps, H, H, ceil(in_maps/32))``, as many bits as learned weights) and expands them on the
fly at every forward (``cif_pack_bank``): to the rotated bank of the K-sum form on the GEMM paths
(``OneBitConv2d.ksum``), to the full packed CiF bank on ``popcount``.

The forward is ``packed_conv2d(pack_signs(x), bank) * α + bias`` — the integer convolution is
exact, and the float ops after it happen in ``BinaryConv2d.forward``'s order, so the converted
model's logits equal the training model's in eval mode bit for bit (on the reference path; the
kernels compute the same integers and launch without FMA fusion).

Backend (reference, CPU engine or Triton kernels): chosen per call by ``cbcn.onebit.backends``
(``CBCN_BACKEND`` or ``backend=``); the choice shows in the module's repr.

``save_onebit`` writes a checkpoint in which the binary weights take one bit each (dense, not
padded to words) and all other tensors are stored once, grouped by dtype; ``load_onebit`` rebuilds
the model with ``cbcn.nn.models.build_model`` and loads it. ``checkpoint_size_report`` puts its bytes
next to the fp32 checkpoint's.
"""
from __future__ import annotations

import copy
import io
import os
from pathlib import Path

import torch
import torch.nn as nn

from cbcn.nn.layers import BinaryConv2d
from cbcn.onebit.backends import Ops, describe_backend, get_ops, requested_backend, resolve_backend
from cbcn.onebit.backends.contract import derived, num_words, tensor_version
from cbcn.onebit.backends.epilogue import Epilogue
from cbcn.onebit.backends.reference import pack_signs, unpack_signs

FORMAT = "cbcn-onebit"
VERSION = 1
PATHS = ("mma", "mma_fp8", "mma_async", "popcount")  # triton_kernels.packed_conv2d paths (mma_async: Hopper)
_CARRIED = "_cbcn_packed_signs"  # attribute of a real activation that carries its packed signs


def attach_packed_signs(real: torch.Tensor, packed: torch.Tensor | None) -> torch.Tensor:
    """Let ``real`` carry its packed signs to the next binary layer, which then need not pack it
    again (valid while ``real`` is not modified in place; any new tensor starts without). Not
    while torch.compile's Dynamo traces, which sets no attributes on tensors: the fused models
    hand the signs on explicitly there (``cbcn.onebit.fused``)."""
    if packed is not None and not torch.compiler.is_dynamo_compiling():
        setattr(real, _CARRIED, (packed, tensor_version(real)))
    return real


def carried_packed_signs(x: torch.Tensor) -> torch.Tensor | None:
    if torch.compiler.is_dynamo_compiling():
        return None
    entry = getattr(x, _CARRIED, None)
    return entry[0] if entry is not None and entry[1] == tensor_version(x) else None


class OneBitConv2d(nn.Module):
    """Inference-only binary convolution over packed bits (see the module docstring).

    Buffers: ``packed_weight`` int32 — the packed signs of the learned weight for CBConv layers
    (``(out_maps, H, H, ceil(in_maps/32))``), else of the weight convolved
    (``(C_out, H, H, ceil(C_in/32))``); ``alpha`` (per learned output map) if the method scales;
    ``bias`` (per physical output channel) if the layer has one.
    """

    def __init__(
        self,
        in_maps: int,
        out_maps: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        K: int = 1,
        cbconv: bool = False,
        scaled: bool = True,
        bias: bool = False,
        backend: str | None = None,
        path: str = "mma",
        method: str = "",
        act_shift: bool = False,
    ):
        super().__init__()
        if path not in PATHS:
            raise ValueError(f"unknown packed-conv path {path!r}; valid: {PATHS}")
        if backend is not None:
            requested_backend(backend)  # validate early
        self.in_maps, self.out_maps = in_maps, out_maps
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.K, self.cbconv, self.method = K, cbconv, method
        width = K if cbconv else 1
        self.physical_in_channels, self.physical_out_channels = in_maps * width, out_maps * width
        self.backend, self.path = backend, path
        self.register_buffer(
            "packed_weight", torch.zeros(out_maps, kernel_size, kernel_size, num_words(in_maps), dtype=torch.int32)
        )
        self.register_buffer("alpha", torch.ones(out_maps) if scaled else None)
        self.register_buffer("bias", torch.zeros(self.physical_out_channels) if bias else None)
        # ABC-Net's activation shift v: the input's signs are those of 2(x + v) − 1 (cbcn.nn.bases)
        self.register_buffer("act_shift", torch.zeros(()) if act_shift else None)

    @classmethod
    def from_binary_conv(cls, layer: BinaryConv2d, backend: str | None = None, path: str = "mma") -> "OneBitConv2d":
        if not is_packable(layer):
            raise ValueError(f"layer {layer!r} does not binarize both weights and activations; keep it as is")
        with torch.no_grad():
            if layer.cbconv:
                signs_source = layer.weight  # the learned W; the CiF is expanded at run time
                in_maps, out_maps = layer.in_maps, layer.out_maps
            else:
                signs_source = layer.effective_weight()  # ±1, (C_out, C_in, H, H)
                in_maps, out_maps = layer.physical_in_channels, layer.physical_out_channels
            alpha = layer.scale()
            new = cls(
                in_maps, out_maps, layer.kernel_size, layer.stride, layer.padding,
                K=layer.K, cbconv=layer.cbconv, scaled=alpha is not None, bias=layer.bias is not None,
                backend=backend, path=path, method=layer.method, act_shift=layer.bases,
            )
            new.packed_weight.copy_(pack_signs(signs_source.detach()).cpu())
            if layer.bases:  # ABC-Net, one base each: B_1's signs, the scale α_1·β_1, the shift v_1
                new.alpha.copy_(alpha.detach().cpu())
                new.act_shift.copy_(layer.act_shift.detach()[0].cpu())
            elif alpha is not None:
                # α per learned map (repeated over the K orientations at run time, as layer.scale() does)
                new.alpha.copy_(layer.weight.detach().abs().mean(dim=(1, 2, 3)).cpu())
            if layer.bias is not None:
                new.bias.copy_(layer.bias.detach().cpu())
        return new.to(layer.weight.device)

    def scale(self) -> torch.Tensor | None:
        """α per physical output channel (as ``BinaryConv2d.scale``; for CBConv layers repeated
        over the K orientations once, and cached until α changes)."""
        if self.alpha is None or not self.cbconv:
            return self.alpha
        a = self.alpha
        return derived(self.__dict__.setdefault("_scale_cache", {}), [a], lambda: a.repeat_interleave(self.K),
                       (a.device, a.dtype))

    def ops(self, device=None) -> Ops:
        """The backend's operations for tensors on ``device`` (default: this layer's)."""
        return get_ops(resolve_backend(self.backend, device if device is not None else self.packed_weight.device))

    def ksum_for(self, ops: Ops) -> int:
        """K when the convolution runs in CBConv's K-sum form (SPEC §2), else 1.

        The CiF bank repeats each rotated filter over the K input channels of a map, so the conv
        of the physical channels equals the conv of their per-map sums (integers in [−K, K]) with
        the rotated bank alone: the same integers with up to K× fewer multiply-adds. Backends whose
        arithmetic is on integers take that form (the int8 / fp8 GEMM paths, the reference, the
        CPU engine's ``intmm`` path); XOR + popcount needs signs and convolves the full CiF bank."""
        return self.K if self.cbconv and self.K > 1 and ops.prefers_ksum(self.path) else 1

    @property
    def ksum(self) -> int:
        """``ksum_for`` this layer's backend on its weights' device."""
        return self.ksum_for(self.ops())

    def weight_bank(self, ops: Ops | None = None, ksum: int | None = None) -> torch.Tensor:
        """The packed bank actually convolved: ``(C_out, H, H, ceil(C_in/32))`` over physical
        channels, or for the K-sum form (``ksum``, default ``ksum_for(ops)``) the rotated bank
        ``(C_out, H, H, ceil(in_maps/32))``. CBConv banks are expanded once and cached until the
        packed weight changes."""
        if not self.cbconv:
            return self.packed_weight
        ops = ops or self.ops()
        ksum = (self.ksum_for(ops) if ksum is None else ksum) > 1
        w = self.packed_weight
        return derived(self.__dict__.setdefault("_bank_cache", {}), [w],
                       lambda: ops.cif_pack_bank(w, self.K, in_channels=self.in_maps, ksum=ksum),
                       (ops.name, ksum, w.device))

    def pack_input(self, x: torch.Tensor, ops: Ops | None = None, packed: torch.Tensor | None = None) -> torch.Tensor:
        """The packed signs of this layer's input: ``packed`` when given (the previous fused layer
        wrote them), or carried by ``x``, else packed now."""
        if x.dim() != 4 or x.shape[1] != self.physical_in_channels:
            raise ValueError(f"1-bit conv expects input (N, {self.physical_in_channels}, H, W), got {tuple(x.shape)}")
        if self.act_shift is not None:  # ABC-Net: H_v(x) = sign(2(x + v) − 1), as the training layer
            return (ops or self.ops(x.device)).pack_signs(2 * (x + self.act_shift) - 1)
        carried = packed if packed is not None else carried_packed_signs(x)
        return carried if carried is not None else (ops or self.ops(x.device)).pack_signs(x)

    def run(self, x_packed: torch.Tensor, epilogue: Epilogue = Epilogue(), memory_format=torch.channels_last,
            ops: Ops | None = None):
        """The conv on packed input with this layer's α and bias, then ``epilogue``'s further
        steps (batch-norm, pooling, residual, ...): ``(real, packed)`` as ``fused_conv2d``."""
        ops = ops or self.ops(x_packed.device)
        ep = epilogue
        epilogue = Epilogue(self.scale(), self.bias, ep.pool, ep.relu, ep.bn, ep.affine, ep.residual, ep.real,
                            ep.packed, ep.out_dtype)
        ksum = self.ksum_for(ops)
        return ops.fused_conv2d(x_packed, self.weight_bank(ops, ksum), self.physical_in_channels, self.stride,
                                self.padding, epilogue, ksum, memory_format, self.path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = self.ops(x.device)
        out_dtype = x.dtype if x.dtype in (torch.float16, torch.bfloat16) else torch.float32
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        y, _ = self.run(self.pack_input(x, ops), Epilogue(out_dtype=out_dtype),
                        torch.channels_last if channels_last else torch.contiguous_format, ops)
        return y

    def extra_repr(self) -> str:
        parts = [
            f"{self.in_maps}, {self.out_maps}, kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}",
            f"method={self.method}" if self.method else "",
            f"K={self.K}, physical={self.physical_in_channels}->{self.physical_out_channels}" if self.cbconv else "",
            f"ksum={self.ksum}" if self.ksum > 1 else "",
            f"bits={self.packed_weight_bits()}",
            f"backend={describe_backend(self.backend, self.packed_weight.device)}",
            f"path={self.path}",
        ]
        return ", ".join(p for p in parts if p)

    def packed_weight_bits(self) -> int:
        """Bits of information held (one per learned binary weight)."""
        return self.out_maps * self.in_maps * self.kernel_size**2


def is_packable(module: nn.Module) -> bool:
    """A ``BinaryConv2d`` with binary weights and binary activations (bnn, xnor, bireal, cbcn, and
    abcnet with one weight and one activation base)."""
    return (isinstance(module, BinaryConv2d) and module.binary_weights and module.binary_acts
            and module.weight_bases * module.act_bases == 1)


def convert_to_onebit(model: nn.Module, backend: str | None = None, path: str = "mma", inplace: bool = False,
                      fuse: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` whose fully binary convs are ``OneBitConv2d`` (packed bits);
    with ``fuse`` (default) its binary blocks then run fused (``cbcn.onebit.fused.fuse_blocks``)."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_packable(child):
                setattr(parent, name, OneBitConv2d.from_binary_conv(child, backend=backend, path=path))
                replaced += 1
    if replaced == 0:
        if any(isinstance(m, BinaryConv2d) and m.weight_bases * m.act_bases > 1 for m in model.modules()):
            raise ValueError("ABC-Net layers with M·N > 1 bases stay in float: running them as M·N packed "
                             "convs is not implemented (M = N = 1 converts)")
        raise ValueError("model has no layer with binary weights and activations to pack (fp/bwn models stay float)")
    model.onebit_layers = replaced
    _prepare_backends(model)
    if fuse and any(m.act_shift is not None for m in model.modules() if isinstance(m, OneBitConv2d)):
        fuse = False  # ABC-Net's shifted input signs are not those a fused epilogue carries
    if fuse:
        from cbcn.onebit.fused import fuse_blocks

        model.fused_blocks = fuse_blocks(model)
    return model


def _prepare_backends(model: nn.Module) -> None:
    """Resolve each 1-bit layer's backend for its device now (``Ops.prepare``), so that the first
    forward — possibly a torch.compile trace — finds the engine built and loaded."""
    for ops in {m.ops() for m in model.modules() if isinstance(m, OneBitConv2d)}:
        ops.prepare()


def set_backend(model: nn.Module, backend: str | None = None, path: str | None = None) -> nn.Module:
    """Force every 1-bit layer of ``model`` onto a backend (``None``: follow ``$CBCN_BACKEND``) / path."""
    if backend is not None:
        requested_backend(backend)
    for m in model.modules():
        if isinstance(m, OneBitConv2d):
            m.backend = backend
            if path is not None:
                if path not in PATHS:
                    raise ValueError(f"unknown packed-conv path {path!r}; valid: {PATHS}")
                m.path = path
    _prepare_backends(model)
    return model


def backend_summary(model: nn.Module, device=None) -> dict:
    """Which backend each 1-bit layer uses on ``device`` (default: the model's), for summaries."""
    layers = [m for m in model.modules() if isinstance(m, OneBitConv2d)]
    if device is None:
        device = next((b.device for b in model.buffers()), torch.device("cpu"))
    backends = sorted({describe_backend(m.backend, device) for m in layers})
    return {
        "onebit_layers": len(layers),
        "backends": backends,
        "paths": sorted({m.path for m in layers}),
        "packed_weight_bits": sum(m.packed_weight_bits() for m in layers),
    }


# --- checkpoint -------------------------------------------------------------------------------
def model_build_kwargs(model: nn.Module) -> dict:
    """The ``cbcn.nn.models.build_model`` arguments that rebuild ``model``'s architecture."""
    missing = [a for a in ("name", "method", "stages", "K", "num_classes", "in_channels", "factory") if not hasattr(model, a)]
    if missing:
        raise ValueError(f"cannot tell how to rebuild this model (no {missing}); pass build_kwargs= explicitly")
    spec = model.factory.spec
    kwargs = dict(
        name=model.name, method=model.method, stages=list(model.stages), K=model.K,
        num_classes=model.num_classes, in_channels=model.in_channels,
        cbconv=spec.cbconv, shortcut=spec.shortcut,
    )
    if spec.binary_acts:
        kwargs["act_surrogate"] = spec.act_surrogate
    if spec.binary_weights:
        kwargs["weight_surrogate"] = spec.weight_surrogate
    if spec.bases:
        kwargs["weight_bases"], kwargs["act_bases"] = model.factory.weight_bases, model.factory.act_bases
    if hasattr(model, "stem_kind"):
        kwargs["stem"] = model.stem_kind
    if model.name == "lenet":
        per_pixel = model.stages[-1] * model.factory.width
        kwargs["image_size"] = int(round((model.feature_dim // per_pixel) ** 0.5)) * 16
        if model.classifier_kind != "linear":  # older checkpoints have no such key: the default
            kwargs["lenet_classifier"] = model.classifier_kind
    return kwargs


def _bits_to_bytes(bits: torch.Tensor) -> torch.Tensor:
    bits = bits.reshape(-1).to(torch.uint8)
    pad = (-bits.numel()) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    return (bits.view(-1, 8).to(torch.int32) << torch.arange(8, dtype=torch.int32)).sum(dim=1).to(torch.uint8)


def _bytes_to_bits(data: torch.Tensor, n: int) -> torch.Tensor:
    bits = (data.to(torch.int32).view(-1, 1) >> torch.arange(8, dtype=torch.int32)) & 1
    return bits.reshape(-1)[:n].bool()


def _packed_channels(model: nn.Module) -> dict[str, int]:
    return {f"{name}.packed_weight": m.in_maps for name, m in model.named_modules() if isinstance(m, OneBitConv2d)}


def _stored_items(model: nn.Module):
    """State entries a 1-bit checkpoint keeps, in state-dict order (BatchNorm's
    ``num_batches_tracked`` counter only matters for training and is left out)."""
    return [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]


def state_signature(model: nn.Module) -> str:
    """Hash of the stored keys, shapes and dtypes: the layout the payload is decoded against."""
    import hashlib

    text = ";".join(f"{k}:{tuple(v.shape)}:{v.dtype}" for k, v in _stored_items(model))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_state(model: nn.Module) -> dict:
    """The model's state as a compact payload: binary weights one bit each (dense), every other
    tensor flattened into one blob per dtype. No per-tensor index: the architecture is rebuilt
    from the build arguments and its state-dict order says where each tensor lies."""
    channels = _packed_channels(model)
    bit_chunks, blobs = [], {}
    for key, t in _stored_items(model):
        t = t.detach().cpu()
        if key in channels:
            bit_chunks.append((unpack_signs(t, channels[key]) < 0).reshape(-1))  # (C_out, C, H, H) signs
        else:
            blobs.setdefault(str(t.dtype).replace("torch.", ""), []).append(t.reshape(-1))
    return {
        "signature": state_signature(model),
        "bits": _bits_to_bytes(torch.cat(bit_chunks)) if bit_chunks else torch.zeros(0, dtype=torch.uint8),
        "blobs": {dt: torch.cat(ch) for dt, ch in blobs.items()},
    }


def decode_state(payload: dict, model: nn.Module) -> dict:
    """Inverse of ``encode_state`` for a freshly built, converted ``model`` of the same layout."""
    if payload.get("signature") != state_signature(model):
        raise ValueError("1-bit checkpoint does not match the rebuilt architecture (state signature differs)")
    channels = _packed_channels(model)
    items = _stored_items(model)
    total_bits = sum(t.shape[0] * channels[k] * t.shape[1] * t.shape[2] for k, t in items if k in channels)
    bits = _bytes_to_bits(payload["bits"], total_bits)
    offsets = {dt: 0 for dt in payload["blobs"]}
    bit_offset, state = 0, {}
    for key, t in items:
        if key in channels:
            C_out, H, W, _ = t.shape
            n = C_out * channels[key] * H * W
            neg = bits[bit_offset: bit_offset + n].view(C_out, channels[key], H, W)
            state[key] = pack_signs(torch.where(neg, -1.0, 1.0))
            bit_offset += n
        else:
            dt = str(t.dtype).replace("torch.", "")
            o = offsets[dt]
            state[key] = payload["blobs"][dt][o: o + t.numel()].view(t.shape).clone()
            offsets[dt] = o + t.numel()
    return state


def save_onebit(model: nn.Module, path: str | os.PathLike, build_kwargs: dict | None = None, extra: dict | None = None) -> int:
    """Write a 1-bit checkpoint of a converted model; returns its size in bytes."""
    if not any(isinstance(m, OneBitConv2d) for m in model.modules()):
        raise ValueError("save_onebit needs a converted model (convert_to_onebit first)")
    layers = {n: m for n, m in model.named_modules() if isinstance(m, OneBitConv2d)}
    path_choice = {m.path for m in layers.values()}
    obj = {
        "format": FORMAT,
        "version": VERSION,
        "build": build_kwargs if build_kwargs is not None else model_build_kwargs(model),
        "path": sorted(path_choice)[0],
        "state": encode_state(model),
        "extra": extra or {},
    }
    from cbcn.fileio import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())  # a crash never leaves a half-written checkpoint
    return Path(path).stat().st_size


def load_onebit(path: str | os.PathLike, backend: str | None = None, map_location="cpu") -> nn.Module:
    """Rebuild a model saved by ``save_onebit`` (eval mode, 1-bit layers, on ``map_location``)."""
    from cbcn.nn.models import build_model
    from cbcn.training.checkpoint import CheckpointError, read_torch_file

    obj = read_torch_file(path, what="1-bit checkpoint")
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint")
    if obj.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported {FORMAT} version {obj.get('version')!r} (this code reads {VERSION})")
    build = dict(obj["build"])
    name = build.pop("name")
    if "stages" in build and build["stages"] is not None:
        build["stages"] = tuple(build["stages"])
    model = build_model(name, **build)
    model = convert_to_onebit(model, backend=backend, path=obj.get("path", "mma"), inplace=True)
    missing, unexpected = model.load_state_dict(decode_state(obj["state"], model), strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"1-bit checkpoint {path}: missing {missing}, unexpected {unexpected}")
    return model.to(map_location).eval()


def checkpoint_size_report(model: nn.Module, onebit_model: nn.Module | None = None, directory=None) -> dict:
    """Bytes on disk of the fp32 checkpoint (``torch.save(model.state_dict())``) and of the 1-bit
    checkpoint (``save_onebit``), with what the 1-bit bytes are made of."""
    import tempfile

    onebit_model = onebit_model if onebit_model is not None else convert_to_onebit(model)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        fp32_path, onebit_path = Path(tmp) / "fp32.pt", Path(tmp) / "onebit.pt"
        torch.save(model.state_dict(), fp32_path)
        fp32_bytes = fp32_path.stat().st_size
        onebit_bytes = save_onebit(onebit_model, onebit_path)
    parts = {"packed binary weights (1 bit each)": 0, "binary-layer scales (alpha)": 0, "binary-layer biases": 0,
             "batch-norm (weight, bias, running stats)": 0, "full-precision convs (first layer, shortcuts)": 0,
             "classifier": 0, "other": 0}
    for mname, module in onebit_model.named_modules():
        for pname, t in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            if t is None or pname == "num_batches_tracked":  # not stored (training-only counter)
                continue
            nbytes = t.numel() * t.element_size()
            if isinstance(module, OneBitConv2d):
                if pname == "packed_weight":
                    parts["packed binary weights (1 bit each)"] += (module.packed_weight_bits() + 7) // 8
                elif pname == "alpha":
                    parts["binary-layer scales (alpha)"] += nbytes
                else:
                    parts["binary-layer biases"] += nbytes
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                parts["batch-norm (weight, bias, running stats)"] += nbytes
            elif isinstance(module, (BinaryConv2d, nn.Conv2d)):
                parts["full-precision convs (first layer, shortcuts)"] += nbytes
            elif isinstance(module, nn.Linear):
                parts["classifier"] += nbytes
            else:
                parts["other"] += nbytes
    payload = sum(parts.values())
    parts["container (zip/pickle, index)"] = onebit_bytes - payload
    return {
        "fp32_checkpoint_bytes": fp32_bytes,
        "onebit_checkpoint_bytes": onebit_bytes,
        "ratio": fp32_bytes / onebit_bytes,
        "onebit_breakdown_bytes": parts,
    }
