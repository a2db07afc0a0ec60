"""The machinery that turns a YAML mapping into frozen, validated dataclasses.

Shared by the project's params (:mod:`sdclr.config`) and each method's own block (declared in
its module, e.g. ``SbidParams`` in :mod:`sdclr.methods.sbid`), so that every key anywhere in
params.yaml is checked the same way and every problem is *one* sentence naming the key, the
value and what is accepted: unknown keys (typos), missing keys, wrong types, out-of-range
values. Nothing here supplies a default that params.yaml cannot override.

A field is declared with :func:`setting`: its check, a one-line doc, and what the report says
when a run's value differs from a paper's recipe (``deviation``; ``recipe=False`` for keys that
are not part of any recipe, e.g. where the data is or how fast it runs).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import field
from typing import Any, Callable, Literal, Optional

from sdclr.errors import ConfigError, ParamError

# A check returns None when the value is fine, else the phrase "what is accepted".


# A check returns None when the value is fine, else the phrase "what is accepted".


def in_range(lo=None, hi=None, lo_open=False, hi_open=False, what="a number"):
    def check(v):
        if isinstance(v, float) and not math.isfinite(v):
            return f"a finite {what.removeprefix('a ').removeprefix('an ')}"
        bad = (lo is not None and (v <= lo if lo_open else v < lo)) or (
            hi is not None and (v >= hi if hi_open else v > hi)
        )
        if not bad:
            return None
        if lo is not None and hi is not None:
            return f"{what} in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        if lo is not None:
            return f"{what} {'>' if lo_open else '>='} {lo}"
        return f"{what} {'<' if hi_open else '<='} {hi}"

    return check


def positive(what="a positive number"):
    return in_range(lo=0, lo_open=True, what=what)


def non_negative(what="a number"):
    return in_range(lo=0, what=what)


def unit_interval(what="a probability"):
    return in_range(lo=0, hi=1, what=what)


def interval_pair(lo, hi):
    def check(v):
        a, b = v
        if not (lo <= a <= b <= hi):
            return f"two numbers [low, high] with {lo} <= low <= high <= {hi}"
        return None

    return check


def setting(check=None, doc="", choices=None, deviation=None, recipe=True):
    """A field's check and one-line doc. ``choices``, for a name that must be a key of a table
    that can grow (the datasets, the methods), gives the accepted names when the file is read.
    ``deviation`` words a difference from a paper's recipe (``{ours}``, ``{paper}``);
    ``recipe=False``: the key is no part of a recipe, the report's deviations skip it."""
    return field(metadata={"check": check, "doc": doc, "choices": choices, "deviation": deviation, "recipe": recipe})




def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        names = " or ".join(_type_name(a) for a in inner)
        return f"{names} or null" if type(None) in typing.get_args(tp) else names
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('an ').removeprefix('a ')}s"
    if origin is tuple:
        item = _type_name(typing.get_args(tp)[0]).removeprefix("an ").removeprefix("a ")
        return f"a list of {len(typing.get_args(tp))} {item}s"
    if dataclasses.is_dataclass(tp):
        return "a mapping of keys"
    return str(tp)


def _coerce(value: Any, tp, key: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise one ConfigError sentence."""

    def fail():
        raise ParamError(f"{key} = {value!r} has the wrong type; accepted: {_type_name(tp)}.")

    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail()
        return build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for inner in [a for a in typing.get_args(tp) if a is not type(None)]:
            try:
                return _coerce(value, inner, key)
            except ConfigError:
                pass
        fail()
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool):
            raise ParamError(
                f"{key} = {value!r} is not a known choice; accepted: {_type_name(tp)}."
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            fail()
        (inner,) = typing.get_args(tp)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        inner = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(inner):
            fail()
        return tuple(_coerce(v, t, f"{key}[{i}]") for i, (v, t) in enumerate(zip(value, inner)))
    if tp is bool:
        if not isinstance(value, bool):
            fail()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail()
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")


def build(cls, raw: dict, prefix: str, blocks: dict[str, type] | None = None, strict: bool = True):
    """``cls`` from the mapping ``raw`` at ``prefix``, every field checked.

    ``blocks``: further keys this level accepts, each built as its own dataclass (the methods'
    blocks at the top level) and handed to ``cls`` as one ``blocks`` mapping. ``strict=False``
    leaves keys of this level that are neither fields nor ``blocks`` unchecked (a stage that
    reads one method's block, on a file holding others')."""
    blocks = blocks or {}
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name != "blocks"]
    names = [f.name for f in fields] + list(blocks)
    where = f"`{prefix}`" if prefix else "the top level"
    for k in raw if strict else ():
        if k not in names:
            raise ParamError(
                f"unknown key {join(prefix, k)!r} at {where}; accepted keys there: {', '.join(names)}."
            )
    for name in names:
        if name not in raw:
            doc = blocks[name].__doc__ if name in blocks else next(
                (f.metadata.get("doc") for f in fields if f.name == name), None) or f"the {name} group of params.yaml"
            raise ParamError(f"missing key {join(prefix, name)!r} ({(doc or 'required').strip().splitlines()[0]}); "
                             "add it to the file.")
    kwargs = {f.name: _field_value(f, hints[f.name], raw[f.name], join(prefix, f.name)) for f in fields}
    if blocks:
        kwargs["blocks"] = {name: build(block, _mapping(raw[name], block, name), name)
                            for name, block in blocks.items()}
    return cls(**kwargs)


def _mapping(value: Any, tp, key: str) -> dict:
    if not isinstance(value, dict):
        raise ParamError(f"{key} = {value!r} has the wrong type; accepted: {_type_name(tp)}.")
    return value


def _field_value(f: dataclasses.Field, hint, raw_value: Any, key: str) -> Any:
    """One field's value, coerced to its type and checked."""
    choices = f.metadata.get("choices")
    if choices:  # a table's keys are checked as the Literal of its names: the sentence every choice gets
        names = Literal[choices()]
        hint = list[names] if typing.get_origin(hint) is list else names
    value = _coerce(raw_value, hint, key)
    check: Optional[Callable] = f.metadata.get("check")
    if check is not None and value is not None:
        accepted = check(value)
        if accepted:
            shown = list(value) if isinstance(value, tuple) else value
            raise ParamError(f"{key} = {shown!r} is out of range; accepted: {accepted}.")
    return value


def join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key
