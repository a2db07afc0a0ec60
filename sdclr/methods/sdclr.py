"""SDCLR: view 1 through the dense network, view 2 through its pruned copy.

The pruned branch shares every weight (``weight * mask``) but has its own BatchNorm
set. The global magnitude mask is recomputed at the start of each epoch from the
current weights. One forward per branch, one backward: gradients from both branches
reach the shared weights (masked positions get none from the pruned branch).
"""

from __future__ import annotations

from sdclr.losses import nt_xent
from sdclr.methods.base import Method
from sdclr.pruning import mask_sparsity, update_global_masks


class SDCLR(Method):
    name = "sdclr"

    def __init__(self, net, temperature: float, prune_ratio: float):
        super().__init__(net)
        self.temperature = temperature
        self.prune_ratio = prune_ratio

    def on_epoch_start(self, epoch):
        update_global_masks(self.net, self.prune_ratio)
        return {"mask_sparsity": mask_sparsity(self.net)["overall"]}

    def forward(self, images, indices, augment, generator, channels_last):
        x1, x2 = self._views(images, augment, generator, channels_last)
        z1 = self.net(x1, branch=0)
        z2 = self.net(x2, branch=1)
        return nt_xent(z1, z2, self.temperature), {}
