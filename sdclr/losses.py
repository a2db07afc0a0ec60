"""Contrastive losses.

The loss is computed in (at least) float32 with autocast switched off: the
2N x 2N similarity logits divided by a small temperature lose too much
precision in bf16, and the log-softmax over them is the whole training signal.

Under DDP the NT-Xent losses own their gather (as lightly's ``NTXentLoss`` does): a method
passes this rank's projections and the loss gathers every rank's
(:func:`sdclr.distributed.global_batch`) before comparing them, so each anchor meets the
whole global batch's negatives. In one process the gather is the identity.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from sdclr.distributed import global_batch


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, *, gather: bool = True) -> torch.Tensor:
    """SimCLR's NT-Xent (normalised-temperature cross-entropy) between two views.

    ``z1[i]`` and ``z2[i]`` are two views of image i.  All 2N rows are
    L2-normalised and used as anchors; an anchor's positive is the other view of
    its image and the remaining 2N - 2 rows are its negatives (its similarity to
    itself is excluded).  Returns the mean cross-entropy over the 2N anchors.
    In SDCLR, ``z1`` comes from the dense branch and ``z2`` from the pruned one.

    N is the global batch: under DDP ``z1`` and ``z2`` are this rank's rows and are
    gathered first. ``gather=False`` is for a caller that gathered them already because it
    uses the global rows itself (GH's loss); gathering twice would double the batch.
    """
    if gather:
        z1, z2 = global_batch(z1, z2)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        return F.cross_entropy(*_ntxent_logits(z1, z2, temperature))


def nt_xent_per_image(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent per image: ℓ_i = ½[ℓ(i¹→i²) + ℓ(i²→i¹)], shape [N]; its mean is :func:`nt_xent`.

    Gathers like :func:`nt_xent`, so under DDP the N values are the global batch's images,
    rank-major (pair them with ``global_batch(indices)``). BCL's memorisation score folds
    in each image's own ℓ_i from the step that trains on it.
    """
    z1, z2 = global_batch(z1, z2)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        per_anchor = F.cross_entropy(*_ntxent_logits(z1, z2, temperature), reduction="none")
        n = z1.shape[0]
        return 0.5 * (per_anchor[:n] + per_anchor[n:])


def _ntxent_logits(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2N×2N logits (self-similarity masked out) and each anchor's positive column (call with autocast off)."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent: z1 and z2 must both be [N, D]; got {tuple(z1.shape)} and {tuple(z2.shape)}.")
    n = z1.shape[0]
    dtype = torch.promote_types(z1.dtype, torch.float32)
    z = F.normalize(torch.cat([z1, z2]).to(dtype), dim=1)
    logits = (z @ z.T) / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    idx = torch.arange(2 * n, device=z.device)
    return logits, torch.cat([idx[n:], idx[:n]])  # i <-> i + N


class _BankInstanceLoss(torch.autograd.Function):
    """Forward computes the loss *and* its gradient w.r.t. ẑ in one pass over the B×K logits.

    Saving only the B×d gradient (not the bank rows) means the bank can be updated in
    place right after the forward, and the B×K intermediates are freed before backward.
    """

    @staticmethod
    def forward(ctx, z_hat, bank_rows, own, partner, lam, temperature, sd_weight):
        b = z_hat.shape[0]
        rows = torch.arange(b, device=z_hat.device)
        cos = z_hat @ bank_rows.T
        log_q = F.log_softmax(cos / temperature, dim=1)
        ce = -(lam * log_q[rows, own] + (1 - lam) * log_q[rows, partner]).mean()  # lam: a float or B values
        q = log_q.exp()
        entropy_q = -(q * log_q).sum(1).mean()
        del log_q
        residual = q.neg_()  # y − q, y = lam on the own column + (1 − lam) on the partner's
        if torch.is_tensor(lam):
            lam_rows, rest_rows = lam.to(q.dtype), 1 - lam.to(q.dtype)
        else:
            lam_rows, rest_rows = torch.full_like(own, lam, dtype=q.dtype), torch.full_like(own, 1 - lam, dtype=q.dtype)
        residual.index_put_((rows, own), lam_rows, accumulate=True)
        residual.index_put_((rows, partner), rest_rows, accumulate=True)
        grad_cos = residual * (-1.0 / (temperature * b))

        log_p = F.log_softmax(cos, dim=1)
        p = log_p.exp()
        entropy_rows = -(p * log_p).sum(1)
        loss = ce
        if sd_weight > 0:
            # KL(p ‖ u), log u = ½ log p − logsumexp(½ log p):  −½ H(p) + logsumexp(½ log p)
            sd = (-0.5 * entropy_rows + torch.logsumexp(0.5 * log_p, dim=1)).mean()
            loss = ce + sd_weight * sd
            # u under stop-gradient ⇒ ∇ = ½ ∇ Σ p log p = ½ p ⊙ (log p + H), per row, / B
            grad_cos += log_p.add_(entropy_rows[:, None]).mul_(p).mul_(sd_weight / (2 * b))
        ctx.save_for_backward(grad_cos @ bank_rows)
        ctx.mark_non_differentiable(residual)
        return loss, residual, entropy_rows.mean().detach(), entropy_q

    @staticmethod
    def backward(ctx, grad_loss, *_):
        (grad_z_hat,) = ctx.saved_tensors
        return grad_z_hat * grad_loss, None, None, None, None, None, None


def bank_instance_loss(z_hat: torch.Tensor, bank_rows: torch.Tensor, own: torch.Tensor, partner: torch.Tensor,
                       lam: float, temperature: float, sd_weight: float):
    """Cao & Wu's single-branch loss over memory-bank logits, fused: one pass, float32.

    ``z_hat`` (B×d, unit rows, requires grad) is compared with ``bank_rows`` (K×d, unit rows):
    ``cos = ẑ Wᵀ``. Row i's target is column ``own[i]`` with weight ``lam`` and column
    ``partner[i]`` with ``1 − lam`` (CutMix; pass ``partner = own`` and ``lam = 1`` without it).
    Loss = mean CE(cos/τ, y) + ``sd_weight`` · mean KL(p ‖ stopgrad(normalize(√p))), p = softmax(cos).

    Returns ``(loss, y − q, mean H(p), mean H(q))`` with q = softmax(cos/τ): the residual
    drives the gradient-derived bank update, the entropies are logged. Equal in value and
    gradient to the autograd composition of ``F.cross_entropy`` and
    the sqrt self-distillation term (``tests/reference_ops.py``, compared in ``tests/test_losses.py``), but
    several times cheaper on a
    CPU, where these B×K passes cost as much as the encoder.
    """
    dtype = torch.promote_types(z_hat.dtype, torch.float32)
    with torch.autocast(device_type=z_hat.device.type, enabled=False):
        lam = lam if torch.is_tensor(lam) else float(lam)  # per-row under DDP (CutMix draws per rank)
        return _BankInstanceLoss.apply(z_hat.to(dtype), bank_rows.to(dtype), own, partner, lam,
                                       float(temperature), float(sd_weight))


def cosine_temperature(epoch: int, tau_min: float, tau_max: float, period_epochs: int) -> float:
    """The temperature schedule of TS (Kukleva et al., ICLR 2023, Algorithm 1).

    τ(e) = τ_min + ½(τ_max − τ_min)(1 + cos(2π·e/T)) for epoch e counted from 1, held for
    the whole epoch and used in the positive and every negative term. High τ spreads the
    loss over all negatives (group-wise discrimination, which helps tail classes); low τ
    sharpens it (instance discrimination); cycling between them serves both. The official
    code writes ``cos(π·e/t_max)`` with t_max = T/2 = 200.
    """
    return tau_min + 0.5 * (tau_max - tau_min) * (1.0 + math.cos(2.0 * math.pi * epoch / period_epochs))
