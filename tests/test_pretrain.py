"""Pretraining loop: resume after a real kill, NaN guard, schedule, fingerprint mismatch."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sdclr.data.longtail import make_splits, write_splits
from sdclr.errors import TrainingError
from sdclr.pretrain_loop import Job, Outputs, pretrain
from sdclr.pretrain_step import lr_at
from sdclr.registry import method_class, parse_params
from sdclr.storage import checkpoint
from sdclr.storage.encoder_file import ModelSpec
from sdclr.storage.io import save_npz, sha256_array, write_json
from tests.conftest import balanced_labels
from tests.dvc_project import make_project, project_env, run_in_process, stage_command

TINY = {
    "device": "cpu",
    "subsample": {"val_per_class": 10, "n_max": 40, "imbalance_ratio": 4, "splits": [0]},
    "model": {"width": 8, "head_hidden": 16, "proj_dim": 8},
    "pretrain": {"epochs": 6, "batch_size": 16, "warmup_epochs": 1, "lr": 0.1, "checkpoint_every": 1},
    "sbid": {"head_hidden": 16, "proj_dim": 8},
}


def tiny_dataset(root: Path, params) -> None:
    """A small synthetic 'fashion_mnist' (images with class-dependent blobs) written where the stages look."""
    rng = np.random.default_rng(0)
    labels = balanced_labels(10, 60)
    images = rng.integers(0, 60, size=(len(labels), 28, 28, 1), dtype=np.uint8)
    for c in range(10):
        images[labels == c, 2 * c : 2 * c + 8, 4:20] += 150
    raw = root / "data/raw/fashion_mnist"
    parts = {"train": {"images": images, "labels": labels}, "test": {"images": images[:100], "labels": labels[:100]}}
    for part, arrays in parts.items():
        save_npz(raw / f"{part}.npz", **arrays)
    # What the download stage records, so the stages' checked loader verifies these arrays too.
    write_json(raw / "meta.json", {"class_names": [f"c{i}" for i in range(10)],
                                   "arrays_sha256": {f"{part}_{k}": sha256_array(v) for part, arrays in parts.items()
                                                     for k, v in arrays.items()}})
    pool, val, splits = make_splits(labels, params.subsample, params.seed)
    write_splits(root / "data/splits/fashion_mnist", labels, pool, val, splits, params.subsample, params.seed,
                 [f"c{i}" for i in range(10)])


@pytest.fixture
def tiny_project(tmp_path):
    proj = make_project(tmp_path / "proj", TINY)
    params = parse_params(yaml.safe_load((proj / "params.yaml").read_text()))
    tiny_dataset(proj, params)
    return proj


def _pretrain_cmd(method: str, proj: Path) -> list[str]:
    return stage_command(proj, f"pretrain-{method}", 0)


@pytest.mark.parametrize("method", ["sdclr", "sbid"])
def test_kill_then_rerun_resumes_and_matches_an_uninterrupted_run(tiny_project, tmp_path, method):
    """sdclr: masks are recomputed from restored weights; sbid: the memory bank is restored.

    And the kill leaves no trace: the temp file of an interrupted write is removed, and the
    MLflow run the kill left RUNNING is resumed, not duplicated.
    """
    import mlflow

    env = project_env(tiny_project, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    ckpt = tiny_project / f"checkpoints/{method}/split0.ckpt"

    proc = subprocess.Popen(_pretrain_cmd(method, tiny_project), cwd=tiny_project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint was written before the kill"
    saved = checkpoint.load(ckpt, "cpu")
    killed_at = int(saved["epoch"])
    if "bank.weight" in saved["method"]:  # sbid: the bank travels in the checkpoint, unit rows, one per image
        bank = saved["method"]["bank.weight"]
        torch.testing.assert_close(bank.norm(dim=1), torch.ones(len(bank)))
    assert 1 <= killed_at < 6, f"the process was not killed partway (checkpoint at epoch {killed_at})"
    assert not (tiny_project / f"models/{method}/split0.pt").exists()
    orphan = ckpt.with_name(f".{ckpt.name}.x1y2z3.tmp")  # what a kill during the atomic write leaves
    orphan.write_bytes(b"half a checkpoint")
    client = mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])
    killed_runs = client.search_runs([client.get_experiment_by_name("sdclr-fashion_mnist").experiment_id])
    assert [r.info.status for r in killed_runs] == ["RUNNING"]  # what the kill left

    rerun = subprocess.run(_pretrain_cmd(method, tiny_project), cwd=tiny_project, env=env, capture_output=True,
                           text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming {method} split 0 from epoch {killed_at}" in rerun.stdout
    assert not ckpt.exists()  # superseded by the final encoder
    assert not orphan.exists()
    # The resumed run is the killed run, reopened: one run holds the whole loss curve.
    runs = client.search_runs([killed_runs[0].info.experiment_id])
    assert [(r.info.run_id, r.info.status) for r in runs] == [(killed_runs[0].info.run_id, "FINISHED")]
    loss = "bank_loss" if method == "sbid" else "ntxent_loss"
    assert sorted({m.step for m in client.get_metric_history(runs[0].info.run_id, loss)}) == list(range(1, 7))
    resumed = checkpoint.load(tiny_project / f"models/{method}/split0.pt", "cpu")["net"]
    history = (tiny_project / f"reports/pretrain/{method}/split0.csv").read_text().splitlines()
    assert len(history) == 1 + 6  # header + every epoch, the ones before the kill included

    (tiny_project / f"models/{method}/split0.pt").unlink()
    fresh = run_in_process(_pretrain_cmd(method, tiny_project), tiny_project, env)  # the reference: no kill
    assert fresh.returncode == 0, fresh.stderr
    assert "resuming" not in fresh.stdout
    uninterrupted = checkpoint.load(tiny_project / f"models/{method}/split0.pt", "cpu")["net"]
    assert resumed.keys() == uninterrupted.keys()
    for k in resumed:
        assert torch.equal(resumed[k], uninterrupted[k]), f"{k} differs after resume"


def test_checkpoint_of_other_params_is_not_resumed(tiny_project, tmp_path):
    params = parse_params(yaml.safe_load((tiny_project / "params.yaml").read_text()))
    from sdclr.storage.io import load_npz

    train = load_npz(tiny_project / "data/raw/fashion_mnist/train.npz")
    lt = load_npz(tiny_project / "data/splits/fashion_mnist/split0.npz")["longtail"]
    spec = ModelSpec(1, [0.3], [0.3])
    ckpt = tmp_path / "c.ckpt"
    pretrain(params, Job(method_class("simclr"), 0, train["images"], lt, spec), Outputs(tmp_path / "a.pt", ckpt),
             stop_after_epoch=2)
    assert checkpoint.load(ckpt, "cpu")["epoch"] == 2
    notes = []
    raw = yaml.safe_load((tiny_project / "params.yaml").read_text())
    raw["pretrain"]["lr"] = 0.05
    res = pretrain(parse_params(raw), Job(method_class("simclr"), 0, train["images"], lt, spec),
                   Outputs(tmp_path / "b.pt", ckpt),
                   log=notes.append, stop_after_epoch=1)
    assert res.resumed_from_epoch == 0
    assert any("different parameters" in n and "starting from epoch 0" in n for n in notes)


def test_nan_loss_stops_with_one_sentence_and_keeps_the_checkpoint(tiny_project, tmp_path):
    raw = yaml.safe_load((tiny_project / "params.yaml").read_text())
    raw["pretrain"].update(epochs=3, lr=1e30)  # diverges
    params = parse_params(raw)
    from sdclr.storage.io import load_npz

    train = load_npz(tiny_project / "data/raw/fashion_mnist/train.npz")
    lt = load_npz(tiny_project / "data/splits/fashion_mnist/split0.npz")["longtail"]
    ckpt = tmp_path / "c.ckpt"
    ckpt.write_bytes(b"previous good checkpoint")
    with pytest.raises(TrainingError) as info:
        pretrain(params, Job(method_class("simclr"), 0, train["images"], lt, ModelSpec(1, [0.3], [0.3])),
                 Outputs(tmp_path / "a.pt", ckpt))
    msg = str(info.value)
    assert "the loss became" in msg and "pretrain.lr" in msg and "is kept" in msg
    assert ckpt.read_bytes() == b"previous good checkpoint"
    assert not (tmp_path / "a.pt").exists()


def test_lr_schedule_warmup_then_cosine_to_zero():
    lrs = [lr_at(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] < 0.001 and lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)


def test_temperature_schedule_sets_each_epochs_tau_and_is_logged(tiny_project, tmp_path):
    """pretrain.temperature_schedule: cosine → every method's τ follows TS epoch by epoch (sbid's too)."""
    from sdclr.losses import cosine_temperature
    from sdclr.storage.io import load_npz

    raw = yaml.safe_load((tiny_project / "params.yaml").read_text())
    raw["pretrain"].update(epochs=4, temperature_schedule="cosine", tau_min=0.1, tau_max=0.5, period_epochs=4)
    params = parse_params(raw)
    train = load_npz(tiny_project / "data/raw/fashion_mnist/train.npz")
    lt = load_npz(tiny_project / "data/splits/fashion_mnist/split0.npz")["longtail"]
    for method in ("simclr", "sbid"):
        history = tmp_path / f"{method}.csv"
        pretrain(params, Job(method_class(method), 0, train["images"], lt, ModelSpec(1, [0.3], [0.3])),
                 Outputs(tmp_path / f"{method}.pt", tmp_path / f"{method}.ckpt", history), log=lambda _: None)
        rows = [dict(zip(*(line.split(",") for line in (history.read_text().splitlines()[0], row))))
                for row in history.read_text().splitlines()[1:]]
        logged = [float(r["temperature"]) for r in rows]
        assert logged == pytest.approx([cosine_temperature(e, 0.1, 0.5, 4) for e in (1, 2, 3, 4)], rel=1e-5)
        assert logged[1] == pytest.approx(0.1)  # e = T/2: τ_min
