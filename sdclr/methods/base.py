"""The interface every pretraining method implements, so the loop and the stages stay generic.

A method is an ``nn.Module`` that owns the network. Its class answers everything about
the method that does not need an instance (how to build it from params.yaml, which head
it trains, its schedule, which params shape its training, which param keys an error
message should name, which params its DVC stage reads); an instance does a whole
training step in one ``forward`` call (all views, all branches) and returns the loss,
which keeps DistributedDataParallel happy (one forward per backward).

A method's class also owns what the rest of the pipeline says about it: its params block
(``params_block``: its key in params.yaml and the dataclass that checks it), what a paper
claims about it (``claim_source``, ``claim_heading``, ``claims``: the report checks each on
every run) and the key of its own report section, if any (``report_section``: the section and its
figures live with the report, in :data:`sdclr.report.SECTIONS`).

Adding a method: a module with a ``Method`` subclass, its entry in :data:`sdclr.registry.REGISTRY`,
its params block (if any) in params.yaml and its name in params.yaml's ``methods``; then
``python -m sdclr.pipeline.dvc_stages`` writes its stages into dvc.yaml (see docs/design.md).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from sdclr.config import Declared, Params, param
from sdclr.errors import ConfigError
from sdclr.models import HeadSpec

#: the probes a claim may name (the evaluate stage's metrics file has one entry each)
PROBES = ("full_shot", "few_shot", "knn")


@dataclass(frozen=True)
class Claim:
    """A published direction about a method ``a``: ``a`` − ``b`` on ``metric`` (accuracy |
    minor | balancedness) of probe ``kind`` should have the sign ``direction``."""

    b: str
    kind: str
    metric: str
    direction: int


def claims_against(b: str, minor: bool = True, balanced: bool = False) -> tuple[Claim, ...]:
    """The usual claims of a long-tail paper over its baseline ``b``: higher accuracy on every
    probe; with ``minor``, higher Minor-group accuracy; with ``balanced``, a lower group std
    (both on the two linear probes)."""
    out = [Claim(b, kind, "accuracy", +1) for kind in PROBES]
    out += [Claim(b, kind, "minor", +1) for kind in ("full_shot", "few_shot")] if minor else []
    out += [Claim(b, kind, "balancedness", -1) for kind in ("full_shot", "few_shot")] if balanced else []
    return tuple(out)


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
    #: ``None``: τ follows ``pretrain.temperature_schedule``; ``"cosine"``: always TS's schedule
    temperature_schedule: ClassVar[str | None] = None

    # ---- its declaration: everything below is derived from these three

    #: params.yaml keys it reads beyond :data:`SHARED_STAGE_PARAMS`: its DVC params, its MLflow
    #: params and (but for ``model``, whose shape the fingerprint has anyway) its resume fingerprint
    reads: ClassVar[tuple[str, ...]] = ("model",)
    #: shared settings (``epochs``, ``lr``, ``weight_decay``) it may take from a key of its own;
    #: ``null`` at that key = the shared ``pretrain.<setting>``
    own_settings: ClassVar[dict[str, str]] = {}
    #: its own params.yaml block: (key, dataclass checking it); methods of one paper may share one
    params_block: ClassVar[tuple[str, type] | None] = None
    #: its pretrain stage writes :meth:`per_image_state` as a CSV (``--per-image``)
    per_image: ClassVar[bool] = False

    # ---- what the report says about it

    #: who claims something about it (a report heading; methods of one paper share it)
    claim_source: ClassVar[str | None] = None
    #: what that source claims, in one sentence
    claim_heading: ClassVar[str] = ""
    #: the claims the report checks on every run where both methods ran
    claims: ClassVar[tuple[Claim, ...]] = ()
    #: the key of its own report section and figures in :data:`sdclr.report.SECTIONS` (``"bcl"``):
    #: they live with the report, so that editing a figure retrains nothing
    report_section: ClassVar[str | None] = None

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
    def check_params(cls, params: Params) -> None:
        """Checks across params groups, run when params.yaml lists the method (one ParamError sentence)."""

    @classmethod
    def head_spec(cls, params: Params) -> HeadSpec:
        """The projection head it trains: by default the shared ``model`` head."""
        m = params.model
        return HeadSpec(depth=m.head_depth, hidden=m.head_hidden, out_dim=m.proj_dim)

    @classmethod
    def setting_key(cls, params: Params, setting: str) -> str:
        """Where ``setting`` comes from: its own key when that is set, else ``pretrain.<setting>``
        (named in error messages)."""
        own = cls.own_settings.get(setting)
        return own if own and param(params, own) is not None else f"pretrain.{setting}"

    @classmethod
    def setting(cls, params: Params, setting: str):
        """The value of a shared setting for this method (e.g. sbid's own epochs when set)."""
        return param(params, cls.setting_key(params, setting))

    @classmethod
    def resolved_params(cls, params: Params) -> dict:
        """Its own settings as used (a ``null`` replaced by the shared value): what MLflow logs for them."""
        return {key: cls.setting(params, name) for name, key in cls.own_settings.items()}

    @classmethod
    def shaping_params(cls, params: Params) -> dict:
        """The params it reads beyond the shared ones and the network's shape (resume fingerprint)."""
        return {key: param(params, key) for key in cls.reads if not key.startswith("model")}

    @classmethod
    def stage_params(cls) -> tuple[str, ...]:
        """Every param its pretrain stage reads: what its dvc.yaml block declares."""
        return (*SHARED_STAGE_PARAMS, *cls.reads)

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


def load_method(spec: str) -> type[Method]:
    """The method class ``"module:Class"`` names, its module imported now: the registry's lazy load
    (:func:`sdclr.registry.method_class`), and how a pretrain stage loads the one it trains without
    reading the registry."""
    module, _, cls = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module), cls, None)
    except ModuleNotFoundError as missing:
        if missing.name is None or not (module + ".").startswith(missing.name + "."):
            raise  # the module exists and one of its own imports failed: that error is the one to read
        found = None
    except ValueError:  # an empty module name
        found = None
    if not (isinstance(found, type) and issubclass(found, Method)):
        raise ConfigError(f"{spec!r} names no pretraining method; accepted: module:Class of a "
                          "sdclr.methods.base.Method subclass, as sdclr/registry.py lists them.")
    return found


def declared_by(cls: type[Method]) -> Declared:
    """What one method declares about params.yaml: a pretrain stage reads its params with it alone."""
    blocks = dict([cls.params_block]) if cls.params_block is not None else {}
    return Declared(blocks=blocks, checks={cls.name: cls.check_params})
