"""Small trained models for the tests of the 1-bit paths (shared by several test files)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from cbcn.nn.models import build_model


def _rand(*shape, g):
    return torch.randn(*shape, generator=g)


def trained_model(name, method, stages, K, image, g, stem=None, batch=2, steps=1):
    """``build_model`` after ``steps`` SGD steps on random data (non-trivial batch-norm statistics
    and weights), in eval mode; with its input channels."""
    torch.manual_seed(0)
    in_ch = 1 if name == "lenet" else 3
    extra = {} if stem is None else {"stem": stem}
    model = build_model(name, method=method, stages=stages, K=K, in_channels=in_ch,
                        image_size=image if name == "lenet" else 32, **extra)
    x, y = _rand(batch, in_ch, image, image, g=g), torch.randint(0, 10, (batch,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), in_ch
