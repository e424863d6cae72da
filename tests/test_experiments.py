"""The paper's tables as experiments: every cell present with SPEC §6's number, selection, claims."""
import pytest

from cbcn.harness.experiments import (BY_ID, CLAIMS, EXPERIMENTS, INCONSISTENCIES, accuracy_of, get_experiment,
                                      paper_value, select)
from cbcn.training.profiles import PROFILES, get_profile


def test_every_cell_of_tables_2_to_5_is_an_experiment():
    counts = {t: sum(e.table == t for e in EXPERIMENTS) for t in (2, 3, 4, 5)}
    # T2: 5 rows x 6 columns; T3: 4 x 5; T4: 8 rows x 2 datasets + BNN, BWN (CIFAR10 only); T5: 6 methods
    assert counts == {2: 30, 3: 20, 4: 18, 5: 6}
    assert len(BY_ID) == len(EXPERIMENTS)


@pytest.mark.parametrize("exp_id, metric, value", [
    ("t2-mnist-lenet-5-10-20-40-xnor", "error", 3.76),
    ("t2-mnist-rot-lenet-5-10-20-40-xnor", "error", 17.26),
    ("t2-cifar10-rot-resnet18-32-64-128-256-cbcn", "error", 15.11),
    ("t2-cifar10-resnet18-16-16-32-64-cbcn", "error", 10.9),
    ("t3-xnor-convcomp", "accuracy", 76.3),
    ("t3-cbcn-k4-sg", "accuracy", 90.22),
    ("t3-cbcn-k8-scg", "accuracy", 92.02),
    ("t4-cifar10-resnet18-16-16-32-64-bnn", "accuracy", 89.85),
    ("t4-cifar100-wrn40-16-16-32-64-cbcn", "accuracy", 74.80),
    ("t4-cifar100-wrn22-16-16-32-64-fp", "accuracy", 67.19),
    ("t5-imagenet-resnet18-cbcn", "top5", 82.80),
    ("t5-imagenet-resnet18-abcnet", "top1", 42.7),
])
def test_paper_numbers_match_spec(exp_id, metric, value):
    assert get_experiment(exp_id).paper[metric] == value


def test_table_decisions():
    e = get_experiment("t2-mnist-lenet-5-10-20-40-cbcn")
    assert (e.method, e.K, e.switches, e.center_loss) == ("cbcn", 4, {}, None)
    assert get_experiment("t2-mnist-lenet-5-10-20-40-xnor").K == 1
    x = get_experiment("t3-xnor-convcomp")
    assert x.switches == {"cbconv": False, "shortcut": "standard", "act_surrogate": "ste", "weight_surrogate": "ste"}
    c = get_experiment("t3-cbcn-k2-convcomp")
    assert c.switches == {"cbconv": True, "shortcut": "standard", "act_surrogate": "approx", "weight_surrogate": "ste"}
    full = get_experiment("t3-cbcn-k8-scg")
    assert full.switches["shortcut"] == "double" and full.switches["act_surrogate"] == "gauss"
    assert full.switches["weight_surrogate"] == "gauss" and full.center_loss == 0.01 and full.K == 8
    assert get_experiment("t3-xnor-sc").center_loss == 0.01 and get_experiment("t3-xnor-sg").center_loss is None
    for m in ("bnn", "bwn"):
        e = get_experiment(f"t4-cifar10-resnet18-16-16-32-64-{m}")
        assert "no backbone/stage" in e.notes
        with pytest.raises(KeyError):
            get_experiment(f"t4-cifar100-resnet18-16-16-32-64-{m}")  # the paper has no number
    t5 = select(table=5)
    assert all(e.stages == (64, 128, 256, 512) and e.stem == "imagenet" for e in t5)
    assert {e.method for e in t5 if not e.quoted} == {"cbcn"}
    assert "ABC-Net" in get_experiment("t5-imagenet-resnet18-bnn").quoted_from
    abc = get_experiment("t5-imagenet-resnet18-abcnet")
    assert abc.runnable and abc.quoted and abc.not_runnable_reason is None
    assert all(e.runnable for e in EXPERIMENTS)  # every row of Tables 2-5


