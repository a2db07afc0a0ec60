"""The interface every pretraining method implements, so the loop and the stages stay generic.

A method is an ``nn.Module`` that owns the network. Its class answers everything about
the method that does not need an instance (how to build it from params.yaml, which head
it trains, its schedule, which params shape its training, which param keys an error
message should name, which params its DVC stage reads); an instance does a whole
training step in one ``forward`` call (all views, all branches) and returns the loss,
which keeps DistributedDataParallel happy (one forward per backward).

Adding a method: a module with a ``Method`` subclass, its entry in
:data:`sdclr.methods.METHODS`, its params block in params.yaml/``sdclr.config`` if it has
own params, and its ``pretrain-<name>``/``evaluate-<name>`` blocks in dvc.yaml (see
docs/design.md).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from sdclr.config import Params
from sdclr.models import HeadSpec

#: the params every pretraining stage reads (dvc.yaml lists them, plus each method's own)
SHARED_STAGE_PARAMS = ("seed", "device", "numerics", "data.dataset", "augment", "pretrain")


class Method(nn.Module):
    """Base class: subclasses set the class attributes and implement ``from_params`` and ``forward``."""

    #: the key in params.yaml, dvc.yaml stage names, MLflow tags and reports
    name: ClassVar[str]
    #: augmented views of each image per step (2 for SimCLR and SDCLR, 1 for sbid)
    views_per_image: ClassVar[int] = 2
    #: the MLflow metric name of its loss (NT-Xent for the two-view methods)
    loss_metric: ClassVar[str] = "ntxent_loss"
    #: the params.yaml key of its contrastive temperature (named in error messages)
    temperature_key: ClassVar[str] = "pretrain.temperature"
    #: params its pretrain stage reads beyond :data:`SHARED_STAGE_PARAMS` (dvc.yaml must list them)
    own_stage_params: ClassVar[tuple[str, ...]] = ("model",)
    #: ``None``: τ follows ``pretrain.temperature_schedule``; ``"cosine"``: always TS's schedule
    temperature_schedule: ClassVar[str | None] = None
    #: a follow-up of issue 15: its stages run on ``followups.splits`` (off by default)
    followup: ClassVar[bool] = False

    #: the contrastive temperature in use (logged every epoch)
    temperature: float

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.augment = None  # the batch augmentation, set by :meth:`configure`
        self.channels_last = False

    #: set by the loop under DDP: a generator seeded identically on every rank, for draws that
    #: must agree across ranks (sbid's negative columns); ``None`` = the step's own generator
    shared_generator: torch.Generator | None = None

    # ---- what the class knows from params.yaml alone

    @classmethod
    def from_params(cls, params: Params, net: nn.Module, num_samples: int) -> "Method":
        """The method around ``net`` (built with :meth:`head_spec`); ``num_samples`` = training-set size."""
        raise NotImplementedError

    @classmethod
    def head_spec(cls, params: Params) -> HeadSpec:
        """The projection head it trains: by default the shared ``model`` head."""
        m = params.model
        return HeadSpec(depth=m.head_depth, hidden=m.head_hidden, out_dim=m.proj_dim)

    @classmethod
    def schedule(cls, params: Params) -> tuple[int, float]:
        """(epochs, peak lr): by default the shared ``pretrain`` values."""
        return params.pretrain.epochs, params.pretrain.lr

    @classmethod
    def weight_decay(cls, params: Params) -> float:
        """Its SGD weight decay: by default the shared ``pretrain.weight_decay``."""
        return params.pretrain.weight_decay

    @classmethod
    def lr_key(cls, params: Params) -> str:
        """The params.yaml key its peak lr comes from (named in error messages)."""
        return "pretrain.lr"

    @classmethod
    def shaping_params(cls, params: Params) -> dict:
        """Params beyond the shared ones that shape its training (part of the resume fingerprint)."""
        return {}

    @classmethod
    def resolved_params(cls, params: Params) -> dict:
        """Params whose value in params.yaml is a placeholder (``null`` = the shared value), as
        used: what its MLflow run logs in their place."""
        return {}

    @classmethod
    def stage_params(cls) -> tuple[str, ...]:
        """Every param its pretrain stage reads: what its dvc.yaml block must declare."""
        return (*SHARED_STAGE_PARAMS, *cls.own_stage_params)

    # ---- what an instance does

    def configure(self, augment, channels_last: bool) -> "Method":
        """Attach the batch augmentation and the memory format of the views."""
        self.augment, self.channels_last = augment, channels_last
        return self

    def memory_format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def views(self, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        """``views_per_image`` independently augmented views of a uint8 batch, in the network's memory format."""
        return [self.memory_format(self.augment(images, generator)) for _ in range(self.views_per_image)]

    def initialise(self, data: torch.Tensor, generator: torch.Generator, batch_size: int,
                   positions: torch.Tensor | None = None) -> None:
        """Once before the first epoch (not on resume): e.g. sbid's memory-bank fill pass.

        ``data`` is this rank's shard; ``positions`` its rows' indices in the whole training
        set (``None`` = all of it, in order).
        """

    def on_epoch_start(self, epoch: int) -> dict[str, float]:
        """Per-epoch bookkeeping (e.g. SDCLR's mask refresh); returns metrics to log."""
        return {}

    def per_image_state(self) -> dict[str, torch.Tensor]:
        """Per-training-image values worth keeping after training (BCL: w, the score); a column each."""
        return {}

    def forward(self, images: torch.Tensor, indices: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """uint8 batch on the device → (scalar loss, extra per-step metrics as 0-d tensors).

        The extras are averaged over the epoch and logged beside the loss.
        """
        raise NotImplementedError
