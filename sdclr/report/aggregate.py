"""The evaluate stages' metrics files → the numbers every other part of the report shows.

One row per (method, split, probe); means and sample stds over splits (``None`` with one split:
one draw measures no spread); the flat headline scores DVC shows; the long loss table of every
history; the per-image state of the methods that keep one. Fractions everywhere, rounded to
:data:`DECIMALS`, so the files are the same bytes on every re-run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from sdclr.errors import DataError
from sdclr.metrics import probe_kinds
from sdclr.registry import METHODS
from sdclr.storage.io import write_bytes

#: the probes every run has, one panel each in the group-accuracy figure; ``few_shot`` is the
#: first of ``evaluate.few_shot`` (further subsets get tables of their own: :func:`probe_titles`)
HEADLINE = ("full_shot", "few_shot", "knn")


def probe_title(kind: str, subset: str | None) -> str:
    """A probe's table title: ``Linear probe, few-shot (100 per class)``."""
    if kind == "full_shot":
        return "Linear probe, full-shot"
    if kind == "knn":
        return "kNN"
    return f"Linear probe, few-shot ({subset or '1 % per class'})"  # files from before the subset was recorded


GROUPS = ("major", "moderate", "minor")


METHOD_ORDER = ("random", *METHODS)


def load_metrics(metrics_root: Path, methods: tuple[str, ...] | None = None) -> pd.DataFrame:
    """One row per (method, split, kind) with accuracy, group accuracies and balancedness (fractions),
    of ``methods`` only when given (a folder left by a method no longer listed is not reported)."""
    rows = []
    for path in sorted(Path(metrics_root).glob("*/split*.json")):
        if methods is not None and path.parent.name not in methods:
            continue
        m = json.loads(path.read_text())
        for order, kind in enumerate(probe_kinds(m)):
            r = m[kind]
            rows.append({
                "method": m["method"], "split": m["split"], "kind": kind, "numerics": m.get("numerics", "not recorded"),
                "title": probe_title(kind, r.get("subset")), "order": order,
                "accuracy": r["accuracy"], "balancedness": r["balancedness"],
                **{g: r["groups"][g] for g in GROUPS},
            })
    if not rows:
        raise DataError(f"no metrics files under {metrics_root}; run the evaluate stages first (`dvc repro`).")
    df = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return df.sort_values(["kind", "method", "split"], key=lambda s: s.map(order) if s.name == "method" else s)


#: decimals kept for fractions in the JSON files (1e-5 = 0.001 accuracy points)
DECIMALS = 5


def round_fraction(x: float) -> float:
    return round(float(x), DECIMALS)


def round_p(p: float | None) -> float | None:
    """A p-value kept to 4 significant digits: fixed decimals would turn a small p (a clearly
    decided claim, e.g. 2e-7) into 0, which a p-value never is unless the splits all agree exactly."""
    return None if p is None else float(f"{p:.4g}")


def _std(values: pd.Series) -> float | None:
    """Sample std over splits; None with one split (no spread can be measured from one draw)."""
    return round_fraction(values.std(ddof=1)) if len(values) >= 2 else None


def probe_titles(df: pd.DataFrame) -> dict[str, str]:
    """{kind: table title} of the probes in ``df``, in the report's order (full-shot, few-shot subsets, kNN)."""
    firsts = df.sort_values("order", kind="stable").drop_duplicates("kind")
    return dict(zip(firsts["kind"], firsts["title"]))


def aggregate(df: pd.DataFrame) -> dict:
    """{method: {kind: {metric_mean, metric_std (None for one split), ..., splits}}}, fractions."""
    out: dict = {}
    for (method, kind), g in df.groupby(["method", "kind"], sort=False):
        entry = {"splits": int(len(g))}
        for col in ("accuracy", *GROUPS, "balancedness"):
            entry[f"{col}_mean"] = round_fraction(g[col].mean())
            entry[f"{col}_std"] = _std(g[col])
        entry["balancedness_of_mean_groups"] = round_fraction(np.std([g[x].mean() for x in GROUPS]))
        out.setdefault(method, {})[kind] = entry
    return out


