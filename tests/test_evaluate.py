"""Evaluation: long-tail metrics on hand-made answers, probes that can fail, kNN, probe augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdclr.config import ProbeParams
from sdclr.data.longtail import class_groups, groups_of
from sdclr.evaluate import Heldout, authors_probe, knn_predict, linear_probe, random_crop_flip
from sdclr.metrics import group_report, per_class_accuracy


def test_groups_follow_the_papers_split():
    assert class_groups(10) == {"major": [0, 1, 2, 3], "moderate": [4, 5, 6], "minor": [7, 8, 9]}
    sizes = {g: len(v) for g, v in class_groups(100).items()}
    assert sizes == {"major": 34, "moderate": 33, "minor": 33}
    # class ids follow the split's long-tail rank order
    assert groups_of([3, 1, 2, 0, 4, 5, 6, 7, 8, 9])["major"] == [3, 1, 2, 0]


def test_group_metrics_on_a_hand_made_confusion():
    # 10 classes, 10 test images each; class c gets c correct answers (accuracy c/10).
    target = np.repeat(np.arange(10), 10)
    pred = target.copy()
    for c in range(10):
        wrong = np.arange(c * 10 + c, c * 10 + 10)
        pred[wrong] = (c + 1) % 10
    pc = per_class_accuracy(pred, target, 10)
    np.testing.assert_allclose(pc, np.arange(10) / 10)
    # rank order: class 9 is the largest → Major {9,8,7,6}, Moderate {5,4,3}, Minor {2,1,0}
    rep = group_report(pc, groups_of(list(range(9, -1, -1))))
    assert rep["groups"]["major"] == pytest.approx(0.75)
    assert rep["groups"]["moderate"] == pytest.approx(0.4)
    assert rep["groups"]["minor"] == pytest.approx(0.1)
    assert rep["balancedness"] == pytest.approx(np.std([0.75, 0.4, 0.1]))
    assert rep["balancedness"] == pytest.approx(0.26562295750848)  # population std, by hand


def test_accuracy_is_the_mean_of_per_class_accuracies_not_of_images():
    # Class 0: 90 images all right; class 1: 10 images all wrong. Image accuracy 0.9, ours 0.5.
    target = np.array([0] * 90 + [1] * 10)
    pred = np.zeros(100, dtype=int)
    rep = group_report(per_class_accuracy(pred, target, 2), {"major": [0], "minor": [1]})
    assert rep["accuracy"] == pytest.approx(0.5)


def _separable(n_per_class=60, classes=5, dim=16, seed=0):
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(100)) * 4  # shared by all draws
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = centres[y] + 0.5 * torch.randn(len(y), dim, generator=g)
    return x, y


def _probe(lr=0.1, batch_size=64) -> ProbeParams:
    return ProbeParams(protocol="features", lr=lr, final_lr=1e-6, weight_decay=0.0, batch_size=batch_size,
                       full_shot_epochs=1,
                       few_shot_epochs=1, full_shot_milestones=[], few_shot_milestones=[])


def test_linear_probe_separates_separable_features():
    x, y = _separable()
    vx, vy = _separable(seed=1)
    tx, ty = _separable(seed=2)
    res = linear_probe(x, y, Heldout(vx, vy, tx, 5), _probe(), epochs=20, seed=0)
    assert (res.test_pred == ty.numpy()).mean() > 0.98
    assert 1 <= res.best_epoch <= 20 and len(res.val_curve) == 20


def test_linear_probe_is_at_chance_on_shuffled_labels():
    x, y = _separable()
    vx, vy = _separable(seed=1)
    tx, ty = _separable(seed=2)
    g = torch.Generator().manual_seed(3)
    shuffled = y[torch.randperm(len(y), generator=g)]
    heldout = Heldout(vx, vy[torch.randperm(len(vy), generator=g)], tx, 5)
    res = linear_probe(x, shuffled, heldout, _probe(), epochs=20, seed=0)
    assert abs((res.test_pred == ty.numpy()).mean() - 0.2) < 0.12  # 5 classes: chance is 0.2


def test_knn_finds_the_right_cluster_and_respects_k():
    x, y = _separable(classes=4)
    tx, ty = _separable(classes=4, seed=5)
    pred = knn_predict(x, y, tx, 4, k=10, temperature=0.1, chunk=37)
    assert (pred == ty.numpy()).mean() > 0.98
    # k=1 with the memory as queries: every point is its own nearest neighbour
    assert (knn_predict(x, y, x, 4, k=1, temperature=0.1) == y.numpy()).all()


def test_random_crop_flip_is_per_sample_and_a_true_crop():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(64 * 3 * 8 * 8, dtype=torch.float32).reshape(64, 3, 8, 8)
    out = random_crop_flip(x, 4, g)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    offsets = set()
    for i in range(64):  # each output is some window of the padded image, maybe flipped
        found = [(t, left, f) for t in range(9) for left in range(9) for f in (False, True)
                 if torch.equal(out[i], (lambda w: w.flip(-1) if f else w)(padded[i, :, t:t + 8, left:left + 8]))]
        assert found, f"sample {i} is not a crop of its padded image"
        offsets.add(found[0])
    assert len(offsets) > 10  # parameters differ across the batch


def test_authors_probe_learns_through_a_frozen_backbone():
    # Images whose class is their brightness: a frozen random backbone + linear layer separates them.
    from sdclr.models import HeadSpec, build_model

    torch.manual_seed(0)
    net = build_model(8, 1, [0.5], [0.25], HeadSpec(2, 16, 8)).eval()
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 3, n)
        imgs = (40 + 80 * y[:, None, None, None] + rng.integers(0, 20, (n, 12, 12, 1))).astype(np.uint8)
        return imgs, y

    xtr, ytr = make(96)
    xv, yv = make(60)
    xt, yt = make(60)
    with torch.no_grad():
        fv = net.features(torch.from_numpy(xv).permute(0, 3, 1, 2).float() / 255)
        ft = net.features(torch.from_numpy(xt).permute(0, 3, 1, 2).float() / 255)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    res = authors_probe(net, xtr, ytr, Heldout(fv, torch.from_numpy(yv), ft, 3), _probe(lr=1.0, batch_size=32),
                        epochs=8, milestones=[6], seed=0, device=torch.device("cpu"))
    assert (res.test_pred == yt).mean() > 0.9
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the backbone stays frozen


def test_knn_votes_are_weighted_by_exp_similarity_over_temperature():
    # One neighbour of class 0 very close to the query, two of class 1 farther away (k = 3).
    memory = torch.tensor([[0.99, (1 - 0.99**2) ** 0.5], [0.5, 0.75**0.5], [0.5, -(0.75**0.5)]])
    labels, query = torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.0]])
    # T = 0.1: e^9.9 for class 0 outweighs 2·e^5 for class 1; at T = 1 (no temperature) 2·e^0.5 > e^0.99
    assert knn_predict(memory, labels, query, num_classes=2, k=3, temperature=0.1).tolist() == [0]
    assert knn_predict(memory, labels, query, num_classes=2, k=3, temperature=1.0).tolist() == [1]


def test_knn_vote_sums_match_a_scatter_add_reference():
    # The one-hot vote sum (deterministic on CUDA too) must pick the class a plain scatter-add picks.
    g = torch.Generator().manual_seed(7)
    memory, labels = torch.randn(300, 12, generator=g), torch.randint(0, 6, (300,), generator=g)
    query = torch.randn(200, 12, generator=g)
    mem, q = torch.nn.functional.normalize(memory, dim=1).double(), torch.nn.functional.normalize(query, dim=1).double()
    sim, idx = (q @ mem.T).topk(25, dim=1)
    votes = torch.zeros(200, 6, dtype=torch.float64).scatter_add_(1, labels[idx], (sim / 0.1).exp())
    assert (knn_predict(memory, labels, query, 6, k=25, temperature=0.1, chunk=64) == votes.argmax(1).numpy()).all()


def _tiny_evaluation(device: torch.device) -> dict:
    """evaluate_encoder of a small random encoder on brightness-coded images, on ``device``."""
    from types import SimpleNamespace

    from sdclr.evaluate import evaluate_encoder
    from sdclr.models import HeadSpec, build_model

    torch.manual_seed(0)
    net = build_model(8, 1, [0.5], [0.25], HeadSpec(2, 16, 8)).eval().to(device)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 80)
    images = (40 + 60 * y[:, None, None, None] + rng.integers(0, 60, (240, 12, 12, 1))).astype(np.uint8)
    split = {"pool": np.arange(0, 240, 2), "val": np.arange(1, 240, 2), "fewshot": np.arange(0, 240, 8)}
    probe = SimpleNamespace(protocol="features", lr=0.1, weight_decay=0.0, batch_size=32, full_shot_epochs=5,
                            few_shot_epochs=8, full_shot_milestones=[], few_shot_milestones=[])
    params = SimpleNamespace(feature_batch_size=64, few_shot=[0.01], knn_k=10, knn_temperature=0.1,
                             knn_features="standardised", probe=probe)
    split["class_order"] = np.arange(3)
    data = {"images": images, "labels": y}
    return evaluate_encoder(net, data, data, split, params, seed=0, device=device, log=lambda m: None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on the GPU machine)")
def test_the_gpu_path_agrees_with_the_cpu_path():
    # One code path, the same random draws (CPU generators): the GPU differs only by floating point.
    cpu, gpu = _tiny_evaluation(torch.device("cpu")), _tiny_evaluation(torch.device("cuda"))
    for kind in ("full_shot", "few_shot", "knn"):
        assert gpu[kind]["accuracy"] == pytest.approx(cpu[kind]["accuracy"], abs=0.02), kind
    assert gpu["full_shot"]["val_curve"] == pytest.approx(cpu["full_shot"]["val_curve"], abs=0.02)


def test_evaluation_on_the_cpu_is_repeatable_and_learns():
    first, second = _tiny_evaluation(torch.device("cpu")), _tiny_evaluation(torch.device("cpu"))
    assert first == second
    assert first["full_shot"]["accuracy"] > 0.9 and first["few_shot"]["train_size"] == 30


def test_flat_metrics_names_every_headline_number_once():
    from sdclr.evaluate import flat_metrics

    metrics = {kind: {"accuracy": a, "balancedness": b, "groups": {"major": a + 0.1, "moderate": a, "minor": a - 0.1}}
               for kind, a, b in (("full_shot", 0.7, 0.05), ("few_shot", 0.6, 0.06), ("knn", 0.65, 0.07))}
    flat = flat_metrics(metrics)
    assert flat == {f"{kind}_{key}": value for kind, m in metrics.items()
                    for key, value in (("accuracy", m["accuracy"]), ("balancedness", m["balancedness"]),
                                       *m["groups"].items())}
    assert len(flat) == 15 and flat["knn_minor"] == pytest.approx(0.55)


def test_the_features_probe_is_softmax_regression_with_sgd_momentum_and_a_cosine_lr():
    """Step for step against the probe written out in float64 (tests/reference_ops.py)."""
    from tests.reference_ops import linear_probe_curve

    g = torch.Generator().manual_seed(11)
    scale = torch.tensor([1.0, 30.0, 0.01, 5.0] * 4)  # features of very different scales: standardisation matters
    centres = torch.randn(4, 16, generator=g)  # close classes, a small lr, a strong weight decay: an under-trained
    y, vy = torch.arange(4).repeat_interleave(30), torch.arange(4).repeat_interleave(100)  # probe whose validation
    x = (centres[y] + 1.5 * torch.randn(120, 16, generator=g)) * scale + 7.0  # accuracy moves with the lr, its
    vx = (centres[vy] + 1.5 * torch.randn(400, 16, generator=g)) * scale + 7.0  # schedule and the weight decay
    probe = ProbeParams(protocol="features", lr=0.005, final_lr=1e-6, weight_decay=1.0, batch_size=32,
                        full_shot_epochs=1,
                        few_shot_epochs=1, full_shot_milestones=[], few_shot_milestones=[])
    res = linear_probe(x, y, Heldout(vx, vy, vx, 4), probe, epochs=5, seed=3)
    expected = linear_probe_curve(x, y, vx, vy, 4, epochs=5, lr=0.005, weight_decay=1.0, batch_size=32, seed=3)
    assert res.val_curve == pytest.approx(expected, abs=0.0051)  # float32 vs float64: at most 2 of 400 points flip
    assert len(set(expected)) > 1  # not vacuous


def test_the_metrics_file_holds_every_probe_and_its_settings():
    metrics = _tiny_evaluation(torch.device("cpu"))
    assert metrics["num_classes"] == 3 and metrics["feature_dim"] == 64
    assert metrics["groups"] == groups_of([0, 1, 2])
    assert metrics["knn"]["k"] == 10 and metrics["knn"]["accuracy"] > 0.6  # chance: 1/3
    assert set(metrics["knn"]["groups"]) == {"major", "moderate", "minor"}
    assert metrics["full_shot"]["train_size"] == 120 and len(metrics["full_shot"]["val_curve"]) == 5


def test_the_authors_probe_scales_its_training_images_as_the_heldout_features_were():
    """uint8 / 255 (white = 1.0), as :func:`extract_features` gives the validation and test sets:
    a backbone that records what it is fed sees 1.0 for white images (a crop with zero padding
    keeps most of the image; /256 would give 0.996)."""
    from torch import nn

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Linear(1, 1)  # a parameter, so .to() and the probe find a module
            self.seen = []

        def features(self, x):
            self.seen.append(float(x.max()))
            return x.mean(dim=(2, 3))

    net = Recorder()
    images = np.full((8, 12, 12, 1), 255, np.uint8)
    heldout = Heldout(torch.zeros(4, 1), torch.tensor([0, 1, 0, 1]), torch.zeros(4, 1), 2)
    authors_probe(net, images, np.array([0, 1] * 4), heldout, _probe(batch_size=8), epochs=1, milestones=[],
                  seed=0, device=torch.device("cpu"))
    assert net.seen == [1.0]


def test_the_authors_protocol_trains_through_the_frozen_backbone_on_each_settings_rows():
    from types import SimpleNamespace

    from sdclr.evaluate import evaluate_encoder
    from sdclr.models import HeadSpec, build_model

    torch.manual_seed(0)
    net = build_model(8, 1, [0.5], [0.25], HeadSpec(2, 16, 8)).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 60)
    images = (40 + 80 * y[:, None, None, None] + rng.integers(0, 20, (180, 12, 12, 1))).astype(np.uint8)
    split = {"pool": np.arange(0, 180, 2), "val": np.arange(1, 180, 2), "fewshot": np.arange(0, 180, 6),
             "class_order": np.arange(3)}
    probe = ProbeParams(protocol="authors", lr=1.0, final_lr=1e-6, weight_decay=0.0, batch_size=32, full_shot_epochs=4,
                        few_shot_epochs=6, full_shot_milestones=[3], few_shot_milestones=[4])
    params = SimpleNamespace(feature_batch_size=64, few_shot=[0.01], knn_k=5, knn_temperature=0.1,
                             knn_features="standardised", probe=probe)
    data = {"images": images, "labels": y}
    metrics = evaluate_encoder(net, data, data, split, params, seed=0, device=torch.device("cpu"), log=lambda m: None)
    assert metrics["full_shot"]["train_size"] == 90 and metrics["few_shot"]["train_size"] == 30
    assert len(metrics["full_shot"]["val_curve"]) == 4 and len(metrics["few_shot"]["val_curve"]) == 6
    assert metrics["full_shot"]["accuracy"] > 0.9 and metrics["few_shot"]["accuracy"] > 0.9
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_the_authors_crops_come_from_the_generator_and_cover_every_offset_and_both_flips():
    x = torch.arange(2000 * 1 * 4 * 4, dtype=torch.float32).reshape(2000, 1, 4, 4)
    a = random_crop_flip(x, 2, torch.Generator().manual_seed(5))
    assert torch.equal(a, random_crop_flip(x, 2, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, random_crop_flip(x, 2, torch.Generator().manual_seed(6)))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    seen = set()
    for i in range(0, 2000, 7):
        found = [(t, left, f) for t in range(5) for left in range(5) for f in (False, True)
                 if torch.equal(a[i], (lambda w: w.flip(-1) if f else w)(padded[i, :, t:t + 4, left:left + 4]))]
        seen.add(found[0])
    assert {t for t, _, _ in seen} == set(range(5)) and {left for _, left, _ in seen} == set(range(5))
    flips = sum(f for _, _, f in seen)
    assert 0.3 < flips / len(seen) < 0.7  # each image flipped with probability ½
