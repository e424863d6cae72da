"""``cbcn reproduce --dry-run``: the plan and its bill before anything trains."""
import pytest

from cbcn.cli import main
from cbcn.harness import plan as plan_module
from cbcn.harness.experiments import get_experiment
from cbcn.harness.store import ResultStore
from cbcn.training.profiles import get_profile

ROWS = ["t2-mnist-lenet-5-10-20-40-xnor", "t2-mnist-lenet-10-20-40-80-xnor",   # one configuration in smoke
        "t2-mnist-lenet-5-10-20-40-cbcn", "t2-mnist-lenet-5-10-20-40-fp"]


def test_dry_run_prints_shared_configurations_done_rows_and_a_measured_bill(tmp_path, capsys, monkeypatch):
    from tests.test_report import acc, record
    ResultStore(tmp_path).write(record("t2-mnist-lenet-5-10-20-40-fp", profile="smoke", **acc(90.0)))
    timed = []
    real = plan_module.time_training_step

    def spy(config, device, **kw):
        timed.append(config.method)
        return real(config, device, max_seconds=0.01)
    monkeypatch.setattr(plan_module, "time_training_step", spy)
    assert main(["reproduce", "--dry-run", "--profile", "smoke", "--out", str(tmp_path)]
                + sum((["--row", r] for r in ROWS), [])) == 0
    out, err = capsys.readouterr()
    assert sorted(timed) == ["cbcn", "xnor"]           # once per configuration that would train
    assert "timing a training step of t2-mnist-lenet-5-10-20-40-xnor" in err
    lines = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| t2-")}
    assert "| reuse t2-mnist-lenet-5-10-20-40-xnor " in lines["t2-mnist-lenet-10-20-40-80-xnor"]
    assert "| done " in lines["t2-mnist-lenet-5-10-20-40-fp"]
    assert "| train " in lines["t2-mnist-lenet-5-10-20-40-cbcn"]
    assert "profile smoke: 4 rows — 2 train, 1 reuse, 1 done" in out
    assert "estimated training time:" in out and "nothing was trained" in out
    assert len(ResultStore(tmp_path).scan()[0]) == 1 and not (tmp_path / "training").exists()


def test_estimate_is_the_measured_step_times_the_recipe_images(tmp_path, monkeypatch):
    """Offline MNIST is the 4,000-image subset; evaluation (test images and the BatchNorm
    re-estimation) counts at a third of a training step."""
    monkeypatch.setattr(plan_module, "time_training_step", lambda config, device, **kw: 0.002)
    exp = get_experiment("t2-mnist-lenet-5-10-20-40-cbcn")
    quick = get_profile("quick")
    plan = plan_module.build_plan([exp], quick, tmp_path)
    row = plan.iloc[0]
    epochs, train, seen = plan_module.recipe_images(exp, quick)
    from cbcn.training.train import TrainConfig
    recipe = TrainConfig.from_recipe(quick, exp.model, exp.dataset)
    assert train == min(4000, recipe.max_train_samples or 4000)
    test = min(1000, recipe.max_test_samples or 1000)
    recal = min(recipe.bn_recalibration_batches * recipe.batch_size, train)
    assert seen == pytest.approx(epochs * (train + (test + recal) / 3))
    assert row["estimate_s"] == pytest.approx(0.002 * seen) and row["action"] == "train"
    assert plan_module._hours(3 * 86400) == "3.0 days" and plan_module._hours(30) == "30 s"


def test_time_training_step_measures_a_real_step():
    from cbcn.training.train import TrainConfig
    config = TrainConfig(method="xnor", stages=(2, 2, 4, 4), batch_size=8)
    seconds = plan_module.time_training_step(config, __import__("torch").device("cpu"), max_seconds=0.01)
    assert 0 < seconds < 1.0