#: the columns of ``dvc metrics show``: a few headline numbers a reader compares across methods
SCORES = {
    "full_shot": ("full_shot", "accuracy_mean"),
    "few_shot": ("few_shot", "accuracy_mean"),
    "knn": ("knn", "accuracy_mean"),
    "full_shot_minor": ("full_shot", "minor_mean"),
    "full_shot_balancedness": ("full_shot", "balancedness_mean"),
}


def scores(agg: dict, methods: tuple[str, ...] = METHOD_ORDER) -> dict[str, dict]:
    """{method: flat headline numbers}: mean accuracy of each probe, the full-shot Minor-group
    accuracy and balancedness (std of the group accuracies, lower = more balanced), all
    fractions and means over splits, and how many splits they average. Each of ``methods`` has an
    entry (DVC declares one file each): ``{"splits": 0}`` when it has no metrics yet."""
    out = {m: {"splits": 0} for m in methods}
    for method in reported_methods(agg):
        kinds = agg[method]
        row = {key: kinds[kind][field] for key, (kind, field) in SCORES.items() if kind in kinds}
        row["splits"] = max(k["splits"] for k in kinds.values())
        out[method] = row
    return out


def write_scores(rows: dict[str, dict], folder: Path) -> None:
    """One small JSON per method, keys in :data:`SCORES` order (the columns of ``dvc metrics show``);
    files of methods no longer reported are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.json"):
        if stale.stem not in rows:
            stale.unlink()
    for method, row in rows.items():
        write_bytes(folder / f"{method}.json", (json.dumps(row, indent=2) + "\n").encode())


def loss_table(history_root: Path) -> str:
    """Every ``<method>/split<k>.csv`` history as one long CSV: method, split, epoch, loss.

    One file whatever the methods and splits, so one plot overlays them all (dvc.yaml's
    top-level ``plots``) without naming a split; the values are the histories' own text."""
    files = sorted(Path(history_root).glob("*/split*.csv"))
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    files.sort(key=lambda f: (order.get(f.parent.name, len(order)), f.parent.name, int(f.stem.removeprefix("split"))))
    lines = ["method,split,epoch,loss"]
    for f in files:
        h = pd.read_csv(f, dtype=str)  # no float re-formatting
        split = f.stem.removeprefix("split")
        lines += [f"{f.parent.name},{split},{e},{loss}" for e, loss in zip(h["epoch"], h["loss"])]
    return "\n".join(lines) + "\n"


def load_per_image(history_root: Path) -> pd.DataFrame:
    """The per-image state of the methods that keep one (BCL's w and score, GH's cluster) at the
    last epoch: method, split, image, class, group and the method's columns (``per_image_split<k>.csv``)."""
    frames = []
    for f in sorted(Path(history_root).glob("*/per_image_split*.csv")):
        frame = pd.read_csv(f)
        frames.append(frame.assign(method=f.parent.name, split=int(f.stem.removeprefix("per_image_split"))))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def rows_with(per_image: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows of the methods whose per-image state has ``column`` (BCL's w, GH's cluster)."""
    return per_image[per_image[column].notna()] if column in per_image else pd.DataFrame()


def pct(fraction: float) -> float:
    """A fraction of the JSON files in %, for report.md and the figures (3 decimals, as it is stored)."""
    return round(100 * fraction, DECIMALS - 2)


def pm(mean: float, std: float | None) -> str:
    """A fraction's mean ± std in % (``—`` for no std)."""
    return f"{pct(mean):.2f} ± {'—' if std is None else f'{pct(std):.2f}'}"


def reported_methods(agg: dict) -> list[str]:
    return [m for m in METHOD_ORDER if m in agg] + [m for m in agg if m not in METHOD_ORDER]
