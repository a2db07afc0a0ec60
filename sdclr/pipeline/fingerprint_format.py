"""A numerics fingerprint file: read it, and say which groups of kernels differ between two.

Torch-free, so :mod:`sdclr.pipeline.compare` reads fingerprints without loading torch; the
fingerprint is measured by :mod:`sdclr.pipeline.fingerprint_ops` and written by
``python -m sdclr.pipeline.fingerprint``.
"""

from __future__ import annotations

import json
from pathlib import Path

#: the fingerprint file's format; files of another version are not compared
VERSION = 2  # 2: the evaluation chain and BatchNorm at every shape (2026-12-07); inputs of 1 differ


def read(path: str | Path) -> tuple[dict, dict[str, dict]]:
    """A fingerprint file: (its header, {op: {"group", "sha"}})."""
    return parse(Path(path).read_text())


def parse(text: str) -> tuple[dict, dict[str, dict]]:
    """A fingerprint's JSON lines: the first is the header, each other one an op."""
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not lines or lines[0].get("fingerprint") != VERSION:
        raise ValueError(f"not a version-{VERSION} fingerprint (its first line must be the header)")
    return lines[0], {r["op"]: {"group": r["group"], "sha": r["sha"]} for r in lines[1:]}


def differing_groups(ours: dict[str, dict], theirs: dict[str, dict]) -> tuple[list[str], int]:
    """The groups with at least one op whose bytes differ (in first-seen order), and how many ops both have."""
    common = [op for op in ours if op in theirs]
    groups = [ours[op]["group"] for op in common if ours[op]["sha"] != theirs[op]["sha"]]
    return list(dict.fromkeys(groups)), len(common)


def explain(ours: dict[str, dict], theirs: dict[str, dict], other: str = "the committed machine's") -> str:
    """One clause on whether this CPU's kernels give ``other`` fingerprint's bytes, and what follows."""
    groups, common = differing_groups(ours, theirs)
    if common == 0:
        return f"this fingerprint and {other} share no op (other params' shapes), so they cannot be compared"
    if not groups:
        return (f"this CPU's fingerprint matches {other} on all {common} ops, so the kernels are not the cause: "
                "params, code or data differ")
    verb = "differs" if len(groups) == 1 else "differ"
    return f"this CPU's {_join(groups)} {verb} from {other}, so trained numbers differ"


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
