"""Boosted Contrastive Learning (Zhou et al., ICML 2022, "Contrastive Learning with Boosted
Memorization"; official code MediaBrain-SJTU/BCL): BCL-I on SimCLR, BCL-D on SDCLR.

Each image carries a memorisation score, the EMA of its own per-image NT-Xent loss from the
steps that train on it (:class:`sdclr.memorization.MemorizationScores`, β = ``bcl.beta``).
At the start of each epoch the scores become weights w ∈ [0, 1] (high loss → high w, BCL's
proxy for a tail image), and in that epoch both views of image i get, after the usual SimCLR
augmentation, a RandAugment of ``ops`` ops each applied with probability w_i at magnitude

    BCL-I (1 op):  m = rs·(1 + 2·w)/3        (rs = 30: 10 + 20·w)
    BCL-D (2 ops): m = rs·(1 + 5·w·U)/6      (rs = 30: 5 + 25·w·U, U ~ U(0, 1) per image,
                                               shared by its two views)

with rs = ``bcl.rand_strength``. Epoch 1 has no scores yet, so it is plain SimCLR/SDCLR.
The scores are buffers (resume checkpoints carry them); under DDP the update takes the
gathered global batch, so every rank holds the same scores and the same w.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from sdclr.data.randaugment import rand_augment
from sdclr.distributed import global_batch
from sdclr.losses import nt_xent_per_image
from sdclr.memorization import MemorizationScores
from sdclr.methods.base import claims_against
from sdclr.methods.sdclr import SDCLR
from sdclr.methods.simclr import SimCLR
from sdclr.schema import in_range, non_negative, positive, setting


@dataclass(frozen=True)
class BclParams:
    """Boosted Contrastive Learning (Zhou et al., ICML 2022): BCL-I on SimCLR, BCL-D on SDCLR."""

    beta: float = setting(in_range(lo=0, hi=1, hi_open=True, what="a number"),
                          "EMA factor of each image's loss, its memorisation score (paper: 0.97)")
    rand_strength: float = setting(positive(), "RandAugment magnitude scale (paper: 30): BCL-I m = rs·(1 + 2w)/3, "
                                               "BCL-D m = rs·(1 + 5·w·U)/6")
    weight_decay_i: Optional[float] = setting(non_negative(), "BCL-I's SGD weight decay; null = "
                                                              "pretrain.weight_decay (paper: 5e-4)")
    weight_decay_d: Optional[float] = setting(non_negative(), "BCL-D's SGD weight decay; null = "
                                                              "pretrain.weight_decay (paper: 1e-4)")


class Boosted:
    """BCL over a two-view method that provides ``encode(x1, x2)`` (mixed in before it)."""

    params_block = ("bcl", BclParams)
    per_image = True  # w and the score of every training image
    claim_source = "BCL (Zhou et al. 2022)"
    claim_heading = ("Boosting the augmentation of the images the network has not memorised should beat the method it "
                     "boosts (BCL-I over SimCLR, BCL-D over SDCLR), most on Minor classes.")
    report_section = "bcl"  # sdclr/report/bcl.py
    #: RandAugment ops per view
    ops: int

    @classmethod
    def from_params(cls, params, net, num_samples):
        """The base method as it builds itself, plus the memorisation scores and BCL's settings."""
        method = super().from_params(params, net, num_samples)
        method.scores = MemorizationScores(num_samples, params.bcl.beta)
        method.rand_strength = params.bcl.rand_strength
        method.boosting = False  # epoch 1: no scores yet
        method.w = None  # per image, set at each epoch's start from the scores
        return method

    def on_epoch_start(self, epoch):
        metrics = super().on_epoch_start(epoch)
        self.boosting = epoch > 0
        self.w = self.scores.weights()
        return {**metrics, "w_std": float(self.w.std())}

    def magnitude(self, w: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images, indices, generator):
        x1, x2 = self.augment(images, generator), self.augment(images, generator)
        if self.boosting:
            w = self.w[indices]
            m = self.magnitude(w, generator)
            x1, x2 = (rand_augment(x, self.ops, w, m, generator) for x in (x1, x2))
        z1, z2 = self.encode(self.memory_format(x1), self.memory_format(x2))
        losses = nt_xent_per_image(z1, z2, self.temperature)  # under DDP the global batch's (it gathers)
        (indices,) = global_batch(indices)  # the same images, in the same rank-major order
        self.scores.update(indices, losses)
        return losses.mean(), {}

    def per_image_state(self):
        """w used in the last epoch and the score after it, per row of the training subset."""
        return {"w": self.w, "score": self.scores.score}


class BCLI(Boosted, SimCLR):
    """BCL-I: BCL on SimCLR, one RandAugment op per view (official weight decay 5e-4)."""

    name = "bcl_i"
    ops = 1
    reads = (*SimCLR.reads, "bcl")
    claims = claims_against("simclr")
    own_settings = {"weight_decay": "bcl.weight_decay_i"}

    def magnitude(self, w, generator):
        return self.rand_strength * (1.0 + 2.0 * w) / 3.0


class BCLD(Boosted, SDCLR):
    """BCL-D: BCL on SDCLR (dense view 1, pruned view 2), two RandAugment ops per view (official
    weight decay 1e-4)."""

    name = "bcl_d"
    ops = 2
    reads = (*SDCLR.reads, "bcl")
    claims = claims_against("sdclr")
    own_settings = {"weight_decay": "bcl.weight_decay_d"}

    def magnitude(self, w, generator):
        u = torch.rand(w.shape, generator=generator, device=w.device)  # per image, shared by both views
        return self.rand_strength * (1.0 + 5.0 * w * u) / 6.0
