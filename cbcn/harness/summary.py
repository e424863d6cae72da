"""``cbcn summary``: one row per layer of a model — precision, shapes, parameters, bytes, operations.

What larq's ``lq.models.summary`` shows for a Keras model, for cbcn's models: each layer's input
and weight precision, CBConv's learned maps beside the physical channels, the output shape, the
binary and 32-bit values it stores, its bytes in the 1-bit checkpoint, its binary operations
(BOPs) and real multiply-accumulates, then the totals: the fp32 and 1-bit sizes, their ratio,
and how much of the 1-bit bytes the non-binary parts take (what limits the ratio).

The rows are ``cbcn.harness.cost.layer_costs`` records — the hardware profile's own counting code —
so they add up to the profile's totals (tested for every method). A model comes from the same
options as ``cbcn train``, from a training checkpoint, or from a 1-bit checkpoint.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch.nn as nn

from cbcn.harness.cost import byte_totals, layer_costs, operation_totals

CONVENTIONS = (
    "One row per layer that stores values or does counted operations (pooling, activations and "
    "additions are not listed). BOPs: multiply-accumulates of layers whose weights and activations "
    "are both binary, one XNOR+popcount lane each, counted at the physical width C_in·K × C_out·K "
    "for CBConv layers (the full CiF bank of the paper's cost model); bops_ksum: the same layers in "
    "CBConv's K-sum form (the K identical input copies of each filter folded away: 1/K of the BOPs, "
    "done as small-integer MACs; what the int8/fp8 GPU paths and the reference execute — the CPU "
    "engine's XOR+popcount executes the full bank). real MACs: every other conv and linear layer. "
    "OPs = FLOPs + BOPs/64 with FLOPs = 2 × real MACs (the field's convention). binary_params: "
    "weights stored at 1 bit; real_params: the 32-bit values a 1-bit model keeps (parameters, "
    "batch-norm statistics, α per learned map). onebit_bytes: binary_params/8 + 4·real_params "
    "(the 1-bit checkpoint packs all binary weights densely, so its payload is "
    "ceil(Σ binary_params / 8) + 4·Σ real_params); fp32 bytes: 4 per parameter and float buffer.")

PARTS = ("binary weights (1 bit each)", "alpha (per learned map)", "binary-layer biases",
         "ABC-Net alphas and activation shifts/scales", "batch-norm",
         "full-precision convs (stem, shortcuts)", "classifier", "other")


@dataclass
class Summary:
    """A model's per-layer table and totals, with renderers for the terminal, Markdown, CSV, JSON."""

    title: str
    input_shape: tuple[int, ...]
    layers: pd.DataFrame
    totals: dict
    notes: list[str] = field(default_factory=list)

    def table(self) -> pd.DataFrame:
        """The rows as displayed (shapes and maps as text)."""
        df = self.layers.copy()
        cols = {"name": "layer", "type": "type", "input_precision": "input", "weight_precision": "weights",
                "maps -> physical": "maps -> physical", "output": "output", "binary_params": "binary params",
                "real_params": "real params", "onebit_bytes": "1-bit bytes", "bops": "BOPs", "bops_ksum": "BOPs (K-sum)",
                "macs_real": "real MACs"}
        return df[list(cols)].rename(columns=cols)

    def totals_lines(self) -> list[str]:
        t = self.totals
        lines = [
            f"total: {t['binary_params']:,} binary params, {t['real_params']:,} real params; "
            f"{t['bops']:,} BOPs ({t['bops_ksum']:,} in the K-sum form), {t['macs_real']:,} real MACs, "
            f"{t['ops']:,.0f} OPs per image of {'x'.join(map(str, self.input_shape))}",
            f"size: fp32 {t['fp32_bytes']:,} B, 1-bit {t['onebit_bytes']:,} B, ratio {t['compression']:.2f}x; "
            f"the non-binary parts take {100 * t['non_binary_share']:.1f} % of the 1-bit bytes: "
            + ", ".join(f"{k} {v:,} B" for k, v in t["onebit_parts_bytes"].items() if v and not k.startswith("binary w")),
        ]
        if "checkpoint_file_bytes" in t:
            lines.append(f"1-bit checkpoint file: {t['checkpoint_file_bytes']:,} B = payload {t['checkpoint_payload_bytes']:,} B "
                         f"+ container {t['checkpoint_container_bytes']:,} B (zip, pickle, build arguments)")
        return lines + self.notes

    def to_text(self) -> str:
        body = self.table().to_string(index=False, formatters=_FORMATTERS)
        return "\n".join([self.title, body, *self.totals_lines(), f"conventions: {CONVENTIONS}"]) + "\n"

    def to_markdown(self) -> str:
        body = self.table().to_markdown(index=False, floatfmt=",.3f", intfmt=",")
        return "\n".join([f"**{self.title}**", "", body, "", *[f"- {s}" for s in self.totals_lines()], "",
                          f"*{CONVENTIONS}*", ""])

    def to_csv(self) -> str:
        return self.table().to_csv(index=False)

    def to_json(self) -> str:
        return json.dumps({"title": self.title, "input_shape": list(self.input_shape),
                           "layers": self.layers.to_dict(orient="records"), "totals": self.totals,
                           "notes": self.notes, "conventions": CONVENTIONS}, indent=1, default=str)

    def render(self, fmt: str) -> str:
        renderers = {"table": self.to_text, "markdown": self.to_markdown, "csv": self.to_csv, "json": self.to_json}
        if fmt not in renderers:
            raise ValueError(f"unknown summary format {fmt!r}; valid: {list(renderers)}")
        return renderers[fmt]()


