"""Guards for three bugs the other tests let through, each written against the behaviour.

- SDCLR's pruned branch must be re-pruned from the *current* dense weights at every epoch
  (the paper's dynamic self-competitor), not keep the mask of the first epoch.
- The few-shot probe must train on exactly the few-shot subset S_b, not the whole pool.
- A probe's epoch must be chosen on the validation hold-out: the test labels cannot move it.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sdclr.config import ProbeParams
from sdclr.data.longtail import load_split
from sdclr.evaluate import Heldout, evaluate_encoder, extract_features, linear_probe
from sdclr.models import HeadSpec, build_model
from sdclr.pretrain_loop import Job, build, run_epoch
from sdclr.pruning import masked_convs
from sdclr.registry import method_class, parse_params
from sdclr.storage.encoder_file import ModelSpec
from sdclr.storage.io import load_npz
from tests.test_pretrain import tiny_project  # noqa: F401  (a fixture)


def _global_magnitude_mask(weights: list[torch.Tensor], ratio: float) -> list[torch.Tensor]:
    """The SDCLR mask computed here from scratch: zero the int(ratio·N) smallest |w| over all convs."""
    flat = torch.cat([w.abs().flatten() for w in weights]).double().numpy()
    keep = np.ones_like(flat)
    keep[np.argsort(flat, kind="stable")[: int(ratio * flat.size)]] = 0.0
    out, start = [], 0
    for w in weights:
        out.append(torch.from_numpy(keep[start : start + w.numel()]).view(w.shape).float())
        start += w.numel()
    return out


def test_sdclrs_pruned_branch_follows_the_dense_weights_from_epoch_to_epoch(tiny_project, tmp_path):  # noqa: F811
    import yaml

    raw = yaml.safe_load((tiny_project / "params.yaml").read_text())
    raw["prune_ratio"] = 0.5
    params = parse_params(raw)
    images = load_npz(tiny_project / "data/raw/fashion_mnist/train.npz")["images"]
    longtail = load_split(tiny_project / "data/splits/fashion_mnist", 0)["longtail"]
    training = build(params, Job(method_class("sdclr"), 0, images, longtail, ModelSpec(1, [0.3], [0.3])))
    convs = masked_convs(training.method.net)
    masks_seen, weights_at_start = [], []
    for epoch in range(3):
        weights_at_start.append([c.weight.detach().clone() for c in convs])
        run_epoch(training, epoch, tmp_path / "c.ckpt")
        masks_seen.append([c.mask.clone() for c in convs])
    for epoch, (weights, masks) in enumerate(zip(weights_at_start, masks_seen)):
        expected = _global_magnitude_mask(weights, 0.5)
        assert all(torch.equal(m, e) for m, e in zip(masks, expected)), f"epoch {epoch + 1}'s mask is stale"
    # not vacuous: training moved the weights enough to change which ones are pruned
    assert any(not torch.equal(a, b) for a, b in zip(masks_seen[0], masks_seen[2]))


def _features_problem(step: int = 60):
    """Images whose class is their brightness (classes ``step`` apart, noise 0–70: they overlap below 70):
    3 classes, a pool, a validation set and a test set."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 80)
    images = (40 + step * y[:, None, None, None] + rng.integers(0, 70, (240, 12, 12, 1))).astype(np.uint8)
    split = {"pool": np.arange(0, 240, 2), "val": np.arange(1, 240, 2), "fewshot": np.arange(0, 240, 8),
             "class_order": np.arange(3)}
    torch.manual_seed(0)
    net = build_model(8, 1, [0.5], [0.25], HeadSpec(2, 16, 8)).eval()
    probe = ProbeParams(protocol="features", lr=0.1, final_lr=1e-6, weight_decay=0.0, batch_size=16, full_shot_epochs=6,
                        few_shot_epochs=12, full_shot_milestones=[], few_shot_milestones=[])
    params = SimpleNamespace(feature_batch_size=64, few_shot=[0.01], knn_k=5, knn_temperature=0.1,
                             knn_features="standardised", probe=probe)
    return net, images, y, split, params


def test_the_few_shot_probe_trains_on_exactly_the_few_shot_rows():
    net, images, y, split, params = _features_problem()
    # Outside S_b the pool's labels are noise: a probe that saw those rows would learn the noise.
    noisy = y.copy()
    outside = np.setdiff1d(split["pool"], split["fewshot"])
    noisy[outside] = np.random.default_rng(1).permutation(noisy[outside])
    train, test = {"images": images, "labels": noisy}, {"images": images, "labels": y}
    metrics = evaluate_encoder(net, train, test, split, params, seed=0, device=torch.device("cpu"), log=lambda m: None)
    assert metrics["few_shot"]["train_size"] == len(split["fewshot"])

    # the same probe trained here on S_b's features alone gives the very same epochs and predictions
    device = torch.device("cpu")
    feats = {k: extract_features(net, images[split[k]], device, 64) for k in ("fewshot", "val")}
    heldout = Heldout(feats["val"], torch.from_numpy(noisy[split["val"]]),
                      extract_features(net, images, device, 64), 3)
    alone = linear_probe(feats["fewshot"], torch.from_numpy(noisy[split["fewshot"]]), heldout, params.probe,
                         params.probe.few_shot_epochs, seed=0)
    assert metrics["few_shot"]["val_curve"] == alone.val_curve
    assert metrics["few_shot"]["best_epoch"] == alone.best_epoch
    assert metrics["few_shot"]["accuracy"] > 0.9  # S_b's clean labels, not the noisy pool's


@pytest.mark.parametrize("kind", ["full_shot", "few_shot"])
def test_the_probes_epoch_is_the_validation_argmax_whatever_the_test_labels(kind):
    net, images, y, split, params = _features_problem(step=12)  # overlapping classes: no perfect epoch
    train = {"images": images, "labels": y}
    runs = []
    for seed in range(4):  # the test labels permuted: a selection that looked at them would move
        test = {"images": images, "labels": np.random.default_rng(seed).permutation(y)}
        runs.append(evaluate_encoder(net, train, test, split, params, seed=0, device=torch.device("cpu"),
                                     log=lambda m: None)[kind])
    curve = runs[0]["val_curve"]
    assert len(set(np.round(curve, 6))) > 1  # not vacuous: the epochs differ on validation
    assert all(r["best_epoch"] == runs[0]["best_epoch"] and r["val_curve"] == curve for r in runs)
    assert runs[0]["best_epoch"] == int(np.argmax(curve)) + 1  # the first epoch of the best validation score
    assert runs[0]["val_accuracy"] == max(curve)
