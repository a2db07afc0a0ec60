"""The one place that talks to MLflow.

Store: ``MLFLOW_TRACKING_URI`` when set, else a SQLite file ``mlflow.db`` at the *real*
project root. Inside ``dvc exp run --queue`` the stage runs in a temporary copy under
``.dvc/tmp/exps/`` that is deleted afterwards, so the root comes from ``DVC_ROOT`` (set by
DVC), and every experiment is created with an explicit absolute artifact location —
otherwise queued runs and their artifacts would vanish with the copy.

How the store is laid out (docs/design.md, "What MLflow shows"):

- experiment ``sdclr-<dataset>``: one top-level row per (method, split) — the pretraining
  run, onto which its evaluation also logs the probe accuracies, so the runs table sorts by
  accuracy — with the evaluation run nested under it as a child (``mlflow.parentRunId``).
  The untrained ``random`` encoder has no pretraining run: its evaluation is its row.
- experiment ``sdclr-<dataset>-reports``: the report stage's runs (tables and figures), kept
  apart so they do not mix into the per-run charts.

Every run carries MLflow's standard source tags (commit, entry point), a ``git_dirty``
tag, the host and pid that ran it (a run whose process died is marked KILLED by the next
stage that starts on that host), and only the params its stage reads, resolved.
``mlflow`` is imported lazily (it costs about a second), and metrics are logged in
batches (one call per epoch) to keep the SQLite store quick.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sdclr.errors import TimeLimitStop, TrackingError

#: the probe accuracies, the columns a researcher compares runs by
ACCURACY_COLUMNS = tuple(f"metrics.`{k}_accuracy`" for k in ("full_shot", "few_shot", "knn"))
#: A saved runs-table view, stored as an experiment tag (MLflow 3.17's UI reads
#: ``mlflow.sharedViewState.<key>`` when the page's URL names the key), shown by
#: ``#/experiments/<id>/runs?workflowType=machine_learning&viewStateShareKey=runs``
#: (:func:`runs_link`): one row per (method, split), best full-shot accuracy first, the three
#: accuracies as the first columns. The experiment's bare link opens MLflow 3.17's GenAI
#: overview whatever the experiment's tags (``mlflow.experimentKind`` included).
RUNS_VIEW_KEY = "runs"
RUNS_VIEW = {"mlflow.sharedViewState." + RUNS_VIEW_KEY: json.dumps({
    "name": "Runs by probe accuracy", "createdAt": 0, "updatedAt": 0,
    "state": json.dumps({"searchFilter": "tags.`mlflow.parentRunId` IS NULL",
                         "orderByKey": ACCURACY_COLUMNS[0], "orderByAsc": False,
                         "selectedColumns": list(ACCURACY_COLUMNS), "columnOrder": list(ACCURACY_COLUMNS)})})}
#: the code whose uncommitted changes make a run ``git_dirty``
CODE_PATHS = ("sdclr", "stages", "dvc.yaml", "requirements.txt", "pyproject.toml")


def project_root() -> Path:
    """The real project root, also inside ``dvc exp run --queue`` temp copies (DVC sets DVC_ROOT):
    the MLflow store and git's commit are the project's, not the temp copy's."""
    root = os.environ.get("DVC_ROOT")
    return Path(root).resolve() if root else Path.cwd().resolve()


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def experiment_name(dataset: str) -> str:
    return f"sdclr-{dataset}"


def report_experiment_name(dataset: str) -> str:
    return f"sdclr-{dataset}-reports"


def artifact_root() -> str:
    """Absolute artifact location: next to a SQLite store, else <project root>/mlartifacts."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return (project_root() / "mlartifacts").as_uri()


def check_store(timeout_s: float = 5.0) -> None:
    """Fail in seconds, before any work, when the tracking store cannot be used.

    MLflow's own client retries an unreachable server for minutes before it gives up with
    chained tracebacks; a stage would do its loading (and nothing else) in the meantime.
    """
    uri = tracking_uri()
    fix = ("start the server, correct MLFLOW_TRACKING_URI, or unset it to use the project's own "
           "SQLite store (mlflow.db)")
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
        except urllib.error.HTTPError:
            return  # it answered (perhaps asking for credentials): reachable
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(f"the MLflow tracking server {uri} (MLFLOW_TRACKING_URI) does not answer "
                                f"({reason}); {fix}.") from None
        return
    try:
        _mlflow()
    except Exception as e:  # a corrupt SQLite file, an unwritable folder, a bad scheme
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrackingError(f"the MLflow store {uri} cannot be opened ({first}); {fix}.") from None


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=project_root(), capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def source_tags(entry_point: str) -> dict[str, str]:
    """MLflow's standard source tags (the UI's Source column) plus ``git_dirty``, host and pid.

    ``git_dirty`` is "true" when the code (:data:`CODE_PATHS`) has uncommitted changes: the
    commit alone then does not say what ran. Params and data are logged on their own.
    """
    dirty = _git("status", "--porcelain", "--", *CODE_PATHS)
    tags = {
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": entry_point,
        "mlflow.source.git.commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": "true" if dirty else "false",
        "host": socket.gethostname(),
        "pid": str(os.getpid()),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
        "dvc_stage": os.environ.get("DVC_STAGE", ""),
    }
    if dirty:
        tags["git_dirty_files"] = " ".join(line[3:] for line in dirty.splitlines())[:5000]
    return tags


def select_params(flat: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """The entries of a dotted-key params dict that the stage reads: ``keys`` as dvc.yaml lists them."""
    return {k: v for k, v in flat.items() if any(k == d or k.startswith(d + ".") for d in keys)}


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
    wait for it and then find it done. ``python -m sdclr.runtime.tracking`` does it ahead of time.
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
    """The experiment's id, created on first use with its artifact location and runs view."""
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location=f"{artifact_root()}/{name}", tags=RUNS_VIEW)
        except mlflow.exceptions.MlflowException:  # created concurrently by another worker
            exp = client.get_experiment_by_name(name)
    for key, value in RUNS_VIEW.items():  # stores made before the view was set
        if exp.tags.get(key) != value:
            client.set_experiment_tag(exp.experiment_id, key, value)
    return exp.experiment_id


