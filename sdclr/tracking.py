"""The one place that talks to MLflow.

Store: ``MLFLOW_TRACKING_URI`` when set, else a SQLite file ``mlflow.db`` at the *real*
project root. Inside ``dvc exp run --queue`` the stage runs in a temporary copy under
``.dvc/tmp/exps/`` that is deleted afterwards, so the root comes from ``DVC_ROOT`` (set by
DVC), and every experiment is created with an explicit absolute artifact location —
otherwise queued runs and their artifacts would vanish with the copy.

``mlflow`` is imported lazily (it costs about a second), and metrics are logged in
batches (one call per epoch) to keep the SQLite store quick.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from sdclr.stage import project_root


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def artifact_root() -> str:
    """Absolute artifact location: next to a SQLite store, else <project root>/mlartifacts."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return (project_root() / "mlartifacts").as_uri()


def git_commit(cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or project_root(), capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


_initialised: set[str] = set()


def _mlflow():
    import mlflow

    # Alembic's per-migration INFO lines drown the stage output on first use of a store.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if uri not in _initialised:
        init_store(uri)
        _initialised.add(uri)
    return mlflow


def init_store(uri: str | None = None) -> None:
    """Create a SQLite store's schema once, under a file lock.

    ``dvc queue start -j N`` starts N workers at once; their first connections would all
    run MLflow's schema migration on a new SQLite file and race ("table already exists").
    The lock serialises that first connection: one process creates the schema, the others
    wait for it and then find it done. ``python -m sdclr.tracking`` does it ahead of time.
    """
    import mlflow

    uri = uri or tracking_uri()
    if not uri.startswith("sqlite:///"):
        mlflow.MlflowClient(uri).search_experiments(max_results=1)
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mlflow.MlflowClient(uri).search_experiments(max_results=1)


def experiment_id(name: str) -> str:
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=f"{artifact_root()}/{name}")
    except mlflow.exceptions.MlflowException:  # created concurrently by another worker
        return client.get_experiment_by_name(name).experiment_id


def latest_run_id(experiment: str, tags: dict[str, str]) -> str:
    """The id of the newest FINISHED run of ``experiment`` carrying all ``tags``; "" when none.

    How an evaluation finds the pretraining run of the encoder it reads: by the encoder
    file's md5 (tag ``model_md5``), since the file itself holds no run id.
    """
    client = _mlflow().MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return ""
    query = " and ".join([f"tags.{k} = '{v}'" for k, v in tags.items()] + ["attributes.status = 'FINISHED'"])
    runs = client.search_runs([exp.experiment_id], query, max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else ""


class Run:
    """One MLflow run: ``with Run(...) as run: run.log_metrics({...}, step=epoch)``.

    Ends FINISHED on success, FAILED on an exception, KILLED on Ctrl-C.
    """

    def __init__(self, experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str]):
        self.mlflow = _mlflow()
        self.client = self.mlflow.MlflowClient()
        all_tags = {
            "git_commit": git_commit(),
            "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
            "dvc_stage": os.environ.get("DVC_STAGE", ""),
            "mlflow.runName": run_name,
            **{k: str(v) for k, v in tags.items()},
        }
        run = self.client.create_run(experiment_id(experiment), tags=all_tags, run_name=run_name)
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        status = "FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED")
        self.client.set_terminated(self.run_id, status)


if __name__ == "__main__":
    init_store()
    print(f"MLflow store ready: {tracking_uri()}")
