"""Portable numerics and per-split stages on this project's own stages (tiny config).

- In native numerics the threads change a pretraining's bytes: the control of the
  end-to-end test (tests/test_pipeline_e2e.py), whose fresh clone, reproduced by the parallel
  runner without the parent's kernel pin and threads, must give the sequential run's bytes.
- Adding a split re-runs only the new split's stages and the report.
"""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from sdclr.registry import METHODS
from sdclr.runtime.numerics import PORTABLE_ENV, THREAD_ENV
from tests.conftest import FASHION_SYSTEM_DIR
from tests.dvc_project import dvc, make_project, project_env, stage_command, update_params

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not FASHION_SYSTEM_DIR.exists(), reason="needs Debian's dataset-fashion-mnist")]

TINY = {
    "device": "cpu",
    "subsample": {"val_per_class": 100, "n_max": 100, "pool_per_class": 200, "imbalance_ratio": 10,
                  "splits": [0, 1]},
    "model": {"width": 8, "head_hidden": 32, "proj_dim": 16},
    "pretrain": {"epochs": 1, "batch_size": 64, "warmup_epochs": 0},
    "sbid": {"head_hidden": 32, "proj_dim": 16},
    "evaluate": {"probe": {"full_shot_epochs": 2, "few_shot_epochs": 3}, "knn_k": 20},
}


def _env(proj, tmp_path, threads: str | None) -> dict:
    """The stage's environment without this test process's kernel pin, and the given thread setting."""
    env = project_env(proj, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for name in (*PORTABLE_ENV, *THREAD_ENV):
        env.pop(name, None)
    if threads:
        env["OMP_NUM_THREADS"] = threads
    return env


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pretrain_bytes(proj, tmp_path, threads: str | None) -> tuple[str, str]:
    cmd = stage_command(proj, "pretrain-simclr", 0)
    subprocess.run(cmd, cwd=proj, env=_env(proj, tmp_path, threads), check=True, capture_output=True, timeout=600)
    return _md5(proj / "models/simclr/split0.pt"), (proj / "reports/pretrain/simclr/split0.csv").read_text()


def test_in_native_numerics_the_threads_change_the_bytes(tmp_path):
    """The control of the portable pin: without it, the thread count is part of the numbers, so
    the end-to-end test's identical bytes (portable stages, whatever the parent's pin and threads)
    show the pin at work, not a computation that no setting could change."""
    proj = make_project(tmp_path / "proj", {**TINY, "numerics": "native",
                                            "subsample": {**TINY["subsample"], "splits": [0]}})
    dvc(proj, "repro", "subsample", env=_env(proj, tmp_path, None))
    native = {threads: _pretrain_bytes(proj, tmp_path, threads) for threads in ("1", "2")}
    assert native["1"][0] != native["2"][0]
    assert json.loads((proj / "reports/cost.json").read_text())["pretrain/simclr/split0"]["numerics"].startswith(
        "native (")


def test_adding_a_split_reruns_only_that_splits_stages_and_the_report(tmp_path):
    """Each split's stages depend on their own split file and the shared pool file, not the
    splits folder (whose summary and figure change when a split is added)."""
    proj = make_project(tmp_path / "proj", {**TINY, "subsample": {**TINY["subsample"], "splits": [0]}})
    env = _env(proj, tmp_path, None)
    dvc(proj, "repro", "subsample", env=env)
    _fake_trained_outputs(proj, [0])
    dvc(proj, "commit", "-f", env=env)
    assert json.loads(dvc(proj, "status", "--json", env=env).stdout or "{}") == {}

    update_params(proj, {"subsample": {"splits": [0, 1]}})
    before = {name: _md5(proj / f"data/splits/fashion_mnist/{name}") for name in ("split0.npz", "pool_val.npz")}
    dvc(proj, "repro", "subsample", env=env)
    assert before == {name: _md5(proj / f"data/splits/fashion_mnist/{name}") for name in before}
    changed = set(json.loads(dvc(proj, "status", "--json", env=env).stdout or "{}"))
    new_split = {f"pretrain-{m}@1" for m in ("simclr", "sdclr", "sbid")}
    new_split |= {f"evaluate-{m}@1" for m in ("random", "simclr", "sdclr", "sbid")}
    assert changed == new_split | {"report"}, sorted(changed)


def _fake_trained_outputs(proj, splits) -> None:
    """A file at every trained output of the given splits and the report's, so `dvc commit` can lock them."""
    rels = ["reports/report.md", "reports/summary.json", "reports/pretrain_loss.csv",
            *(f"reports/figures/{f}.png" for f in ("group_accuracy", "pretrain_loss", "class_counts", "bcl_w_by_group",
                                                   "gh_prior", "paired_differences")),
            *(f"reports/scores/{m}.json" for m in ("random", *METHODS))]
    for k in splits:
        for m in ("simclr", "sdclr", "sbid"):
            rels += [f"models/{m}/split{k}.pt", f"reports/pretrain/{m}/split{k}.csv"]
        rels += [f"reports/metrics/{m}/split{k}.json" for m in ("random", "simclr", "sdclr", "sbid")]
    for rel in rels:
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text(rel)
