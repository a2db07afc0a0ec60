"""The parallel runner (sdclr/pipeline/parallel.py) on real DVC projects.

Most tests use a small synthetic DVC project (stages that are one-line Python commands),
so they test the scheduler and DVC's locking in seconds; the tests on this project's own
stages (same bytes and the same dvc.lock as a sequential `dvc repro`, whatever the
threads) are in tests/test_portable.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from sdclr.errors import SdclrError
from sdclr.pipeline.parallel import run, workspace
from sdclr.pipeline.plan import plan
from tests.dvc_project import ROOT

DVC = (sys.executable, "-m", "dvc")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env.pop("DVC_ROOT", None)
    for name in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        env[name] = "test"
    for name in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        env[name] = "test@example.com"
    return env


def _py(code: str) -> str:
    return f"{sys.executable} -c {json.dumps(code)}"


def synthetic_project(dest: Path, stages: dict) -> Path:
    """A git + DVC repo whose dvc.yaml holds ``stages`` (name -> stage dict), committed."""
    dest.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([*DVC, "init", "-q"], cwd=dest, check=True, env=_env())
    (dest / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "commit", "-qm", "synthetic"], cwd=dest, check=True, env=_env())
    return dest


def writer(out: str, text: str, deps: tuple[str, ...] = (), sleep: float = 0.0) -> dict:
    """A stage that reads its deps, sleeps, and writes ``text`` plus what it read to ``out``."""
    code = (f"import time, pathlib; time.sleep({sleep}); "
            f"read = ''.join(pathlib.Path(d).read_text() for d in {list(deps)!r}); "
            f"pathlib.Path({out!r}).write_text({text!r} + read)")
    return {"cmd": _py(code), "deps": list(deps), "outs": [out]}


def diamond() -> dict:
    """a → (b1, b2, b3) → c: three independent middle stages."""
    stages = {"a": writer("a.txt", "a")}
    for i in (1, 2, 3):
        stages[f"b{i}"] = writer(f"b{i}.txt", f"b{i}", ("a.txt",), sleep=1.0)
    stages["c"] = writer("c.txt", "c", ("b1.txt", "b2.txt", "b3.txt"))
    return stages


def _status(proj: Path) -> dict:
    out = subprocess.run([*DVC, "status", "--json"], cwd=proj, capture_output=True, text=True, env=_env(), check=True)
    return json.loads(out.stdout or "{}")


@pytest.fixture(autouse=True)
def _in_env(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv("DVC_ROOT", raising=False)


def test_plan_orders_stages_and_names_their_upstream(tmp_path):
    proj = synthetic_project(tmp_path / "p", diamond())
    p = plan(proj)
    assert p.order[0] == "a" and p.order[-1] == "c" and set(p.order[1:4]) == {"b1", "b2", "b3"}
    assert p.upstream["c"] == {"b1", "b2", "b3"} and p.upstream["b2"] == {"a"} and p.upstream["a"] == set()
    assert plan(proj, ["b2"]).order == ["a", "b2"]
    with pytest.raises(SdclrError, match="no stage named nope"):
        plan(proj, ["nope"])


def test_parallel_run_matches_a_sequential_one(tmp_path):
    par = synthetic_project(tmp_path / "par", diamond())
    seq = synthetic_project(tmp_path / "seq", diamond())
    lines = []
    t0 = time.monotonic()
    run(par, jobs=3, log=lines.append)
    parallel_s = time.monotonic() - t0
    subprocess.run([*DVC, "repro"], cwd=seq, check=True, capture_output=True, env=_env())
    for name in ("a.txt", "b1.txt", "b2.txt", "b3.txt", "c.txt"):
        assert (par / name).read_bytes() == (seq / name).read_bytes()
    # the same entries (their order is the order stages finished in; DVC keeps an entry's place on re-runs)
    assert yaml.safe_load((par / "dvc.lock").read_text()) == yaml.safe_load((seq / "dvc.lock").read_text())
    assert _status(par) == {}
    assert lines[-1].startswith("dvc repro: nothing left to do")
    starts = [line for line in lines if line.startswith("start ")]
    assert len(starts) == 5 and any(line.startswith("done  c in ") for line in lines)
    # the three 1-second middle stages overlapped: a sequential pass would take 3 s for them alone
    assert parallel_s < 3 + 6 * 2.5, parallel_s
    # nothing changed: nothing to run, and the closing dvc repro agrees
    lines.clear()
    run(par, jobs=3, log=lines.append)
    assert "0 stage(s) to run" in lines[0]


def test_only_what_changed_and_its_downstream_run_again(tmp_path):
    proj = synthetic_project(tmp_path / "p", diamond())
    run(proj, jobs=2, log=lambda _: None)
    (proj / "b2.txt").write_text("damaged")  # an output changed by hand: b2 and c are out of date
    assert set(plan(proj).order) == {"b2", "c"}
    run(proj, jobs=2, log=lambda _: None)
    assert (proj / "b2.txt").read_text() == "b2a" and _status(proj) == {}


def test_a_failing_stage_stops_the_others_in_one_sentence_and_the_next_run_resumes(tmp_path):
    stages = {"slow": writer("slow.txt", "slow", sleep=60),
              "ok": writer("ok.txt", "ok"),
              "fails": {"cmd": _py("import sys, time; time.sleep(2); "
                                   "print('error: the test stage fails on purpose.', file=sys.stderr); sys.exit(2)"),
                        "deps": ["ok.txt"], "outs": ["fails.txt"]}}  # after `ok`: that one has surely finished
    proj = synthetic_project(tmp_path / "p", stages)
    t0 = time.monotonic()
    # as in a background job (CI): SIGINT ignored by this process, which its children would inherit
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(SdclrError) as failure:
            run(proj, jobs=3, log=lambda _: None)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - t0 < 45, "the 60-second stage was not stopped"
    message = str(failure.value)
    assert "\n" not in message and message.startswith("stage fails failed")
    assert "the test stage fails on purpose." in message and ".dvc/tmp/parallel/fails.log" in message
    # the finished stage is kept; after the fix, only the other two run
    spec = yaml.safe_load((proj / "dvc.yaml").read_text())
    spec["stages"]["fails"] = writer("fails.txt", "fixed", ("ok.txt",))
    spec["stages"]["slow"] = writer("slow.txt", "slow")
    (proj / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    assert set(plan(proj).order) == {"slow", "fails"}
    run(proj, jobs=3, log=lambda _: None)
    assert (proj / "fails.txt").read_text() == "fixedok" and _status(proj) == {}


def test_a_stage_that_ignores_sigint_is_terminated(tmp_path):
    stages = {"deaf": {"cmd": _py("import signal, time; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)"),
                       "outs": ["deaf.txt"]},
              "fails": {"cmd": _py("import sys, time; time.sleep(3); sys.exit(2)"), "outs": ["fails.txt"]}}
    proj = synthetic_project(tmp_path / "p", stages)
    t0 = time.monotonic()
    with pytest.raises(SdclrError, match="stage fails failed"):
        run(proj, jobs=2, log=lambda _: None, stop_grace_s=2)
    assert time.monotonic() - t0 < 40, "the stage that ignores SIGINT was not terminated"


def test_a_lost_lock_race_is_retried_not_failed(tmp_path):
    """Another dvc process holding a path's lock makes `dvc repro` fail at once ('is busy'):
    the runner starts that stage again instead of failing the run. (A read lock on the output:
    the runner's own `dvc status` can read beside it, the stage cannot write.)"""
    from dvc.repo import Repo
    from dvc.rwlock import rwlock

    proj = synthetic_project(tmp_path / "p", {"a": writer("a.txt", "a")})
    held = threading.Event()

    log = proj / ".dvc/tmp/parallel/a.log"

    def hold_lock():
        """Until the stage's first attempt has lost the race (a fixed sleep is too short on a busy machine)."""
        with Repo(str(proj)) as repo:
            with rwlock(repo.tmp_dir, repo.fs, "test reads a.txt", [str(proj / "a.txt")], [], False):
                held.set()
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and not (log.exists() and "is busy" in log.read_text()):
                    time.sleep(0.1)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    held.wait(10)
    lines = []
    run(proj, jobs=1, log=lines.append)
    holder.join()
    assert any("attempt 2 (it lost a lock race)" in line for line in lines), lines
    assert (proj / "a.txt").read_text() == "a" and _status(proj) == {}


def test_concurrent_single_item_repros_lose_no_lock_entry(tmp_path):
    """The cluster path: one `dvc repro --single-item` process per stage, all at once, in one workspace."""
    stages = {f"s{i}": writer(f"s{i}.txt", f"s{i}", sleep=0.5) for i in range(6)}
    proj = synthetic_project(tmp_path / "p", stages)
    procs = [subprocess.Popen([*DVC, "--wait-for-lock", "repro", "--single-item", name], cwd=proj, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for name in stages]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    failed = [(name, out) for name, p, out in zip(stages, procs, outputs) if p.returncode != 0]
    # a process may lose the path-lock race (DVC #10465); the runner retries it, so do the same here
    for name, _ in failed:
        subprocess.run([*DVC, "--wait-for-lock", "repro", "--single-item", name], cwd=proj, env=_env(), check=True,
                       capture_output=True)
    lock = yaml.safe_load((proj / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(stages)
    assert _status(proj) == {}


def test_a_broken_pipeline_file_is_one_sentence(tmp_path):
    proj = synthetic_project(tmp_path / "p", {"a": writer("a.txt", "a")})
    (proj / "dvc.yaml").write_text("stages:\n  a:\n    cmd: [unclosed\n")
    with pytest.raises(SdclrError, match=r"^DVC cannot read the pipeline in .*; fix it and run again") as e:
        plan(proj)
    assert "\n" not in str(e.value)


def test_each_stage_gets_its_own_gpu_and_at_most_per_gpu_stages_share_one(tmp_path):
    """With visible GPUs (here two, named by CUDA_VISIBLE_DEVICES), every stage process sees one."""
    code = ("import os, time, pathlib; gpu = os.environ['CUDA_VISIBLE_DEVICES']; "
            "lock = pathlib.Path('busy-' + gpu); assert not lock.exists(), 'two stages on GPU ' + gpu; "
            "lock.write_text('x'); time.sleep(1.0); lock.unlink(); pathlib.Path('{out}').write_text(gpu)")
    stages = {f"s{i}": {"cmd": _py(code.format(out=f"s{i}.txt")), "outs": [f"s{i}.txt"]} for i in range(4)}
    proj = synthetic_project(tmp_path / "p", stages)
    lines = []
    run(proj, jobs=4, per_gpu=1, log=lines.append, env={**_env(), "CUDA_VISIBLE_DEVICES": "3,5"})
    gpus = [(proj / f"s{i}.txt").read_text() for i in range(4)]
    assert sorted(gpus) == ["3", "3", "5", "5"]  # each GPU took two stages, never two at once
    assert "on 2 GPU(s)" in lines[0] and sum(" on GPU " in line for line in lines) == 4


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (an orphan's zombie may wait for a busy init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_sigterm_stops_the_stages_and_a_second_run_is_told_who_holds_the_workspace(tmp_path):
    """What `timeout`, SLURM and service managers send: the runner stops its stages as on Ctrl-C,
    in one sentence, leaving no process behind; meanwhile a second runner is refused, named."""
    stages = {"long": {"cmd": _py("import os, pathlib, time; pathlib.Path('pid.txt').write_text(str(os.getpid())); "
                                  "time.sleep(120)"), "outs": ["long.txt"]}}
    proj = synthetic_project(tmp_path / "p", stages)
    runner = subprocess.Popen([sys.executable, "-m", "sdclr.pipeline.parallel", "--jobs", "1"], cwd=proj, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (proj / "pid.txt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    stage_pid = int((proj / "pid.txt").read_text())

    with pytest.raises(SdclrError) as refused:
        run(proj, jobs=1, log=lambda _: None)
    said = str(refused.value)
    assert said.startswith(f"another run holds this workspace: pid {runner.pid} (`") and "s ago)" in said, said
    assert "sdclr/pipeline/parallel.py --jobs 1`" in said and f"kill -TERM {runner.pid}" in said, said

    runner.send_signal(signal.SIGTERM)
    out, err = runner.communicate(timeout=90)
    assert runner.returncode == 143, (out, err)
    assert err.strip().splitlines() == ["terminated (SIGTERM): the running stages were stopped; finished stages are "
                                        "kept, run again to resume."], err
    deadline = time.monotonic() + 20
    while _alive(stage_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(stage_pid), "the stage outlived its runner"
    with workspace(proj):  # the workspace is free again
        pass
