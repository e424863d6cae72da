"""``cbcn summary``: per-layer rows that add up to the hardware profile's totals, FLOPs that match
``torch.utils.flop_counter``, 1-bit bytes that match the saved checkpoint, and the command line."""
import json
import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from cbcn import cli
from cbcn.harness.cost import count_operations, model_bytes
from cbcn.harness.summary import CONVENTIONS, summarize, summary_of_checkpoint
from cbcn.nn.methods import METHODS
from cbcn.nn.models import build_model
from cbcn.onebit.convert import convert_to_onebit, save_onebit

BACKBONES = [  # name, extra build arguments, input shape
    ("lenet", dict(stages=(2, 3, 4, 5), in_channels=1), (1, 32, 32)),
    ("resnet18", dict(stages=(2, 2, 4, 4)), (3, 16, 16)),
    ("resnet18", dict(stages=(2, 2, 4, 4), stem="imagenet"), (3, 32, 32)),
    ("wrn22", dict(stages=(2, 2, 4, 4)), (3, 16, 16)),
]


def _build(name, kwargs, method):
    return build_model(name, method=method, K=4 if method == "cbcn" else 1, **kwargs)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("name,kwargs,shape", BACKBONES, ids=["lenet", "resnet18", "resnet18-imagenet", "wrn22"])
def test_rows_add_up_to_the_hardware_profile(name, kwargs, shape, method):
    model = _build(name, kwargs, method)
    s = summarize(model, shape)
    ops, size = count_operations(model, shape), model_bytes(model)
    rows = s.layers
    assert s.totals["bops"] == rows["bops"].sum() == ops["bops"]
    assert s.totals["macs_real"] == rows["macs_real"].sum() == ops["macs_real"]
    assert s.totals["ops"] == ops["ops"]
    assert s.totals["fp32_bytes"] == size["fp32_bytes"] == 4 * rows["fp32_values"].sum()
    assert s.totals["onebit_bytes"] == size["onebit_bytes"]
    assert s.totals["onebit_bytes"] == math.ceil(rows["binary_params"].sum() / 8) + 4 * rows["real_params"].sum()
    assert s.totals["binary_params"] == size["binary_weights"]
    assert sum(s.totals["onebit_parts_bytes"].values()) == s.totals["onebit_bytes"]
    # every parameter and float buffer of the model is on some row
    assert rows["fp32_values"].sum() == size["parameters"] + size["float_buffers"]
    if method == "cbcn":  # the K-sum form does 1/K of the full bank's BOPs
        assert s.totals["bops_ksum"] * 4 == s.totals["bops"] > 0
    for fmt in ("table", "markdown", "csv", "json"):
        assert s.render(fmt)


@pytest.mark.parametrize("name,kwargs,shape", BACKBONES, ids=["lenet", "resnet18", "resnet18-imagenet", "wrn22"])
def test_fp_macs_equal_torch_flop_counter(name, kwargs, shape):
    """For a float model the MACs are what ``FlopCounterMode`` counts (2 FLOPs per MAC), measured
    the same way: one eval forward of one image."""
    model = _build(name, kwargs, "fp").eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *shape))
    assert summarize(model, shape).totals["macs_real"] * 2 == counter.get_total_flops()


def test_onebit_bytes_add_up_to_the_saved_checkpoint(tmp_path):
    model = build_model("resnet18", method="cbcn", stages=(2, 2, 4, 4), K=4).eval()
    path = tmp_path / "m.onebit.pt"
    size = save_onebit(convert_to_onebit(model), path)
    s = summary_of_checkpoint(path)
    t = s.totals
    stored = torch.load(path, weights_only=True)["state"]
    payload = stored["bits"].numel() + sum(b.numel() * b.element_size() for b in stored["blobs"].values())
    # the byte column is what the checkpoint stores, less the container
    assert t["onebit_bytes"] == payload == t["checkpoint_payload_bytes"]
    assert t["checkpoint_file_bytes"] == size == payload + t["checkpoint_container_bytes"]
    assert 0 < t["checkpoint_container_bytes"] < 8192
    assert summarize(model, (3, 32, 32)).totals["onebit_bytes"] == t["onebit_bytes"]


SMOKE = ["--profile", "smoke", "--stages", "2-4-4-8", "--max-train-samples", "64", "--max-test-samples", "32",
         "--device", "cpu", "--progress", "none"]


def test_command_on_options_and_on_both_checkpoint_kinds(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CBCN_DATA", raising=False)
    assert cli.main(["summary", "--model", "resnet18", "--method", "cbcn", "-K", "4", "--stages", "16-16-32-64"]) == 0
    out = capsys.readouterr().out
    assert "resnet18 16-16-32-64 cbcn K=4" in out and "16->16 maps = 64->64" in out and "ratio" in out
    assert CONVENTIONS[:40] in out
    assert cli.main(["summary", "--model", "lenet", "--method", "xnor", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["bops"] > 0 and data["layers"][0]["name"] == "units.0.0"
    # a training checkpoint
    run = tmp_path / "run"
    assert cli.main(["train", *SMOKE, "--method", "bnn", "--output", str(run)]) == 0
    capsys.readouterr()
    assert cli.main(["summary", str(run / "last.pt"), "--format", "csv"]) == 0
    csv = capsys.readouterr().out
    assert csv.splitlines()[0].startswith("layer,type,input,weights") and "1-bit" in csv
    # a 1-bit checkpoint
    model = build_model("lenet", method="xnor", stages=(2, 2, 4, 4), in_channels=1)
    save_onebit(convert_to_onebit(model), tmp_path / "x.onebit.pt")
    assert cli.main(["summary", str(tmp_path / "x.onebit.pt"), "--format", "markdown"]) == 0
    assert "1-bit checkpoint file:" in capsys.readouterr().out


def test_bad_input_is_one_line_and_non_zero(tmp_path, capsys):
    (tmp_path / "corrupt.pt").write_bytes(b"not a torch file at all")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    for argv, expected in (
        (["summary", str(tmp_path / "missing.pt")], "no checkpoint at"),
        (["summary", str(tmp_path / "corrupt.pt")], "corrupt"),
        (["summary", str(tmp_path / "other.pt")], "neither a cbcn training checkpoint nor a 1-bit checkpoint"),
        (["summary", "--model", "resnet18", "--method", "xnor", "-K", "4"], "K=4 needs circulant layers"),
    ):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(SystemExit) as e:  # argparse: an unknown model names the valid ones
        cli.main(["summary", "--model", "vgg"])
    assert e.value.code == 2 and "invalid choice: 'vgg'" in capsys.readouterr().err
