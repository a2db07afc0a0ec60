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

from dataclasses import dataclass

import torch

from sdclr.distributed import global_batch
from sdclr.errors import ParamError
from sdclr.harmonization import ClusterPrior, gh_loss, gh_weight, simplex_etf, target_logits
from sdclr.losses import nt_xent
from sdclr.methods.base import claims_against
from sdclr.methods.sdclr import SDCLR
from sdclr.methods.simclr import SimCLR
from sdclr.schema import in_range, non_negative, positive, setting


@dataclass(frozen=True)
class GhParams:
    """Geometric Harmonization (Zhou et al., NeurIPS 2023) on SimCLR (simclr_gh) and SDCLR (sdclr_gh)."""

    num_targets: int = setting(in_range(lo=2, what="an integer"), "K simplex targets, at most model.proj_dim + 1 "
                                                                  "(official CIFAR-100-LT: 100, its classes)")
    temperature: float = setting(positive(), "γ of the softmax over the targets (official: 0.1)")
    sinkhorn_epsilon: float = setting(in_range(lo=0.02, what="a number"), "ε of the Sinkhorn kernel exp(logit/ε) "
                                                                           "(official: 0.05; >= 0.02 keeps it finite)")
    sinkhorn_iterations: int = setting(positive("a positive integer"), "Sinkhorn iterations (official: 300)")
    warmup_epochs: int = setting(non_negative("an integer"),
                                 "contrastive-only epochs before GH (official: 500 of 1000)")
    ramp_epochs: int = setting(positive("a positive integer"),
                               "epochs over which GH's weight rises to 1 (official: 10)")
    refresh_every: int = setting(positive("a positive integer"), "π is recomputed when the warm-up ends and at every "
                                                                 "multiple of this epoch (official: 20)")
    beta_warmup: float = setting(in_range(lo=0, hi=1, hi_open=True, what="a number"),
                                 "EMA factor of each image's logits during the warm-up (official: 0.9)")
    beta: float = setting(in_range(lo=0, hi=1, hi_open=True, what="a number"), "EMA factor after it (official: 0.999)")


class Harmonized:
    """GH over a two-view method that provides ``encode(x1, x2)`` (mixed in before it)."""

    params_block = ("gh", GhParams)
    per_image = True  # each image's cluster (argmax of its memory): π and the classes it recovers
    claim_source = "GH (Zhou et al. 2023)"
    claim_heading = ("Geometric Harmonization should beat the method it is added to (SimCLR, SDCLR), most on Minor "
                     "classes, and make it more balanced.")
    report_section = "gh"  # sdclr/report/gh.py

    @classmethod
    def check_params(cls, params):
        """The K targets of a simplex fit in at most proj_dim + 1 dimensions, and GH acts in at least one epoch."""
        if params.gh.num_targets > params.model.proj_dim + 1:
            raise ParamError(f"gh.num_targets = {params.gh.num_targets} does not fit a simplex in model.proj_dim = "
                             f"{params.model.proj_dim} dimensions; accepted: at most {params.model.proj_dim + 1}.")
        epochs = cls.setting(params, "epochs")
        if params.gh.warmup_epochs >= epochs:
            raise ParamError(f"gh.warmup_epochs = {params.gh.warmup_epochs} is not below the {epochs} pretraining "
                             "epochs, so GH would never act (the run would be its base method); accepted: at most "
                             f"{epochs - 1}.")

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
    claims = claims_against("simclr", balanced=True)


class SDCLRGH(Harmonized, SDCLR):
    """SDCLR + GH (official ``--method sdclr_GH``): GH between the dense and the pruned branch's views."""

    name = "sdclr_gh"
    reads = (*SDCLR.reads, "gh")
    claims = claims_against("sdclr", balanced=True)
