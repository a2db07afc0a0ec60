"""Geometric Harmonization's pieces against their definitions and float64 references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sdclr.errors import ConfigError
from sdclr.harmonization import ClusterPrior, gh_loss, gh_weight, simplex_etf, sinkhorn, target_logits

EPSILON, ITERATIONS, GAMMA = 0.05, 300, 0.1


@pytest.mark.parametrize("k, dim", [(10, 16), (17, 16), (100, 128), (2, 3)])
def test_the_targets_are_a_simplex_etf(k, dim):
    """Unit norms, every pair at cosine −1/(K−1) (the most spread K directions), summing to zero;
    K = proj_dim + 1 is the largest simplex the space holds."""
    m = simplex_etf(k, dim, torch.Generator().manual_seed(0)).double()
    assert m.shape == (k, dim) and m.dtype == torch.float64
    gram = m @ m.T
    want = torch.full((k, k), -1.0 / (k - 1), dtype=torch.float64).fill_diagonal_(1.0)
    torch.testing.assert_close(gram, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(m.sum(0), torch.zeros(dim, dtype=torch.float64), atol=1e-5, rtol=0)


def test_the_targets_follow_the_seed():
    a, b = (simplex_etf(10, 16, torch.Generator().manual_seed(s)) for s in (0, 0))
    c = simplex_etf(10, 16, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.allclose(a, c, atol=1e-3)


@pytest.mark.parametrize("k", [1, 18])
def test_a_simplex_that_does_not_fit_is_one_sentence(k):
    with pytest.raises(ConfigError, match="gh.num_targets"):
        simplex_etf(k, 16, torch.Generator().manual_seed(0))


def reference_sinkhorn(logits: torch.Tensor, prior: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """The same transport plan in float64 and the log domain (log-sum-exp scalings)."""
    log_k = logits.double() / epsilon
    n = logits.shape[0]
    log_images = torch.full((n,), -torch.log(torch.tensor(float(n), dtype=torch.float64)))
    log_prior = torch.log(prior.double() / prior.double().sum())
    f = log_images.clone()
    for _ in range(iterations):
        g = log_prior - torch.logsumexp(log_k + f[:, None], dim=0)
        f = log_images - torch.logsumexp(log_k + g[None, :], dim=1)
    return n * torch.exp(f[:, None] + log_k + g[None, :])


def batch(n: int = 64, k: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits as GH computes them (projections against an ETF, normalised over K) and a long-tail π."""
    gen = torch.Generator().manual_seed(seed)
    targets = simplex_etf(k, 16, gen)
    z = torch.randn(n, 16, generator=gen)
    prior = torch.tensor([0.5 ** i for i in range(k)])
    noisy = z + 0.3 * torch.randn(n, 16, generator=gen)
    return target_logits(z, targets), target_logits(noisy, targets), prior / prior.sum()


