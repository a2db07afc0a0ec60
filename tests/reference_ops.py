"""Reference implementations the tests compare the production code against (not used by it).

Each is the plain, one-operation-at-a-time form of something ``sdclr`` computes fused or
batched: the colour ops as torchvision writes them, Cao & Wu's sqrt self-distillation term
through autograd, the bank's cosine logits, and the masks' sparsity counted from the masks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sdclr.data.augment import rgb_to_grayscale
from sdclr.pruning import named_masked_convs


def _per_sample(f: torch.Tensor) -> torch.Tensor:
    return f.view(-1, 1, 1, 1)


def blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = _per_sample(factor)
    return (a * f + b * (1.0 - f)).clamp_(0.0, 1.0)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale towards black: ``clamp(x·f)``."""
    return (images * _per_sample(factor)).clamp_(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean luma (one scalar per sample, as torchvision)."""
    return blend(images, rgb_to_grayscale(images).mean(dim=(-3, -2, -1), keepdim=True), factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the per-pixel luma."""
    return blend(images, rgb_to_grayscale(images), factor)


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


def bank_logits(bank, z: torch.Tensor, columns: torch.Tensor | None) -> torch.Tensor:
    """Cosine similarities of normalised ``z`` (B×d) to the bank rows ``columns`` (B×K)."""
    return F.normalize(z.to(bank.weight.dtype), dim=1) @ bank.rows(columns).T


@torch.no_grad()
def mask_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of masked (zero) weights counted from the masks: ``"overall"`` plus one per conv name."""
    named = named_masked_convs(model)
    zeros = torch.stack([(m.mask == 0).sum() for _, m in named]).tolist()
    sizes = [m.mask.numel() for _, m in named]
    out = {"overall": sum(zeros) / sum(sizes)} if sizes else {"overall": 0.0}
    out.update({name: z / n for (name, _), z, n in zip(named, zeros, sizes)})
    return out


def linear_probe_curve(train_x, train_y, val_x, val_y, num_classes: int, epochs: int, lr: float,
                       weight_decay: float, batch_size: int, seed: int) -> list[float]:
    """The features probe written out in float64: standardise with the training features' mean and
    unbiased std, N(0, 0.01) weights and zero bias drawn from ``seed``'s generator, a fresh shuffle per
    epoch, heavy-ball SGD (momentum 0.9, L2 weight decay added to the gradient) with the lr on a per-step
    half-cosine from ``lr`` to 0; returns the validation mean per-class accuracy after every epoch."""
    mu, sd = train_x.double().mean(0), train_x.double().std(0).clamp_min(1e-6)
    x, vx = (train_x.double() - mu) / sd, (val_x.double() - mu) / sd
    g = torch.Generator().manual_seed(seed)
    w = torch.empty(num_classes, x.shape[1]).normal_(0, 0.01, generator=g).double()
    b = torch.zeros(num_classes, dtype=torch.float64)
    vw, vb = torch.zeros_like(w), torch.zeros_like(b)
    n = len(x)
    bs = min(batch_size, n)
    steps, step = -(-n // bs) * epochs, 0
    curve = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, bs):
            idx = perm[start : start + bs]
            p = torch.softmax(x[idx] @ w.T + b, dim=1)
            p[torch.arange(len(idx)), train_y[idx]] -= 1.0
            gw, gb = p.T @ x[idx] / len(idx) + weight_decay * w, p.mean(0)
            rate = lr * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / steps, dtype=torch.float64)))
            vw, vb = 0.9 * vw + gw, 0.9 * vb + gb
            w, b = w - rate * vw, b - rate * vb
            step += 1
        pred = (vx @ w.T + b).argmax(1)
        per_class = [(pred[val_y == c] == c).double().mean() for c in range(num_classes) if (val_y == c).any()]
        curve.append(float(torch.stack(per_class).mean()))
    return curve
