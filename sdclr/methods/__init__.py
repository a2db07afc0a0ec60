"""Pretraining methods behind one interface (:class:`sdclr.methods.base.Method`).

Everything method-specific the shared loop needs is answered here: which network head
the method trains, which params shape it (for the resume fingerprint), and its epochs
and peak lr (Cao & Wu's single-branch method may run its own schedule).
"""

from __future__ import annotations

from dataclasses import asdict

from sdclr.config import Params
from sdclr.errors import ConfigError
from sdclr.methods.base import Method
from sdclr.models import HeadSpec

IMPLEMENTED = ("simclr", "sdclr", "sbid")


def build_method(name: str, params: Params, net, num_samples: int) -> Method:
    """The method ``name`` wrapped around ``net`` (built with :func:`head_spec`), configured from params.yaml.

    ``num_samples`` is the training set size (sbid keeps one memory-bank entry per image).
    """
    if name == "simclr":
        from sdclr.methods.simclr import SimCLR

        return SimCLR(net, params.pretrain.temperature)
    if name == "sdclr":
        from sdclr.methods.sdclr import SDCLR

        return SDCLR(net, params.pretrain.temperature, params.prune_ratio)
    if name == "sbid":
        from sdclr.methods.sbid import SingleBranchID

        return SingleBranchID(net, params.sbid, num_samples)
    raise ConfigError(f"method {name!r} is not implemented; accepted: {', '.join(IMPLEMENTED)}.")


def head_spec(name: str, params: Params) -> HeadSpec:
    """The projection head ``name`` trains: the shared ``model`` head, or sbid's own."""
    if name == "sbid":
        return HeadSpec(depth=3, hidden=params.sbid.head_hidden, out_dim=params.sbid.proj_dim, last_bn=False)
    m = params.model
    return HeadSpec(depth=m.head_depth, hidden=m.head_hidden, out_dim=m.proj_dim)


def schedule(name: str, params: Params) -> tuple[int, float]:
    """(epochs, peak lr) of ``name``: the shared ``pretrain`` values unless sbid overrides them."""
    p = params.pretrain
    if name == "sbid":
        return params.sbid.epochs or p.epochs, params.sbid.lr or p.lr
    return p.epochs, p.lr


def method_params(name: str, params: Params) -> dict:
    """The params beyond the shared ones that shape this method's training (for the checkpoint hash)."""
    if name == "sdclr":
        return {"prune_ratio": params.prune_ratio}
    if name == "sbid":
        return asdict(params.sbid)
    return {}
