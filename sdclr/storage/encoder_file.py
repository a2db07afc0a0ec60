"""The encoder file: the trained network, what rebuilds it, and the numerics that made it.

Written once by pretraining (:func:`save_encoder`) and read by evaluation and MLflow's
logged model (:func:`load_encoder`); kept apart from the training loop so that reading an
encoder does not depend on how it was trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sdclr.errors import DataError
from sdclr.models import HeadSpec, build_model
from sdclr.storage import checkpoint


@dataclass
class ModelSpec:
    """What evaluation needs to rebuild the network from a saved state dict."""

    in_channels: int
    mean: list[float]
    std: list[float]


def save_encoder(path: Path, method: torch.nn.Module, spec: ModelSpec, params, fingerprint: str,
                 made_by: str) -> None:
    """The trained network of ``method`` (a :class:`sdclr.methods.base.Method`; masks included), what
    is needed to rebuild it (from ``params``), and the numerics
    that made it (``made_by``, :func:`sdclr.runtime.numerics.describe`).

    No run id or time: the file is a DVC output whose hash must only change with the weights
    (MLflow finds the pretraining run from this file's md5, the run's ``model_md5`` tag); in
    portable numerics ``made_by`` is the same on every CPU.
    """
    cls = type(method)
    net_state = {k: v.detach().cpu().contiguous() for k, v in method.net.state_dict().items()}
    checkpoint.save(path, {
        "method": cls.name,
        "fingerprint": fingerprint,
        "net": net_state,
        "spec": asdict(spec),
        "model": asdict(params.model),
        "head": asdict(cls.head_spec(params)),
        "numerics": made_by,
    })


def load_encoder(path: Path, device: torch.device | str = "cpu", stage: str | None = None):
    """Rebuild the network saved by :func:`save_encoder` (weights_only load) in eval mode.

    A missing, truncated or foreign file is one :class:`DataError` sentence naming it and
    the fix (``dvc checkout`` it, or re-run ``stage``, the DVC stage that writes it), never
    torch's traceback, whose advice to load with ``weights_only=False`` would run code
    from an untrusted file.
    """
    path = Path(path)
    redo = f"`dvc repro {stage}`" if stage else "the pretrain stage that writes it"
    fix = f"restore it with `dvc checkout {path}` or re-create it with {redo}"
    if not path.is_file():
        raise DataError(f"the encoder file {path} {'is not a file' if path.exists() else 'is missing'}; {fix}.")
    try:
        state = checkpoint.load(path, map_location="cpu")
    except Exception as e:  # truncated zip, random bytes, a pickle with foreign classes: all unreadable
        raise DataError(f"{path} cannot be read as an encoder file ({type(e).__name__}: it is truncated, damaged "
                        f"or not a file the pretrain stage wrote); {fix}.") from None
    try:
        spec = state["spec"]
        net = build_model(state["model"]["width"], spec["in_channels"], spec["mean"], spec["std"],
                          HeadSpec(**state["head"]))
        net.load_state_dict(state["net"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise DataError(f"{path} does not hold an encoder the pretrain stage wrote ({type(e).__name__}); "
                        f"{fix}.") from None
    return net.to(device).eval(), state
