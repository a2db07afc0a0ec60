"""SimCLR (Chen et al. 2020): two augmented views through the same dense network, NT-Xent between
them; and SimCLR + TS (Kukleva et al., ICLR 2023), the same with a cosine temperature schedule."""

from __future__ import annotations

import torch

from sdclr.losses import nt_xent
from sdclr.methods.base import Method, claims_against
from sdclr.models import DENSE


class SimCLR(Method):
    """SimCLR (Chen et al. 2020): two views through the same dense network, NT-Xent between them."""

    name = "simclr"

    def __init__(self, net, temperature: float):
        super().__init__(net)
        self.temperature = temperature

    @classmethod
    def from_params(cls, params, net, num_samples):
        return cls(net, params.pretrain.temperature)

    def encode(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both views' projections. One forward over both: BN statistics see the whole 2N batch."""
        z1, z2 = self.net(torch.cat([x1, x2]), branch=DENSE).chunk(2)
        return z1, z2

    def forward(self, images, indices, generator):
        z1, z2 = self.encode(*self.views(images, generator))
        return nt_xent(z1, z2, self.temperature), {}  # under DDP over the global batch (it gathers)


class SimCLRTS(SimCLR):
    """SimCLR whose τ follows TS's cosine schedule whatever ``pretrain.temperature_schedule`` says.

    τ(e) = τ_min + ½(τ_max − τ_min)(1 + cos(2π·e/T)) from ``pretrain.tau_min``, ``tau_max`` and
    ``period_epochs`` (:func:`sdclr.losses.cosine_temperature`), so the report can set SimCLR
    and SimCLR + TS side by side on the same splits.
    """

    name = "simclr_ts"
    temperature_schedule = "cosine"
    claim_source = "TS (Kukleva et al. 2023)"
    claim_heading = "A cosine temperature schedule should beat SimCLR's constant τ, most on Minor classes."
    claims = claims_against("simclr")
