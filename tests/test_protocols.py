"""Each paper's evaluation protocol (issue 33): few-shot subsets as shots per class, BCL's probe, and the
report's paper-beside-ours table, on small data.

- shot subsets have n images of every class, the smaller inside the larger, the same on a re-run;
- BCL's probe (sdclr/evaluate.py ``bcl_head``) is Adam with an exponential lr on the raw features: checked
  against a float64 reference written out here step by step;
- a run with the paper's protocol and settings gets ours beside the paper's with the difference; any other
  run gets the paper's table and the keys that differ, never a subtraction.
"""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from sdclr.config import ParamError, ProbeParams
from sdclr.errors import ConfigError
from sdclr.evaluate import bcl_head, evaluate_encoder, few_shot_subsets, flat_metrics
from sdclr.models import HeadSpec, build_model
from sdclr.pipeline.presets import apply_preset
from sdclr.registry import parse_params
from sdclr.report import write_report
from tests.dvc_project import splits_summary


def _labels(per_class: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(per_class)), per_class)


def test_shot_subsets_have_n_per_class_are_nested_and_repeat():
    labels = _labels([30, 25, 40])
    pool = np.arange(len(labels))[::-1].copy()  # any order of the pool
    drawn = few_shot_subsets(pool, labels, [20, 5], seed=0, split=1)
    for n, rows in drawn.items():
        assert np.bincount(labels[rows], minlength=3).tolist() == [n, n, n]
        assert np.all(np.diff(rows) > 0) and set(rows) <= set(pool)
    assert set(drawn[5]) < set(drawn[20])  # nested: the 5 shots are among the 20
    again = few_shot_subsets(pool, labels, [5, 20], seed=0, split=1)
    assert all(np.array_equal(again[n], drawn[n]) for n in (5, 20))  # the order of the list changes nothing
    other = few_shot_subsets(pool, labels, [20, 5], seed=0, split=2)
    assert not np.array_equal(other[20], drawn[20])  # each split draws its own

    with pytest.raises(ConfigError) as said:
        few_shot_subsets(pool, labels, [26], seed=0, split=1)
    assert "class 1 has only 25 in the balanced pool" in str(said.value)


@pytest.mark.parametrize("few_shot, accepted", [([100, 50], True), ([0.01, 100], True), ([0.05], False),
                                                ([100, 100], False), ([0], False), ([], False), ([0.01, 0.02], False)])
def test_few_shot_param_accepts_shots_or_the_splits_fraction(raw_params, few_shot, accepted):
    raw = copy.deepcopy(raw_params)
    raw["evaluate"]["few_shot"] = few_shot
    if accepted:
        assert parse_params(raw).evaluate.few_shot == few_shot
    else:
        with pytest.raises(ParamError, match=r"evaluate\.few_shot = "):
            parse_params(raw)


def _adam_reference(x, y, classes, lr, final_lr, wd, bs, epochs, seed):
    """BCL's eval_sgd written out in float64: U(±1/√d) init, Adam (β 0.9, 0.999, ε 1e-8, L2 weight
    decay added to the gradient), lr × (final_lr / lr)^(1/epochs) after each epoch."""
    g = torch.Generator().manual_seed(seed)
    bound = 1 / math.sqrt(x.shape[1])
    w = torch.empty(classes, x.shape[1], dtype=torch.float64).uniform_(-bound, bound, generator=g)
    b = torch.empty(classes, dtype=torch.float64).uniform_(-bound, bound, generator=g)
    state = [[torch.zeros_like(p), torch.zeros_like(p)] for p in (w, b)]
    gamma, step = (final_lr / lr) ** (1 / max(epochs, 1)), 0
    for epoch in range(epochs):
        rate = lr * gamma**epoch
        for idx in torch.randperm(len(x), generator=g).split(bs):
            p = torch.softmax(x[idx] @ w.T + b, 1)
            dlogits = (p - torch.nn.functional.one_hot(y[idx], classes).double()) / len(idx)
            grads = (dlogits.T @ x[idx] + wd * w, dlogits.sum(0) + wd * b)
            step += 1
            for param, grad, (m, v) in zip((w, b), grads, state):
                m.mul_(0.9).add_(0.1 * grad)
                v.mul_(0.999).add_(0.001 * grad * grad)
                param -= rate * (m / (1 - 0.9**step)) / ((v / (1 - 0.999**step)).sqrt() + 1e-8)
    return w, b


def test_bcl_probe_is_adam_with_an_exponential_lr_on_raw_features():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(70, 6, generator=g, dtype=torch.float64) * 3 + 5  # raw: BCL does not standardise
    y = torch.randint(0, 4, (70,), generator=g)
    probe = ProbeParams(protocol="bcl", lr=0.01, final_lr=1e-4, weight_decay=5e-3, batch_size=16, full_shot_epochs=7,
                        few_shot_epochs=7, full_shot_milestones=[], few_shot_milestones=[])
    head = bcl_head(x, y, 4, probe, 7, torch.Generator().manual_seed(11))
    w, b = _adam_reference(x, y, 4, 0.01, 1e-4, 5e-3, 16, 7, seed=11)
    torch.testing.assert_close(head.weight.detach(), w, rtol=0, atol=1e-12)
    torch.testing.assert_close(head.bias.detach(), b, rtol=0, atol=1e-12)
    moved = (head.weight.detach() - _adam_reference(x, y, 4, 0.01, 1e-4, 5e-3, 16, 0, seed=11)[0]).abs().max()
    assert moved > 1e-3  # it trained


