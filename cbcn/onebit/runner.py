"""Whole-model 1-bit inference for one fixed input shape: ``OneBitRunner`` (issue 13).

``OneBitRunner(onebit_model, example_input, mode=...)`` prepares everything a forward needs once
(weight matrices, folded affines, activation and operand buffers), and on a GPU captures the whole
forward in a CUDA graph, so a call costs one graph replay instead of 5–7 kernel launches and their
Python checks per binary layer.

Modes:

- ``"exact"``: the converted model itself (``convert_to_onebit``; its fused blocks keep the
  training model's op order, so logits are bit-identical to the training model in eval mode),
  only captured in a graph on a GPU. The reference mode.
- ``"fused"`` (ResNet/WRN binary blocks): each binary conv is one GEMM kernel whose epilogue
  applies the folded ``α · BN`` affine and the residual, writes the real output the shortcut
  needs (``dtype``: fp16 on a GPU) and the next conv's operand (int8 / fp8 ±1, or CBCN's K-sums)
  straight into that conv's pre-zeroed halo buffer (``cbcn.onebit.backends.operands``). No pack,
  unpack, batch-norm or add kernel runs between binary convs. Folding the batch-norm and fp16
  activations change rounding, so the logits agree with the training model's only approximately;
  ``tests/test_runner.py`` states and checks the agreement (largest logit difference, argmax
  agreement on 10,000 inputs). The stem, the 1×1 downsampling shortcuts, the pooling and the
  classifier run as PyTorch ops in ``dtype``.

GEMM paths of the fused mode (``FUSED_PATHS``, each layer's ``path``): ``mma`` (int8), ``mma_fp8``
(fp8 e4m3 operands) and ``mma_async`` (int8 with one wgmma in flight, Gluon: Hopper GPUs only; its
layers write int8 operands, so it does not mix with ``mma_fp8``).

Backends of the fused mode: ``triton`` (the kernels; on CPU tensors the interpreter, for tests)
or ``reference`` (``operands.operand_conv_reference``: the same arithmetic in PyTorch, the
kernels' bit-exact reference and the fused mode on a CPU). Default: ``triton`` for CUDA tensors,
``reference`` for CPU tensors.

The output tensor of a graph replay is the runner's own; ``__call__`` returns a copy. A runner
snapshots the model when it is built (weight matrices, folded affines, captured kernels): build a
new one after changing the model's weights or statistics.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from cbcn.nn.models import BasicBlock, ResNet
from cbcn.onebit.backends import triton_available
from cbcn.onebit.backends.operands import OperandLayout, fold_affine, operand_conv_reference, weight_matrix_reference
from cbcn.onebit.backends.operands import write_operand_reference
from cbcn.onebit.backends.reference import cif_pack_bank_reference, unpack_signs
from cbcn.onebit.convert import OneBitConv2d
from cbcn.onebit.fused import batchnorm_eval

MODES = ("exact", "fused")
FUSED_BACKENDS = ("triton", "reference")
FUSED_PATHS = ("mma", "mma_fp8", "mma_async")  # popcount needs packed signs, not operands; mma_async: Hopper
WARMUP_CALLS = 2  # before capture: Triton compiles and autotunes, caches fill


@dataclass
class FusedConv:
    """One binary conv of the fused plan: its operand in, its folded affine, and what it writes."""

    layer: OneBitConv2d
    layout: OperandLayout  # its own input operand
    buffer: torch.Tensor  # that operand's halo buffer (int8 storage)
    w_mat: torch.Tensor  # (C_out, KH·KW·CP) bytes, int8 storage
    A: torch.Tensor
    B: torch.Tensor
    out_size: tuple[int, int]
    next_layout: OperandLayout | None = None
    next_buffer: torch.Tensor | None = None
    real_out: torch.Tensor | None = None  # preallocated real output (None: the conv writes no real output)


def _fused_block_layers(block) -> bool:
    return isinstance(block, BasicBlock) and not block.full_precision and \
        isinstance(block.conv1, OneBitConv2d) and isinstance(block.conv2, OneBitConv2d) and \
        block.conv1.act_shift is None and block.conv2.act_shift is None


def _operand_layout(layer: OneBitConv2d) -> OperandLayout:
    """The input operand of a binary conv: its maps (the K-sum form for CBConv layers), pad, bytes."""
    ksum = layer.K if layer.cbconv and layer.K > 1 else 1
    return OperandLayout(layer.physical_in_channels // ksum, ksum, layer.padding, layer.path == "mma_fp8")


def _weight_matrix(layer: OneBitConv2d, device) -> torch.Tensor:
    """The GEMM's weight bytes: the rotated bank over the maps for CBConv layers (K-sum form)."""
    w = layer.packed_weight
    if layer.cbconv:
        bank = cif_pack_bank_reference(w.cpu(), layer.K, in_channels=layer.in_maps, ksum=layer.K > 1)
        maps = layer.in_maps if layer.K > 1 else layer.physical_in_channels
    else:
        bank, maps = w.cpu(), layer.physical_in_channels
    return weight_matrix_reference(unpack_signs(bank, maps), layer.path == "mma_fp8").to(device)


