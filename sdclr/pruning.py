"""Global magnitude pruning masks for SDCLR's pruned branch.

SDCLR prunes with *one* magnitude threshold shared by every conv layer (stem,
block convs, 1x1 shortcuts), so layers end up with different sparsities: the
network decides where capacity is lost.  Linear layers and BatchNorm are never
pruned.  The mask is recomputed from the live weights once per epoch and then
multiplies the weights in the pruned forward (:class:`MaskedConv2d`).

Everything stays on the weights' device with a single sort and no host syncs,
and masks are written in place so compiled graphs and DDP keep seeing them.
"""

from __future__ import annotations

import torch
from torch import nn

from sdclr.models.layers import MaskedConv2d

# Prefixes that wrappers (torch.compile, DDP/DataParallel) add to module names.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def _strip_wrappers(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for p in _WRAPPER_PREFIXES:
            if name.startswith(p):
                name, stripped = name[len(p):], True
    return name


def named_masked_convs(model: nn.Module) -> list[tuple[str, MaskedConv2d]]:
    """(name, conv) for every MaskedConv2d, in registration order, wrapper prefixes removed."""
    return [(_strip_wrappers(n), m) for n, m in model.named_modules() if isinstance(m, MaskedConv2d)]


def masked_convs(model: nn.Module) -> list[MaskedConv2d]:
    """Every MaskedConv2d of ``model`` in a fixed (registration) order."""
    return [m for _, m in named_masked_convs(model)]


@torch.no_grad()
def update_global_masks(model: nn.Module, prune_ratio: float) -> float:
    """Set every conv mask from one global magnitude threshold; return the sparsity.

    Exactly ``k = int(prune_ratio * total)`` conv weights (the smallest |w| over
    all convs together) get mask 0, the rest 1.  Ties are broken by position in
    the concatenation order of :func:`masked_convs` (stable sort), so the result
    is deterministic.  The returned sparsity is ``k / total``, exact by
    construction and computed without touching the device.
    """
    if not 0.0 <= prune_ratio < 1.0:
        raise ValueError(f"update_global_masks: prune_ratio must be in [0, 1), got {prune_ratio!r}.")
    convs = masked_convs(model)
    if not convs:
        raise ValueError("update_global_masks: the model has no MaskedConv2d layers to prune.")
    sizes = [c.weight.numel() for c in convs]
    total = sum(sizes)
    k = int(prune_ratio * total)

    # flatten() follows logical (NCHW) order even for channels_last weights, and
    # copy_ below writes back by logical index, so memory format is irrelevant.
    magnitudes = torch.cat([c.weight.detach().abs().flatten().float() for c in convs])
    flat_mask = torch.ones_like(magnitudes)
    if k > 0:
        order = torch.sort(magnitudes, stable=True).indices
        flat_mask[order[:k]] = 0.0
    for conv, chunk in zip(convs, torch.split(flat_mask, sizes)):
        conv.mask.copy_(chunk.view(conv.mask.shape))
    return k / total


@torch.no_grad()
def mask_fingerprint(model: nn.Module) -> torch.Tensor:
    """Two exact float64 numbers identifying the masks: kept count and Σ position·mask.

    Compared across DDP ranks each epoch (same weights must give the same masks).
    """
    flat = torch.cat([m.mask.flatten() for m in masked_convs(model)]).double()
    positions = torch.arange(flat.numel(), dtype=torch.float64, device=flat.device)
    return torch.stack([flat.sum(), (flat * positions).sum()])
