"""Building blocks of single-branch instance discrimination (Cao & Wu 2024): bank and sqrt term."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from sdclr.memory_bank import MemoryBank
from tests.reference_ops import bank_logits, sqrt_self_distillation


def test_sqrt_term_gradient_is_half_the_negative_entropy_gradient():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 9, generator=g, dtype=torch.float64, requires_grad=True)
    lam = 20.0
    (grad_sqrt,) = torch.autograd.grad(lam * sqrt_self_distillation(logits), logits)
    logp = F.log_softmax(logits, 1)
    neg_entropy = (logp.exp() * logp).sum(1).mean()
    (grad_negent,) = torch.autograd.grad(neg_entropy, logits)
    torch.testing.assert_close(grad_sqrt, lam / 2 * grad_negent, rtol=1e-10, atol=1e-12)


def test_sqrt_term_value_is_kl_to_the_flattened_distribution():
    logits = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.float64)
    p = logits.softmax(1)
    u = p.sqrt() / p.sqrt().sum()
    assert sqrt_self_distillation(logits).item() == pytest.approx((p * (p / u).log()).sum().item())
    assert sqrt_self_distillation(torch.zeros(2, 5)).item() == pytest.approx(0.0, abs=1e-7)  # uniform: u = p


def _bank(n=50, d=8, seed=0):
    torch.manual_seed(seed)
    return MemoryBank(n, d).double()


def test_candidates_own_entries_first_then_distinct_others():
    bank = _bank()
    g = torch.Generator().manual_seed(1)
    idx = torch.tensor([3, 7, 11, 20])
    cols = bank.candidates(idx, 10, g)
    assert cols[:4].tolist() == idx.tolist() and len(cols) == 14 and len(set(cols.tolist())) == 14
    assert bank.candidates(idx, None, g) is None  # full softmax: the whole bank, no gathered copy
    assert bank.rows(None) is bank.weight
    assert bank.candidates(idx, 0, g).tolist() == idx.tolist()


@pytest.mark.parametrize("k", [12, None], ids=["k=12", "full-softmax"])
def test_gradient_update_is_a_gradient_step_on_the_loss(k):
    bank = _bank()
    g = torch.Generator().manual_seed(2)
    idx = torch.tensor([0, 5, 9, 13, 21])
    cols = bank.candidates(idx, k, g)
    if cols is None:  # the whole bank in bank order: use explicit columns for the reference
        cols = torch.arange(50)
    z = torch.randn(5, 8, generator=g, dtype=torch.float64)
    tau, step = 0.2, 0.05
    targets = torch.zeros(5, len(cols), dtype=torch.float64)
    targets[torch.arange(5), torch.arange(5)] = 1.0
    targets[0] = 0.0
    targets[0, 0], targets[0, 3] = 0.7, 0.3  # a soft (CutMix-style) row too

    w = bank.weight.clone().requires_grad_(True)  # leaf copy of W
    logits = F.normalize(z, dim=1) @ w[cols].T / tau
    loss = -(targets * F.log_softmax(logits, 1)).sum()  # summed cross-entropy
    (grad,) = torch.autograd.grad(loss, w)
    expected = bank.weight - step * tau * grad

    probs = (bank_logits(bank, z, cols) / tau).softmax(1)
    bank.gradient_update(None if k is None else cols, z, targets - probs, step, renormalise=False)
    torch.testing.assert_close(bank.weight, expected)
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[cols] = False
    assert torch.equal(grad[untouched], torch.zeros_like(grad[untouched]))


def test_updates_keep_rows_unit_norm_and_momentum_touches_only_own_rows():
    bank = _bank()
    before = bank.weight.clone()
    g = torch.Generator().manual_seed(3)
    idx = torch.tensor([1, 2, 40])
    z = torch.randn(3, 8, generator=g, dtype=torch.float64)
    bank.momentum_update(idx, z, 0.5)
    changed = (bank.weight != before).any(1).nonzero().flatten().tolist()
    assert changed == [1, 2, 40]
    torch.testing.assert_close(bank.weight.norm(dim=1), torch.ones(50, dtype=torch.float64))
    expected = F.normalize(0.5 * before[idx] + 0.5 * F.normalize(z, dim=1), dim=1)
    torch.testing.assert_close(bank.weight[idx], expected)

    cols = bank.candidates(idx, 5, g)
    probs = (bank_logits(bank, z, cols) / 0.2).softmax(1)
    targets = torch.eye(3, len(cols), dtype=torch.float64)
    bank.gradient_update(cols, z, targets - probs, 0.5)
    torch.testing.assert_close(bank.weight.norm(dim=1), torch.ones(50, dtype=torch.float64))


def test_bank_is_in_the_state_dict():
    bank = _bank()
    state = bank.state_dict()
    other = MemoryBank(50, 8).double()
    other.load_state_dict(state)
    assert torch.equal(other.weight, bank.weight)


@pytest.mark.parametrize("k", [12, None], ids=["k=12", "full-softmax"])
def test_gradient_update_under_bf16_autocast_is_the_fp32_update(k):
    """The training step runs under bf16 autocast, which would turn the update's matmul into
    bf16: with explicit columns ``index_add_`` then refused the bf16 delta (sbid crashed on CUDA
    with its default ``negatives: 4096``, found on an H100), and the full-softmax update lost
    precision. The update must be the fp32 one, autocast or not."""
    g = torch.Generator().manual_seed(4)
    idx = torch.tensor([0, 5, 9])
    banks = [MemoryBank(50, 8) for _ in range(2)]
    banks[1].load_state_dict(banks[0].state_dict())
    cols = banks[0].candidates(idx, k, g)
    z = torch.randn(3, 8, generator=g)
    residual = torch.randn(3, 50 if cols is None else len(cols), generator=g)
    banks[0].gradient_update(cols, z, residual, 0.5)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        banks[1].gradient_update(cols, z, residual, 0.5)
    assert banks[1].weight.dtype == torch.float32
    assert torch.equal(banks[0].weight, banks[1].weight)
