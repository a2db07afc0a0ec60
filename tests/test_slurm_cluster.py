"""The SLURM cluster of tests/slurm_cluster.py works: its node is idle, it runs a job to completion, cancels a
running one, and runs beside a second cluster on the same host (as the pytest-xdist workers' clusters do)."""

import time

from tests.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401


def submit(cluster: SlurmCluster, *args: str) -> str:
    submitted = cluster.run("sbatch", "--parsable", *args)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip()


def wait_for_state(cluster: SlurmCluster, job_id: str, state: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while (now := cluster.job_state(job_id)) != state:
        assert time.monotonic() < deadline, f"job {job_id} is {now}, not {state}, after {timeout_s} s"
        time.sleep(0.2)


def test_the_node_is_idle(slurm_cluster):
    shown = slurm_cluster.run("sinfo", "--noheader", "--format=%P %t")
    assert shown.stdout.split() == ["debug*", "idle"], shown.stderr


def test_a_job_runs_to_completion(slurm_cluster, tmp_path):
    output = tmp_path / "job.out"
    job_id = submit(slurm_cluster, "--wait", f"--output={output}", "--wrap", "echo hi")
    assert output.read_text() == "hi\n"
    assert slurm_cluster.job_state(job_id) == "COMPLETED"


def test_a_running_job_is_cancelled(slurm_cluster):
    job_id = submit(slurm_cluster, "--output=/dev/null", "--wrap", "sleep 300")
    wait_for_state(slurm_cluster, job_id, "RUNNING")
    assert slurm_cluster.run("scancel", job_id).returncode == 0
    wait_for_state(slurm_cluster, job_id, "CANCELLED")
    assert job_id in slurm_cluster.jobs()


def test_two_clusters_run_side_by_side(slurm_cluster, tmp_path_factory):
    other = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        other.start()
        jobs = {cluster: submit(cluster, "--output=/dev/null", "--wrap", "sleep 300")
                for cluster in (slurm_cluster, other)}
        for cluster, job_id in jobs.items():
            wait_for_state(cluster, job_id, "RUNNING")
    finally:
        other.stop()
    assert slurm_cluster.job_state(jobs[slurm_cluster]) == "RUNNING"  # stopping the other left this one's job alone
    assert slurm_cluster.run("scancel", jobs[slurm_cluster]).returncode == 0
