"""BCL's memorisation scores on hand-made loss sequences: the EMA, the first sighting, the
per-epoch normalisation to w ∈ [0, 1], and the cases the paper's formula leaves open."""

from __future__ import annotations

import pytest
import torch

from sdclr.memorization import MemorizationScores


def test_first_sighting_takes_the_loss_then_the_ema_with_beta():
    m = MemorizationScores(3, beta=0.9)
    m.update(torch.tensor([0, 2]), torch.tensor([4.0, 1.0]))  # epoch 1: s = ℓ
    assert m.score.tolist() == [4.0, 0.0, 1.0] and m.seen.tolist() == [True, False, True]
    m.update(torch.tensor([0, 1]), torch.tensor([2.0, 3.0]))  # 0 again: EMA; 1 first seen: s = ℓ
    assert m.score.tolist() == pytest.approx([0.9 * 4.0 + 0.1 * 2.0, 3.0, 1.0])
    for loss in (5.0, 5.0, 5.0):  # a hand-made sequence for image 2: s_t = β s_{t-1} + (1 − β) ℓ_t
        m.update(torch.tensor([2]), torch.tensor([loss]))
    expected = 1.0
    for loss in (5.0, 5.0, 5.0):
        expected = 0.9 * expected + 0.1 * loss
    assert m.score[2].item() == pytest.approx(expected)


def test_weights_are_the_normalised_scores_in_0_1():
    m = MemorizationScores(4, beta=0.97)
    s = torch.tensor([1.0, 2.0, 3.0, 6.0])
    m.update(torch.arange(4), s)
    z = (s - s.mean()) / s.std()  # unbiased, as the official code's torch.std
    expected = z / (2 * z.abs().max()) + 0.5
    assert torch.allclose(m.weights(), expected)
    w = m.weights()
    assert w.max().item() == pytest.approx(1.0) and 0.0 <= w.min().item() <= 0.5  # the largest |z| reaches an end
    assert torch.equal(torch.argsort(w), torch.argsort(s))  # higher loss, higher weight


def test_equal_losses_give_one_half_not_a_division_by_zero():
    m = MemorizationScores(5, beta=0.97)
    m.update(torch.arange(5), torch.full((5,), 2.5))
    assert m.weights().tolist() == [0.5] * 5


def test_unseen_images_get_one_half_and_stay_out_of_the_statistics():
    m = MemorizationScores(5, beta=0.97)
    assert m.weights().tolist() == [0.5] * 5  # before any step: plain augmentation strength
    m.update(torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 3.0]))
    w = m.weights()
    assert w[3:].tolist() == [0.5, 0.5]
    assert w[:3].tolist() == pytest.approx([0.0, 0.5, 1.0])  # z = −1, 0, 1 over the seen three only


def test_scores_travel_in_the_state_dict():
    a = MemorizationScores(4, beta=0.97)
    a.update(torch.tensor([1, 3]), torch.tensor([0.5, 1.5]))
    b = MemorizationScores(4, beta=0.97)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.score, a.score) and torch.equal(b.seen, a.seen)
    assert torch.equal(b.weights(), a.weights())


@pytest.mark.parametrize("beta, ok", [(0.0, True), (0.97, True), (1.0, False), (-0.1, False), (1.5, False)])
def test_beta_must_lie_in_0_1_with_0_allowed_and_1_not(beta, ok):
    """β = 0 keeps only the latest loss (allowed); β = 1 would freeze the first one forever."""
    if ok:
        assert MemorizationScores(3, beta).beta == beta
        return
    with pytest.raises(ValueError, match=rf"beta must be in \[0, 1\), got {beta}"):
        MemorizationScores(3, beta)
