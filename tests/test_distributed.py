"""DistributedDataParallel on two CPU processes (gloo), through torchrun: the real engine.

1. One step of every method: the DDP loss equals the one-process loss on the same global
   batch, every rank holds the same (single-process) gradient, SDCLR's masks agree and
   sbid's banks agree.
2. The real pretrain stage with ``pretrain.nproc: 2`` (it launches torchrun itself): one
   encoder, one MLflow run, rank 0's history; killed after a checkpoint, it resumes under
   DDP and ends where an uninterrupted DDP run ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from sdclr.registry import parse_params
from sdclr.storage import checkpoint
from tests.dvc_project import make_project, project_env, stage_command
from tests.test_pretrain import tiny_dataset

pytestmark = pytest.mark.slow


def _torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]


CASES = {"simclr": ("simclr", {}), "sdclr": ("sdclr", {}), "sbid-k5": ("sbid", {"negatives": 5}),
         "sbid-all": ("sbid", {"negatives": "all"})}


def test_ddp_step_equals_the_single_process_step(raw_params, tmp_path, root):
    cases = []
    for method, extra in CASES.values():
        raw = json.loads(json.dumps(raw_params))
        raw["model"].update(width=8, head_hidden=16, proj_dim=8)
        raw["sbid"].update(head_hidden=16, proj_dim=8, cutmix=False, **extra)
        cases.append({**raw, "method_under_test": method})
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps(cases))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    script = str(root / "tests/ddp_step.py")
    for cmd in (_torchrun(2) + [script, str(spec), str(tmp_path / "ddp.pt")],
                [sys.executable, script, str(spec), str(tmp_path / "one.pt")]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    results = zip(CASES, torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "one.pt"))
    for case, ddp, one in results:
        assert int(ddp["world_size"]) == 2 and int(one["world_size"]) == 1, case
        torch.testing.assert_close(ddp["loss"], one["loss"], rtol=1e-5, atol=1e-6, msg=case)
        assert torch.equal(ddp["grads"][0], ddp["grads"][1]), f"{case}: ranks hold different gradients"
        torch.testing.assert_close(ddp["grads"][0], one["grads"][0], rtol=1e-4, atol=1e-6, msg=case)
        assert ddp["grads"][0].abs().sum() > 0, case
        if "masks" in one:  # SDCLR
            assert torch.equal(ddp["masks"][0], ddp["masks"][1]) and torch.equal(ddp["masks"][0], one["masks"][0])
        if "bank" in one:  # sbid
            assert torch.equal(ddp["bank"][0], ddp["bank"][1]), f"{case}: the ranks' memory banks diverged"
            torch.testing.assert_close(ddp["bank"][0], one["bank"][0], rtol=1e-5, atol=1e-6, msg=case)


TINY_DDP = {
    "device": "cpu",
    "subsample": {"val_per_class": 10, "n_max": 40, "imbalance_ratio": 4, "splits": [0]},
    "model": {"width": 8, "head_hidden": 16, "proj_dim": 8},
    "pretrain": {"epochs": 4, "batch_size": 16, "warmup_epochs": 1, "lr": 0.1, "checkpoint_every": 1, "nproc": 2},
    "sbid": {"head_hidden": 16, "proj_dim": 8},
}


def test_pretrain_stage_under_ddp_writes_once_and_resumes(tmp_path):
    import mlflow

    proj = make_project(tmp_path / "proj", TINY_DDP)
    tiny_dataset(proj, parse_params(yaml.safe_load((proj / "params.yaml").read_text())))
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**project_env(proj, tracking_uri=store), "OMP_NUM_THREADS": "1"}
    cmd = stage_command(proj, "pretrain-sdclr", 0)
    ckpt, model = proj / "checkpoints/sdclr/split0.ckpt", proj / "models/sdclr/split0.pt"

    # Killed (the whole torchrun process group) once a checkpoint exists ...
    proc = subprocess.Popen(cmd, cwd=proj, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "no checkpoint before the kill: " + (proc.stdout.read() if proc.stdout else "")
    saved = checkpoint.load(ckpt, "cpu")
    assert len(saved["rank_generators"]) == 2  # every rank's random state, written once by rank 0
    killed_at = int(saved["epoch"])
    assert 1 <= killed_at < 4 and not model.exists()

    # ... the re-run launches torchrun itself and resumes.
    rerun = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "launching" in rerun.stdout and "torch.distributed.run" in rerun.stdout
    assert f"resuming sdclr split 0 from epoch {killed_at}" in rerun.stdout
    assert rerun.stdout.count("resuming sdclr") == 1  # rank 0 speaks, the other rank does not
    assert model.exists() and not ckpt.exists()
    history = (proj / "reports/pretrain/sdclr/split0.csv").read_text().splitlines()
    assert len(history) == 1 + 4
    resumed = checkpoint.load(model, "cpu")["net"]

    model.unlink()
    fresh = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    uninterrupted = checkpoint.load(model, "cpu")["net"]
    for k in resumed:
        assert torch.equal(resumed[k], uninterrupted[k]), f"{k} differs after a DDP resume"

    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == 2  # the resumed run and the fresh one: one run per launch, not per rank
    assert all(r.data.tags["world_size"] == "2" for r in finished)
    assert all(r.info.run_name == "pretrain-sdclr-split0" for r in runs)
