"""Atomic resume checkpoints, matched to the run by a fingerprint of what shapes training.

A checkpoint is only resumed from when its fingerprint equals the current one; a
checkpoint of a different configuration is reported and ignored (never silently mixed
in). Everything is saved as tensors / plain containers so ``torch.load(weights_only=True)``
reads it.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from sdclr.storage.io import write_bytes


def fingerprint(obj: Any) -> str:
    """Stable hash of a JSON-able description of the training configuration."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save(path: Path, state: dict) -> None:
    """Write ``state`` atomically; the same state always gives the same bytes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_bytes(path, buffer.getvalue())


def load(path: Path, map_location) -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def try_resume(path: Path, expected_fingerprint: str, map_location, log=print) -> dict | None:
    """The checkpoint at ``path`` if it exists, loads and matches; else None (with a note why)."""
    if not path.exists():
        return None
    try:
        state = load(path, map_location)
    except Exception as e:  # truncated / foreign file: start fresh rather than crash
        log(f"note: ignoring unreadable checkpoint {path} ({type(e).__name__}); starting from epoch 0.")
        return None
    if state.get("fingerprint") != expected_fingerprint:
        log(f"note: checkpoint {path} was made with different parameters "
            f"({state.get('fingerprint')} != {expected_fingerprint}); starting from epoch 0.")
        return None
    return state
