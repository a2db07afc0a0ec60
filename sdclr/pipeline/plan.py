"""What the parallel runner must run, and in which order: DVC's own view of the pipeline.

:func:`plan` asks DVC which stages are out of date and adds everything downstream of them;
:func:`priority` orders the ready ones (the stages most others wait on, then the longest as last
timed in ``reports/cost.json``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from sdclr.errors import SdclrError

#: how often DVC is asked again after losing a lock race (and a stage started again)
LOCK_RETRIES = 8


@dataclass
class Plan:
    """The out-of-date stages in a runnable order, each one's out-of-date upstream stages, and
    how many out-of-date stages wait on each (directly or not)."""

    order: list[str]
    upstream: dict[str, set[str]] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)


def plan(root: Path, targets: list[str] | None = None) -> Plan:
    """Ask DVC which stages must run: the changed ones and everything downstream of them.

    ``dvc status`` only sees a stage's own changes (an upstream stage that will re-run has
    not changed its outputs yet), so every stage downstream of a changed one runs too.
    """
    from dvc.exceptions import DvcException
    from dvc.lock import LockError

    here = os.getcwd()
    os.chdir(root)  # stage addressing ("name", "name@item") is relative to the working directory
    try:
        attempt = 0
        while True:
            attempt += 1
            try:
                return _plan(targets)
            except LockError as e:  # another dvc process is writing a path `dvc status` reads
                if attempt == LOCK_RETRIES:
                    raise SdclrError(f"another DVC process holds a lock this run needs ({str(e).splitlines()[0]}); "
                                     f"wait for it to finish, or remove {root}/.dvc/tmp/rwlock if no dvc process "
                                     "runs.") from None
                time.sleep(attempt)
            except DvcException as e:  # a broken dvc.yaml or params.yaml: DVC's own first line says what
                raise SdclrError(f"DVC cannot read the pipeline in {root} ({str(e).splitlines()[0]}); fix it and "
                                 "run again (`dvc status` shows the same message).") from None
    finally:
        os.chdir(here)


def _plan(targets: list[str] | None) -> Plan:
    import networkx as nx
    from dvc.repo import Repo

    with Repo(".") as repo:
        graph = repo.index.graph  # edge (a, b): stage a depends on stage b
        by_name = {stage.addressing: stage for stage in graph.nodes}
        wanted = set(by_name)
        if targets:
            unknown = [t for t in targets if t not in by_name]
            if unknown:
                raise SdclrError(f"no stage named {', '.join(unknown)} in dvc.yaml; `dvc stage list` names them all.")
            wanted = set(targets).union(*(
                {s.addressing for s in nx.descendants(graph, by_name[t])} for t in targets))
        changed = {name for name in repo.status(targets=sorted(wanted)) if name in wanted}
    run = set(changed)
    for name in changed:  # networkx's ancestors of a stage: the stages that depend on it
        run |= {s.addressing for s in nx.ancestors(graph, by_name[name])} & wanted
    order = [s.addressing for s in reversed(list(nx.topological_sort(graph))) if s.addressing in run]
    upstream = {name: {s.addressing for s in graph.successors(by_name[name])} & run for name in order}
    waiting = {name: len({s.addressing for s in nx.ancestors(graph, by_name[name])} & run) for name in order}
    return Plan(order, upstream, waiting)


def expected_seconds(root: Path) -> dict[str, float]:
    """Each stage's time on its last run here (reports/cost.json), by stage name; a split not
    timed yet gets the method's mean over the splits that were."""
    try:
        cost = json.loads((root / "reports" / "cost.json").read_text())
    except (OSError, ValueError):
        return {}
    by_kind: dict[str, list[float]] = {}
    out = {}
    for key, entry in cost.items():
        parts = key.split("/")  # pretrain/<method>/split<k>
        if len(parts) == 3 and parts[2].startswith("split") and isinstance(entry.get("seconds"), (int, float)):
            out[f"{parts[0]}-{parts[1]}@{parts[2].removeprefix('split')}"] = entry["seconds"]
            by_kind.setdefault(f"{parts[0]}-{parts[1]}", []).append(entry["seconds"])
    out.update({kind: sum(v) / len(v) for kind, v in by_kind.items()})
    return out


def priority(the_plan: Plan, seconds: dict[str, float]):
    """Which ready stage starts first: the one most stages wait on, then the longest (as last
    timed): long pretrainings first, so that short evaluations fill the lanes at the end."""
    def key(name: str) -> tuple[int, float]:
        return -the_plan.waiting.get(name, 0), -seconds.get(name, seconds.get(name.split("@")[0], 0.0))
    return key
