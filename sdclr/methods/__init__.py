"""The registry of pretraining methods: one entry per method, everything else reads it.

``REGISTRY`` is the one list of methods that exist: the stages' ``--method`` choices, the
report's row order and the params blocks a params.yaml may have all come from it; params.yaml's
``methods`` chooses which of them run (``python -m sdclr.pipeline.dvc_stages`` writes their
stages). Each class (:class:`sdclr.methods.base.Method`) declares what is specific to it. A class is imported only when asked for, so a pretrain stage imports — and DVC
tracks — the module of its own method only: editing ``sbid.py`` re-runs sbid's stages.
"""

from __future__ import annotations

import importlib

from sdclr.errors import ConfigError

#: every pretraining method: its key → ``module:Class``, in the report's order
REGISTRY: dict[str, str] = {
    "simclr": "sdclr.methods.simclr:SimCLR",
    "sdclr": "sdclr.methods.sdclr:SDCLR",
    "sbid": "sdclr.methods.sbid:SingleBranchID",
    "simclr_ts": "sdclr.methods.simclr:SimCLRTS",
    "bcl_i": "sdclr.methods.bcl:BCLI",
    "bcl_d": "sdclr.methods.bcl:BCLD",
    "simclr_gh": "sdclr.methods.gh:SimCLRGH",
    "sdclr_gh": "sdclr.methods.gh:SDCLRGH",
}
METHODS: tuple[str, ...] = tuple(REGISTRY)


def method_class(name: str) -> type:
    """The :class:`~sdclr.methods.base.Method` subclass registered under ``name`` (its module imported
    now; not at the top of this file, which params reading imports: so DVC's code deps of a stage
    name no method module it does not train)."""
    try:
        module, cls = REGISTRY[name].split(":")
    except KeyError:
        raise ConfigError(f"method {name!r} is not implemented; accepted: {', '.join(METHODS)}.") from None
    return getattr(importlib.import_module(module), cls)