def test_evaluation_with_bcls_protocol_records_every_subset(tmp_path):
    """BCL's protocol end to end on a small 4-class set: the headline few-shot probe is the first
    subset, the second has its own key, each says what it is, and MLflow's flat metrics carry both."""
    rng = np.random.default_rng(0)
    labels = _labels([40] * 4)
    data = {"images": rng.integers(0, 255, (len(labels), 8, 8, 1), dtype=np.uint8), "labels": labels}
    pool, val = np.arange(0, 160, 2), np.arange(1, 160, 2)
    split = {"pool": pool, "val": val, "fewshot": pool[::20], "class_order": np.arange(4), "longtail": pool}
    probe = ProbeParams(protocol="bcl", lr=0.01, final_lr=1e-4, weight_decay=0.0, batch_size=32, full_shot_epochs=3,
                        few_shot_epochs=4, full_shot_milestones=[], few_shot_milestones=[])
    params = SimpleNamespace(feature_batch_size=64, few_shot=[10, 5], knn_k=5, knn_temperature=0.1,
                             knn_features="standardised", probe=probe)
    torch.manual_seed(0)
    net = build_model(8, 1, [0.5], [0.25], HeadSpec(2, 16, 8))
    metrics = evaluate_encoder(net.eval(), data, data, split, params, seed=0, device=torch.device("cpu"),
                               log=lambda m: None, split_id=0)
    assert metrics["protocol"] == {"probe": "bcl", "few_shot": [10, 5]}
    assert (metrics["few_shot"]["subset"], metrics["few_shot"]["train_size"]) == ("10 per class", 40)
    assert (metrics["few_shot_5shot"]["subset"], metrics["few_shot_5shot"]["train_size"]) == ("5 per class", 20)
    assert metrics["few_shot"]["best_epoch"] == 4 and metrics["full_shot"]["best_epoch"] == 3  # the last epoch
    flat = flat_metrics(metrics)
    assert {"few_shot_accuracy", "few_shot_5shot_accuracy", "full_shot_accuracy", "knn_accuracy"} <= set(flat)
    json.dumps(metrics)  # the metrics file can hold it


BCL_TABLE = {"simclr": (0.500, 0.460, 0.420), "sdclr": (0.560, 0.500, 0.460)}  # ours, near BCL's README


def _bcl_metrics(root, shift: float = 0.0):
    """Metrics files of 3 splits in the shape evaluate writes under BCL's protocol (full, 100-, 50-shot)."""
    for method, (full, hundred, fifty) in {"random": (0.2, 0.15, 0.12), **BCL_TABLE}.items():
        for split in range(3):
            d = root / method
            d.mkdir(parents=True, exist_ok=True)
            s = shift + 0.01 * (split - 1)  # ± 1 point over splits: std 1.00
            entry = lambda acc, subset=None: {"accuracy": acc + s, "balancedness": 0.05,  # noqa: E731
                                              "groups": {"major": acc + s, "moderate": acc + s, "minor": acc + s},
                                              **({"subset": subset} if subset else {})}
            (d / f"split{split}.json").write_text(json.dumps({
                "method": method, "split": split, "numerics": "portable (test)",
                "full_shot": entry(full), "few_shot": entry(hundred, "100 per class"),
                "few_shot_50shot": entry(fifty, "50 per class"), "knn": entry(full)}))


def _cifar100_params(tmp_path, root, **change):
    path = tmp_path / "params.yaml"
    path.write_text((root / "params.yaml").read_text())
    apply_preset("cifar100_paper", path)
    raw = yaml.safe_load(path.read_text())
    for key, value in change.items():
        group, name = key.split("__")
        raw[group][name] = value
    return parse_params(raw)


def _report_text(tmp_path, params) -> str:
    _bcl_metrics(tmp_path / "metrics")
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({**splits_summary(3), "num_classes": 100}))
    write_report(tmp_path / "metrics", tmp_path / "history", summary, params, tmp_path / "out", [])
    return (tmp_path / "out/report.md").read_text()


def test_the_report_puts_ours_beside_bcls_table_only_when_the_protocol_matches(tmp_path, root):
    text = _report_text(tmp_path / "match", _cifar100_params(tmp_path, root))
    section = text.split("## Reference: BCL's public re-run")[1].split("\n## ")[0]
    assert "Like for like" in section and "Not subtracted" not in section
    assert "| simclr | full-shot | 50.7 | 50.00 ± 1.00 | 3 | -0.70 |" in section
    assert "| simclr | 50-shot | 42.4 | 42.00 ± 1.00 | 3 | -0.40 |" in section
    assert "| sdclr | 100-shot | 49.7 | 50.00 ± 1.00 | 3 | +0.30 |" in section
    assert "| bcl_i | full-shot | 55.7 | not run | 0 | — |" in section
    assert "## Linear probe, few-shot (100 per class)" in text and "## Linear probe, few-shot (50 per class)" in text
    assert "few-shot subsets (100 per class, 50 per class; nested" in text and "the last epoch's head" in text

    other = _report_text(tmp_path / "other", _cifar100_params(tmp_path, root, pretrain__epochs=6,
                                                              evaluate__few_shot=[0.01]))
    section = other.split("## Reference: BCL's public re-run")[1].split("\n## ")[0]
    assert "Not subtracted from ours" in section and "ours − paper" not in section and "Like for like" not in section
    assert "`evaluate.few_shot` = [0.01] (paper: [100, 50])" in section
    assert "`pretrain.epochs` = 6 (paper: 2000)" in section
    assert "| simclr | 50.7 | 46.3 | 42.4 |" in section
