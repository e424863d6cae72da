"""(c) One training step (forward, cross-entropy, backward, SGD update) of each backbone × method.

One group per backbone; ``fp`` is the baseline row. The first step is checked against a reference
(``TrainStep.check_first_step``: loss and gradients of an untouched copy, SGD's first update);
the timed steps then continue from there.
"""
from __future__ import annotations

import pytest
import torch

import settings
import workloads

SIZE = settings.bench_size()
SHAPES = workloads.TRAIN_SHAPES[SIZE]
CASES = workloads.train_cases(SIZE)


@pytest.mark.parametrize("method,K", CASES, ids=[workloads.case_id(m, K) for m, K in CASES])
@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_train_step(benchmark, record, device, shape, method, K):
    step = workloads.TrainStep(shape, method, K, device)
    record("train-step", str(shape), shape=str(shape), backbone=shape.name, method=method, K=K,
           batch=shape.batch, path="BinaryConv2d", items=shape.batch, unit="images", baseline=method == "fp")
    step.check_first_step()
    loss = benchmark(step)
    assert torch.isfinite(loss)
