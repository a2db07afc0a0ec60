"""The MLflow store: first-time creation by several processes at once (a queued sweep's workers), and the
experiment's saved runs view with the link that opens it."""

from __future__ import annotations

import os
import subprocess
import sys


def test_concurrent_first_use_of_a_new_sqlite_store(tmp_path, root):
    """Four processes create the same new store together; all succeed and it works after."""
    db = tmp_path / "store" / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{db}", "PYTHONPATH": str(root)}
    procs = [subprocess.Popen([sys.executable, "-m", "sdclr.runtime.tracking"], env=env, stdout=subprocess.PIPE,
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


def test_the_experiment_carries_the_runs_view_and_the_store_prints_its_link(tmp_path, root):
    """An experiment made before the view existed gets it on next use; `python -m sdclr.runtime.tracking` prints its
    link."""
    import json

    import mlflow

    from sdclr.runtime.tracking import ACCURACY_COLUMNS, RUNS_VIEW

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    old = mlflow.MlflowClient(uri).create_experiment("sdclr-fashion_mnist", tags={"mlflow.experimentKind": "x"})
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(root)}
    code = ("from sdclr.runtime import tracking; "
            "print(tracking.experiment_id('sdclr-fashion_mnist'), tracking.experiment_id('sdclr-x-reports'))")
    ids = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert ids[0] == old
    (key, value), = RUNS_VIEW.items()
    assert mlflow.MlflowClient(uri).get_experiment(old).tags[key] == value
    state = json.loads(json.loads(value)["state"])
    assert state["selectedColumns"] == state["columnOrder"] == list(ACCURACY_COLUMNS) and not state["orderByAsc"]
    out = subprocess.run([sys.executable, "-m", "sdclr.runtime.tracking"], env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[1:] == [f"sdclr-fashion_mnist: http://127.0.0.1:5000/#/experiments/{old}/runs"
                       "?workflowType=machine_learning&viewStateShareKey=runs"]  # not the reports experiment


def test_a_logged_encoder_reloads_from_the_store_and_gives_the_encoders_features(tmp_path, monkeypatch):
    """What a user of the Models view gets: the logged ``pt2`` encoder, loaded back by its model id
    through MLflow's loader, gives the module's features (MLflow's own check at logging only runs it)."""
    import mlflow.pytorch
    import numpy as np
    import torch

    from sdclr.models.resnet import ResNet18
    from sdclr.runtime.tracking import Run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)  # the artifacts go beside the store, not into the project
    torch.manual_seed(0)
    encoder = ResNet18(1, 8, [0.5], [0.25]).eval()
    example = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    with Run("logged-model-check", "pretrain-x", {}, {}, "stages/pretrain.py") as run:
        model_id = run.log_model(encoder, example, {"method": "x", "split": 0})
    loaded = mlflow.pytorch.load_model(f"models:/{model_id}")
    with torch.no_grad():
        x = torch.from_numpy(example)
        torch.testing.assert_close(loaded(x), encoder(x))
