"""Shared fixtures: the project root, default params, and a small real dataset on disk.

The suite runs with the portable kernels (AVX2), pinned here before anything imports
torch: its numbers are then the same on every x86-64 CPU, and a stage called in-process
passes the pin check of :func:`sdclr.runtime.numerics.apply`. The thread count is left to each
test (a stage run in a subprocess pins its own); under pytest-xdist (``scripts/test.sh``
runs one worker per core) each worker's torch gets its share of the cores, so the workers
do not oversubscribe them.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

from sdclr.runtime.numerics import PORTABLE_ENV, has_avx2

if has_avx2() and any(os.environ.get(k) != v for k, v in PORTABLE_ENV.items()):  # (test modules re-import it)
    assert "torch" not in sys.modules, "tests/conftest.py must pin the kernels before torch is imported"
    os.environ.update(PORTABLE_ENV)

# DVC starts an analytics daemon after each command in a repository without this project's config
# (the synthetic ones tests `dvc init`): 0.3 s of CPU each, 56 times a suite, for nothing offline.
os.environ["DVC_NO_ANALYTICS"] = "1"

_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1 and "torch" not in sys.modules:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _workers)))

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


#: the longest test files, started first: with the suite over several workers (scripts/test.sh), none is
#: then left running one of them alone at the end
LONGEST_FIRST = ("test_pipeline_e2e.py", "test_compile_equivalence.py", "test_portable.py", "test_distributed.py",
                 "test_pretrain.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = Path(str(item.fspath)).name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file is kept


@pytest.fixture(autouse=True)
def _keep_thread_count():
    """A stage run in-process sets torch's threads (portable: 1); the next test gets its own back."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch else None
    yield
    if threads and sys.modules["torch"].get_num_threads() != threads:
        sys.modules["torch"].set_num_threads(threads)


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
