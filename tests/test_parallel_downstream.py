"""The parallel runner runs the stages downstream of a changed one itself, not the closing `dvc repro`.

Guards the wrong program that schedules only the stages ``dvc status`` reports (the changed
ones): ``dvc status`` does not see that a stage downstream of a changed one will have to run
(its inputs have not changed yet), so the closing plain ``dvc repro`` would quietly run those
stages one at a time. The bytes come out the same, the parallelism is lost, and the other tests
(whose first runs find every stage changed, or whose change is an output that every downstream
stage's status sees) let it through.

Each stage here records which ``dvc repro`` process ran it (its ``--single-item`` argument,
read from /proc), on a real DVC project like those of tests/test_parallel.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sdclr.pipeline.parallel import run
from sdclr.pipeline.plan import plan
from tests.test_parallel import DVC, _env, _status, synthetic_project

#: a stage command: concatenate the deps into the output, and append to runs.log (not a DVC path)
#: the stage's name and how the `dvc repro` process above it was started
RECORD = '''\
import os, sys
from pathlib import Path

name, out, deps = sys.argv[1], sys.argv[2], sys.argv[3:]
Path(out).write_text(name + "".join(Path(d).read_text() for d in deps))


def parent(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line.split()[1] for line in status if line.startswith("PPid:")))


pid, how = os.getppid(), "outside dvc repro"
while pid > 1:
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\\0")
    if b"repro" in argv:
        how = "single-item" if b"--single-item" in argv else "plain repro"
        break
    pid = parent(pid)
with open("runs.log", "a") as log:
    log.write(f"{name} {how}\\n")
'''


def _stage(name: str, deps: tuple[str, ...]) -> dict:
    return {"cmd": f"{sys.executable} record.py {name} {name}.txt {' '.join(deps)}".strip(),
            "deps": ["record.py", *deps], "outs": [f"{name}.txt"]}


def _runs(proj: Path) -> list[str]:
    log = proj / "runs.log"
    return log.read_text().splitlines() if log.exists() else []


def test_the_stages_downstream_of_a_changed_one_run_in_the_parallel_pass(tmp_path):
    """a → b → c with an input of a edited: `dvc status` names a alone, yet the runner must start
    a, b and c itself (each in its own `dvc repro --single-item`), leave the unrelated stage d
    alone, and its closing plain `dvc repro` must find nothing to do."""
    stages = {"a": _stage("a", ("in.txt",)), "b": _stage("b", ("a.txt",)), "c": _stage("c", ("b.txt",)),
              "d": _stage("d", ())}
    proj = synthetic_project(tmp_path / "p", stages)
    (proj / "record.py").write_text(RECORD)
    (proj / "in.txt").write_text("1")
    subprocess.run([*DVC, "repro"], cwd=proj, check=True, capture_output=True, env=_env())
    assert sorted(_runs(proj)) == ["a plain repro", "b plain repro", "c plain repro", "d plain repro"]
    (proj / "runs.log").unlink()

    (proj / "in.txt").write_text("2")
    assert set(_status(proj)) == {"a"}  # the case guarded: DVC's status sees the changed stage alone
    assert plan(proj).order == ["a", "b", "c"]

    lines = []
    run(proj, jobs=2, log=lines.append, env=_env())
    started = [line.split()[1] for line in lines if line.startswith("start ")]
    assert started == ["a", "b", "c"], lines
    assert _runs(proj) == ["a single-item", "b single-item", "c single-item"], (
        "the parallel pass left downstream stages to the closing `dvc repro`: " + "; ".join(_runs(proj)))
    assert lines[-1] == "dvc repro: nothing left to do, every stage is up to date.", lines
    assert (proj / "c.txt").read_text() == "cba2" and _status(proj) == {}
