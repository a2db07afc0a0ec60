"""Projection head and the encoder + head network used by every method.

The head depth is a parameter because the SDCLR authors used three layers while
BCL's re-run used two; SimCLR and SDCLR must share one head for a fair
comparison.  Linear layers are never pruned, but their BatchNorms are dual so
each branch keeps its own statistics all the way to the loss.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from sdclr.models.layers import DENSE, DualBatchNorm
from sdclr.models.resnet import ResNet18


class ProjectionHead(nn.Module):
    """``depth`` Linear layers, each followed by a dual BN1d; ReLU between them.

    The Linear layers carry no bias: the BN right after each one would cancel it.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, depth: int = 2):
        super().__init__()
        if depth not in (1, 2, 3):
            raise ValueError(f"ProjectionHead: depth must be 1, 2 or 3, got {depth!r}.")
        dims = [in_dim] + [hidden_dim] * (depth - 1) + [out_dim]
        self.linears = nn.ModuleList(nn.Linear(a, b, bias=False) for a, b in zip(dims[:-1], dims[1:]))
        self.bns = nn.ModuleList(DualBatchNorm(b, dims=1) for b in dims[1:])

    def forward(self, x: torch.Tensor, branch: int = DENSE) -> torch.Tensor:
        last = len(self.linears) - 1
        for i, (linear, bn) in enumerate(zip(self.linears, self.bns)):
            x = bn(linear(x), branch)
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


def build_model(model_params, in_channels: int, mean: Sequence[float], std: Sequence[float]) -> SSLNet:
    """The network every method trains, from params.yaml's ``model`` section."""
    backbone = ResNet18(in_channels, model_params.width, mean, std)
    head = ProjectionHead(backbone.feature_dim, model_params.head_hidden, model_params.proj_dim, model_params.head_depth)
    return SSLNet(backbone, head)
