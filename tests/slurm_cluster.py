"""A real one-node SLURM cluster for tests: Debian's slurmctld, slurmd and munged, configured in a temp folder.

Why a real one and no mocks: what the tests check is what SLURM does with a job (start it, hold it on a
dependency, signal it before its time limit, kill it at the limit, cancel it), and a mock would only replay
what we believe SLURM does. The cluster is up in well under a second, so the tests ask the real thing.

Its pace, which tests must allow for: slurmctld first schedules 3 s after it starts, then looks each second
(a job starts within 1 s of its submission or of its dependency's end); it checks time limits, and sends the
``--signal`` warnings, only every 30 s (a ``--time=0:01:00`` job ends as TIMEOUT 60 to 90 s after it starts).
It forgets an ended job 4 to 14 s after its end (MinJobAge=4, so that ``sbatch --wait`` polls every 2 s, not
every 8 or 32); ``job_state`` then reads the line the controller wrote for it at its end (jobcomp/filetxt).

Use: ``from tests.slurm_cluster import slurm_cluster  # noqa: F401`` in a test module, then take
``slurm_cluster`` as an argument. The fixture is module-scoped: each test module gets a fresh cluster (job ids
from 1, no jobs left by other modules). It skips when not root, when slurm-wlm or munge is not installed, or
when the daemons are not up within 30 s (the reason holds the tails of their logs).

Several clusters run at once (pytest-xdist workers, other test sessions on the host): each has its own folder,
two ports the kernel picked free, and a ClusterName made of its controller's port. They share one munged (started
when none answers, stopped by the last test session using it) and the node name, the host's: two slurmd's with
one NodeName in two clusters do not conflict, each keeps its job step sockets in its own spool folder.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

START_TIMEOUT_S = 30
TOOLS = ("slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scancel", "scontrol", "munged", "munge", "unmunge",
         "mungekey", "runuser")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN_DIR = Path("/run/munge")
#: the pids of the test sessions using a munged that one of them started (a JSON file, under flock)
MUNGE_USERS = Path(tempfile.gettempdir()) / "slurm_cluster-munged.json"


class SlurmCluster:
    """A running cluster: its slurm.conf and how to ask it things."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args) -> subprocess.CompletedProcess:
        """A slurm client command (``run("squeue", "-h")``) against this cluster, its output as text."""
        return subprocess.run([str(arg) for arg in args], env=self.env, capture_output=True, text=True)

    def job_state(self, job_id: str) -> str:
        """RUNNING, COMPLETED, CANCELLED, TIMEOUT, ...: from the controller, or once it has forgotten the job
        (MinJobAge), from the record it wrote when the job ended."""
        shown = self.run("scontrol", "show", "job", job_id)
        record = shown.stdout if shown.returncode == 0 else self._end_record(job_id)
        found = re.search(r"\bJobState=(\w+)", record)
        if not found:
            raise LookupError(f"job {job_id} is unknown to the cluster: {shown.stderr.strip()}")
        return found.group(1)

    def jobs(self) -> list[str]:
        """The ids of the jobs the controller still knows, in any state."""
        listed = self.run("squeue", "--noheader", "--states=all", "--format=%i")
        if listed.returncode:
            raise RuntimeError(f"squeue failed: {listed.stderr.strip()}")
        return listed.stdout.split()

    def start(self) -> None:
        (self.folder / "state").mkdir()
        (self.folder / "spool").mkdir()
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text(_config(self.folder, f"pytest{ctld_port}", ctld_port, slurmd_port))
        for daemon in ("slurmctld", "slurmd"):
            started = subprocess.run([daemon], env=self.env, capture_output=True, text=True)
            if started.returncode:
                self._skip(f"{daemon} exited with {started.returncode}: {started.stderr.strip()}")
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.run("sinfo", "--noheader", "--format=%t").stdout.strip() != "idle":
            if time.monotonic() > deadline:
                self._skip(f"the node is not idle after {START_TIMEOUT_S} s")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM to slurmd, then to slurmctld (a job step ending meanwhile still reports to it); then SIGKILL to
        what is left: a daemon not stopped in 10 s, job step processes (slurmstepd ignores SIGTERM, outlives slurmd)."""
        for daemon in ("slurmd", "slurmctld"):
            _end(self.conf, signal.SIGTERM, grace_s=10, among=self._pids(daemon))
        _end(self.conf, signal.SIGKILL, grace_s=5)
        if left := _processes_of(self.conf):
            raise RuntimeError(f"processes of {self.conf} survived SIGKILL: {left}")

    def _pids(self, daemon: str) -> set[int]:
        pid_file = self.folder / f"{daemon}.pid"
        return {int(pid_file.read_text())} if pid_file.exists() else set()

    def _end_record(self, job_id: str) -> str:
        """The last line jobcomp/filetxt wrote for the job when it ended ("" if none)."""
        ended = self.folder / "jobcomp.txt"
        lines = ended.read_text().splitlines() if ended.exists() else []
        return next((line for line in reversed(lines) if line.startswith(f"JobId={job_id} ")), "")

    def _skip(self, why: str) -> None:
        logs = "\n".join(f"--- {log.name}:\n{_tail(log)}" for log in sorted(self.folder.glob("*.log")))
        pytest.skip(f"no SLURM cluster: {why}\n{logs}")


def _config(folder: Path, cluster: str, ctld_port: int, slurmd_port: int) -> str:
    host = socket.gethostname().split(".")[0]
    return f"""\
