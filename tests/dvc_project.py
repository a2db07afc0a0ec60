"""A throw-away copy of this project as a real git + DVC repository, for end-to-end tests.

Tests run the real ``dvc`` CLI in the copy, with the copy's own code first on
PYTHONPATH and a temporary MLflow SQLite store, so nothing touches the developer's
workspace or store.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line and (ROOT / line).is_file()]


def make_project(dest: Path, params_update: dict | None = None) -> Path:
    """Copy the project's source files to ``dest``, apply nested param overrides, git-commit."""
    for rel in tracked_files():
        if rel.startswith(("data/", "models/", "reports/metrics", "mlflow")):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    (dest / ".dvc" / "tmp").mkdir(parents=True, exist_ok=True)
    if params_update:
        update_params(dest, params_update)
        if "methods" in params_update:  # as a user would: dvc.yaml written for the new list
            from sdclr.pipeline.dvc_stages import render

            (dest / "dvc.yaml").write_text(render(dest / "params.yaml"))
    env = project_env(dest)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "test project"]):
        subprocess.run(cmd, cwd=dest, check=True, env=env, capture_output=True)
    return dest


def update_params(dest: Path, params_update: dict) -> None:
    """Apply nested overrides to ``dest/params.yaml`` (as a user editing it would)."""
    params = yaml.safe_load((dest / "params.yaml").read_text())
    _deep_update(params, params_update)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _deep_update(d: dict, u: dict) -> None:
    for k, v in u.items():
        if isinstance(v, dict) and isinstance(d.get(k), dict):
            _deep_update(d[k], v)
        else:
            d[k] = v


def project_env(dest: Path, tracking_uri: str | None = None, log_model: bool = False) -> dict:
    """The environment a stage of ``dest`` runs in: its code, a given MLflow store, and (unless
    ``log_model``) no MLflow logged model, whose torch.export costs seconds per pretraining."""
    env = dict(os.environ)
    env["SDCLR_LOG_MODEL"] = "1" if log_model else "0"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(dest)
    env["MPLBACKEND"] = "Agg"
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@example.com"
    env.pop("DVC_ROOT", None)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    else:
        env.pop("MLFLOW_TRACKING_URI", None)
    return env


def dvc(dest: Path, *args: str, env: dict | None = None, check: bool = True, timeout: int = 900):
    """Run the real DVC CLI in ``dest``; on failure the assertion shows DVC's output.

    DVC runs in its own process group, so a timeout kills the stage processes it started
    too (a hung stage must not keep burning the CPU after the test has failed).
    """
    proc = subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=dest, env=env or project_env(dest),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"dvc {' '.join(args)} ran past {timeout} s and was killed:\n{stdout[-4000:]}\n"
                             f"{stderr[-4000:]}") from None
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({result.returncode}):\n{stdout}\n{stderr}")
    return result


def run_in_process(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """Run a stage script (a :func:`stage_command`) in this process, as its own process would.

    For tests of what a script says and writes, not of its process (a kill, threads, a file-size
    limit): it saves the Python start and the torch and MLflow imports, about 4 s of CPU a stage.
    The script runs from ``cwd`` with the command's arguments and exactly ``env``; its stdout and
    stderr are captured and its ``sys.exit`` status is the return code. Everything is restored after.
    """
    import contextlib
    import io
    import runpy

    script, *args = cmd[1:]
    out, err = io.StringIO(), io.StringIO()
    saved_cwd, saved_argv, saved_env = os.getcwd(), sys.argv, dict(os.environ)
    os.chdir(cwd)
    sys.argv = [script, *args]
    os.environ.clear()
    os.environ.update(env)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(cmd, code, out.getvalue(), err.getvalue())


def stage_command(dest: Path, stage: str, item: int | None = None) -> list[str]:
    """The ``cmd`` of ``stage`` in ``dest``'s dvc.yaml, with ``${item}`` and ``${params.key}`` filled in.

    Tests run a stage script exactly as DVC would, without hard-coding its paths twice.
    """
    import re
    import shlex

    spec = yaml.safe_load((dest / "dvc.yaml").read_text())["stages"][stage]
    params = yaml.safe_load((dest / "params.yaml").read_text())

    def value(match: re.Match) -> str:
        if match[1] == "item":
            return str(item)
        node = params
        for key in match[1].split("."):
            node = node[key]
        return str(node)

    cmd = shlex.split(re.sub(r"\$\{([^}]+)\}", value, spec.get("do", spec)["cmd"]))
    return [sys.executable if cmd[0] == "python" else cmd[0], *cmd[1:]]


def splits_summary(num_splits: int = 1) -> dict:
    """A subsample stage's summary.json of a small 10-class long tail (what the report reads and draws)."""
    counts = [50 // (i + 1) for i in range(10)]
    groups = {"major": [0, 1, 2, 3], "moderate": [4, 5, 6], "minor": [7, 8, 9]}
    split = {"class_order": list(range(10)), "longtail_counts_by_rank": counts, "longtail_total": sum(counts),
             "balanced_total": 100, "fewshot_total": 5, "groups": groups}
    return {"imbalance_ratio": 100, "pool_total": 100, "val_total": 10, "num_classes": 10,
            "class_names": [f"class{c}" for c in range(10)],
            "splits": [{**split, "split_id": k} for k in range(num_splits)]}
