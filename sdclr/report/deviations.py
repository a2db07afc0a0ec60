"""What a run changes from its paper's recipe, in words.

The recipe has one source, the dataset row's preset (e.g. ``presets/cifar10_paper.yaml``);
each params field says how a difference reads (``deviation``) or that it is no part of any
recipe (``recipe=False``, e.g. where the data is or how fast it runs), so a method's block
words its own deviations (:mod:`sdclr.schema`).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from sdclr.config import PRESET_DIR, fields_flat
from sdclr.data.datasets import DATASETS
from sdclr.registry import METHODS, method_class

#: the probe's own settings, compared only when ours is the paper's protocol too
PROBE_SETTINGS = {"evaluate.probe.lr", "evaluate.probe.final_lr", "evaluate.probe.weight_decay",
                  "evaluate.probe.batch_size", "evaluate.probe.full_shot_epochs", "evaluate.probe.few_shot_epochs",
                  "evaluate.probe.full_shot_milestones", "evaluate.probe.few_shot_milestones"}


def _protocol_words(protocol: str, lr: float) -> str:
    return {"features": f"Linear probe on standardised features extracted once without augmentation (SGD, lr {lr})",
            "authors": "the authors' probe (lr 30, random crop + flip through the frozen backbone)",
            "bcl": "BCL's probe (Adam on raw frozen features, lr 0.01 decayed to 1e-6 over 500 epochs, the last "
                   "epoch's head)"}[protocol]


def deviations(params, preset_dir: Path | None = None) -> list[str]:
    """What params.yaml changes from the papers' recipe, in words: every recipe key of the
    dataset row's ``recipe_preset`` (e.g. ``presets/cifar10_paper.yaml``) compared with ours,
    so the recipe has one source. Resolved values are compared (a method's null setting =
    the shared value)."""
    dataset = DATASETS[params.data.dataset]
    name = dataset.recipe_preset
    paper = _flatten(yaml.safe_load(((preset_dir or PRESET_DIR) / f"{name}.yaml").read_text()))
    fields = {key: (value, meta) for key, value, meta in fields_flat(params)}
    ours = {key: value for key, (value, _) in fields.items()}
    for name in METHODS:
        ours.update(method_class(name).resolved_params(params))
    ours["subsample.splits"], paper["subsample.splits"] = len(ours["subsample.splits"]), len(paper["subsample.splits"])
    out = []
    if params.data.dataset != paper["data.dataset"]:
        out.append(f"Dataset: {params.data.dataset} instead of {paper['data.dataset']}"
                   + (f"; {dataset.deviation}." if dataset.deviation else "."))
    skip = PROBE_SETTINGS if params.evaluate.probe.protocol != paper["evaluate.probe.protocol"] else set()
    for key, theirs in paper.items():
        if key in skip or not fields[key][1]["recipe"] or ours[key] == theirs:
            continue
        if key == "evaluate.probe.protocol":
            mine = _protocol_words(ours[key], params.evaluate.probe.lr)
            out.append(f"{mine[0].upper()}{mine[1:]} instead of {_protocol_words(theirs, paper['evaluate.probe.lr'])}.")
        else:
            wording = fields[key][1]["deviation"] or "`{key}` = {ours} instead of {paper}."
            out.append(wording.format(key=key, ours=ours[key], paper=theirs))
    return out


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} → {"a.b": 1}."""
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else key
        out.update(_flatten(value, dotted) if isinstance(value, dict) else {dotted: value})
    return out
