"""Contrastive losses against literal readings of their formulas (NT-Xent loop; sbid loss vs autograd)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from sdclr.losses import nt_xent


def nt_xent_loop(z1, z2, t):
    """SimCLR's loss written out anchor by anchor, no vectorisation tricks."""
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        denom = 0.0
        for k in range(n2):
            if k != i:
                denom = denom + torch.exp(torch.dot(z[i], z[k]) / t)
        total = total - torch.log(torch.exp(torch.dot(z[i], z[pos]) / t) / denom)
    return total / n2


@pytest.mark.parametrize("n,d,t", [(2, 3, 0.5), (5, 7, 0.2), (8, 4, 1.0)])
def test_matches_double_loop_with_gradients(n, d, t):
    g = torch.Generator().manual_seed(n * 100 + d)
    z1 = torch.randn(n, d, dtype=torch.float64, generator=g, requires_grad=True)
    z2 = torch.randn(n, d, dtype=torch.float64, generator=g, requires_grad=True)
    loss = nt_xent(z1, z2, t)
    ref = nt_xent_loop(z1, z2, t)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
    g1, g2 = torch.autograd.grad(loss, (z1, z2))
    r1, r2 = torch.autograd.grad(ref, (z1, z2))
    torch.testing.assert_close(g1, r1, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g2, r2, rtol=1e-9, atol=1e-12)


def test_temperature_matters():
    z1, z2 = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    losses = [nt_xent(z1, z2, t).item() for t in (0.1, 0.2, 0.5)]
    assert len(set(losses)) == 3
    for t in (0.1, 0.5):
        assert nt_xent(z1, z2, t).item() == pytest.approx(nt_xent_loop(z1, z2, t).item(), rel=1e-10)


def test_invariant_to_scaling():
    z1, z2 = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    base = nt_xent(z1, z2, 0.2)
    torch.testing.assert_close(nt_xent(3.0 * z1, 0.01 * z2, 0.2), base)


def test_known_limits():
    # Identical views, orthogonal images: the positive has similarity 1, negatives 0.
    n, t = 4, 0.5
    z = torch.eye(n, dtype=torch.float64)
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + (2 * n - 2)))
    assert nt_xent(z, z, t).item() == pytest.approx(expected, rel=1e-12)


def test_bf16_inputs_are_computed_in_float32():
    z1, z2 = torch.randn(16, 8), torch.randn(16, 8)
    ref = nt_xent(z1.bfloat16().float(), z2.bfloat16().float(), 0.2)
    out = nt_xent(z1.bfloat16(), z2.bfloat16(), 0.2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = nt_xent(z1, z2, 0.2)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, nt_xent(z1, z2, 0.2))


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="z1 and z2"):
        nt_xent(torch.randn(4, 3), torch.randn(5, 3), 0.2)


@pytest.mark.parametrize("lam,sd_weight", [(1.0, 20.0), (0.7, 20.0), (0.6, 0.0)])
def test_fused_bank_loss_matches_the_autograd_composition(lam, sd_weight):
    """The fused sbid loss = CE over bank logits + λ·sqrt term, in value, ∇z and residual (float64)."""
    from sdclr.losses import bank_instance_loss
    from tests.reference_ops import sqrt_self_distillation

    g = torch.Generator().manual_seed(4)
    b, k, d, tau = 6, 11, 5, 0.2
    z = torch.randn(b, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    own = torch.tensor([3, 0, 7, 1, 10, 4])
    partner = own[torch.tensor([2, 1, 0, 5, 3, 4])]  # a CutMix permutation with a fixed point (row 1)
    targets = torch.zeros(b, k, dtype=torch.float64)
    targets[torch.arange(b), own] += lam
    targets[torch.arange(b), partner] += 1 - lam

    cos = F.normalize(z, dim=1) @ w.T
    reference = -(targets * F.log_softmax(cos / tau, 1)).sum(1).mean() + sd_weight * sqrt_self_distillation(cos)
    (grad_ref,) = torch.autograd.grad(reference, z)

    z2 = z.detach().clone().requires_grad_(True)
    loss, residual, entropy_p, entropy_q = bank_instance_loss(F.normalize(z2, dim=1), w, own, partner, lam, tau,
                                                              sd_weight)
    loss.backward()
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(z2.grad, grad_ref, rtol=1e-10, atol=1e-12)
    cos = cos.detach()
    torch.testing.assert_close(residual, targets - (cos / tau).softmax(1))
    p = cos.softmax(1)
    torch.testing.assert_close(entropy_p, -(p * p.log()).sum(1).mean())
    q = (cos / tau).softmax(1)
    torch.testing.assert_close(entropy_q, -(q * q.log()).sum(1).mean())


def test_cosine_temperature_schedule_of_ts_at_chosen_epochs():
    """TS: τ_max at the period's ends, τ_min at its middle, the mean at its quarters (T = 400)."""
    import math

    from sdclr.losses import cosine_temperature

    tau = lambda e: cosine_temperature(e, 0.1, 1.0, 400)  # noqa: E731
    assert math.isclose(tau(0), 1.0) and math.isclose(tau(400), 1.0)
    assert math.isclose(tau(200), 0.1)  # the official t_max = 200: the minimum
    assert math.isclose(tau(100), 0.55) and math.isclose(tau(300), 0.55)
    assert math.isclose(tau(1), 0.1 + 0.45 * (1 + math.cos(2 * math.pi / 400)))  # epoch 1: just below τ_max
    assert all(0.1 <= tau(e) <= 1.0 for e in range(1, 2001))
