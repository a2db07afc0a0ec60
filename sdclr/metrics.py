"""Long-tail metrics: mean per-class accuracy, Major/Moderate/Minor groups, balancedness.

Groups come from the long-tail split's class counts (Major = most frequent classes,
see :func:`sdclr.data.longtail.class_groups`). Balancedness is the (population) std of
the three group accuracies: lower is better, as in the SDCLR paper.
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
