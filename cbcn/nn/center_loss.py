"""Center loss (Wen et al., ECCV 2016), the "C" of the paper's Table 3 ablation.

``L_C = λ/2 · mean_i ||f_i − c_{y_i}||²`` on the features fed to the classifier (SPEC §3 writes
the sum over the batch; like Wen et al.'s reference implementation we divide it by the batch size
so that λ does not depend on the batch size). The centres are not learned by SGD: after each
training step they move towards their class's features, ``c_j ← c_j − α·Δc_j`` with
``Δc_j = Σ_{i: y_i = j} (c_j − f_i) / (1 + n_j)`` (Wen et al. Eq. 4).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class CenterLoss(nn.Module):
    def __init__(self, num_classes: int, feat_dim: int, lam: float = 0.01, alpha: float = 0.5):
        super().__init__()
        if lam < 0 or not 0 < alpha <= 1:
            raise ValueError(f"center loss needs lam >= 0 and 0 < alpha <= 1, got lam={lam}, alpha={alpha}")
        self.num_classes, self.feat_dim, self.lam, self.alpha = num_classes, feat_dim, lam, alpha
        self.register_buffer("centers", torch.zeros(num_classes, feat_dim))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2 or features.shape[1] != self.feat_dim:
            raise ValueError(f"center loss expects features (N, {self.feat_dim}), got {tuple(features.shape)}")
        diff = features - self.centers[labels]
        loss = self.lam / 2 * diff.pow(2).sum(dim=1).mean()
        if self.training:
            self.update_centers(features.detach(), labels)
        return loss

    @torch.no_grad()
    def update_centers(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Wen et al. Eq. 4: move each centre towards the mean of its class in the batch."""
        delta = torch.zeros_like(self.centers)
        delta.index_add_(0, labels, self.centers[labels] - features)
        counts = torch.bincount(labels, minlength=self.num_classes).to(features.dtype)
        self.centers -= self.alpha * delta / (1 + counts).unsqueeze(1)
