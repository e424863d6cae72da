"""Whole-model 1-bit execution: the backbones' binary blocks run as fused binary convolutions.

After ``convert_to_onebit`` has packed the binary convs, ``fuse_blocks`` swaps the blocks that
hold them for versions whose forward hands each conv its whole epilogue (``Epilogue``): the
batch-norm after it, the residual add, LeNet's max-pool and ReLU and the next unit's
batch-norm, and the packed signs for the next binary conv. On the CPU engine each binary layer
is then one pass over packed bits with no float tensor in between, and no NCHW <-> NHWC round
trip: real activations are channels-last, packed ones NHWC.

The swapped modules keep the original children under the original names, so state dicts,
1-bit checkpoints and ``set_backend`` see the same model. The arithmetic is the training
model's, step by step (see ``cbcn.onebit.backends.epilogue``), so the logits stay bit-identical; a
block whose layout does not match what is fused here is left as it is (still exact, unfused).

- ResNet/WRN ``BasicBlock`` (binary methods; standard or double shortcuts, SPEC §4):
  ``y = bn1(conv1(x)) [+ identity]``, ``out = bn2(conv2(y)) + (identity | y)``.
- LeNet units ``[BN → sign → conv → max-pool → ReLU]``: each binary conv's epilogue runs its
  own pool and ReLU and the next unit's BN, and writes the signs the next conv reads.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cbcn.nn.models import BasicBlock, LeNet, ResNet
from cbcn.onebit.backends.epilogue import BatchNormEval, Epilogue
from cbcn.onebit.convert import OneBitConv2d, attach_packed_signs, carried_packed_signs


def batchnorm_eval(bn: nn.BatchNorm2d) -> BatchNormEval:
    """The ``BatchNormEval`` of ``bn``, kept on the module (its affine is cached there) and rebuilt
    when the module's tensors are replaced (``.to()``, ``load_state_dict(assign=True)``). While
    torch.compile / torch.export trace, the module's tensors are stand-ins: the kept one is used
    (its affine, a constant of the graph: ``contract.derived``)."""
    cached = bn.__dict__.get("_cbcn_bn_eval")
    if cached is not None and torch.compiler.is_compiling():
        return cached
    if cached is None or cached.running_mean is not bn.running_mean or cached.running_var is not bn.running_var \
            or cached.weight is not (bn.weight if bn.affine else None):
        cached = BatchNormEval.from_module(bn)
        bn.__dict__["_cbcn_bn_eval"] = cached
    return cached


class OneBitBasicBlock(BasicBlock):
    """A binary ``BasicBlock`` whose two convs each run with their batch-norm and residual fused
    (float32 activations; other dtypes run the block unfused, as ``BasicBlock.forward``)."""

    def __init__(self, block: BasicBlock):
        nn.Module.__init__(self)
        self.full_precision, self.shortcut_kind = block.full_precision, block.shortcut_kind
        self.conv1, self.bn1, self.conv2, self.bn2 = block.conv1, block.bn1, block.conv2, block.bn2
        self.downsample = block.downsample
        # set by fuse_blocks: the last block writes NCHW, the training model's layout, because the
        # pooling after it sums in layout order; and no packed signs (no binary conv follows)
        self.output_format = torch.channels_last
        self.emit_packed = True

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """The downsampling shortcut on the training model's NCHW layout: its 1x1 full-precision
        conv rounds its float sums in layout order. The average pool before it gives the same
        values in any layout, so it runs first, on channels-last, and only its 4x smaller output
        is transposed."""
        ds = self.downsample
        if ds is None:
            return x
        pool, *rest = ds  # (no ds[1:]: slicing a Sequential builds a new module on every call)
        if _is_avgpool2(pool) and x.dtype == torch.float32:  # the pooling, NHWC in, NCHW out, one pass
            y, _ = self.conv1.ops(x.device).run_epilogue(x, Epilogue(pool="avg2"), torch.contiguous_format)
        elif isinstance(pool, nn.AvgPool2d):
            y = pool(x).contiguous()
        else:
            return ds(x.contiguous())
        for module in rest:
            y = module(y)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            return super().forward(x)
        return attach_packed_signs(*self.forward_packed(x))

    def forward_packed(self, x: torch.Tensor, x_packed: torch.Tensor | None = None):
        """``(out, out_packed)`` of input ``x`` whose packed signs are ``x_packed`` (packed here
        when ``None`` and not carried by ``x``); ``out_packed`` is ``None`` without ``emit_packed``."""
        identity = self.shortcut(x)
        ops = self.conv1.ops(x.device)
        x_packed = self.conv1.pack_input(x, ops, x_packed)
        bn1, bn2 = batchnorm_eval(self.bn1), batchnorm_eval(self.bn2)
        if self.shortcut_kind == "double":
            y, y_packed = self.conv1.run(x_packed, Epilogue(bn=bn1, residual=identity, packed=True), ops=ops)
            shortcut = y
        else:
            _, y_packed = self.conv1.run(x_packed, Epilogue(bn=bn1, real=False, packed=True), ops=ops)
            shortcut = identity
        return self.conv2.run(y_packed, Epilogue(bn=bn2, residual=shortcut, packed=self.emit_packed),
                              self.output_format, ops=ops)


class OneBitBlocks(nn.Sequential):
    """A ResNet's blocks, each fused block handing its packed signs to the next explicitly (the
    same as carrying them on the tensor, and what a torch.compile trace can follow)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            return super().forward(x)
        packed = carried_packed_signs(x)
        for block in self:
            if isinstance(block, OneBitBasicBlock):
                x, packed = block.forward_packed(x, packed)
            else:
                x, packed = block(x), None
        return attach_packed_signs(x, packed)


