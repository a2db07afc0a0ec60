"""Contrastive losses.

The loss is computed in (at least) float32 with autocast switched off: the
2N x 2N similarity logits divided by a small temperature lose too much
precision in bf16, and the log-softmax over them is the whole training signal.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent (normalised-temperature cross-entropy) between two views.

    ``z1[i]`` and ``z2[i]`` are two views of image i.  All 2N rows are
    L2-normalised and used as anchors; an anchor's positive is the other view of
    its image and the remaining 2N - 2 rows are its negatives (its similarity to
    itself is excluded).  Returns the mean cross-entropy over the 2N anchors.
    In SDCLR, ``z1`` comes from the dense branch and ``z2`` from the pruned one.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent: z1 and z2 must both be [N, D]; got {tuple(z1.shape)} and {tuple(z2.shape)}.")
    n = z1.shape[0]
    dtype = torch.promote_types(z1.dtype, torch.float32)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z = F.normalize(torch.cat([z1, z2]).to(dtype), dim=1)
        logits = (z @ z.T) / temperature
        self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        idx = torch.arange(2 * n, device=z.device)
        targets = torch.cat([idx[n:], idx[:n]])  # i <-> i + N
        return F.cross_entropy(logits, targets)


def sqrt_self_distillation(logits: torch.Tensor) -> torch.Tensor:
    """Cao & Wu (2024)'s sqrt self-distillation term, mean over the batch (weight it by λ outside).

    ``p = softmax(logits)`` at temperature 1; the target ``u = normalize_L1(sqrt(p))`` is a
    flattened copy of p under stop-gradient; the term is ``KL(p ‖ u) = Σ_k p_k (log p_k − log u_k)``.
    Since log u = ½ log p − log Σ√p with the normaliser constant under stop-gradient, the
    gradient is that of ½ Σ p log p: λ/2 times the gradient of the negative entropy of p,
    i.e. an entropy bonus that spreads mass over rarely-updated bank entries.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        log_p = F.log_softmax(logits.to(dtype), dim=1)
        p = log_p.exp()
        with torch.no_grad():
            log_u = 0.5 * log_p - torch.logsumexp(0.5 * log_p, dim=1, keepdim=True)
        return (p * (log_p - log_u)).sum(1).mean()
