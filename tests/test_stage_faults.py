"""Faults found by attacking a fresh clone: each test failed before its fix.

An unreachable tracking server, an unwritable output, the traces a ``kill -9`` leaves (a
RUNNING run; the temp files and the resumed run split in two are checked by the kill-and-resume
test in test_pretrain.py), files other accounts cannot read, and DVC run from the venv
without activating it.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from sdclr.pretrain_loop import Job, Outputs, pretrain
from sdclr.registry import method_class, parse_params
from sdclr.runtime import tracking
from sdclr.storage import io
from sdclr.storage.encoder_file import ModelSpec
from sdclr.storage.io import load_npz
from tests.dvc_project import ROOT, project_env, run_in_process, stage_command
from tests.test_pretrain import tiny_project  # noqa: F401  (a fixture)


def _run(cmd, proj, env, timeout=120):
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=timeout)
    return out, time.perf_counter() - t0


def test_unreachable_tracking_server_fails_in_seconds_before_any_work(tiny_project):
    env = project_env(tiny_project, tracking_uri="http://127.0.0.1:9")  # nothing listens on port 9
    out, seconds = _run(stage_command(tiny_project, "pretrain-simclr", 0), tiny_project, env)
    assert out.returncode == 2, out.stderr
    assert seconds < 60, f"took {seconds:.0f} s"
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "http://127.0.0.1:9" in lines[0] and "MLFLOW_TRACKING_URI" in lines[0] and "unset" in lines[0]
    assert "epoch" not in out.stdout  # training never started
    assert not (tiny_project / "models/simclr/split0.pt").exists()


def test_unwritable_output_is_found_before_training(tiny_project, tmp_path):
    env = project_env(tiny_project, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    blocker = tiny_project / "blocked"
    blocker.write_text("a file where the models folder should be")
    cmd = stage_command(tiny_project, "pretrain-simclr", 0)
    cmd[cmd.index("--out") + 1] = str(blocker / "split0.pt")
    out, _ = _run(cmd, tiny_project, env)
    assert out.returncode == 2
    assert out.stderr.startswith("error: the output ") and "cannot be written" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "epoch" not in out.stdout


def test_a_run_whose_process_died_is_marked_killed_by_the_next_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    client = tracking._mlflow().MlflowClient()
    exp = tracking.experiment_id("sdclr-test")
    orphan = client.create_run(exp, tags={"host": socket.gethostname(), "pid": str(dead.pid)}).info.run_id
    alive = client.create_run(exp, tags={"host": socket.gethostname(), "pid": str(os.getpid())}).info.run_id
    other_host = client.create_run(exp, tags={"host": "elsewhere", "pid": str(dead.pid)}).info.run_id
    with tracking.Run("sdclr-test", "next", {}, {}, "stages/evaluate.py"):
        pass
    assert client.get_run(orphan).info.status == "KILLED"
    assert "ended without closing" in client.get_run(orphan).data.tags["killed_note"]
    assert client.get_run(alive).info.status == "RUNNING"
    assert client.get_run(other_host).info.status == "RUNNING"  # its process may well be alive there


def test_resuming_at_the_last_epoch_reports_the_restored_loss(tiny_project, tmp_path):
    raw = yaml.safe_load((tiny_project / "params.yaml").read_text())
    raw["pretrain"]["epochs"] = 2
    params = parse_params(raw)
    images = load_npz(tiny_project / "data/raw/fashion_mnist/train.npz")["images"]
    longtail = load_npz(tiny_project / "data/splits/fashion_mnist/split0.npz")["longtail"]
    args = (params, Job(method_class("simclr"), 0, images, longtail, ModelSpec(1, [0.3], [0.3])),
            Outputs(tmp_path / "a.pt", tmp_path / "c.ckpt"))
    first = pretrain(*args)  # leaves its last-epoch checkpoint (the stage deletes it; a kill would not)
    again = pretrain(*args, log=lambda _: None)
    assert again.epochs_run == 0 and again.final_loss == first.final_loss
    assert "nan" not in again.summary() and "images/s" not in again.summary()
    assert "restored from the checkpoint of its last epoch (2)" in again.summary()


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        io.write_json(tmp_path / "out" / "m.json", {"a": 1})
        with io.atomic_dir(tmp_path / "data") as d:
            io.save_npz(d / "x.npz", x=__import__("numpy").zeros(2))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out" / "m.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "data" / "x.npz").stat().st_mode) == 0o666 & ~umask


def test_the_venvs_dvc_runs_stages_with_the_venv_without_activation(tmp_path):
    """`.venv/bin/dvc repro` from a shell whose PATH lacks the venv: the stage's `python` is the venv's."""
    dvc = ROOT / ".venv/bin/dvc"
    if not dvc.exists():
        pytest.skip(f"{dvc} does not exist: run the tests through `bash scripts/test.sh` (it sets the venv up)")
    env = {"HOME": os.environ.get("HOME", str(tmp_path)), "PATH": "/usr/bin:/bin"}  # as a fresh login shell
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(dvc), "init", "-q"], cwd=tmp_path, check=True, env=env)
    (tmp_path / "dvc.yaml").write_text(
        'stages:\n  which:\n    cmd: python -c "import sys, mlflow, torch; print(sys.prefix)" > out.txt\n'
        "    outs: [out.txt]\n")
    out = subprocess.run([str(dvc), "repro", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert Path((tmp_path / "out.txt").read_text().strip()).resolve() == (ROOT / ".venv").resolve()


def test_a_failing_compile_is_one_line_and_the_run_goes_on_eagerly(tiny_project, tmp_path):
    """No working C++ compiler (CXX=/bin/false): Inductor fails on the first step; the run must
    finish, say so in one line naming the param, and train exactly what the eager run trains."""
    from sdclr.storage import checkpoint

    env = project_env(tiny_project, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["pretrain"]["epochs"] = 1
    nets = {}
    for compile_ in (True, False):
        params["pretrain"]["compile"] = compile_
        (tiny_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run_env = {**env, "CXX": "/bin/false", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
        cmd = stage_command(tiny_project, "pretrain-simclr", 0)
        # the eager reference in this process (its CPU is the stage's imports); the failing compile in its own
        out = (_run(cmd, tiny_project, run_env, timeout=600)[0] if compile_
               else run_in_process(cmd, tiny_project, run_env))
        assert out.returncode == 0, out.stderr[-3000:]
        notes = [line for line in out.stdout.splitlines() if "torch.compile failed" in line]
        assert len(notes) == (1 if compile_ else 0), out.stdout
        if compile_:
            assert "pretrain.compile: false" in notes[0] and "Traceback" not in out.stdout + out.stderr
        nets[compile_] = checkpoint.load(tiny_project / "models/simclr/split0.pt", "cpu")["net"]
    for k in nets[False]:
        assert torch.equal(nets[True][k], nets[False][k]), f"{k}: the eager fallback trained something else"
