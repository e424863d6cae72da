"""A 1-bit model as a PyTorch program: ``torch.export``, ``torch.compile`` and ``cbcn export``.

On the CPU engine's native path every binary layer of a converted model is a call of the ``cbcn``
operators (``cbcn.onebit.backends.cpu.operators``), which have fake implementations, so:

- ``torch.export.export(model, (x,))`` traces the model (dynamic batch included), and the
  exported program, run eagerly, gives logits ``torch.equal`` to the model's: it makes the same
  operator calls and the same PyTorch ops;
- ``torch.compile(model, fullgraph=True)`` compiles it, the operators opaque in the graph;
- ``write_package`` (``cbcn export CHECKPOINT OUT.pt2``) compiles the exported program with
  AOTInductor into one ``.pt2`` file that a Python process loads with ``cbcn.onebit.ops`` and
  runs with no Python per layer and none of cbcn's model code.

The derived tensors the eager model caches (CBConv banks, per-channel scales, batch-norm affines)
are computed in the traced graph from the model's own parameters, so a compiled or exported
model is never stale.

Agreement, not equality, for the compiled forms: Inductor generates its own kernels for the
full-precision parts around the operators (the stem, the shortcuts' 1×1 convs and pooling, the
classifier), whose float rounding can differ from eager PyTorch's in the last bit; a flipped sign
before a binary layer then changes the logits. ``agreement`` measures it (largest absolute logit
difference, argmax agreement); the eager model stays the exact reference mode.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from cbcn.onebit.backends.cpu import operators
from cbcn.onebit.convert import OneBitConv2d

DEFAULT_MAX_BATCH = 4096


def operator_problem(model: nn.Module) -> str | None:
    """Why ``model`` cannot run as ``cbcn`` operators — naming the first layer that cannot — or
    ``None`` if it can."""
    from cbcn.onebit.backends import cpu

    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, OneBitConv2d)]
    if not layers:
        return "the model has no 1-bit layer (cbcn.onebit.convert.convert_to_onebit first)"
    for name, layer in layers:
        if layer.packed_weight.device.type != "cpu":
            return f"layer {name} is on {layer.packed_weight.device}; the cbcn operators run CPU tensors"
        ops = layer.ops(torch.device("cpu"))
        if ops.name != "cpu" or cpu.engine_path() != "native":
            return (f"layer {name} runs on {ops.describe()}, not on the cbcn operators (the CPU engine's native path); "
                    f"set_backend(model, 'cpu') and build the native engine (a C compiler, ninja)")
    return None


def _example_batch(example: torch.Tensor) -> torch.Tensor:
    """At least two images: export specialises a batch of 1 to the constant 1."""
    return example.repeat(2, 1, 1, 1) if example.shape[0] == 1 else example


def export_program(model: nn.Module, example: torch.Tensor, max_batch: int = DEFAULT_MAX_BATCH,
                   require_operators: bool = True):
    """``torch.export.export`` of a converted model with a dynamic batch dimension (1 to
    ``max_batch``); ``ValueError`` naming the layer if one cannot run as ``cbcn`` operators
    (``require_operators=False``: any model, e.g. a float anchor)."""
    problem = operator_problem(model) if require_operators else None
    if problem:
        raise ValueError(f"cannot export: {problem}")
    model.eval()
    example = _example_batch(example)
    with torch.no_grad():
        model(example)  # builds and loads the engine, finds the batch-norm mode, outside the trace
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    return torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})


def write_package(model: nn.Module, example: torch.Tensor, path: str | os.PathLike,
                  max_batch: int = DEFAULT_MAX_BATCH, require_operators: bool = True) -> Path:
    """The AOTInductor package of ``model`` at ``path`` (written atomically); its path."""
    program = export_program(model, example, max_batch, require_operators)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # staged under its own name (the package's folders are named after the file) beside the target,
    # then moved into place in one step: an interrupted export leaves no partial package
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        staged = Path(tmp) / path.name
        configs = {"aot_inductor.metadata": {"needs": "import cbcn.onebit.ops before loading"}}
        if require_operators:  # the package calls the operators' C shims directly
            configs["aot_inductor.custom_ops_to_c_shims"] = operators.aoti_shims()
        torch._inductor.aoti_compile_and_package(program, package_path=str(staged), inductor_configs=configs)
        os.replace(staged, path)
    return path


@dataclass
class Agreement:
    """How a compiled form's logits compare with the eager 1-bit model's on the same inputs."""

    inputs: int
    equal: bool  # every logit bit-identical
    max_abs_logit_diff: float
    argmax_agreement: float  # fraction of inputs with the same predicted class

    def __str__(self) -> str:
        if self.equal:
            return f"logits torch.equal to the eager model on {self.inputs} inputs"
        return (f"largest |logit difference| {self.max_abs_logit_diff:.3g}, argmax agreement "
                f"{self.argmax_agreement:.4%} on {self.inputs} inputs")


def agreement(reference, candidate, batches) -> Agreement:
    """``candidate``'s logits against ``reference``'s over an iterable of input batches."""
    n = agree = 0
    equal, worst = True, 0.0
    with torch.no_grad():
        for x in batches:
            a, b = reference(x), candidate(x)
            equal = equal and torch.equal(a, b)
            worst = max(worst, (a - b).abs().max().item())
            agree += (a.argmax(1) == b.argmax(1)).sum().item()
            n += x.shape[0]
    return Agreement(n, equal, worst, agree / max(n, 1))


def random_batches(shape: tuple[int, int, int], inputs: int, batch: int = 500, seed: int = 0):
    """``inputs`` standard-normal images of ``shape`` (C, H, W) in batches, reproducibly."""
    g = torch.Generator().manual_seed(seed)
    for start in range(0, inputs, batch):
        yield torch.randn(min(batch, inputs - start), *shape, generator=g)


# --- cbcn export --------------------------------------------------------------------------------
def load_for_export(path: str | os.PathLike) -> tuple[nn.Module, tuple[int, int, int], str]:
    """A 1-bit checkpoint (``save_onebit``) or a training checkpoint (converted here) as a 1-bit
    model on the CPU engine, with its input shape (C, H, W) and a title."""
    from cbcn.onebit.convert import FORMAT, convert_to_onebit, load_onebit
    from cbcn.training.checkpoint import CheckpointError, read_torch_file

    obj = read_torch_file(path, what="checkpoint")
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        model = load_onebit(path, backend="cpu")
        build = obj["build"]
        image = build.get("image_size", 224 if build.get("stem") == "imagenet" else 32)
        return model, (build.get("in_channels", 3), image, image), f"1-bit checkpoint {Path(path).name}"
    if isinstance(obj, dict) and "config" in obj and "model" in obj:
        from cbcn.data import dataset_info
        from cbcn.training.train import load_trained_model

        trained, config, _ = load_trained_model(path)
        info = dataset_info(config.dataset)
        model = convert_to_onebit(trained, backend="cpu")
        return model, (info.in_channels, info.image_size, info.image_size), f"training checkpoint {Path(path).name}"
    raise CheckpointError(f"{path} is neither a 1-bit checkpoint ({FORMAT}) nor a cbcn training checkpoint")
