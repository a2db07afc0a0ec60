"""SDCLR (Jiang et al. 2021): view 1 through the dense network, view 2 through its pruned copy.

The pruned branch shares every weight (``weight * mask``) but has its own BatchNorm
set. The global magnitude mask is recomputed at the start of each epoch from the
current weights. One forward per branch, one backward: gradients from both branches
reach the shared weights (masked positions get none from the pruned branch).
"""

from __future__ import annotations

from sdclr.distributed import check_identical
from sdclr.losses import nt_xent
from sdclr.methods.base import Method, claims_against
from sdclr.models import DENSE, PRUNED
from sdclr.pruning import mask_fingerprint, update_global_masks


class SDCLR(Method):
    """SDCLR (Jiang et al. 2021): view 1 through the dense network, view 2 through its pruned copy,
    re-pruned from the current weights every epoch."""

    name = "sdclr"
    reads = ("model", "prune_ratio")
    claim_source = "SDCLR paper (Jiang et al. 2021)"
    claim_heading = "SDCLR should beat SimCLR in accuracy, most on Minor classes, and be more balanced."
    claims = claims_against("simclr", minor=True, balanced=True)

    def __init__(self, net, temperature: float, prune_ratio: float):
        super().__init__(net)
        self.temperature = temperature
        self.prune_ratio = prune_ratio

    @classmethod
    def from_params(cls, params, net, num_samples):
        return cls(net, params.pretrain.temperature, params.prune_ratio)

    def on_epoch_start(self, epoch):
        sparsity = update_global_masks(self.net, self.prune_ratio)
        check_identical("SDCLR's pruning mask", mask_fingerprint(self.net))  # DDP: every rank, same mask
        return {"mask_sparsity": sparsity}

    def encode(self, x1, x2):
        """View 1 through the dense network, view 2 through the pruned one (its own BN set)."""
        return self.net(x1, branch=DENSE), self.net(x2, branch=PRUNED)

    def forward(self, images, indices, generator):
        z1, z2 = self.encode(*self.views(images, generator))
        return nt_xent(z1, z2, self.temperature), {}  # under DDP over the global batch (it gathers)