_FORMATTERS = {c: (lambda v: f"{v:,}" if isinstance(v, int) else f"{v:,.3f}".rstrip("0").rstrip("."))
               for c in ("binary params", "real params", "1-bit bytes", "BOPs", "BOPs (K-sum)", "real MACs")}


def _part(r: dict) -> str:
    if r["type"] == "Linear":
        return "classifier"
    if r["type"].startswith("BatchNorm"):
        return "batch-norm"
    if r["type"] in ("BinaryConv2d", "Conv2d") and not r["binary_weights"]:
        return "full-precision convs (stem, shortcuts)"
    return "other"


def summarize(model: nn.Module, input_shape: tuple[int, ...], title: str | None = None) -> Summary:
    """The per-layer summary of ``model`` for one input image of ``input_shape`` (C, H, W)."""
    records = layer_costs(model, tuple(input_shape))
    rows = []
    parts = dict.fromkeys(PARTS, 0)
    bits = 0
    for r in records:
        bits += r["binary_weights"]
        row = dict(r)
        row["binary_params"] = r["binary_weights"]
        row["real_params"] = r["onebit_values"]
        row["onebit_bytes"] = r["binary_weights"] / 8 + 4 * r["onebit_values"]
        row["bops"] = r["macs"] if r["binary"] else 0
        row["bops_ksum"] = r["macs_ksum"] if r["binary"] else 0
        row["macs_real"] = 0 if r["binary"] else r["macs"]
        row["output"] = "x".join(map(str, r["output_shape"])) if r["output_shape"] else ""
        row["maps -> physical"] = (
            f"{r['in_maps']}->{r['out_maps']} maps = {r['in_channels']}->{r['out_channels']}" if r["K"] > 1
            else f"{r['in_channels']}->{r['out_channels']}" if r["in_channels"] is not None else "")
        rows.append(row)
        if r["binary_weights"]:
            module = dict(model.named_modules())[r["name"]]
            if getattr(module, "bases", False):  # M α's, N shifts v and N scales β, then the bias
                bases = module.weight_bases + 2 * module.act_bases
                parts["ABC-Net alphas and activation shifts/scales"] += 4 * bases
                parts["binary-layer biases"] += 4 * (r["onebit_values"] - bases)
                continue
            alpha = module.out_maps if getattr(module, "scaled", False) else 0
            parts["alpha (per learned map)"] += 4 * alpha
            parts["binary-layer biases"] += 4 * (r["onebit_values"] - alpha)
        else:
            parts[_part(r)] += 4 * r["onebit_values"]
    parts["binary weights (1 bit each)"] = math.ceil(bits / 8)
    ops, sizes = operation_totals(records), byte_totals(records)
    totals = {
        "binary_params": sum(r["binary_params"] for r in rows), "real_params": sum(r["real_params"] for r in rows),
        "bops": ops["bops"], "bops_ksum": sum(r["bops_ksum"] for r in rows), "macs_real": ops["macs_real"],
        "flops": ops["flops"], "ops": ops["ops"], **sizes,
        "non_binary_share": 1 - parts["binary weights (1 bit each)"] / sizes["onebit_bytes"] if sizes["onebit_bytes"] else None,
        "onebit_parts_bytes": parts,
    }
    if title is None:
        title = model_title(model)
    return Summary(title, tuple(input_shape), pd.DataFrame(rows), totals)


