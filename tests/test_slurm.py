"""`--slurm`: each stage's work as a job on a real one-node SLURM cluster (tests/slurm_cluster.py).

Synthetic DVC projects (one-line Python stages, as in tests/test_parallel.py) test the launcher
(sdclr/pipeline/slurm.py) in seconds: one job per stage with DVC's own dvc.lock, a cancelled job
in one sentence and resumed by the same command, and the job's options for ``pretrain.nproc``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from shutil import which as shutil_which

import pytest
import yaml

from sdclr.errors import SdclrError
from sdclr.pipeline import slurm
from sdclr.pipeline.parallel import run
from sdclr.pipeline.slurm import resources
from sdclr.registry import parse_params
from tests.dvc_project import make_project, project_env, stage_command
from tests.mlflow_ui import check_runs_view, mlflow_server
from tests.slurm_cluster import _free_ports, slurm_cluster  # noqa: F401
from tests.test_distributed import TINY_DDP
from tests.test_parallel import _alive, _env, synthetic_project
from tests.test_pipeline_e2e import METHODS, TINY
from tests.test_pretrain import tiny_dataset

DVC = (sys.executable, "-m", "dvc")


def _stage(out: str, code: str, deps: tuple[str, ...] = ()) -> dict:
    """A stage whose command starts with plain ``python``, as dvc.yaml's do: the launcher catches it."""
    return {"cmd": f"python -c {json.dumps(code)}", "deps": list(deps), "outs": [out]}


def _slurm(cluster) -> dict:
    """What a stage's environment needs to submit to ``cluster``, looking at its jobs every half second."""
    return {"SLURM_CONF": cluster.env["SLURM_CONF"], "SDCLR_SLURM_POLL_S": "0.5"}