def test_identical_runs_share_a_config_key():
    key = get_experiment("t2-cifar10-resnet18-16-16-32-64-cbcn").config_key()
    assert get_experiment("t3-cbcn-k4-sg").config_key() == key
    assert get_experiment("t4-cifar10-resnet18-16-16-32-64-cbcn").config_key() == key
    assert get_experiment("t3-cbcn-k4-s").config_key() != key
    assert get_experiment("t3-cbcn-k4-scg").config_key() != key


def test_select_filters():
    assert len(select(table=3)) == 20
    assert [e.id for e in select(row="t3-cbcn-k4-*")] == [f"t3-cbcn-k4-{c}" for c in
                                                         ("convcomp", "s", "sc", "sg", "scg")]
    assert len(select(row="CBCN K=2")) == 5                       # the paper's row label
    assert {e.dataset for e in select(table=2, dataset=["mnist", "mnist-rot"])} == {"mnist", "mnist-rot"}
    assert len(select(table=2, dataset=["mnist", "mnist-rot"])) == 12
    assert {e.table for e in select(method="bireal")} == {5}
    assert select(table=[4, 5], method="bnn") == [get_experiment("t4-cifar10-resnet18-16-16-32-64-bnn"),
                                                   get_experiment("t5-imagenet-resnet18-bnn")]
    for bad in (dict(table=7), dict(row="nope"), dict(dataset="svhn"), dict(method="dorefa")):
        with pytest.raises(ValueError):
            select(**bad)


def test_claims_hold_in_the_papers_own_numbers():
    assert len(CLAIMS) >= 40
    for c in CLAIMS:
        b, w = BY_ID[c.better], BY_ID[c.worse]
        pb, pw = paper_value(b), paper_value(w)
        assert (pb < pw) if c.metric == "error" else (pb > pw), c
        if c.than:  # the win is larger than the other one
            b2, w2 = (paper_value(BY_ID[e]) for e in c.than)
            assert abs(pb - pw) > abs(b2 - w2), c


def test_inconsistencies_are_visible_in_paper_numbers():
    first = INCONSISTENCIES[0]
    accs = [accuracy_of(BY_ID[i], BY_ID[i].paper) for i in first.cells]
    assert accs[0] == pytest.approx(91.06) and accs[1] == 94.84
    # Table 2's CBCN equals Table 3's S cell, Table 4's equals S+G
    assert accuracy_of(BY_ID["t2-cifar10-resnet18-16-16-32-64-cbcn"], {"error": 10.9}) == pytest.approx(89.10)
    assert BY_ID["t4-cifar10-resnet18-16-16-32-64-cbcn"].paper["accuracy"] == BY_ID["t3-cbcn-k4-sg"].paper["accuracy"]


def test_profiles():
    assert set(PROFILES) == {"paper", "quick", "smoke"}
    quick = select(**get_profile("quick").selection)
    assert {e.dataset for e in quick} == {"mnist", "mnist-rot"} and len(quick) == 12
    assert len(select(**get_profile("paper").selection)) == len(EXPERIMENTS)
    assert get_profile("smoke").stages_for(get_experiment("t5-imagenet-resnet18-cbcn")) == (2, 2, 4, 4)
    assert get_profile("paper").stages_for(get_experiment("t5-imagenet-resnet18-cbcn")) == (64, 128, 256, 512)
    with pytest.raises(ValueError, match="valid choices"):
        get_profile("fast")


def test_cli_list(capsys, tmp_path):
    from cbcn.cli import main
    assert main(["list", "--table", "5", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "t5-imagenet-resnet18-abcnet" in out and "not runnable" not in out and "quoted" in out
    assert "6 experiments" in out
    assert main(["list", "--profile", "quick", "--out", str(tmp_path)]) == 0
    assert "12 experiments" in capsys.readouterr().out
    assert main(["list", "--row", "nope", "--out", str(tmp_path)]) == 2
    assert "no experiment id or row label matches 'nope'" in capsys.readouterr().err