def model_title(model: nn.Module) -> str:
    name = getattr(model, "name", type(model).__name__)
    method, K, stages = getattr(model, "method", ""), getattr(model, "K", 1), getattr(model, "stages", ())
    k = f" K={K}" if method == "cbcn" or K > 1 else ""
    return f"{name} {'-'.join(map(str, stages))} {method}{k}".strip()


# --- models from files ------------------------------------------------------------------------
def _input_shape_for(dataset: str, model_name: str) -> tuple[int, int, int]:
    from cbcn.data import dataset_info

    info = dataset_info(dataset)
    return (info.in_channels, info.image_size, info.image_size)


def summary_of_checkpoint(path: str | Path) -> Summary:
    """A training checkpoint (``cbcn train``'s ``last.pt``) or a 1-bit checkpoint (``save_onebit``)."""
    from cbcn.onebit.convert import FORMAT
    from cbcn.training.checkpoint import CheckpointError, read_torch_file

    obj = read_torch_file(path, what="checkpoint")
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return _summary_of_onebit(path, obj)
    if isinstance(obj, dict) and "config" in obj and "model" in obj:
        from cbcn.training.train import load_trained_model

        model, config, ckpt = load_trained_model(path)
        shape = _input_shape_for(config.dataset, config.model)
        s = summarize(model, shape, f"{model_title(model)} (training checkpoint {Path(path).name}, "
                                    f"epoch {ckpt.get('epoch')}, {config.dataset})")
        return s
    raise CheckpointError(f"{path} is neither a cbcn training checkpoint nor a 1-bit checkpoint "
                          f"(no 'config'/'model' entries and no format {FORMAT!r})")


def _summary_of_onebit(path, obj) -> Summary:
    """The architecture rebuilt from the checkpoint's build arguments (what the summary counts does
    not depend on the weights), and the file's own payload and container bytes."""
    import torch

    from cbcn.nn.models import build_model

    build = dict(obj["build"])
    name = build.pop("name")
    if build.get("stages") is not None:
        build["stages"] = tuple(build["stages"])
    model = build_model(name, **build)
    image = build.get("image_size", 224 if build.get("stem") == "imagenet" else 32)
    s = summarize(model, (build.get("in_channels", 3), image, image),
                  f"{model_title(model)} (1-bit checkpoint {Path(path).name})")
    state = obj["state"]
    payload = state["bits"].numel() * state["bits"].element_size() + sum(
        t.numel() * t.element_size() for t in state["blobs"].values() if isinstance(t, torch.Tensor))
    size = Path(path).stat().st_size
    s.totals.update(checkpoint_file_bytes=size, checkpoint_payload_bytes=payload,
                    checkpoint_container_bytes=size - payload)
    return s


# --- the report's per-layer sections ---------------------------------------------------------------
def record_summaries(records: list[dict]) -> list[Summary]:
    """One summary per distinct architecture among the results store's records (the report's
    collapsible per-model sections). The model is rebuilt from the record's experiment and
    stages: the summary counts shapes and sizes, which do not depend on the trained weights."""
    from cbcn.data import dataset_info
    from cbcn.nn.models import build_model

    seen, out = set(), []
    for r in records:
        e = r.get("experiment") or {}
        stages = tuple(r.get("model_stages") or e.get("stages") or ())
        switches = e.get("switches") or {}
        key = (e.get("model"), e.get("method"), e.get("K"), stages, e.get("dataset"), e.get("stem"),
               tuple(sorted(switches.items())))
        if key in seen or e.get("model") is None:
            continue
        seen.add(key)
        try:
            info = dataset_info(e["dataset"])
            model = build_model(e["model"], method=e["method"], stages=stages or None, K=e.get("K", 1),
                                num_classes=info.num_classes, in_channels=info.in_channels,
                                stem=e.get("stem") or "cifar",
                                image_size=info.image_size if e["model"] == "lenet" else 32, **switches)
        except (KeyError, ValueError):
            continue  # an experiment this cbcn cannot build (e.g. a method only quoted): no rows
        out.append(summarize(model, (info.in_channels, info.image_size, info.image_size),
                             f"{model_title(model)} on {e['dataset']}"))
    return out
