"""Long-tail metrics: mean per-class accuracy, Major/Moderate/Minor groups, balancedness.

Groups come from the long-tail split's class counts (Major = most frequent classes,
see :func:`sdclr.data.longtail.class_groups`). Balancedness is the (population) std of
the three group accuracies: lower is better, as in the SDCLR paper. The names of the
probes in a metrics file (:func:`probe_kinds`) are shared by the evaluate stage, MLflow and
the report.
"""

from __future__ import annotations

import numpy as np


def per_class_accuracy(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy of each class (NaN for a class absent from ``target``)."""
    correct = np.bincount(target[pred == target], minlength=num_classes).astype(np.float64)
    total = np.bincount(target, minlength=num_classes).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return correct / total


def group_report(per_class: np.ndarray, groups: dict[str, list[int]]) -> dict:
    """Accuracy = mean of per-class accuracies; group accuracies; balancedness (std of groups)."""
    group_acc = {g: float(np.nanmean(per_class[cs])) for g, cs in groups.items()}
    return {
        "accuracy": float(np.nanmean(per_class)),
        "per_class": [float(a) for a in per_class],
        "groups": group_acc,
        "balancedness": float(np.std(list(group_acc.values()))),
    }


def few_shot_name(entry: int | float, first: bool) -> str:
    """The metrics key of a few-shot probe (``evaluate.few_shot``): ``few_shot`` for the first
    one, the headline that the tables, claims and MLflow's ``few_shot_accuracy`` show; the
    others by their subset (``few_shot_50shot``, ``few_shot_sb``)."""
    if first:
        return "few_shot"
    return "few_shot_sb" if isinstance(entry, float) else f"few_shot_{entry}shot"


def few_shot_label(entry: int | float) -> str:
    """How the report names a few-shot subset: ``1 % per class`` (the split's S_b) or ``100 per class``."""
    return f"{entry * 100:g} % per class" if isinstance(entry, float) else f"{entry} per class"


def probe_kinds(metrics: dict) -> list[str]:
    """The probes of a metrics file in the report's order: full-shot, each few-shot subset, kNN."""
    return ["full_shot", *(k for k in metrics if k.startswith("few_shot")), "knn"]
