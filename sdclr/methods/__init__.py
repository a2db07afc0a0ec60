"""The registry of pretraining methods: one entry per method, everything else reads it.

``METHODS`` is the one list of methods: the stages' ``--method`` choices, the report's
row order, and the test that checks dvc.yaml has a ``pretrain-<name>`` and an
``evaluate-<name>`` block declaring the params each method reads all come from it.
Each class (:class:`sdclr.methods.base.Method`) owns what is specific to it.
"""

from __future__ import annotations

from sdclr.errors import ConfigError
from sdclr.methods.base import Method
from sdclr.methods.bcl import BCLD, BCLI
from sdclr.methods.sbid import SingleBranchID
from sdclr.methods.sdclr import SDCLR
from sdclr.methods.simclr import SimCLR, SimCLRTS

#: every pretraining method by its key, in the report's order; the follow-ups (issue 15) run
#: only on ``followups.splits``
METHODS: dict[str, type[Method]] = {m.name: m for m in (SimCLR, SDCLR, SingleBranchID, SimCLRTS, BCLI, BCLD)}


def method_class(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"method {name!r} is not implemented; accepted: {', '.join(METHODS)}.") from None
