"""Where a stage computes: ``device`` in params.yaml → a torch device, or one sentence why not."""

from __future__ import annotations

import torch

from sdclr.errors import ParamError


def resolve_device(name: str) -> torch.device:
    """``auto`` = CUDA when present, else the CPU; ``cuda``/``cuda:N`` must be visible."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ParamError(f"device = {name!r} but no CUDA device is visible; accepted here: 'auto' or 'cpu'.")
    return torch.device(name)
