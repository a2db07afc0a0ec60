"""Writes that several stages share lose nothing when the stages run at the same time:
``reports/cost.json`` (read-modify-write under a lock) and the MLflow SQLite store."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.dvc_project import ROOT


def _spawn(code: str, env_extra: dict | None = None, n: int = 6) -> None:
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(n)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outs)


def test_concurrent_cost_records_lose_no_entry(tmp_path):
    path = tmp_path / "reports" / "cost.json"
    _spawn(f"""
        import sys
        from pathlib import Path
        from sdclr.runtime.cost import record
        i = sys.argv[1]
        for k in range(25):
            record(f"pretrain/m{{i}}/split{{k}}", {{"seconds": float(k)}}, Path({str(path)!r}))
    """)
    table = json.loads(path.read_text())
    assert len(table) == 6 * 25
    assert not list(path.parent.glob("*.tmp*"))


def test_concurrent_mlflow_runs_lose_no_run_or_metric(tmp_path):
    """Six stages logging into one SQLite store at once: every run, param and metric arrives."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _spawn("""
        import sys
        from sdclr.runtime import tracking
        i = sys.argv[1]
        for k in range(3):
            with tracking.Run("sdclr-test", f"run-{i}-{k}", {"p": i}, {"stage": "test"}, "tests") as run:
                for epoch in range(1, 6):
                    run.log_metrics({"loss": 1.0 / epoch, "other": float(epoch)}, step=epoch)
    """, {"MLFLOW_TRACKING_URI": store})
    import mlflow

    client = mlflow.MlflowClient(store)
    exp = client.get_experiment_by_name("sdclr-test")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) == 18 and all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "loss")] == [1, 2, 3, 4, 5]