def runs_link(experiment_id: str, server: str = "http://127.0.0.1:5000") -> str:
    """The UI page of :data:`RUNS_VIEW`: the runs table with the probe accuracies as columns."""
    return (f"{server}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={RUNS_VIEW_KEY}")


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


def log_metrics_to(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log onto another (usually finished) run: an evaluation's accuracies onto its pretraining run."""
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    _mlflow().MlflowClient().log_batch(run_id, metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def close_dead_runs(client, experiment_ids: list[str]) -> list[str]:
    """Mark KILLED the RUNNING runs started on this host by processes that no longer exist.

    A ``kill -9`` (or a power cut) gives a run no chance to close itself; the next stage that
    starts on the same host closes it, so the store never shows a run RUNNING forever.
    """
    host = socket.gethostname()
    closed = []
    for run in client.search_runs(experiment_ids, f"attributes.status = 'RUNNING' and tags.host = '{host}'",
                                  max_results=1000):
        pid = run.data.tags.get("pid", "")
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            client.set_tag(run.info.run_id, "killed_note", f"process {pid} on {host} ended without closing this run")
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
    return closed


class Run:
    """One MLflow run: ``with Run(...) as run: run.log_metrics({...}, step=epoch)``.

    ``resume_run_id`` reopens that run (a pretraining resumed from its checkpoint continues
    the run it was logging to, so one run holds the whole loss curve); ``parent_run_id``
    nests this run under another. Ends FINISHED on success, FAILED on an exception, KILLED
    on Ctrl-C or a job's time limit (the next job reopens it).
    """

    def __init__(self, experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str],
                 entry_point: str, resume_run_id: str = "", parent_run_id: str = ""):
        self.mlflow = _mlflow()
        self.client = self.mlflow.MlflowClient()
        exp_id = experiment_id(experiment)
        close_dead_runs(self.client, [exp_id])
        all_tags = {**source_tags(entry_point), "mlflow.runName": run_name, **{k: str(v) for k, v in tags.items()}}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        self.resumed = bool(resume_run_id) and self._reopen(resume_run_id, all_tags)
        if self.resumed:
            self.run_id = resume_run_id
            return
        self.run_id = self.client.create_run(exp_id, tags=all_tags, run_name=run_name).info.run_id
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def _reopen(self, run_id: str, tags: dict[str, str]) -> bool:
        try:
            run = self.client.get_run(run_id)
        except self.mlflow.exceptions.MlflowException:
            return False  # not in this store (another store, or deleted): start a new run
        if run.info.lifecycle_stage != "active":
            return False
        from mlflow.entities import RunTag

        self.client.update_run(run_id, status="RUNNING")
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items() if k != "mlflow.runName"])
        return True

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_model(self, module, example, tags: dict[str, str]) -> str:
        """Log ``module`` as an MLflow logged model (the Models view), in the safe ``pt2`` format.

        ``pt2`` is a traced graph (torch.export), no pickle: it loads without this project's
        code. The signature comes from ``example`` (a float NCHW batch). Returns the model id.
        """
        import mlflow.pytorch

        with self.mlflow.start_run(run_id=self.run_id):
            info = mlflow.pytorch.log_model(module, name="encoder", input_example=example,
                                                 serialization_format="pt2", pip_requirements=_pip_requirements(),
                                                 tags={k: str(v) for k, v in tags.items()})
        self.client.update_run(self.run_id, status="RUNNING")  # the fluent context closed it; __exit__ decides
        return info.model_id

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        stopped = exc_type is not None and issubclass(exc_type, (KeyboardInterrupt, TimeLimitStop))
        status = "FINISHED" if exc_type is None else ("KILLED" if stopped else "FAILED")
        self.client.set_terminated(self.run_id, status)


def _pip_requirements() -> list[str]:
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}"]


if __name__ == "__main__":
    init_store()
    print(f"MLflow store ready: {tracking_uri()}")
    for exp in _mlflow().MlflowClient().search_experiments(filter_string="name LIKE 'sdclr-%'"):
        if not exp.name.endswith("-reports"):  # under `mlflow server`'s default address
            print(f"{exp.name}: {runs_link(exp.experiment_id)}")
