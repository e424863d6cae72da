"""The ``cbcn`` operators for a deployed 1-bit model, without cbcn's model code.

``import cbcn.onebit.ops`` loads (``load()``) the operator library (``cbcn::binary_conv2d``, ``cbcn::epilogue``,
``cbcn::pack_signs``; built on first use, which needs a C/C++ compiler and ninja) and this CPU's
fastest engine variant. ``load_package(path)`` then loads a package written by ``cbcn export``::

    import torch
    import cbcn.onebit.ops as cbcn_ops

    model = cbcn_ops.load_package("xnor.pt2")   # torch._inductor.aoti_load_package, checked
    logits = model(images)                        # float32 (N, C, H, W), any batch size

Nothing of ``cbcn.nn`` (the layers, the backbones) or ``cbcn.onebit.convert`` is imported: the
package holds the whole graph, its weights and its compiled C++; the operators are the only
code it needs from cbcn.
"""
from __future__ import annotations

import os

import torch

from cbcn.onebit.backends.cpu import native
from cbcn.onebit.backends.cpu.operators import OperatorsUnavailable

INSTALL_HINT = ("a cbcn export package calls the cbcn operators: `pip install cbcn` (with a C/C++ compiler and "
                "ninja) and `import cbcn.onebit.ops` before loading it")


def load() -> str:
    """Load the operators and this machine's engine (idempotent); a description such as
    ``native[avx2, openmp]``. ``OperatorsUnavailable`` (one line) if they cannot load here."""
    try:
        engine = native.load()
    except native.VariantError as exc:
        raise OperatorsUnavailable(str(exc)) from None
    if engine is None:
        raise OperatorsUnavailable(f"the cbcn operators cannot run here: {native.problem()}")
    return f"native[{engine.describe()}]"


class Package:
    """A loaded AOTInductor package as the callable ``model(x) -> logits``.

    One tensor in and one out run on the package's loader directly: the callable that
    ``aoti_load_package`` returns re-reads its input and output specs from text and walks them on
    every call: 40-90 us a forward on the AVX2 EPYC (engine variant avx2, 2026-12-07), as long as
    the arithmetic of all 16 binary layers of XNOR ResNet18 at batch 1 there. Any other call goes through that callable (``compiled``)."""

    def __init__(self, compiled):
        from torch.utils import _pytree as pytree

        self.compiled = compiled
        in_spec, out_spec = (pytree.treespec_loads(s) for s in compiled.loader.get_call_spec())
        self._direct = in_spec.num_leaves == 1 and out_spec.is_leaf()
        self._run = compiled.loader.run

    def __call__(self, *args, **kwargs):
        if self._direct and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
            return self._run([args[0]])[0]
        return self.compiled(*args, **kwargs)


def load_package(path: str | os.PathLike) -> Package:
    """A ``cbcn export`` package (``.pt2``), loaded with ``torch._inductor.aoti_load_package``
    after the operators (``Package``); one line (``OperatorsUnavailable`` / ``FileNotFoundError``)
    if it cannot run here."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such package: {path}")
    load()
    try:
        return Package(torch._inductor.aoti_load_package(os.fspath(path)))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "cbcn::" in first:
            raise OperatorsUnavailable(f"{first} ({INSTALL_HINT})") from None
        raise RuntimeError(f"{path} is not a loadable AOTInductor package here: {first}") from None


try:  # importing this module is how a deployment gets the operators (a failure is reported by load_package)
    load()
except OperatorsUnavailable:
    pass
