"""Geometric Harmonization (GH; Zhou et al., NeurIPS 2023, "Combating Representation Learning
Disparity with Geometric Harmonization"; official code MediaBrain-SJTU/Geometric-Harmonization).

GH adds to a contrastive loss a clustering loss towards K fixed, maximally spread directions
(a simplex equiangular tight frame), with each batch's images assigned to them by an optimal
transport plan whose cluster marginal is the *estimated* cluster prior π, not uniform. Its
premise: on a long tail, a uniform assignment forces head classes to take over more of the
space; π, estimated from the run's own assignments, lets clusters be as large as the data says.

The pieces, each batched on the device (the official code loops over images in Python), with
where the official code has them (docs/recipes.md has the choices and what is uncertain):

- :func:`simplex_etf`: the K targets (``target/gen_target.py``);
- :func:`target_logits`: an image's K-vector of products with the targets, L2-normalised over K
  (``train_cifar.py``: ``F.normalize(z @ targets.T)``, the projection itself not normalised);
- :func:`sinkhorn`: the balanced assignment, no gradient (``utils.py``, ``sinkhorn``);
- :func:`gh_loss`: the swapped cross-entropy between one view's assignment and the other view's
  softmax (``utils.py``, ``GHLoss``);
- :class:`ClusterPrior`: the per-image EMA of the logits and π from it (``train_cifar.py``);
- :func:`gh_weight`: the contrastive-only warm-up and the linear ramp of GH's weight.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sdclr.errors import ConfigError


def simplex_etf(num_targets: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """``num_targets`` × ``dim`` unit vectors with every pairwise cosine −1/(K−1) (float32).

    The K-point simplex lives in the (K−1)-dimensional subspace of R^K orthogonal to the all-ones
    vector; its coordinates in an orthonormal basis of that subspace are mapped into R^dim by a
    random (K−1) × dim matrix with orthonormal rows (the polar factor of a Gaussian draw from
    ``generator``), so any K ≤ dim + 1 works and the frame's orientation follows the run's seed.
    """
    k = num_targets
    if not 2 <= k <= dim + 1:
        raise ConfigError(f"a simplex of {k} targets needs 2 <= K <= proj_dim + 1 = {dim + 1}; "
                          "lower gh.num_targets or raise model.proj_dim.")
    centred = math.sqrt(k / (k - 1)) * (torch.eye(k, dtype=torch.float64) - 1.0 / k)  # rows: the simplex in R^K
    basis, _ = torch.linalg.qr(centred[:, : k - 1])  # orthonormal basis of the rows' span (⊥ all-ones)
    gaussian = torch.randn(k - 1, dim, generator=generator, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(gaussian, full_matrices=False)
    rotation = u @ vh  # (K−1) × dim, orthonormal rows
    return (centred @ basis @ rotation).float()


def target_logits(z: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each row of ``z`` (projections, N × d) against the K targets, L2-normalised over the K values."""
    return F.normalize(z.float() @ targets.T, dim=1)


@torch.no_grad()
def sinkhorn(logits: torch.Tensor, prior: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """Soft labels N × K: the entropic transport plan between the batch (each image 1/N) and the
    clusters (cluster k gets ``prior[k]``), scaled by N so that each image's row sums to 1.

    Sinkhorn-Knopp on the kernel exp(logits / ε), alternating the cluster and the image
    scalings a fixed number of times; the last step fits the images, so their rows are exact
    and the cluster sums approach N·π. A cluster with π_k = 0 gets no image.
    """
    n = logits.shape[0]
    kernel = torch.exp(logits.float() / epsilon)  # |logits| <= 1: at most e^(1/ε), finite for ε >= 0.012
    prior = prior.float() / prior.sum()
    per_image = torch.full((n,), 1.0 / n, device=logits.device)
    scale_images = per_image.clone()
    for _ in range(iterations):
        scale_clusters = prior / (kernel.T @ scale_images)
        scale_images = per_image / (kernel @ scale_clusters)
    return n * scale_images[:, None] * kernel * scale_clusters[None, :]


def gh_loss(logits_1: torch.Tensor, logits_2: torch.Tensor, prior: torch.Tensor, temperature: float,
            epsilon: float, iterations: int) -> torch.Tensor:
    """Swapped prediction: view 1's assignment is the target of view 2's softmax over the targets
    (temperature γ) and the other way round; the two cross-entropies are batch means, summed."""
    q1 = sinkhorn(logits_1, prior, epsilon, iterations)
    q2 = sinkhorn(logits_2, prior, epsilon, iterations)
    ce_1 = -(q1 * F.log_softmax(logits_2 / temperature, dim=1)).sum(1).mean()
    ce_2 = -(q2 * F.log_softmax(logits_1 / temperature, dim=1)).sum(1).mean()
    return ce_1 + ce_2


def gh_weight(epoch: int, warmup_epochs: int, ramp_epochs: int) -> float:
    """GH's weight in epoch ``epoch`` (from 0): 0 in the contrastive-only warm-up, then rising
    linearly by 1/ramp per epoch to 1 (official: 0.1, 0.2, …, 1 over 10 epochs after warm-up)."""
    if epoch < warmup_epochs:
        return 0.0
    return min(1.0, (epoch + 1 - warmup_epochs) / max(1, ramp_epochs))


class ClusterPrior(nn.Module):
    """π: the share of training images whose smoothed logits point to each target.

    Every image keeps an exponential moving average of its (detached) logits, updated at each
    visit: set on the first epoch's visit, then ``m ← β·m + (1 − β)·ℓ`` (β = ``beta_warmup`` in
    the warm-up, ``beta`` after). π_k = #{i : argmax m_i = k} / N, recomputed by :meth:`refresh`
    and kept fixed between refreshes. The memory and π are buffers: a resume checkpoint has them.
    """

    def __init__(self, num_samples: int, num_targets: int, beta_warmup: float, beta: float):
        super().__init__()
        self.beta_warmup, self.beta = beta_warmup, beta
        self.register_buffer("memory", torch.zeros(num_samples, num_targets))
        self.register_buffer("prior", torch.full((num_targets,), 1.0 / num_targets))

    @torch.no_grad()
    def update(self, indices: torch.Tensor, logits: torch.Tensor, epoch: int, warmup_epochs: int) -> None:
        """Fold one batch's logits into its images' rows (indices are distinct within a batch)."""
        logits = logits.detach().float()
        if epoch == 0:
            self.memory[indices] = logits
            return
        beta = self.beta_warmup if epoch < warmup_epochs else self.beta
        self.memory[indices] = beta * self.memory[indices] + (1 - beta) * logits

    @torch.no_grad()
    def refresh(self) -> torch.Tensor:
        """π from the memory as it is now."""
        counts = torch.bincount(self.memory.argmax(1), minlength=self.memory.shape[1])
        self.prior.copy_(counts.float() / self.memory.shape[0])
        return self.prior
