"""The later methods: SimCLR + TS (simclr_ts), BCL-I (bcl_i) and BCL-D (bcl_d)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch.nn import functional as F

from sdclr.data.longtail import class_and_group
from sdclr.losses import cosine_temperature, nt_xent, nt_xent_per_image
from sdclr.pretrain_loop import Job, Outputs, build, pretrain
from sdclr.registry import METHODS, method_class, parse_params
from sdclr.report.aggregate import load_per_image, scores
from sdclr.report.bcl import weight_section
from sdclr.storage import checkpoint
from sdclr.storage.encoder_file import ModelSpec
from sdclr.storage.io import load_npz
from tests.test_pretrain import tiny_project  # noqa: F401  (the fixture)


def _params(proj, **pretrain_update):
    raw = yaml.safe_load((proj / "params.yaml").read_text())
    raw["pretrain"].update(pretrain_update)
    return parse_params(raw)


def _data(proj):
    train = load_npz(proj / "data/raw/fashion_mnist/train.npz")
    split = load_npz(proj / "data/splits/fashion_mnist/split0.npz")
    return train, split


def test_per_image_ntxent_is_each_images_two_anchors_averaged():
    """ℓ_i = ½[ℓ(i¹→i²) + ℓ(i²→i¹)], from a float64 loop over anchors; the mean is NT-Xent."""
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    per = nt_xent_per_image(z1, z2, 0.3)
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    sim = z @ z.T / 0.3
    anchor = []
    for a in range(12):
        others = [k for k in range(12) if k != a]
        positive = (a + 6) % 12
        anchor.append(-(sim[a, positive] - torch.logsumexp(sim[a, others], 0)))
    expected = 0.5 * (torch.stack(anchor[:6]) + torch.stack(anchor[6:]))
    torch.testing.assert_close(per.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(per.mean(), nt_xent(z1, z2, 0.3), rtol=1e-6, atol=1e-6)


def test_bcl_magnitudes_follow_the_official_formulas():
    """rand_strength 30: BCL-I m = 10 + 20·w; BCL-D m = 5 + 25·w·U with one U ~ U(0, 1) per image."""
    w = torch.tensor([0.0, 0.25, 0.5, 1.0])
    bcl_i = object.__new__(method_class("bcl_i"))
    bcl_i.rand_strength = 30.0
    torch.testing.assert_close(bcl_i.magnitude(w, None), 10 + 20 * w)
    bcl_d = object.__new__(method_class("bcl_d"))
    bcl_d.rand_strength = 30.0
    m = bcl_d.magnitude(w, torch.Generator().manual_seed(3))
    u = torch.rand(4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(m, 5 + 25 * w * u)


def _one_step(proj, method, w=None, epoch=0):
    """Build ``method`` on the tiny split, start ``epoch`` (optionally forcing every w), one step."""
    train, split = _data(proj)
    params = _params(proj)
    t = build(params, Job(method_class(method), 0, train["images"], split["longtail"], ModelSpec(1, [0.3], [0.3])))
    t.method.train()
    t.method.on_epoch_start(epoch)
    if w is not None:
        t.method.w = torch.full_like(t.method.w, w)
    idx = torch.arange(params.pretrain.batch_size)
    loss, _ = t.step(idx)
    return t, idx, float(loss)


def test_bcl_boosts_only_from_epoch_two_and_only_with_probability_w(tiny_project):
    """Epoch 1 is the plain method (no scores yet). In a boosting epoch, w ≡ 0 applies no op:
    the step's loss equals the plain method's exactly; w ≡ 1 applies every drawn op: it differs."""
    plain = {m: _one_step(tiny_project, m)[2] for m in ("simclr", "sdclr")}
    for bcl, base in (("bcl_i", "simclr"), ("bcl_d", "sdclr")):
        t, idx, loss = _one_step(tiny_project, bcl)
        assert not t.method.boosting
        assert loss == pytest.approx(plain[base], rel=1e-6)
        # the step folded each image's own loss into its score, and only those images'
        scores = t.method.scores
        assert scores.seen.sum() == len(idx) and bool(scores.seen[t.positions[idx]].all())
        assert float(scores.score[t.positions[idx]].mean()) == pytest.approx(loss, rel=1e-5)

        t0, _, loss0 = _one_step(tiny_project, bcl, w=0.0, epoch=1)
        assert t0.method.boosting
        assert loss0 == pytest.approx(plain[base], rel=1e-6)
        _, _, loss1 = _one_step(tiny_project, bcl, w=1.0, epoch=1)
        assert abs(loss1 - plain[base]) > 1e-3


def straight_and_resumed(proj, params, method: str, stop: int, tmp_path, carries) -> dict:
    """Train ``method`` on the tiny split straight and, in another folder, stopped after epoch
    ``stop`` and resumed (``carries(saved method state)`` must hold for the checkpoint in between);
    asserts that both end with the same weights, history (h.csv) and per-image state (per_image.csv)."""
    train, split = _data(proj)
    labels = train["labels"][split["longtail"]]
    runs = {}
    for label, stops in (("straight", [None]), ("resumed", [stop, None])):
        d = tmp_path / label
        d.mkdir()
        for at in stops:
            if at is None and label == "resumed":
                saved = checkpoint.load(d / "c.ckpt", "cpu")
                assert int(saved["epoch"]) == stop and carries(saved["method"]), sorted(saved["method"])
            job = Job(method_class(method), 0, train["images"], split["longtail"], ModelSpec(1, [0.3], [0.3]))
            outputs = Outputs(d / "m.pt", d / "c.ckpt", d / "h.csv", d / "per_image.csv",
                              class_and_group(labels, split["class_order"]))
            pretrain(params, job, outputs, log=lambda _: None, stop_after_epoch=at)
        runs[label] = d
    a, b = (checkpoint.load(runs[k] / "m.pt", "cpu")["net"] for k in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for f in ("h.csv", "per_image.csv"):
        assert (runs["straight"] / f).read_text() == (runs["resumed"] / f).read_text()
    return runs


def test_bcl_stopped_and_resumed_equals_an_uninterrupted_run(tiny_project, tmp_path):
    """The scores travel in the resume checkpoint: weights, history and the last epoch's w and
    scores are identical, bit for bit on the CPU, to a run that was never interrupted. BCL-D
    (both of BCL's parts and SDCLR's masks); epoch 2, after the resume, is a boosting epoch."""
    train, split = _data(tiny_project)
    labels = train["labels"][split["longtail"]]
    runs = straight_and_resumed(tiny_project, _params(tiny_project, epochs=2), "bcl_d", 1, tmp_path,
                                lambda saved: "scores.score" in saved)
    w = pd.read_csv(runs["straight"] / "per_image.csv")
    assert list(w.columns) == ["image", "class", "group", "w", "score"]
    assert w["image"].tolist() == split["longtail"].tolist() and w["class"].tolist() == labels.tolist()
    assert set(w["group"]) == {"major", "moderate", "minor"} and w["w"].between(0, 1).all()
    history = pd.read_csv(runs["straight"] / "h.csv")
    assert history["w_std"].iloc[0] == 0 and history["w_std"].iloc[1] > 0  # epoch 1: no scores yet


def test_simclr_ts_follows_the_cosine_schedule_whatever_the_shared_setting(tiny_project, tmp_path):
    train, split = _data(tiny_project)
    params = _params(tiny_project, epochs=2, temperature_schedule="constant", tau_min=0.1, tau_max=0.5,
                     period_epochs=4)
    history = tmp_path / "h.csv"
    pretrain(params, Job(method_class("simclr_ts"), 0, train["images"], split["longtail"], ModelSpec(1, [0.3], [0.3])),
             Outputs(tmp_path / "m.pt", tmp_path / "c.ckpt", history), log=lambda _: None)
    logged = pd.read_csv(history)["temperature"].tolist()
    assert logged == pytest.approx([cosine_temperature(e, 0.1, 0.5, 4) for e in (1, 2)], rel=1e-5)
    assert logged == pytest.approx([0.3, 0.1], rel=1e-5)  # not the constant pretrain.temperature


def test_class_and_group_follow_the_long_tail_order():
    order = np.array([3, 0, 1, 2, 4, 5, 6, 7, 8, 9])  # class 3 is the most frequent
    info = class_and_group(np.array([3, 9, 2]), order)
    assert info["group"].tolist() == ["major", "minor", "major"]


def test_bcl_w_section_checks_the_premise_per_split_and_says_when_bcl_did_not_run(tmp_path):
    rows = []
    for split in (0, 1, 2):
        for group, w in (("major", 0.3), ("moderate", 0.5), ("minor", 0.7 + 0.01 * split)):
            rows += [{"method": "bcl_i", "split": split, "image": i, "class": 0, "group": group, "w": w}
                     for i in range(4)]
    section = "\n".join(weight_section(pd.DataFrame(rows), None, tmp_path))
    assert "| bcl_i | 0.300 | 0.500 | 0.710 | +0.410 |" in section and "**agrees**" in section
    figure = tmp_path / "bcl_w_by_group.png"
    assert figure.stat().st_size > 0

    assert load_per_image(tmp_path / "nothing").empty
    figure.unlink()
    assert weight_section(pd.DataFrame(), None, tmp_path) == []
    assert figure.stat().st_size > 0  # dvc.yaml declares it: it says why it is empty


def test_every_method_has_a_scores_file_with_zero_splits_when_it_did_not_run():
    out = scores({})
    assert set(out) == {"random", *METHODS} and all(v == {"splits": 0} for v in out.values())