class FusedResNetPlan:
    """The fused mode's forward of a converted ResNet/WRN for one input shape (see the module
    docstring): buffers allocated once, every binary conv one fused GEMM."""

    def __init__(self, model: nn.Module, input_shape: tuple, dtype: torch.dtype, device: torch.device, backend: str):
        if not isinstance(model, ResNet) or not all(_fused_block_layers(b) for b in model.blocks):
            raise ValueError("the fused mode runs ResNet/WRN models whose blocks are all 1-bit "
                             "(convert_to_onebit; not ABC-Net); use mode='exact'")
        paths = {m.path for m in model.modules() if isinstance(m, OneBitConv2d)}
        if not paths <= set(FUSED_PATHS):
            raise ValueError(f"the fused mode needs the GEMM paths {FUSED_PATHS}, the model uses {sorted(paths)}; "
                             "set_backend(model, path='mma') or use mode='exact'")
        if {"mma_async", "mma_fp8"} <= paths:
            raise ValueError("the fused mode cannot mix paths 'mma_async' and 'mma_fp8': the int8 GEMM of mma_async "
                             "does not write fp8 operands; set one path for the model (set_backend(model, path=...))")
        if backend == "triton" and "mma_async" in paths:  # one clear line now, not at the first launch
            from triton_kernels.async_mma import async_mma_problem

            problem = async_mma_problem(device)
            if problem:
                raise ValueError(f"{problem}; use path 'mma' or the reference backend")
        self.backend, self.dtype, self.device = backend, dtype, device
        cast = dict(dtype=dtype, memory_format=torch.channels_last)
        self.stem = copy.deepcopy(nn.Sequential(*list(model.stem))).to(device).to(**cast).eval()
        self.classifier = copy.deepcopy(model.classifier).to(device).to(dtype).eval()
        self.enter_layout = model.enter_layout  # CBCN models repeat the image over the K orientations
        N = input_shape[0]
        with torch.no_grad():
            h = self.stem(self.enter_layout(torch.zeros(input_shape, device=device).to(**cast)))
        self.blocks = []
        H, W = h.shape[2:]
        for i, block in enumerate(model.blocks):
            downsample = None if block.downsample is None else \
                copy.deepcopy(block.downsample).to(device).to(**cast).eval()
            convs = []
            for j, (layer, bn) in enumerate(((block.conv1, block.bn1), (block.conv2, block.bn2))):
                layout = _operand_layout(layer)
                buffer = convs[-1].next_buffer if convs else (
                    self.blocks[-1][1][-1].next_buffer if self.blocks else layout.allocate(N, H, W, device))
                k, s, p = layer.kernel_size, layer.stride, layer.padding
                OH, OW = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
                C = layer.physical_out_channels
                A, B = fold_affine(layer.scale(), layer.bias, batchnorm_eval(bn), C, device)
                nxt = block.conv2 if j == 0 else (model.blocks[i + 1].conv1 if i + 1 < len(model.blocks) else None)
                next_layout = None if nxt is None else _operand_layout(nxt)
                needs_real = j == 1 or block.shortcut_kind == "double"
                convs.append(FusedConv(
                    layer, layout, buffer, _weight_matrix(layer, device), A, B, (OH, OW), next_layout,
                    None if next_layout is None else next_layout.allocate(N, OH, OW, device),
                    torch.empty((N, C, OH, OW), device=device, **cast) if needs_real else None))
                H, W = OH, OW
            self.blocks.append((downsample, convs, block.shortcut_kind == "double"))
        self.first = self.blocks[0][1][0]
        self._checked = False

    def _conv(self, c: FusedConv, residual):
        # dispatched per call: a bound method stored on the plan would make a reference cycle that
        # keeps the plan's buffers (hundreds of MB at batch 256) until a full garbage collection
        return (self._triton_conv if self.backend == "triton" else self._reference_conv)(c, residual)

    def _reference_conv(self, c: FusedConv, residual):
        real = operand_conv_reference(c.buffer, c.layout, c.w_mat, c.layer.kernel_size, c.layer.stride, c.A, c.B,
                                      residual, self.dtype if c.real_out is not None else None, c.next_layout,
                                      c.next_buffer)
        if real is not None:
            c.real_out.copy_(real)
        return c.real_out

    def _triton_conv(self, c: FusedConv, residual):
        from triton_kernels.conv import gemm_function

        k = c.layer.kernel_size
        gemm_function(c.layer.path)(  # unpacked_conv2d, or the Gluon GEMM of path mma_async
            c.layout.view(c.buffer), c.w_mat.view(c.layout.dtype), (k, k), c.layer.stride, c.out_size,
            scale=c.A, bias=c.B, out_dtype=self.dtype, max_abs_dot=k * k * c.layer.physical_in_channels,
            residual=residual, out=c.real_out, store_out=c.real_out is not None,
            operand=None if c.next_buffer is None else c.next_layout.view(c.next_buffer),
            operand_pad=0 if c.next_layout is None else c.next_layout.pad,
            operand_ksum=1 if c.next_layout is None else c.next_layout.ksum, checked=self._checked)
        return c.real_out

    def _stem_operand(self, h: torch.Tensor) -> None:
        first = self.first
        if self.backend == "triton":
            import triton_kernels as tk
            from triton_kernels.conv import unpack_activations

            unpack_activations(tk.pack_signs(h), first.layer.physical_in_channels, first.layout.pad,
                               first.layout.dtype, first.layout.ksum, out=first.buffer)
        else:
            write_operand_reference(h.float(), first.layout, first.buffer)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(self.enter_layout(x))
        self._stem_operand(h)
        for downsample, (conv1, conv2), double in self.blocks:
            identity = (h if downsample is None else downsample(h)).contiguous(memory_format=torch.channels_last)
            y = self._conv(conv1, identity if double else None)
            h = self._conv(conv2, y if double else identity)
        self._checked = True  # every launch was validated once; later calls skip the host checks
        h = F.relu(h)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1)).float()


