"""Layers that know which SDCLR branch they serve.

SDCLR runs *one* set of weights through two branches: the dense network
(branch 0) and a pruned copy of it (branch 1).  The branch is an explicit
``forward`` argument everywhere -- never module state -- so a single module call
can run both branches (DistributedDataParallel wants exactly one forward per
step) and ``torch.compile`` sees it as a plain Python constant to specialise on.
"""

from __future__ import annotations

import torch
from torch import nn

DENSE, PRUNED = 0, 1


class DualBatchNorm(nn.Module):
    """Two independent BatchNorms, one per branch.

    The pruned network's activations have different statistics from the dense
    ones; sharing BN would let each branch corrupt the other's normalisation.
    So each branch owns its affine parameters *and* running statistics.
    Evaluation (linear probe, kNN) uses set 0, the dense one.
    """

    def __init__(self, num_features: int, dims: int = 2, **bn_kwargs):
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"DualBatchNorm: dims must be 1 (BatchNorm1d) or 2 (BatchNorm2d), got {dims!r}.")
        bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        self.bns = nn.ModuleList([bn(num_features, **bn_kwargs), bn(num_features, **bn_kwargs)])

    def forward(self, x: torch.Tensor, branch: int = DENSE) -> torch.Tensor:
        return self.bns[branch](x)


class MaskedConv2d(nn.Conv2d):
    """A Conv2d whose pruned branch multiplies the live weight by a fixed mask.

    ``mask`` is a buffer (checkpointed with the state_dict, moved by ``.to()``,
    never trained).  Branch 0 uses ``weight`` untouched, so the mask cannot
    affect the dense network; branch 1 uses ``weight * mask``, so masked
    positions get exactly zero gradient from the pruned branch.  The mask is only
    ever updated in place (see :mod:`sdclr.pruning`), which keeps references
    held by torch.compile and DDP valid.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", torch.ones_like(self.weight, requires_grad=False))

    def forward(self, x: torch.Tensor, branch: int = DENSE) -> torch.Tensor:
        weight = self.weight if branch == DENSE else self.weight * self.mask
        return self._conv_forward(x, weight, self.bias)
