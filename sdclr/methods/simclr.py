"""SimCLR: two augmented views through the same dense network, NT-Xent between them."""

from __future__ import annotations

import torch

from sdclr.distributed import gather_with_grad
from sdclr.losses import nt_xent
from sdclr.methods.base import Method


class SimCLR(Method):
    name = "simclr"

    def __init__(self, net, temperature: float):
        super().__init__(net)
        self.temperature = temperature

    def forward(self, images, indices, augment, generator, channels_last):
        x1, x2 = self._views(images, augment, generator, channels_last)
        # One forward over both views: BN statistics see the whole 2N batch, as in SimCLR.
        z = self.net(torch.cat([x1, x2]), branch=0)
        z1, z2 = z.chunk(2)
        # Under DDP: the global batch's features from every rank (identity in one process).
        return nt_xent(gather_with_grad(z1), gather_with_grad(z2), self.temperature), {}
