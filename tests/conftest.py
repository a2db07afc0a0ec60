"""Shared fixtures: the project root, default params, and a small real dataset on disk."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture
def raw_params() -> dict:
    """A fresh copy of the project's params.yaml as a plain dict (tests edit it freely)."""
    return copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))


def balanced_labels(num_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    """Labels of a shuffled balanced dataset, like an official train set."""
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    return np.random.default_rng(seed).permutation(labels)
