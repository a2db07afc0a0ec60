"""Geometric Harmonization (Zhou et al., NeurIPS 2023; official code MediaBrain-SJTU/Geometric-Harmonization)
on SimCLR (``simclr_gh``) and on SDCLR (``sdclr_gh``).

The base method's NT-Xent, plus from ``gh.warmup_epochs`` on a weight (ramped to 1) times GH's
loss between the two views' projections (SDCLR: the dense branch's view 1 and the pruned
branch's view 2, so GH acts on both branches, as the official code's two passes do; one
backward of their sum gives the gradient of its two, each with the other side detached). The
pieces are in :mod:`sdclr.harmonization`; docs/recipes.md has every choice and its source.

Each image's dense view-1 logits feed the prior's memory at every step; π is recomputed at the
start of the first GH epoch and of every ``gh.refresh_every``-th epoch after it. The targets,
the memory and π are buffers (a resume checkpoint has them); under DDP the gathered global
batch is assigned and remembered, so every rank holds the same memory.
"""

from __future__ import annotations

import torch

from sdclr.distributed import global_batch
from sdclr.harmonization import ClusterPrior, gh_loss, gh_weight, simplex_etf, target_logits
from sdclr.losses import nt_xent
from sdclr.methods.sdclr import SDCLR
from sdclr.methods.simclr import SimCLR


class Harmonized:
    """GH over a two-view method that provides ``encode(x1, x2)`` (mixed in before it)."""

    splits_key = "later_methods.splits"
    per_image = True  # each image's cluster (argmax of its memory): π and the classes it recovers

    @classmethod
    def from_params(cls, params, net, num_samples):
        """The base method as it builds itself, plus the targets (from the run's seed) and the prior."""
        method = super().from_params(params, net, num_samples)
        g = params.gh
        targets = simplex_etf(g.num_targets, params.model.proj_dim, torch.Generator().manual_seed(params.seed))
        method.register_buffer("targets", targets)
        method.prior = ClusterPrior(num_samples, g.num_targets, g.beta_warmup, g.beta)
        method.gh = g
        method.epoch, method.weight = 0, 0.0
        return method

    def on_epoch_start(self, epoch):
        metrics = super().on_epoch_start(epoch)
        g = self.gh
        self.epoch, self.weight = epoch, gh_weight(epoch, g.warmup_epochs, g.ramp_epochs)
        if epoch >= g.warmup_epochs and (epoch == g.warmup_epochs or epoch % g.refresh_every == 0):
            self.prior.refresh()
        return {**metrics, "gh_weight": self.weight, "prior_max": float(self.prior.prior.max())}

    def forward(self, images, indices, generator):
        z1, z2 = self.encode(*self.views(images, generator))
        # GH's loss and the prior work on the global batch too: gathered once here, for all three
        z1, z2, indices = global_batch(z1, z2, indices)
        loss = nt_xent(z1, z2, self.temperature, gather=False)
        t1, t2 = target_logits(z1, self.targets), target_logits(z2, self.targets)
        self.prior.update(indices, t1, self.epoch, self.gh.warmup_epochs)
        g = self.gh
        with torch.set_grad_enabled(self.weight > 0):  # in the warm-up it is only logged: no graph
            harmonization = gh_loss(t1, t2, self.prior.prior, g.temperature, g.sinkhorn_epsilon,
                                    g.sinkhorn_iterations)
        if self.weight > 0:
            loss = loss + self.weight * harmonization
        return loss, {"gh_loss": harmonization.detach()}

    def per_image_state(self):
        """The target each image's smoothed logits point to at the end (π counts these)."""
        return {"cluster": self.prior.memory.argmax(1)}


class SimCLRGH(Harmonized, SimCLR):
    """SimCLR + GH (official ``--method simclr_GH``)."""

    name = "simclr_gh"
    reads = (*SimCLR.reads, "gh")


class SDCLRGH(Harmonized, SDCLR):
    """SDCLR + GH (official ``--method sdclr_GH``): GH between the dense and the pruned branch's views."""

    name = "sdclr_gh"
    reads = (*SDCLR.reads, "gh")
