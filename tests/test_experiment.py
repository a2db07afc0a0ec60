"""`reproduce.sh -S key=value` (sdclr/pipeline/experiment.py): the parallel runner's way to a DVC experiment.

A synthetic DVC project with a params file, real DVC: the override is applied as `dvc exp run -S` applies it,
only the stages that read the param run, their environment names the experiment, and `dvc exp show` lists
it with its params beside the baseline. Bad overrides are one sentence and change nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from tests.test_parallel import _env, _py, synthetic_project

DVC = (sys.executable, "-m", "dvc")


def _project(tmp_path):
    reads_x = ("import os, pathlib, yaml; x = yaml.safe_load(open('params.yaml'))['model']['x']; "
               "pathlib.Path('x.txt').write_text(f\"{x} {os.environ.get('DVC_EXP_NAME', '')}\"); "
               "pathlib.Path('ran.txt').open('a').write('x ')")
    reads_y = "import pathlib; pathlib.Path('y.txt').write_text('y'); pathlib.Path('ran.txt').open('a').write('y ')"
    proj = synthetic_project(tmp_path / "p", {
        "x": {"cmd": _py(reads_x), "params": ["model.x"], "outs": ["x.txt"]},
        "y": {"cmd": _py(reads_y), "params": ["model.y"], "outs": ["y.txt"]},
    })
    (proj / "params.yaml").write_text("# the model\nmodel:\n  x: 1  # the knob\n  y: 1\n")
    subprocess.run(["git", "add", "params.yaml"], cwd=proj, check=True)
    subprocess.run(["git", "commit", "-qm", "params"], cwd=proj, check=True, env=_env())
    _runner(proj)
    subprocess.run([*DVC, "commit", "-f", "-q"], cwd=proj, check=True, env=_env())
    subprocess.run(["git", "add", "-A"], cwd=proj, check=True)
    subprocess.run(["git", "commit", "-qm", "baseline"], cwd=proj, check=True, env=_env())
    (proj / "ran.txt").unlink()
    return proj


def _runner(proj, *args):
    return subprocess.run([sys.executable, "-m", "sdclr.pipeline.parallel", "--jobs", "2", *args], cwd=proj,
                          env=_env(), capture_output=True, text=True, timeout=300)


def test_set_param_runs_what_reads_it_and_saves_a_dvc_experiment(tmp_path):
    proj = _project(tmp_path)
    done = _runner(proj, "-S", "model.x=5", "--name", "five")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("experiment five (model.x=5): "), done.stdout
    assert (proj / "ran.txt").read_text() == "x "  # y does not read model.x
    assert (proj / "x.txt").read_text() == "5 five"  # the stage knew its experiment (MLflow tags it)
    assert "model:\n  x: 5  # the knob\n" in (proj / "params.yaml").read_text()  # as DVC writes it: comments kept

    rows = json.loads(subprocess.run([*DVC, "exp", "show", "--json"], cwd=proj, check=True, env=_env(),
                                     capture_output=True, text=True).stdout)
    exps = {r["name"]: r for row in rows for exp in row.get("experiments") or [] for r in exp["revs"]}
    assert exps["five"]["data"]["params"]["params.yaml"]["data"]["model"] == {"x": 5, "y": 1}


def test_a_bad_override_is_one_sentence_and_changes_nothing(tmp_path):
    proj = _project(tmp_path)
    before = (proj / "params.yaml").read_text()
    for override, said in (("model.z=3", "could not be applied"), ("model.x=1,2", "is a sweep")):
        done = _runner(proj, "-S", override)
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert line.startswith(f"error: -S {override} ") and said in line, line
        assert (proj / "params.yaml").read_text() == before and not (proj / "ran.txt").exists()
    assert yaml.safe_load(before)["model"]["x"] == 1
