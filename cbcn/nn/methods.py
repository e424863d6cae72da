"""The binarization methods compared in the paper, as plain data (SPEC §3).

One ``MethodSpec`` per method says what a binary-conv layer does: which operands are binarized,
whether the XNOR-Net scale α is applied, which surrogate gradients are used, whether the layer is
a circulant (CBConv) layer and which residual shortcut the backbones use. The Table 3 ablation
switches (``cbconv``, ``shortcut``, ``act_surrogate``, ``weight_surrogate``) override these
defaults one by one.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

SHORTCUTS = ("standard", "double")

#: the Table 3 ablation switches, in ``MethodSpec.with_switches`` order: the one list of their names
SWITCHES = ("cbconv", "shortcut", "act_surrogate", "weight_surrogate")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    binary_weights: bool
    binary_acts: bool
    scaled: bool  # α = mean|W| per output map (XNOR-Net)
    act_surrogate: str | None
    weight_surrogate: str | None
    cbconv: bool  # circulant filters (CiF) instead of plain filters
    shortcut: str  # "standard": one per block; "double": one per conv (Bi-Real, CBCN Fig. 7)
    description: str
    bases: bool = False  # ABC-Net: weights and activations as sums of M / N shifted binary bases
    default_K: int = 1  # orientations when none are asked for: CBCN's is the paper's K = 4 (Sec. 4.1)

    def with_switches(self, cbconv=None, shortcut=None, act_surrogate=None, weight_surrogate=None) -> "MethodSpec":
        """The spec with the Table 3 ablation switches applied (``None`` keeps the default)."""
        if shortcut is not None and shortcut not in SHORTCUTS:
            raise ValueError(f"unknown shortcut {shortcut!r}; valid choices: {list(SHORTCUTS)}")
        if act_surrogate is not None and not self.binary_acts:
            raise ValueError(f"method {self.name!r} keeps activations real: act_surrogate does not apply")
        if weight_surrogate is not None and not self.binary_weights:
            raise ValueError(f"method {self.name!r} keeps weights real: weight_surrogate does not apply")
        changes = {
            k: v
            for k, v in dict(
                cbconv=cbconv, shortcut=shortcut, act_surrogate=act_surrogate, weight_surrogate=weight_surrogate
            ).items()
            if v is not None
        }
        return replace(self, **changes)


METHODS: dict[str, MethodSpec] = {
    m.name: m
    for m in [
        MethodSpec("fp", False, False, False, None, None, False, "standard", "full precision"),
        MethodSpec("bnn", True, True, False, "ste", "ste", False, "standard", "BinaryNet: sign weights and activations, no scale"),
        MethodSpec("bwn", True, False, True, None, "ste", False, "standard", "binary-weight network: sign(W)·α, real activations"),
        MethodSpec("xnor", True, True, True, "ste", "ste", False, "standard", "XNOR-Net: sign weights and activations, α per output channel"),
        MethodSpec("bireal", True, True, True, "approx", "ste", False, "double", "Bi-Real Net: XNOR + polynomial gradient + a shortcut per conv"),
        MethodSpec("cbcn", True, True, True, "gauss", "gauss", True, "double", "CBCN: circulant binary filters, Gaussian gradient (Eq. 10), doubled shortcuts",
                   default_K=4),
        MethodSpec("abcnet", True, True, True, "ste", "ste", False, "standard",
                   "ABC-Net: M shifted binary weight bases (least-squares α), N shifted binary activations "
                   "(learned β, v)", bases=True),
    ]
}


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; valid choices: {list(METHODS)}") from None
