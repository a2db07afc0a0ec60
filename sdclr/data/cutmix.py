"""Batch-level CutMix (Yun et al. 2019) as Cao & Wu (2024) use it for single-branch training.

One box per batch: every image i gets the same rectangle pasted from image ``perm[i]``.
The mixing weight is drawn as ``λ ~ Beta(α, α)``, folded to ``max(λ, 1 − λ)`` (each image
stays mostly itself), and then *recomputed from the clipped box*, so the targets
``λ·y_i + (1 − λ)·y_perm[i]`` always match the pixels actually pasted.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def cutmix(images: torch.Tensor, alpha: float, generator: torch.Generator):
    """NCHW batch → (mixed batch, perm, λ as a float = fraction of each image that is its own)."""
    n, _, h, w = images.shape
    dev = images.device
    # One scalar per batch: numpy's Beta, seeded from our generator, keeps runs reproducible
    # without touching torch's global RNG (torch's Beta sampler takes no generator).
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=dev).item())
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    lam = max(lam, 1.0 - lam)
    cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
    cy = int(torch.randint(0, h, (1,), generator=generator, device=dev).item())
    cx = int(torch.randint(0, w, (1,), generator=generator, device=dev).item())
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
    perm = torch.randperm(n, generator=generator, device=dev)
    mixed = images.clone()
    mixed[:, :, top:bottom, left:right] = images[perm, :, top:bottom, left:right]  # gather only the box
    lam = 1.0 - (bottom - top) * (right - left) / (h * w)
    return mixed, perm, lam