def test_sinkhorn_gives_each_image_one_label_and_each_cluster_its_prior():
    logits, _, prior = batch()
    q = sinkhorn(logits, prior, EPSILON, ITERATIONS)
    assert not q.requires_grad and (q >= 0).all()
    torch.testing.assert_close(q.sum(1), torch.ones(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.sum(0) / 64, prior, atol=2e-3, rtol=0)  # 300 iterations: close, not exact
    torch.testing.assert_close(q.double(), reference_sinkhorn(logits, prior, EPSILON, ITERATIONS), atol=1e-4, rtol=0)


def test_sinkhorn_with_a_uniform_prior_is_not_the_long_tail_one_and_an_empty_cluster_gets_no_image():
    logits, _, prior = batch()
    uniform = sinkhorn(logits, torch.ones(10), EPSILON, ITERATIONS)
    torch.testing.assert_close(uniform.sum(0) / 64, torch.full((10,), 0.1), atol=2e-3, rtol=0)
    assert (uniform.sum(0) / 64 - prior).abs().max() > 0.3
    empty = prior.clone()
    empty[3] = 0
    assert sinkhorn(logits, empty, EPSILON, ITERATIONS)[:, 3].abs().max() == 0


def test_gh_loss_is_the_swapped_cross_entropy_and_its_labels_carry_no_gradient():
    """Against float64 by hand: CE(q1, softmax(t2/γ)) + CE(q2, softmax(t1/γ)), batch means, with q
    from the reference Sinkhorn; the gradient is the one of the log-softmax terms alone."""
    t1, t2, prior = batch()
    t1, t2 = t1.requires_grad_(), t2.requires_grad_()
    loss = gh_loss(t1, t2, prior, GAMMA, EPSILON, ITERATIONS)
    loss.backward()

    r1, r2 = t1.detach().double().requires_grad_(), t2.detach().double().requires_grad_()
    q1 = reference_sinkhorn(r1.detach(), prior, EPSILON, ITERATIONS)
    q2 = reference_sinkhorn(r2.detach(), prior, EPSILON, ITERATIONS)
    want = -(q1 * F.log_softmax(r2 / GAMMA, 1)).sum(1).mean() - (q2 * F.log_softmax(r1 / GAMMA, 1)).sum(1).mean()
    want.backward()
    assert abs(loss.item() - want.item()) < 1e-4 * want.item()
    torch.testing.assert_close(t1.grad.double(), r1.grad, atol=1e-5, rtol=1e-3)
    torch.testing.assert_close(t2.grad.double(), r2.grad, atol=1e-5, rtol=1e-3)


def test_gh_weight_waits_for_the_warmup_then_ramps_linearly_to_one():
    weights = [gh_weight(e, warmup_epochs=5, ramp_epochs=10) for e in range(20)]
    assert weights[:5] == [0.0] * 5
    assert weights[5:15] == pytest.approx([0.1 * i for i in range(1, 11)])
    assert weights[15:] == [1.0] * 5
    assert [gh_weight(e, 0, 1) for e in range(3)] == [1.0, 1.0, 1.0]


def test_the_prior_is_the_share_of_images_whose_smoothed_logits_point_to_each_target():
    prior = ClusterPrior(num_samples=6, num_targets=3, beta_warmup=0.5, beta=0.9)
    torch.testing.assert_close(prior.prior, torch.full((3,), 1 / 3))  # before any refresh: uniform
    first = torch.tensor([[1.0, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]])
    prior.update(torch.arange(6), first, epoch=0, warmup_epochs=2)
    torch.testing.assert_close(prior.refresh(), torch.tensor([3, 2, 1]) / 6)
    # epoch 1 is in the warm-up: β = 0.5, so one visit towards target 2 moves image 0's argmax there
    prior.update(torch.tensor([0]), torch.tensor([[0.0, 0, 1.2]]), epoch=1, warmup_epochs=2)
    torch.testing.assert_close(prior.memory[0], torch.tensor([0.5, 0, 0.6]))
    torch.testing.assert_close(prior.refresh(), torch.tensor([2, 2, 2]) / 6)
    # after the warm-up β = 0.9: the same visit barely moves image 1
    prior.update(torch.tensor([1]), torch.tensor([[0.0, 0, 1.2]]), epoch=2, warmup_epochs=2)
    torch.testing.assert_close(prior.memory[1], torch.tensor([0.9, 0, 0.12]))
    assert set(prior.state_dict()) == {"memory", "prior"}  # both travel in a resume checkpoint


def test_one_backward_through_both_views_is_the_official_two_passes_with_the_other_side_detached():
    """SDCLR + GH: the official code back-propagates (dense, pruned detached) and then (dense
    detached, pruned); one backward of the loss with both sides live gives the same gradients."""
    gen = torch.Generator().manual_seed(4)
    targets = simplex_etf(10, 16, gen)
    prior = torch.tensor([0.5 ** i for i in range(10)])
    z1, z2 = (torch.randn(32, 16, generator=gen, requires_grad=True) for _ in range(2))

    def loss(a, b):
        return gh_loss(target_logits(a, targets), target_logits(b, targets), prior, GAMMA, EPSILON, ITERATIONS)

    one = torch.autograd.grad(loss(z1, z2), (z1, z2))
    dense = torch.autograd.grad(loss(z1, z2.detach()), z1)[0]
    pruned = torch.autograd.grad(loss(z1.detach(), z2), z2)[0]
    torch.testing.assert_close(one[0], dense, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(one[1], pruned, rtol=1e-5, atol=1e-7)
    assert dense.abs().sum() > 0 and pruned.abs().sum() > 0  # GH reaches both branches
