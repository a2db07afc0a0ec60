"""The registry of pretraining methods: one entry per method, and a params.yaml read with all of them.

    python -m sdclr.registry        # every method there is, in the report's order, with its class

``REGISTRY`` is the one list of methods that exist: the report's rows and order, the params
blocks a params.yaml may have, the stages dvc.yaml gets and the tools' checks all come from it;
params.yaml's ``methods`` chooses which of them run (``python -m sdclr.pipeline.dvc_stages`` writes
their stages). Each class (:class:`sdclr.methods.base.Method`) declares what is specific to it.

No stage that trains or probes imports this file: a pretrain stage loads its own method's class
from the ``module:Class`` its command names, and the data and evaluation stages read params.yaml
without any method. So adding a method (its module, one line here, its name in ``methods``)
leaves every existing stage up to date; the report, which reads every method, re-runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdclr.config import Declared, Params
from sdclr.config import load_params as _load
from sdclr.config import parse_params as _parse
from sdclr.errors import ConfigError
from sdclr.methods.base import load_method

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
    """The :class:`~sdclr.methods.base.Method` subclass registered under ``name`` (its module imported now)."""
    try:
        spec = REGISTRY[name]
    except KeyError:
        raise ConfigError(f"method {name!r} is not implemented; accepted: {', '.join(METHODS)}.") from None
    return load_method(spec)


def declared(names: tuple[str, ...] | None = None, complete: bool = True) -> Declared:
    """What the methods ``names`` (default: every registered one) declare about params.yaml (blocks,
    checks), for :mod:`sdclr.config`."""
    classes = [method_class(n) for n in (METHODS if names is None else names)]
    blocks: dict[str, type] = {}
    for cls in classes:
        if cls.params_block is not None:
            blocks.setdefault(*cls.params_block)
    return Declared(blocks=blocks, checks={cls.name: cls.check_params for cls in classes},
                    names=METHODS if complete else (), complete=complete)


def parse_params(raw: Any, source: str | Path = "params.yaml") -> Params:
    """A whole params.yaml document checked, every registered method's block included."""
    return _parse(raw, source, declared())


def load_params(path: str | Path = "params.yaml") -> Params:
    """A whole params file read and checked, every registered method's block included."""
    return _load(path, declared())


def describe() -> str:
    """One line per registered method: its key, its ``module:Class`` and its docstring's first paragraph."""
    key, spec = max(map(len, METHODS)), max(map(len, REGISTRY.values()))
    lines = []
    for name in METHODS:
        summary = " ".join((method_class(name).__doc__ or "").strip().split("\n\n")[0].split())
        lines.append(f"{name:<{key}}  {REGISTRY[name]:<{spec}}  {summary}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(describe())
