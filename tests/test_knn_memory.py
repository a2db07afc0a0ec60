"""The kNN evaluation votes over the balanced pool's features, not the few-shot subset's.

Guards the wrong program that passes the pool's few-shot rows (S_b ⊂ pool, its features and
labels) to :func:`sdclr.evaluate.knn_predict` as the memory bank: the probes' results stay the
same and the kNN accuracy is still well above chance on easy data, so the other tests let it
through. ``stages/evaluate.py`` hands :func:`sdclr.evaluate.evaluate_encoder` the split as
:func:`sdclr.data.longtail.load_split` reads it, so the memory is chosen there: that is the
level tested here.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sdclr.config import ProbeParams
from sdclr.evaluate import evaluate_encoder, extract_features, knn_predict, standardiser
from sdclr.models import HeadSpec, build_model


def _pattern_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """12×12 uint8 images whose class is a pattern (horizontal stripes, vertical stripes, checks)
    under light noise: a random encoder's features separate them under the cosine (a brightness
    code would not, the cosine ignores a feature vector's scale)."""
    i, j = np.indices((12, 12))
    patterns = np.stack([(i // 2) % 2, (j // 2) % 2, ((i // 2) + (j // 2)) % 2]).astype(np.int64)
    noise = np.random.default_rng(seed).integers(0, 40, (len(labels), 12, 12))
    return (60 + 140 * patterns[labels] + noise)[..., None].astype(np.uint8)


def test_the_knn_memory_is_the_balanced_pool_not_the_few_shot_subset(raw_params):
    """With the pool as memory every test image is classified right; with S_b as memory every one
    is classified wrong: S_b's rows carry the next class's label, the rest of the pool its own.

    Known answers at the project's default k, temperature and features (params.yaml), checked
    against :func:`knn_predict` on each memory here. S_b is one pool row in eight, so a test
    image's k nearest pool rows vote for its class by a wide margin even at a small k.
    """
    y = np.repeat(np.arange(3), 80)
    images = _pattern_images(y, seed=0)
    split = {"pool": np.arange(0, 240, 2), "val": np.arange(1, 240, 2), "fewshot": np.arange(0, 240, 16),
             "class_order": np.arange(3)}
    assert np.isin(split["fewshot"], split["pool"]).all()  # S_b ⊂ pool, as subsample makes it
    labels = y.copy()
    labels[split["fewshot"]] = (y[split["fewshot"]] + 1) % 3  # S_b: the wrong class, always
    labels[split["val"]] = (y[split["val"]] + 2) % 3  # validation too: a memory of it is wrong as well
    train = {"images": images, "labels": labels}
    y_test = np.tile(np.arange(3), 40)
    test = {"images": _pattern_images(y_test, seed=1), "labels": y_test}

    torch.manual_seed(0)
    net = build_model(8, 1, [0.5], [0.25], HeadSpec(2, 16, 8)).eval()
    probe = ProbeParams(protocol="features", lr=0.1, final_lr=1e-6, weight_decay=0.0, batch_size=32, full_shot_epochs=1,
                        few_shot_epochs=1, full_shot_milestones=[], few_shot_milestones=[])
    ev = raw_params["evaluate"]
    k, temperature, features = ev["knn_k"], ev["knn_temperature"], ev["knn_features"]
    assert k < len(split["fewshot"])  # the default k: each memory below has k votes to give
    params = SimpleNamespace(feature_batch_size=64, few_shot=[0.01], knn_k=k, knn_temperature=temperature,
                             knn_features=features, probe=probe)
    cpu = torch.device("cpu")
    metrics = evaluate_encoder(net, train, test, split, params, seed=0, device=cpu, log=lambda m: None)

    # not vacuous: the two memories give opposite answers on these features (standardised, as the stage
    # does by default, by the pool's statistics)
    feats_pool = extract_features(net, images[split["pool"]], cpu, 64)
    prepare = standardiser(feats_pool) if features == "standardised" else (lambda t: t)
    feats_test = prepare(extract_features(net, test["images"], cpu, 64))

    def knn_accuracy(rows: np.ndarray) -> float:
        memory = prepare(extract_features(net, images[rows], cpu, 64))
        pred = knn_predict(memory, torch.from_numpy(labels[rows]), feats_test, 3, k, temperature)
        return float((pred == y_test).mean())

    pool_accuracy = knn_accuracy(split["pool"])
    assert pool_accuracy > 0.95
    assert knn_accuracy(split["fewshot"]) == 0.0 and knn_accuracy(split["val"]) == 0.0

    assert metrics["knn"]["k"] == k and metrics["knn"]["features"] == features
    assert metrics["knn"]["accuracy"] == pytest.approx(pool_accuracy), (
        f"kNN accuracy {metrics['knn']['accuracy']}: the memory bank is not the balanced pool "
        f"(its memory gives {pool_accuracy}, the few-shot subset's 0.0)")
    assert min(metrics["knn"]["groups"].values()) > 0.9
