"""The small interface every pretraining method implements, so the loop is shared.

A method is an ``nn.Module`` that owns the network. One ``forward`` call does a whole
training step's computation (all views, all branches) and returns the loss: this keeps
DistributedDataParallel happy (one forward per backward) and lets the loop stay
method-agnostic.
"""

from __future__ import annotations

import torch
from torch import nn


class Method(nn.Module):
    """Base: subclasses set ``name`` and implement :meth:`forward`."""

    name = "base"
    #: augmented views per image per step (for the images/s figure)
    views_per_image = 2

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    #: set by the loop under DDP: a generator seeded identically on every rank, for draws that
    #: must agree across ranks (sbid's negative columns); ``None`` = the step's own generator
    shared_generator: torch.Generator | None = None

    def initialise(self, data: torch.Tensor, augment, generator: torch.Generator, batch_size: int,
                   channels_last: bool, positions: torch.Tensor | None = None) -> None:
        """Once before the first epoch (not on resume): e.g. sbid's memory-bank fill pass.

        ``data`` is this rank's shard; ``positions`` its rows' indices in the whole training
        set (``None`` = all of it, in order).
        """

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        """Per-epoch bookkeeping (e.g. SDCLR's mask refresh); returns metrics to log."""
        return {}

    def forward(self, images: torch.Tensor, indices: torch.Tensor, augment, generator: torch.Generator,
                channels_last: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """uint8 batch on the device → (scalar loss, extra per-step metrics as 0-d tensors).

        The extras are averaged over the epoch and logged beside the loss.
        """
        raise NotImplementedError

    @staticmethod
    def _views(images, augment, generator, channels_last, n=2):
        views = [augment(images, generator) for _ in range(n)]
        if channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views
