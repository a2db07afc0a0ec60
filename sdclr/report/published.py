"""What the papers published, shown in the report beside our numbers on the same dataset only.

Kept with the report that reads it, apart from the dataset table: correcting a published number
re-runs the report stage and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class PaperReference:
    """Published numbers, shown in the report beside results on this dataset only.

    ``measures`` says which of our numbers each column is (probe, field of its aggregate), and
    ``protocol`` the params (dotted keys) a run must share with the paper for the two to be
    subtracted: its evaluation protocol and the settings that move the numbers most.
    """

    title: str
    columns: tuple[str, ...]
    rows: Mapping[str, tuple[str, ...]]  # method → one cell per column, as published
    measures: tuple[tuple[str, str], ...]  # per column: (probe, "accuracy" or a group)
    protocol: Mapping[str, Any]


#: the published table per dataset (a row of :data:`sdclr.data.datasets.DATASETS`), where one exists
PUBLISHED: dict[str, PaperReference] = {
    "cifar10": PaperReference(
        "SDCLR paper, CIFAR-10-LT, Table 4 (full-shot probe, per group, mean ± std over 5 splits)",
        ("major", "moderate", "minor"),
        {"simclr": ("78.18 ± 4.18", "76.23 ± 5.33", "71.37 ± 7.07"),
         "sdclr": ("86.44 ± 3.12", "81.84 ± 4.78", "76.23 ± 6.29")},
        measures=(("full_shot", "major"), ("full_shot", "moderate"), ("full_shot", "minor")),
        protocol={"evaluate.probe.protocol": "authors", "evaluate.probe.lr": 30.0,
                  "evaluate.probe.weight_decay": 0.0, "evaluate.probe.batch_size": 128,
                  "evaluate.probe.full_shot_epochs": 30, "evaluate.probe.full_shot_milestones": [10, 20],
                  "pretrain.epochs": 2000, "model.width": 64, "subsample.imbalance_ratio": 100,
                  "prune_ratio": 0.9}),
    "cifar100": PaperReference(
        "BCL's public re-run, CIFAR-100-LT split 1 (its README; its own Adam probe on frozen features; one "
        "split, no std)",
        ("full-shot", "100-shot", "50-shot"),
        {"simclr": ("50.7", "46.3", "42.4"), "sdclr": ("55.0", "49.7", "45.6"),
         "bcl_i": ("55.7", "50.1", "45.8"), "bcl_d": ("58.7", "52.6", "48.7")},
        measures=(("full_shot", "accuracy"), ("few_shot", "accuracy"), ("few_shot_50shot", "accuracy")),
        protocol={"evaluate.probe.protocol": "bcl", "evaluate.few_shot": [100, 50], "evaluate.probe.lr": 0.01,
                  "evaluate.probe.final_lr": 1e-6, "evaluate.probe.weight_decay": 5e-6,
                  "evaluate.probe.batch_size": 1000, "evaluate.probe.full_shot_epochs": 500,
                  "evaluate.probe.few_shot_epochs": 500, "pretrain.epochs": 2000, "model.width": 64,
                  "subsample.imbalance_ratio": 100}),
}
