"""The MLflow store: first-time creation by several processes at once (a queued sweep's workers)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_concurrent_first_use_of_a_new_sqlite_store(tmp_path, root):
    """Four processes create the same new store together; all succeed and it works after."""
    db = tmp_path / "store" / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "PYTHONPATH": str(root)}
    procs = [subprocess.Popen([sys.executable, "-m", "sdclr.tracking"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
        assert "MLflow store ready" in out
    assert (db.parent / "mlflow.db.lock").exists() and db.stat().st_size > 0

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{db}")
    exp = client.create_experiment("after-init")
    assert client.get_experiment(exp).name == "after-init"
