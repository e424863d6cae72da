"""Data-parallel training under torchrun on CPU (gloo) equals one process with the same global batch.

Why these settings: BatchNorm normalises with per-rank batch statistics under plain DDP, and
PyTorch's SyncBatchNorm runs only on GPUs, so the CPU check freezes BatchNorm statistics
(``--freeze-bn``; on GPUs ``--sync-bn`` gives the same equivalence) and turns dropout off (its
masks are drawn per rank). The tiny LeNet and 256 offline MNIST images keep it to seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed

ARGS = ["train", "--dataset", "mnist", "--model", "lenet", "--stages", "2-4-4-8", "--method", "fp",
        "--dropout", "0", "--freeze-bn", "--max-train-samples", "256", "--max-test-samples", "64",
        "--batch-size", "64", "--epochs", "2", "--lr", "0.05", "--device", "cpu", "--progress", "lines"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("CBCN_DATA", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    return env


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available in this torch build")
def test_torchrun_two_ranks_equals_one_process(tmp_path):
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "cbcn.cli", *ARGS, "--output", str(ddp)],
                         capture_output=True, text=True, timeout=120, env=_env())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "cbcn.cli", *ARGS, "--output", str(single)],
                         capture_output=True, text=True, timeout=120, env=_env())
    assert one.returncode == 0, one.stderr[-3000:]
    a = torch.load(ddp / "last.pt", weights_only=True)
    b = torch.load(single / "last.pt", weights_only=True)
    assert a["world_size"] == 2 and b["world_size"] == 1 and len(a["rng"]) == 2
    for k, v in b["model"].items():
        torch.testing.assert_close(a["model"][k], v, rtol=1e-5, atol=1e-6, msg=f"parameter {k}")
    for ha, hb in zip(a["history"], b["history"]):
        assert ha["test_error"] == pytest.approx(hb["test_error"])
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-5)
    # only rank 0 logs and writes
    assert run.stdout.count("cbcn train:") == 1 and "2 ranks (gloo)" in run.stdout
    assert (ddp / "train.log").read_text().count("cbcn train:") == 1
    assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir())


def test_rank_outside_training_comes_from_torchrun_variables(monkeypatch):
    from cbcn.training.distributed import DistInfo
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert DistInfo.from_env() == DistInfo() and DistInfo.from_env().is_main
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = DistInfo.from_env()
    assert (info.rank, info.world_size, info.local_rank, info.enabled, info.is_main) == (3, 4, 1, True, False)