def _cluster_env(cluster) -> dict:
    env = {**_env(), **_slurm(cluster)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def test_each_stage_is_one_job_and_dvc_writes_the_lock(slurm_cluster, tmp_path):
    proj = synthetic_project(tmp_path / "p", {
        "a": _stage("a.txt", "import pathlib; pathlib.Path('a.txt').write_text('A')"),
        "b": _stage("b.txt",
                    "import pathlib; pathlib.Path('b.txt').write_text(pathlib.Path('a.txt').read_text() + 'B')",
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


def _no_process_in(folder: Path) -> list[str]:
    """The processes still working in ``folder`` (cwd inside it): none may outlive a stopped run."""
    left = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")).is_relative_to(folder) and _alive(int(proc.name)):
                left.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return left


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_stopping_the_slurm_driver_cancels_its_jobs_and_leaves_no_process(slurm_cluster, tmp_path, how):
    """Ctrl-C reaches the whole foreground group; SIGTERM (`timeout`, a service manager, SLURM itself) the driver
    only."""
    proj = synthetic_project(tmp_path / "p", {
        "long": _stage("long.txt", "import pathlib, time; pathlib.Path('started').write_text('x'); time.sleep(300)")})
    env = _cluster_env(slurm_cluster)
    driver = subprocess.Popen([sys.executable, "-m", "sdclr.pipeline.parallel", "--slurm"], cwd=proj, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (proj / "started").exists() and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
    assert (proj / "started").exists(), driver.communicate(timeout=30)
    [job] = [j for j in slurm_cluster.jobs() if slurm_cluster.job_state(j) == "RUNNING"]
    if how == "ctrl-c":
        os.killpg(driver.pid, signal.SIGINT)
    else:
        driver.send_signal(signal.SIGTERM)
    out, err = driver.communicate(timeout=120)
    said = {"ctrl-c": (130, "interrupted: the running stages were stopped"),
            "sigterm": (143, "terminated (SIGTERM): the running stages were stopped")}[how]
    assert driver.returncode == said[0] and err.strip().splitlines()[-1].startswith(said[1]), (out, err)
    assert slurm_cluster.job_state(job) == "CANCELLED"
    assert f"job {job} cancelled: this run was interrupted" in (proj / ".dvc/tmp/parallel/long.log").read_text()
    deadline = time.monotonic() + 20
    while _no_process_in(proj) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _no_process_in(proj), _no_process_in(proj)


def test_a_time_limit_too_short_for_one_epoch_is_one_sentence(slurm_cluster, tmp_path):
    """A stage stopped at the warning (exit 75) before finishing an epoch: another job would get no further."""
    stops_at_warning = ("import signal, sys, time; signal.signal(signal.SIGUSR1, lambda *a: sys.exit(75)); "
                        "time.sleep(300)")
    proj = synthetic_project(tmp_path / "p", {"slow": _stage("slow.txt", stops_at_warning)})
    with pytest.raises(SdclrError) as info:
        run(proj, 1, log=lambda line: None, env=_cluster_env(slurm_cluster),
            slurm_args=["--time=0:01:00", "--signal=B:USR1@59"])
    said = str(info.value)
    assert said.startswith("stage slow failed") and "reached its time limit without finishing a new epoch" in said, said
    assert '--slurm-args "--time=..."' in said, said
    assert len(list((proj / ".dvc/tmp/parallel/slurm").glob("slow.*.out"))) == 1  # no second job was tried


LONG = {**TINY, "methods": ["simclr"], "pretrain": {**TINY["pretrain"], "epochs": 40, "checkpoint_every": 1000}}


def test_a_pretraining_longer_than_its_time_limit_finishes_across_jobs_with_the_uninterrupted_bytes(
        slurm_cluster, tmp_path):
    """Jobs of 60 s, warned at once (SLURM looks every 30 s), for a pretraining of about 45 s on one core:
    each job stops after an epoch with a checkpoint (none are periodic here), the next resumes."""
    target = "pretrain-simclr@0"
    here = make_project(tmp_path / "here", LONG)
    there = tmp_path / "there"
    subprocess.run(["git", "clone", "-q", str(here), str(there)], check=True)
    uninterrupted = subprocess.Popen([sys.executable, "-m", "dvc", "repro", target], cwd=here, env=project_env(here),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    run(there, 2, [target], log=lines.append, env={**project_env(there), **_slurm(slurm_cluster)},
        slurm_args=["--time=0:01:00", "--signal=B:USR1@59"])
    assert uninterrupted.wait(timeout=600) == 0, uninterrupted.stdout.read()

    log = (there / f".dvc/tmp/parallel/{target}.log").read_text()
    assert "ended at its time limit after epoch" in log and "resuming simclr split 0 from epoch" in log, log
    assert len(list((there / ".dvc/tmp/parallel/slurm").glob(f"{target}.*.out"))) >= 2
    for out in ("models/simclr/split0.pt", "reports/pretrain/simclr/split0.csv"):
        assert (here / out).read_bytes() == (there / out).read_bytes(), f"{out} differs after resuming across jobs"
    lock = {p: yaml.safe_load((p / "dvc.lock").read_text())["stages"][target] for p in (here, there)}
    assert lock[here] == lock[there]


def test_an_nproc_pretraining_runs_torchrun_inside_one_job(slurm_cluster, tmp_path):
    """``pretrain.nproc: 2`` on CPUs: one job granted 2 CPUs, torchrun's two ranks inside it, the local bytes."""
    proj = make_project(tmp_path / "p", TINY_DDP)
    tiny_dataset(proj, parse_params(yaml.safe_load((proj / "params.yaml").read_text())))
    env = {**project_env(proj), **_slurm(slurm_cluster), "OMP_NUM_THREADS": "1", "SDCLR_SLURM_ARGS": ""}
    env["PATH"] = f"{slurm.install(proj)}{os.pathsep}{env['PATH']}"
    cmd = ["python", *stage_command(proj, "pretrain-sdclr", 0)[1:]]  # the launcher, as DVC's `python` finds it
    done = subprocess.run(cmd, cwd=proj, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [job] = re.findall(r"slurm: job (\d+) submitted: .*--cpus-per-task=2", done.stdout)
    assert "torch.distributed.run" in done.stdout, done.stdout[-3000:]
    shown = slurm_cluster.run("scontrol", "show", "job", job).stdout or slurm_cluster._end_record(job)
    assert re.search(r"\b(NumCPUs|ProcCnt)=2\b", shown), shown
    in_job = (proj / "models/sdclr/split0.pt").read_bytes()
    (proj / "models/sdclr/split0.pt").unlink()
    here = subprocess.run(stage_command(proj, "pretrain-sdclr", 0), cwd=proj, env=project_env(proj),
                          capture_output=True, text=True, timeout=600)
    assert here.returncode == 0, here.stderr[-3000:]
    assert (proj / "models/sdclr/split0.pt").read_bytes() == in_job


def test_the_tiny_pipeline_as_jobs_has_the_local_bytes_and_logs_to_an_mlflow_server(slurm_cluster, tmp_path):
    """`reproduce.sh --slurm`'s runner on the tiny pipeline: one job per stage, the local runner's dvc.lock and
    outputs byte for byte (portable numerics), and every job's runs in a real `mlflow server` (as on a cluster,
    where a shared SQLite file is the wrong store), one row per (method, split)."""
    here = make_project(tmp_path / "here", TINY)
    there = tmp_path / "there"  # a clone: the same sources, whatever changes in the working tree meanwhile
    subprocess.run(["git", "clone", "-q", str(here), str(there)], check=True)
    run(here, 2, log=lambda line: None, env=project_env(here))
    with mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "mlflow-server.log") as server:
        lines: list[str] = []
        run(there, 2, log=lines.append, env={**project_env(there, tracking_uri=server.url, log_model=True),
                                             **_slurm(slurm_cluster)}, slurm_args=[])
        assert lines[-1].startswith("dvc repro: nothing left to do"), lines
        lock = yaml.safe_load((there / "dvc.lock").read_text())["stages"]
        model_md5 = {m: next(o["md5"] for o in lock[f"pretrain-{m}@0"]["outs"] if o["path"].endswith(".pt"))
                     for m in METHODS}
        check_runs_view(server, "sdclr-fashion_mnist", METHODS, model_md5)

    ran = [line.split()[1] for line in lines if line.startswith("start ")]
    jobs = [p.name.split(".")[0] for p in (there / ".dvc/tmp/parallel/slurm").glob("*.out")]
    assert len(ran) == 10 and sorted(jobs) == sorted(ran), (jobs, ran)  # one job per stage
    outputs = ["dvc.lock", *(o["path"] for stage in ran for o in lock[stage]["outs"])]
    differ = [f for f in outputs if (here / f).is_file() and (here / f).read_bytes() != (there / f).read_bytes()]
    assert not differ, f"the jobs wrote other bytes than the local runner: {differ}"


def test_a_stage_failing_with_its_own_error_is_not_taken_for_a_time_limit(slurm_cluster, tmp_path):
    """A pretraining that finished an epoch and then failed with its own sentence (exit 2, not the time limit's
    75): that sentence and status reach the user, and no second job is submitted to "resume" it."""
    fails_after_an_epoch = ("import sys; print('bad split 0 epoch 1/3: loss 1.0', flush=True); "
                            "print('error: params.yaml: pretrain.lr = -1 is out of range; accepted: a number > 0.', "
                            "file=sys.stderr); sys.exit(2)")
    proj = synthetic_project(tmp_path / "p", {"bad": _stage("bad.txt", fails_after_an_epoch)})
    with pytest.raises(SdclrError) as info:
        run(proj, 1, log=lambda line: None, env=_cluster_env(slurm_cluster), slurm_args=[])
    said = str(info.value)
    assert said.startswith("stage bad failed") and "pretrain.lr = -1 is out of range" in said, said
    assert "time limit" not in said, said
    jobs = list((proj / ".dvc/tmp/parallel/slurm").glob("bad.*.out"))
    assert len(jobs) == 1, jobs  # no second job was tried
    log = (proj / ".dvc/tmp/parallel/bad.log").read_text()
    assert "failed with exit status 2" in log, log


@pytest.mark.parametrize("form", [["--slurm-args", "--time=0:05:00"],
                                  ["--slurm-args", "--time=0:05:00 --comment=sdclr-two-options"],
                                  ["--slurm-args=--time=0:05:00"]], ids=["one option", "several", "equals form"])
def test_slurm_args_take_one_option_several_or_the_equals_form(slurm_cluster, tmp_path, form):
    """argparse takes a lone value starting with `-` for an option: `--slurm-args "--gres=gpu:1"` failed."""
    proj = synthetic_project(tmp_path / "p",
                             {"a": _stage("a.txt", "import pathlib; pathlib.Path('a.txt').write_text('A')")})
    done = subprocess.run([sys.executable, "-m", "sdclr.pipeline.parallel", "--slurm", *form], cwd=proj,
                          env=_cluster_env(slurm_cluster), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert (proj / "a.txt").read_text() == "A"
    submitted = [line for line in (proj / ".dvc/tmp/parallel/a.log").read_text().splitlines() if "submitted:" in line]
    options = form[-1].removeprefix("--slurm-args=")
    assert len(submitted) == 1 and all(o in submitted[0] for o in options.split()), submitted
    job = re.search(r"job (\d+) submitted", submitted[0]).group(1)
    assert "TimeLimit=00:05:00" in slurm_cluster.run("scontrol", "show", "job", job).stdout


def test_reproduce_sh_passes_one_option_to_the_jobs(slurm_cluster, tmp_path):
    """scripts/reproduce.sh --slurm --slurm-args "--time=0:05:00" <stage>: the same option reaches sbatch."""
    proj = make_project(tmp_path / "p")
    (proj / ".venv").symlink_to(Path(sys.executable).parents[1])  # the suite's own venv: setup.sh finds it current
    done = subprocess.run(["bash", "scripts/reproduce.sh", "--slurm", "--slurm-args", "--time=0:05:00", "download"],
                          cwd=proj, env={**project_env(proj), **_slurm(slurm_cluster)}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    assert "parallel.py: error" not in done.stderr
    submitted = [line for line in (proj / ".dvc/tmp/parallel/download.log").read_text().splitlines()
                 if "submitted:" in line]
    assert len(submitted) == 1 and "--time=0:05:00" in submitted[0], submitted


def test_an_unreachable_controller_is_said_so_and_does_not_blame_the_options(tmp_path):
    """sbatch refuses every job when no slurmctld answers: the sentence names the controller, not the options."""
    conf = tmp_path / "slurm.conf"
    port, slurmd_port = _free_ports(2)
    host = socket.gethostname().split(".")[0]
    conf.write_text(f"ClusterName=nobody\nSlurmctldHost={host}\nSlurmctldPort={port}\nSlurmdPort={slurmd_port}\n"
                    f"AuthType=auth/munge\nNodeName={host} CPUs=1 State=UNKNOWN\n"
                    "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n")
    if not shutil_which("sbatch"):
        pytest.skip("no sbatch (Debian's slurm-wlm)")
    proj = synthetic_project(tmp_path / "p", {"a": _stage("a.txt", "print('never runs')")})
    env = {**_env(), "SLURM_CONF": str(conf), "SDCLR_SLURM_POLL_S": "0.5",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with pytest.raises(SdclrError) as info:
        run(proj, 1, log=lambda line: None, env=env, slurm_args=["--time=0:05:00"])
    said = str(info.value)
    assert "could not reach the SLURM controller" in said and "scontrol ping" in said, said
    assert "fix the options" not in said, said
