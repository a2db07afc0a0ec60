"""BCL's per-sample memorisation score (Zhou et al., ICML 2022, "Contrastive Learning with
Boosted Memorization", arXiv 2205.12693; official code MediaBrain-SJTU/BCL).

BCL's premise: a network memorises easy, frequent (head-class) images first, so an image
whose contrastive loss stays high is one it has not memorised yet — more often a tail
image. The score is an exponential moving average of each image's own loss, updated by
the very step that trains on it::

    s_i = ℓ_i                         the first time image i is seen
    s_i ← β·s_i + (1 − β)·ℓ_i         afterwards (β = 0.97)

with ℓ_i = ½[ℓ(i¹→i²) + ℓ(i²→i¹)], the image's NT-Xent loss averaged over its two views.
Once per epoch the scores become weights: z = (s − mean s) / std s (unbiased std, as
``torch.std``), w_i = z_i / (2·max|z|) + ½ ∈ [0, 1]; w sets the probability and the
strength of the extra RandAugment of image i's views in the next epoch.

Two cases the paper's formula leaves open are decided here: all scores equal (std = 0:
every w is ½, not a division by zero), and images not yet seen (a drop-last batching
can skip a few in an epoch: they get w = ½, the mean's weight, and do not enter the
statistics). The scores are buffers, so they travel in resume checkpoints; under DDP the
caller passes the global batch's indices and losses (gathered), so every rank agrees.
"""

from __future__ import annotations

import torch
from torch import nn


class MemorizationScores(nn.Module):
    """One EMA score per training image, on the device of the training data."""

    def __init__(self, num_samples: int, beta: float):
        super().__init__()
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"MemorizationScores: beta must be in [0, 1), got {beta}.")
        self.beta = beta
        self.register_buffer("score", torch.zeros(num_samples))
        self.register_buffer("seen", torch.zeros(num_samples, dtype=torch.bool))

    @torch.no_grad()
    def update(self, indices: torch.Tensor, losses: torch.Tensor) -> None:
        """Fold per-image losses (detached, one per index, no repeated index) into the scores."""
        losses = losses.detach().float()
        old = self.score[indices]
        self.score[indices] = torch.where(self.seen[indices], self.beta * old + (1.0 - self.beta) * losses, losses)
        self.seen[indices] = True

    @torch.no_grad()
    def weights(self) -> torch.Tensor:
        """w ∈ [0, 1] per image from the scores so far (½ for unseen images and when all are equal)."""
        w = torch.full_like(self.score, 0.5)
        s = self.score[self.seen]
        if s.numel() < 2:
            return w
        z = (s - s.mean()) / s.std()
        peak = z.abs().max()
        if not torch.isfinite(peak) or peak == 0:  # std = 0: every seen score equal
            return w
        w[self.seen] = z / (2.0 * peak) + 0.5
        return w
