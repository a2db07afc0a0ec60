"""What the parallel runner and its SLURM launcher read from a stage's log, and where the logs go.

A pretraining prints one line per epoch (``simclr split 0 epoch 3/6: ...``) and the launcher one
per job state (``slurm: job 42 RUNNING on node1``); a failed stage's own sentence starts with
``error:``. Both tools read these, so they live here, below both.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

#: each stage's log (and the runner's lock) under the workspace
LOG_DIR = Path(".dvc/tmp/parallel")
#: a pretraining's per-epoch line: "simclr split 0 epoch 3/6: ..."
EPOCH = re.compile(r"epoch (\d+)/(\d+)")
#: the launcher's line for a job's state: "slurm: job 42 RUNNING on node1"
JOB_STATE = re.compile(r"slurm: job (\d+) ([A-Z_]+)")


def error_line(text: str) -> str:
    """The stage's own one-sentence error (``error: ...``), else DVC's first error line, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for prefix in ("error: ", "ERROR: "):
        found = [line for line in lines if line.startswith(prefix)]
        if found:
            return found[0].removeprefix(prefix)
    return lines[-1] if lines else "no output"


def describe(name: str, log: Path, started: float) -> str:
    """A running stage, with its SLURM job and state and the last epoch its log shows."""
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    jobs, epochs = JOB_STATE.findall(tail), EPOCH.findall(tail)
    where = ((f"job {jobs[-1][0]} {jobs[-1][1]}, " if jobs else "")
             + (f"epoch {epochs[-1][0]}/{epochs[-1][1]}, " if epochs else ""))
    return f"{name} ({where}{time.monotonic() - started:.0f} s)"
