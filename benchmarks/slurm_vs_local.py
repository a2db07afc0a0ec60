"""Each stage's wall time on the tiny pipeline: the local runner against `--slurm` on a one-node test cluster.

    python benchmarks/slurm_vs_local.py [--jobs 2] [--out slurm_vs_local.json]

Needs root, slurm-wlm and munge (what `scripts/setup.sh` installs): the cluster is the tests' own
(tests/slurm_cluster.py), in a temporary folder. The same tiny project (tests/test_pipeline_e2e.py's
TINY) is run twice from clones of one commit, first here, then as jobs, one after the other so they do
not share the cores; the runner's "done <stage> in N s" lines are the times (from the start of its
`dvc repro` to its end, so with --slurm they include submission, scheduling and DVC's own work). Both
runs must write the same dvc.lock, which is checked, so a timing never comes from a different result.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdclr.pipeline.parallel import run  # noqa: E402
from tests.dvc_project import make_project, project_env  # noqa: E402
from tests.slurm_cluster import SlurmCluster, _munged  # noqa: E402
from tests.test_pipeline_e2e import TINY  # noqa: E402

DONE = re.compile(r"^done  (\S+) in (\d+) s")


def timed_run(project: Path, jobs: int, env: dict, slurm_args: list[str] | None) -> tuple[dict[str, int], float]:
    lines: list[str] = []
    t0 = time.monotonic()
    run(project, jobs, log=lines.append, env=env, slurm_args=slurm_args)
    return {m[1]: int(m[2]) for line in lines if (m := DONE.match(line))}, time.monotonic() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, _munged():
        tmp = Path(tmp)
        here = make_project(tmp / "here", TINY)
        there = tmp / "there"
        subprocess.run(["git", "clone", "-q", str(here), str(there)], check=True)
        local, local_total = timed_run(here, args.jobs, project_env(here), None)
        cluster = SlurmCluster(tmp / "cluster")
        (tmp / "cluster").mkdir()
        cluster.start()
        try:
            env = {**project_env(there), "SLURM_CONF": str(cluster.conf)}
            jobs, jobs_total = timed_run(there, args.jobs, env, [])
        finally:
            cluster.stop()
        same = (here / "dvc.lock").read_bytes() == (there / "dvc.lock").read_bytes()
    rows = {stage: {"local_s": local[stage], "slurm_s": jobs.get(stage)} for stage in local}
    result = {"stages": rows, "local_total_s": round(local_total, 1), "slurm_total_s": round(jobs_total, 1),
              "same_dvc_lock": same, "jobs": args.jobs}
    print("| stage | local runner (s) | --slurm (s) |\n|---|---|---|")
    for stage, row in rows.items():
        print(f"| {stage} | {row['local_s']} | {row['slurm_s']} |")
    print(f"| whole run | {local_total:.0f} | {jobs_total:.0f} |\nsame dvc.lock: {same}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    if not same:
        sys.exit("the two runs wrote different dvc.lock files: the timings compare different work")


if __name__ == "__main__":
    main()
