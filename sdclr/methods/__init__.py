"""Pretraining methods behind one interface (:class:`sdclr.methods.base.Method`)."""

from __future__ import annotations

from sdclr.config import Params
from sdclr.errors import ConfigError
from sdclr.methods.base import Method


def build_method(name: str, params: Params, net, num_samples: int) -> Method:
    """The method ``name`` wrapped around ``net``, configured from params.yaml."""
    if name == "simclr":
        from sdclr.methods.simclr import SimCLR

        return SimCLR(net, params.pretrain.temperature)
    if name == "sdclr":
        from sdclr.methods.sdclr import SDCLR

        return SDCLR(net, params.pretrain.temperature, params.prune_ratio)
    raise ConfigError(f"method {name!r} is not implemented; accepted: simclr, sdclr.")


def method_params(name: str, params: Params) -> dict:
    """The params beyond the shared ones that shape this method's training (for the checkpoint hash)."""
    if name == "sdclr":
        return {"prune_ratio": params.prune_ratio}
    return {}