class OneBitStem(nn.Sequential):
    """The CIFAR stem ``[full-precision conv, BN]`` of a binary ResNet: the conv as in the training
    model, then its batch-norm, the channels-last output and the first binary conv's packed
    signs in one pass (``run_epilogue``; float32 only, other dtypes unfused)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            return super().forward(x)
        conv, bn = self[0], self[1]
        real, packed = self.ops(x.device).run_epilogue(conv(x), Epilogue(bn=batchnorm_eval(bn), packed=True))
        return attach_packed_signs(real, packed)

    def ops(self, device):
        return self.first_binary_conv.ops(device)


def _is_fusable_block(block) -> bool:
    return isinstance(block, BasicBlock) and not block.full_precision and \
        isinstance(block.conv1, OneBitConv2d) and isinstance(block.conv2, OneBitConv2d)


def _lenet_unit_fusable(unit) -> bool:
    return isinstance(unit, nn.Sequential) and len(unit) == 4 and isinstance(unit[0], nn.BatchNorm2d) and \
        isinstance(unit[1], OneBitConv2d) and isinstance(unit[2], nn.MaxPool2d) and isinstance(unit[3], nn.ReLU) \
        and _is_maxpool2(unit[2])


def _lenet_unit_fusable_first(unit) -> bool:
    return isinstance(unit, nn.Sequential) and len(unit) == 3 and isinstance(unit[1], nn.MaxPool2d) and \
        isinstance(unit[2], nn.ReLU) and _is_maxpool2(unit[1])


def _is_avgpool2(pool) -> bool:
    """``AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)``: the shortcut's pooling (SPEC §4)."""
    return isinstance(pool, nn.AvgPool2d) and pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2)) \
        and pool.padding in (0, (0, 0)) and pool.ceil_mode and not pool.count_include_pad \
        and pool.divisor_override is None


def _is_maxpool2(pool: nn.MaxPool2d) -> bool:
    """``MaxPool2d(2)``: the pooling the epilogue fuses."""
    return pool.kernel_size in (2, (2, 2)) and pool.stride in (2, (2, 2)) and pool.padding in (0, (0, 0)) \
        and pool.dilation in (1, (1, 1)) and not pool.ceil_mode


class OneBitLeNetUnits(nn.Sequential):
    """LeNet's units with each binary conv fused to its pool, ReLU and the next unit's BN
    (float32 activations; other dtypes run them unfused)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            return super().forward(x)
        units = list(self)
        first, conv = units[0], units[1][1]
        ops = conv.ops(x.device)
        if _lenet_unit_fusable_first(first):  # its pool and ReLU, the next BN and the packing in one pass
            ep = Epilogue(pool="max2", relu=True, bn=batchnorm_eval(units[1][0]), real=False, packed=True)
            _, packed = ops.run_epilogue(first[0](x), ep)
        else:
            packed = conv.pack_input(units[1][0](first(x)), ops)
        for i in range(1, len(units)):
            conv = units[i][1]
            nxt = units[i + 1] if i + 1 < len(units) else None
            ep = Epilogue(pool="max2", relu=True, bn=batchnorm_eval(nxt[0]) if nxt is not None else None,
                          real=nxt is None, packed=nxt is not None)
            h, packed = conv.run(packed, ep, torch.contiguous_format)
        return h


def fuse_blocks(model: nn.Module) -> int:
    """Swap ``model``'s binary blocks for their fused versions in place; returns how many."""
    fused = 0
    if isinstance(model, ResNet):
        blocks = list(model.blocks)
        stem = list(model.stem)
        if blocks and _is_fusable_block(blocks[0]) and len(stem) == 2 and isinstance(stem[1], nn.BatchNorm2d):
            model.stem = OneBitStem(*stem)
            model.stem.__dict__["first_binary_conv"] = blocks[0].conv1  # not a child: no new state
            fused += 1
        for i, block in enumerate(blocks):
            if _is_fusable_block(block):
                new = OneBitBasicBlock(block)
                last = i == len(blocks) - 1
                new.output_format = torch.contiguous_format if last else torch.channels_last
                new.emit_packed = not last and _is_fusable_block(blocks[i + 1])
                model.blocks[i] = new
                fused += 1
        if isinstance(model.blocks, nn.Sequential) and not isinstance(model.blocks, OneBitBlocks):
            model.blocks = OneBitBlocks(*model.blocks)  # the same children: the same state dict
    elif isinstance(model, LeNet):
        units = list(model.units)
        if len(units) > 1 and all(_lenet_unit_fusable(u) for u in units[1:]):
            model.units = OneBitLeNetUnits(*units)
            fused = len(units) - 1
    return fused