class OneBitRunner:
    """Inference of a converted 1-bit model on inputs of one shape (see the module docstring).

    ``mode``: ``"fused"`` (default; ResNet/WRN) or ``"exact"``. ``graphs``: capture a CUDA graph
    (default: on CUDA). ``dtype``: the fused mode's activation dtype (default fp16 on CUDA, fp32
    on the CPU). ``backend``: the fused mode's ``"triton"`` or ``"reference"`` (default by device).
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, mode: str = "fused",
                 graphs: bool | None = None, dtype: torch.dtype | None = None, backend: str | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {MODES}")
        if not any(isinstance(m, OneBitConv2d) for m in model.modules()):
            raise ValueError("OneBitRunner needs a converted model (cbcn.onebit.convert.convert_to_onebit first)")
        if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
            raise ValueError(f"example_input must be an (N, C, H, W) tensor, got {getattr(example_input, 'shape', None)}")
        device = example_input.device
        on_cuda = device.type == "cuda"
        graphs = on_cuda if graphs is None else bool(graphs)
        if graphs and not on_cuda:
            raise ValueError("CUDA graphs need a CUDA input; pass graphs=False (or leave it unset) on the CPU")
        self.mode, self.graphs, self.device = mode, graphs, device
        self.input_shape = tuple(example_input.shape)
        model.eval()
        if mode == "fused":
            backend = backend or ("triton" if on_cuda else "reference")
            if backend not in FUSED_BACKENDS:
                raise ValueError(f"unknown fused backend {backend!r}; valid: {FUSED_BACKENDS}")
            if backend == "triton" and not triton_available():
                raise RuntimeError("the fused mode's triton backend needs Triton (pip install triton)")
            self.dtype = dtype or (torch.float16 if on_cuda else torch.float32)
            self.backend = backend
            forward: Callable = FusedResNetPlan(model, self.input_shape, self.dtype, device, backend)
            self._static_in = torch.zeros(self.input_shape, device=device, dtype=self.dtype).contiguous(
                memory_format=torch.channels_last)
        else:
            if dtype is not None or backend is not None:
                raise ValueError("dtype and backend apply to the fused mode; the exact mode runs the model as it is "
                                 "(set its backend with cbcn.onebit.convert.set_backend)")
            self.dtype, self.backend, forward = example_input.dtype, "model", model
            self._static_in = example_input.detach().clone()
        self._forward = forward
        self._static_in.copy_(example_input)
        self._graph = None
        with torch.no_grad():
            if graphs:
                self._capture()
            else:
                self._static_out = forward(self._static_in)

    def _capture(self) -> None:
        """Warm up on a side stream (compile, autotune, fill caches), then capture one forward."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self._forward(self._static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._static_out = self._forward(self._static_in)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != self.input_shape or x.device != self.device:
            raise ValueError(f"this OneBitRunner was built for inputs {self.input_shape} on {self.device}, "
                             f"got {tuple(x.shape)} on {x.device}; build one per shape")
        with torch.no_grad():
            self._static_in.copy_(x)
            if self._graph is not None:
                self._graph.replay()
                return self._static_out.clone()
            return self._forward(self._static_in).clone()

    def __repr__(self) -> str:
        return (f"OneBitRunner(mode={self.mode}, backend={self.backend}, dtype={self.dtype}, graphs={self.graphs}, "
                f"input={self.input_shape}, device={self.device})")