ClusterName={cluster}
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={folder}/jobcomp.txt
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
MinJobAge=4
KillWait=5
OverTimeLimit=0
InactiveLimit=0
ReturnToService=2
SchedulerParameters=batch_sched_delay=0
NodeName={host} CPUs={len(os.sched_getaffinity(0))} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _free_ports(count: int) -> list[int]:
    """Ports nothing listens on, as the kernel picks them (all held open together, so distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _processes_of(conf: Path) -> list[int]:
    """The live processes of a cluster: every session holding a process started with SLURM_CONF=conf (the
    daemons, slurmscriptd, each slurmstepd and the job processes it started in its session), ours excepted."""
    marker = f"SLURM_CONF={conf}".encode()
    session_of, ours = {}, set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            state, session = _state_and_session(proc)
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # it ended
            continue
        if state != "Z":
            session_of[int(proc.name)] = session
            if marker in environ:
                ours.add(session)
    ours.discard(os.getsid(0))
    return [pid for pid, session in session_of.items() if session in ours]


def _end(conf: Path, sig: int, grace_s: float, among: set[int] | None = None) -> None:
    """Signal the processes of the cluster of conf (those among the pids given, if given), again and again, until
    none is left or grace_s passed."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not (pids := [pid for pid in _processes_of(conf) if among is None or pid in among]):
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _state_and_session(proc: Path) -> tuple[str, int]:
    """From /proc/<pid>/stat: the state (R, S, Z, ...) and the session id."""
    state, _ppid, _pgid, session = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:4]
    return state, int(session)


def _alive(pid: int) -> bool:
    try:
        return _state_and_session(Path(f"/proc/{pid}"))[0] != "Z"
    except OSError:
        return False


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def _munge_works() -> bool:
    credential = subprocess.run(["munge", "--no-input"], capture_output=True)
    return credential.returncode == 0 and subprocess.run(["unmunge"], input=credential.stdout,
                                                         capture_output=True).returncode == 0


def _as_munge(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "munge", "--", *command], capture_output=True, text=True)


def _as_munge_or_skip(*command: str) -> None:
    if (done := _as_munge(*command)).returncode:
        pytest.skip(f"no munged: {' '.join(command)} exited with {done.returncode}: {done.stderr.strip()}")


def _start_munged() -> None:
    MUNGE_RUN_DIR.mkdir(exist_ok=True)
    shutil.chown(MUNGE_RUN_DIR, "munge", "munge")
    if not MUNGE_KEY.exists():
        _as_munge_or_skip("mungekey", "--create")
    _as_munge_or_skip("munged")
    deadline = time.monotonic() + 10
    while not _munge_works():
        if time.monotonic() > deadline:
            pytest.skip("no munged: it started but does not answer `munge -n | unmunge` after 10 s")
        time.sleep(0.1)


@contextmanager
def _munge_users():
    """The shared record of the munged the tests started: {"started": bool, "pids": [test processes]}, locked
    for the time of the with block; sessions that died without leaving are dropped from it."""
    with open(MUNGE_USERS, "a+") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.seek(0)
        users = json.loads(file.read() or '{"started": false, "pids": []}')
        users["pids"] = [pid for pid in users["pids"] if _alive(pid)]
        yield users
        file.seek(0)
        file.truncate()
        json.dump(users, file)


@contextmanager
def _munged():
    """A working munged while in the block: the running one, else one started here and stopped by the last
    session using it (one that ran before the tests is left running)."""
    with _munge_users() as users:
        if not _munge_works():
            _start_munged()
            users["started"] = True
        users["pids"].append(os.getpid())
    try:
        yield
    finally:
        with _munge_users() as users:
            users["pids"].remove(os.getpid())
            if users["started"] and not users["pids"]:
                _as_munge("munged", "--stop").check_returncode()
                users["started"] = False


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running one-node cluster for the test module (module-scoped); stopped, with its jobs, after it."""
    if os.geteuid() != 0:
        pytest.skip("a SLURM cluster needs root (slurmd runs the jobs as root here)")
    if missing := [tool for tool in TOOLS if not shutil.which(tool)]:
        pytest.skip(f"slurm-wlm or munge is not installed: {', '.join(missing)} not on PATH")
    with _munged():
        cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
