"""SimCLR (Chen et al. 2020): two augmented views through the same dense network, NT-Xent between them."""

from __future__ import annotations

import torch

from sdclr.distributed import gather_with_grad
from sdclr.losses import nt_xent
from sdclr.methods.base import Method
from sdclr.models import DENSE


class SimCLR(Method):
    name = "simclr"

    def __init__(self, net, temperature: float):
        super().__init__(net)
        self.temperature = temperature

    @classmethod
    def from_params(cls, params, net, num_samples):
        return cls(net, params.pretrain.temperature)

    def forward(self, images, indices, generator):
        x1, x2 = self.views(images, generator)
        # One forward over both views: BN statistics see the whole 2N batch, as in SimCLR.
        z1, z2 = self.net(torch.cat([x1, x2]), branch=DENSE).chunk(2)
        # Under DDP: the global batch's features from every rank (identity in one process).
        return nt_xent(gather_with_grad(z1), gather_with_grad(z2), self.temperature), {}
