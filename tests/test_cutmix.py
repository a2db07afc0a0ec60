"""CutMix: the targets and the mixing weight agree with the pixels actually pasted."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from sdclr.data.cutmix import cutmix
from sdclr.losses import bank_instance_loss


def _training_targets(perm: torch.Tensor, lam: float, num_columns: int) -> torch.Tensor:
    """The soft targets sbid's loss actually trains toward (y = residual + softmax(cos/τ))."""
    n, tau = len(perm), 0.5
    g = torch.Generator().manual_seed(1)
    z_hat = F.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=1)
    rows = F.normalize(torch.randn(num_columns, 6, generator=g, dtype=torch.float64), dim=1)
    own = torch.arange(n)
    _, residual, _, _ = bank_instance_loss(z_hat, rows, own, own[perm], lam, tau, 0.0)
    return residual + (z_hat @ rows.T / tau).softmax(1)


def test_targets_and_weight_match_the_pasted_area():
    g = torch.Generator().manual_seed(0)
    n, h, w = 8, 12, 10
    # image i is constant i+1: every pixel says where it came from
    images = (torch.arange(1, n + 1, dtype=torch.float32)[:, None, None, None]).expand(n, 1, h, w).clone()
    for _ in range(20):
        mixed, perm, lam = cutmix(images, 0.5, g)
        assert 0.5 <= lam <= 1.0
        for i in range(n):
            own = (mixed[i] == i + 1).float().mean().item()
            other = (mixed[i] == perm[i].item() + 1).float().mean().item()
            if perm[i] != i:
                assert abs(own - lam) < 1e-6 and abs(other - (1 - lam)) < 1e-6
        t = _training_targets(perm, lam, n + 5)
        torch.testing.assert_close(t.sum(1), torch.ones(n, dtype=t.dtype))
        torch.testing.assert_close(t[:, n:], torch.zeros(n, 5, dtype=t.dtype))
        for i in range(n):
            assert abs(t[i, i].item() - (lam if perm[i] != i else 1.0)) < 1e-6
            if perm[i] != i:
                assert abs(t[i, perm[i]].item() - (1 - lam)) < 1e-6


def test_same_seed_same_mix():
    x = torch.rand(4, 3, 8, 8)
    a = cutmix(x, 0.5, torch.Generator().manual_seed(5))
    b = cutmix(x, 0.5, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
