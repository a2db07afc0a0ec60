"""The non-parametric memory bank of single-branch instance discrimination (Cao & Wu 2024).

One L2-normalised vector per training image, kept on the device as a buffer (so it is
checkpointed with the method's state_dict). A step's logits are the cosine similarities
of the batch's features to the batch's own entries plus ``k`` other entries; after the
step the bank moves by one of two rules:

- ``momentum`` (NPID): ``w_i ← normalize(m·w_i + (1−m)·z_i)`` for the batch's own rows only;
- ``gradient`` (Cao & Wu's corrected rule): every entry ``k`` in the logits moves along
  ``Σ_i (y_ik − p_ik)·z_i`` times a step size, then is renormalised — exactly a gradient
  step on the summed cross-entropy with respect to those entries (see
  ``tests/test_memory_bank.py``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MemoryBank(nn.Module):
    def __init__(self, num_entries: int, dim: int):
        super().__init__()
        self.register_buffer("weight", F.normalize(torch.randn(num_entries, dim), dim=1))

    @property
    def num_entries(self) -> int:
        return self.weight.shape[0]

    @torch.no_grad()
    def fill(self, indices: torch.Tensor, z: torch.Tensor) -> None:
        """Set rows (the initial no-grad pass over the augmented training set)."""
        self.weight[indices] = F.normalize(z.to(self.weight.dtype), dim=1)

    @torch.no_grad()
    def candidates(self, indices: torch.Tensor, k: int | None, generator: torch.Generator) -> torch.Tensor | None:
        """Columns of a step's logits: the batch's own entries first, then ``k`` distinct others.

        ``k = 0`` means the batch only; ``k = None`` every entry (the full softmax), returned
        as ``None`` = "the whole bank in bank order" so no N×d copy is gathered each step.
        With explicit columns the own entries come first, so the target of row i is column i.
        """
        if k is None:
            return None
        if k == 0:
            return indices
        n = self.num_entries
        in_batch = torch.zeros(n, dtype=torch.bool, device=indices.device)
        in_batch[indices] = True
        others = torch.randperm(n, generator=generator, device=indices.device)
        others = others[~in_batch[others]][:k]
        return torch.cat([indices, others])

    def rows(self, columns: torch.Tensor | None) -> torch.Tensor:
        """The K×d bank rows behind ``columns`` (the bank itself for ``None``)."""
        return self.weight if columns is None else self.weight[columns]

    @torch.no_grad()
    def momentum_update(self, indices: torch.Tensor, z: torch.Tensor, momentum: float) -> None:
        w = momentum * self.weight[indices] + (1 - momentum) * F.normalize(z.to(self.weight.dtype), dim=1)
        self.weight[indices] = F.normalize(w, dim=1)

    @torch.no_grad()
    def gradient_update(self, columns: torch.Tensor | None, z: torch.Tensor, residual: torch.Tensor,
                        step: float, renormalise: bool = True) -> None:
        """``w_k += step · Σ_i (y_ik − p_ik) ẑ_i`` for every column k, then renormalise those rows.

        ``residual`` is ``y − p`` (B×K over ``columns``; soft targets allowed, e.g. CutMix) with
        p the softmax at temperature τ. This equals a gradient step of size ``step·τ`` on
        Σ_i CE(logits_i/τ, y_i) with respect to the rows (``tests/test_memory_bank.py``).
        """
        with torch.autocast(device_type=self.weight.device.type, enabled=False):  # else a bf16 delta
            delta = residual.to(self.weight.dtype).T @ F.normalize(z.to(self.weight.dtype), dim=1)  # K×d
        if columns is None:
            self.weight.add_(delta, alpha=step)
            if renormalise:
                self.weight.div_(self.weight.norm(dim=1, keepdim=True).clamp_min(1e-12))
            return
        self.weight.index_add_(0, columns, step * delta)
        if renormalise:
            self.weight[columns] = F.normalize(self.weight[columns], dim=1)
