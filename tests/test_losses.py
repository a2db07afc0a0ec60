"""NT-Xent against a literal double-loop reading of the formula."""

from __future__ import annotations

import math

import pytest
import torch

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
