"""`--slurm`: each stage's work as a job on a real one-node SLURM cluster (tests/slurm_cluster.py).

Synthetic DVC projects (one-line Python stages, as in tests/test_parallel.py) test the launcher
(sdclr/pipeline/slurm.py) in seconds: one job per stage with DVC's own dvc.lock, a cancelled job
in one sentence and resumed by the same command, and the job's options for ``pretrain.nproc``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from sdclr.errors import SdclrError
from sdclr.pipeline.parallel import run
from sdclr.pipeline.slurm import resources
from tests.slurm_cluster import slurm_cluster  # noqa: F401
from tests.test_parallel import _env, synthetic_project

DVC = (sys.executable, "-m", "dvc")


def _stage(out: str, code: str, deps: tuple[str, ...] = ()) -> dict:
    """A stage whose command starts with plain ``python``, as dvc.yaml's do: the launcher catches it."""
    return {"cmd": f"python -c {json.dumps(code)}", "deps": list(deps), "outs": [out]}


def _cluster_env(cluster) -> dict:
    env = {**_env(), **cluster.env, "SDCLR_SLURM_POLL_S": "0.5"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def test_each_stage_is_one_job_and_dvc_writes_the_lock(slurm_cluster, tmp_path):
    proj = synthetic_project(tmp_path / "p", {
        "a": _stage("a.txt", "import pathlib; pathlib.Path('a.txt').write_text('A')"),
        "b": _stage("b.txt", "import pathlib; pathlib.Path('b.txt').write_text(pathlib.Path('a.txt').read_text() + 'B')",
                    deps=("a.txt",)),
    })
    env = _cluster_env(slurm_cluster)
    lines: list[str] = []
    run(proj, 2, log=lines.append, env=env, slurm_args=[])
    assert (proj / "b.txt").read_text() == "AB"
    assert lines[-1].startswith("dvc repro: nothing left to do"), lines
    lock = yaml.safe_load((proj / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"a", "b"}
    logs = sorted((proj / ".dvc/tmp/parallel/slurm").glob("*.out"))
    assert [p.name.split(".")[0] for p in logs] == ["a", "b"], logs  # one job per stage
    assert all(slurm_cluster.job_state(p.name.split(".")[1]) == "COMPLETED" for p in logs)
    assert "slurm: job" in (proj / ".dvc/tmp/parallel/b.log").read_text()


def test_a_cancelled_job_is_one_sentence_and_the_same_command_resumes(slurm_cluster, tmp_path):
    slow_once = ("import pathlib, time; tried = pathlib.Path('tried'); first = not tried.exists(); "
                 "tried.write_text('x'); time.sleep(300 if first else 0); pathlib.Path('b.txt').write_text('B')")
    proj = synthetic_project(tmp_path / "p", {
        "a": _stage("a.txt", "import pathlib; pathlib.Path('a.txt').write_text('A')"),
        "b": _stage("b.txt", slow_once, deps=("a.txt",)),
    })
    env = _cluster_env(slurm_cluster)

    def cancel_b():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if (proj / "tried").exists():
                for job in slurm_cluster.jobs():
                    if slurm_cluster.job_state(job) == "RUNNING":
                        slurm_cluster.run("scancel", job)
                        return
            time.sleep(0.5)

    canceller = threading.Thread(target=cancel_b)
    canceller.start()
    with pytest.raises(SdclrError) as info:
        run(proj, 2, log=lambda line: None, env=env, slurm_args=[], stop_grace_s=10)
    canceller.join()
    msg = str(info.value)
    assert "stage b failed" in msg and "was cancelled" in msg and ".dvc/tmp/parallel/slurm/b." in msg, msg
    assert (proj / "a.txt").read_text() == "A"

    lines: list[str] = []
    run(proj, 2, log=lines.append, env=env, slurm_args=[])
    assert lines[0].startswith("parallel: 1 stage(s)"), lines  # a is kept, only b runs again
    assert (proj / "b.txt").read_text() == "B"


def test_a_pretraining_asks_for_its_nproc_gpus_or_cpus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"pretrain": {"nproc": 4}}))
    pretrain = ["stages/pretrain.py", "--method", "simclr"]
    assert resources(pretrain, ["--gres=gpu:a100:1", "--time=1:00"]) == ["--gres=gpu:a100:4", "--time=1:00"]
    assert resources(pretrain, ["--gpus-per-node=1"]) == ["--gpus-per-node=4"]
    assert resources(pretrain, ["--time=1:00"]) == ["--time=1:00", "--cpus-per-task=4"]
    assert resources(["stages/evaluate.py"], ["--gres=gpu:1"]) == ["--gres=gpu:1"]  # not a pretraining
