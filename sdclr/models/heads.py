"""Projection head and the encoder + head network used by every method.

The head depth is a parameter because the SDCLR authors used three layers while
BCL's re-run used two; SimCLR and SDCLR must share one head for a fair
comparison.  Linear layers are never pruned, but their BatchNorms are dual so
each branch keeps its own statistics all the way to the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from sdclr.models.layers import DENSE, DualBatchNorm
from sdclr.models.resnet import ResNet18


@dataclass(frozen=True)
class HeadSpec:
    """The shape of a projection head; saved with every encoder so evaluation can rebuild it.

    SimCLR/SDCLR: ``last_bn=True`` (BCL's 512-512-BN-ReLU-128-BN). Cao & Wu's single-branch
    head ends in a plain Linear (``last_bn=False``): feat→2048→BN→ReLU→2048→BN→ReLU→d.
    """

    depth: int
    hidden: int
    out_dim: int
    last_bn: bool = True


class ProjectionHead(nn.Module):
    """``depth`` Linear layers with a dual BN1d after each (the last one's optional); ReLU between.

    A Linear followed by BN carries no bias (the BN would cancel it); a last Linear
    without BN has one.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, depth: int = 2, last_bn: bool = True):
        super().__init__()
        if depth not in (1, 2, 3):
            raise ValueError(f"ProjectionHead: depth must be 1, 2 or 3, got {depth!r}.")
        dims = [in_dim] + [hidden_dim] * (depth - 1) + [out_dim]
        n_bn = depth if last_bn else depth - 1
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=i >= n_bn)
                                     for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])))
        self.bns = nn.ModuleList(DualBatchNorm(b, dims=1) for b in dims[1:n_bn + 1])

    def forward(self, x: torch.Tensor, branch: int = DENSE) -> torch.Tensor:
        last = len(self.linears) - 1
        for i, linear in enumerate(self.linears):
            x = linear(x)
            if i < len(self.bns):
                x = self.bns[i](x, branch)
            if i < last:
                x = F.relu(x)
        return x


class SSLNet(nn.Module):
    """Backbone + projection head.

    ``forward(x, branch)`` gives the (un-normalised) projection the contrastive
    loss consumes; ``features(x)`` gives the dense backbone features evaluation
    uses (dense weights, dense BN set).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor, branch: int = DENSE) -> torch.Tensor:
        return self.head(self.backbone(x, branch), branch)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x, DENSE)


def build_model(width: int, in_channels: int, mean: Sequence[float], std: Sequence[float], head: HeadSpec) -> SSLNet:
    """A ResNet-18 of base ``width`` and the projection head ``head`` (each method's ``head_spec``)."""
    backbone = ResNet18(in_channels, width, mean, std)
    return SSLNet(backbone, ProjectionHead(backbone.feature_dim, head.hidden, head.out_dim, head.depth, head.last_bn))
