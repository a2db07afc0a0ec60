"""Each stage's work as a SLURM job, while DVC waits for it on the submit host.

    bash scripts/reproduce.sh --slurm --slurm-args "--partition=gpu --time=04:00:00 --gres=gpu:1"
    SDCLR_SLURM_ARGS="--partition=gpu --gres=gpu:1" python -m sdclr.pipeline.parallel --slurm

DVC stays on one host: the runner (:mod:`sdclr.pipeline.parallel`) starts ``dvc repro
--single-item <stage>`` there as it does locally, with :func:`install`'s launcher first on
the stages' PATH under the name ``python`` (every command in dvc.yaml starts with it). The
launcher (:func:`main`) submits the same command, in the same folder and environment, as a
batch job, streams the job's output into the stage's log, and exits with the job's status,
so DVC writes ``dvc.lock`` and every output exactly as locally, and no DVC lock has to work
across hosts (docs/design.md, "Clusters"). The workspace (project and ``.venv``) must be on a
file system the nodes share.

- **Time limits.** The job asks SLURM to warn it :data:`WARN_S` seconds before its limit
  (``--signal=B:USR1@...``, unless the options name a ``--signal`` already); the batch script
  forwards the warning to the stage, a pretraining stops after its current epoch with a
  checkpoint (:mod:`sdclr.runtime.time_limit`), and the launcher submits the next job, which
  resumes it; other stages ignore the warning. A job killed at its limit without the warning
  resumes from the last periodic checkpoint. A job that ends at its limit without finishing a
  new epoch stops the stage in one sentence: the limit is too short.
- **Faults.** A cancelled job, one lost with its node, one out of memory or one SLURM no
  longer knows ends the stage in one sentence naming the stage, the job and its log; what
  the stage saved is kept and the same command resumes. A failing stage's own error is in
  the streamed output, and its exit status is passed on.
- **Signals.** Ctrl-C or SIGTERM to the launcher (the runner sends them to stop its stages)
  cancels the job.
- **Several GPUs.** A pretraining with ``pretrain.nproc: N`` asks for N GPUs in its job when
  the options ask for GPUs (``--gres=gpu:K``, ``--gpus=K`` or ``--gpus-per-node=K`` become N),
  and for N CPUs otherwise; the stage starts torchrun inside the job, as locally.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from sdclr.errors import SdclrError
from sdclr.pipeline.progress import EPOCH, LOG_DIR
from sdclr.runtime import time_limit

#: where the launcher is written, inside DVC's ignored tmp folder
BIN_DIR = LOG_DIR / "slurm-bin"
#: the job's output files, beside the runner's stage logs
OUT_DIR = LOG_DIR / "slurm"
#: seconds between the time-limit warning and the limit: one epoch of a paper's pretraining on a GPU fits
WARN_S = int(os.environ.get("SDCLR_SLURM_WARN_S", "300"))
#: seconds between two looks at a job
POLL_S = float(os.environ.get("SDCLR_SLURM_POLL_S", "2"))
#: how long the controller may stay unreachable before the stage gives up on its job
UNREACHABLE_S = 300.0
#: what sbatch's error says when the controller, not the job's options, is the problem
UNREACHABLE_SIGNS = ("unable to contact slurm controller", "connection refused", "socket timed out",
                     "connect failure", "zero bytes were transmitted or received")
#: job states after which a job never runs again
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE"}
#: the options that ask for GPUs per job, and their count
GPU_REQUEST = re.compile(r"^(--gres=(?:.*,)?gpu(?::[\w.-]+)?:|--gpus=(?:[\w.-]+:)?|--gpus-per-node=(?:[\w.-]+:)?)"
                         r"(\d+)(.*)$")


class Interrupted(Exception):
    """SIGINT or SIGTERM reached the launcher: its job is cancelled."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def install(root: Path) -> Path:
    """Write the launcher into ``root``'s tmp folder; returns the folder to put first on PATH."""
    folder = root / BIN_DIR
    folder.mkdir(parents=True, exist_ok=True)
    package_root = Path(__file__).resolve().parents[2]
    launcher = folder / "python"
    launcher.write_text(
        f"#!{sys.executable}\n"
        "# Written by sdclr.pipeline.slurm for `--slurm` runs: submits the stage's command as a SLURM job.\n"
        f"import sys\nsys.path.insert(0, {str(package_root)!r})\n"
        "from sdclr.pipeline.slurm import main\nsys.exit(main(sys.argv[1:]))\n")
    launcher.chmod(0o755)
    return folder


def stage_env(env: dict[str, str], root: Path, slurm_args: list[str]) -> dict[str, str]:
    """The stages' environment under ``--slurm``: the launcher first on PATH, the options for it."""
    return {**env, "PATH": f"{install(root)}{os.pathsep}{env.get('PATH', '')}",
            "SDCLR_SLURM_ARGS": shlex.join(slurm_args)}


def main(argv: list[str]) -> int:
    """The launcher: run ``python <argv>`` as SLURM jobs until the stage is done; returns its status."""
    stage = os.environ.get("SDCLR_STAGE", " ".join(argv[:1]) or "python")
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    try:
        return Stage(stage, argv, shlex.split(os.environ.get("SDCLR_SLURM_ARGS", ""))).run()
    except SdclrError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except Interrupted as e:
        return 128 + e.signum


def _interrupt(signum, frame):
    raise Interrupted(signum)


class Stage:
    """One stage's command, submitted again after each time limit until it ends."""

    def __init__(self, name: str, argv: list[str], options: list[str]):
        self.name, self.argv = name, argv
        self.options = [*resources(argv, options), *([] if _has(options, "--signal") else
                                                     [f"--signal=B:{time_limit.WARNING.name.removeprefix('SIG')}@{WARN_S}"])]
        self.out_dir = Path.cwd() / OUT_DIR
        self.best_epoch = 0  # the furthest epoch any job of this stage finished

    def run(self) -> int:
        while True:
            job = self.submit()
            try:
                state, code, reason = self.follow(job)
            except Interrupted:
                self.cancel(job)
                raise
            progressed = self.progress(job)
            if state == "COMPLETED":
                return 0
            if state in ("TIMEOUT", "PREEMPTED") or (state == "FAILED" and code == time_limit.EXIT_CODE):
                if not progressed:
                    raise SdclrError(f"stage {self.name}: job {job} reached its time limit without finishing a new "
                                     f"epoch, so another job would not get further; give the jobs more time "
                                     f"(--slurm-args \"--time=...\") and run the same command again (its log: "
                                     f"{self.log(job)}).")
                self.say(f"job {job} ended at its time limit after epoch {self.best_epoch}; "
                         "submitting the next job, which resumes from the checkpoint")
                continue
            if state == "FAILED":
                self.say(f"job {job} failed with exit status {code} (its log: {self.log(job)})")
                return code or 1
            raise SdclrError(self.ended_badly(job, state, reason))

    def submit(self) -> str:
        """``sbatch`` the batch script; returns the job id."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cmd = ["sbatch", "--parsable", f"--job-name=sdclr:{self.name}", f"--chdir={Path.cwd()}",
               f"--output={self.out_dir / f'{_safe(self.name)}.%j.out'}", *self.options]
        try:
            done = subprocess.run(cmd, input=batch_script(self.argv), capture_output=True, text=True, env=job_env())
        except OSError as e:
            raise SdclrError(f"stage {self.name}: sbatch could not be run ({e.strerror}); run on a SLURM submit "
                             "host, with sbatch on PATH.") from None
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["no message"])[-1]
            if any(sign in done.stderr.lower() for sign in UNREACHABLE_SIGNS):
                raise SdclrError(f"stage {self.name}: sbatch could not reach the SLURM controller ({why}); check "
                                 "that slurmctld is up (`scontrol ping`) and run the same command again.")
            raise SdclrError(f"stage {self.name}: sbatch refused the job ({why}); fix the options "
                             f"({shlex.join(self.options) or 'none'}) and run the same command again.")
        job = done.stdout.strip().split(";")[0]
        self.say(f"job {job} submitted: {shlex.join(cmd[2:])}")
        return job

    def follow(self, job: str) -> tuple[str, int, str]:
        """Stream the job's output until it ends; returns its state, exit status and reason."""
        offset, last, answered = 0, None, time.monotonic()
        while True:
            info = job_info(job)
            offset = self.stream(job, offset)
            if info is None:  # the controller did not answer
                if time.monotonic() - answered > UNREACHABLE_S:
                    raise SdclrError(f"stage {self.name}: the SLURM controller has not answered for "
                                     f"{UNREACHABLE_S:.0f} s about job {job}; check `scontrol ping`, then run the "
                                     f"same command again (its log: {self.log(job)}).")
                time.sleep(POLL_S)
                continue
            answered = time.monotonic()
            state = info.get("JobState", "LOST")  # {}: SLURM no longer knows the job
            if state != last:
                node = info.get("NodeList", "(null)")
                self.say(f"job {job} {state}" + (f" on {node}" if node not in ("(null)", "") else ""))
                last = state
            if state in ENDED or state == "LOST":
                time.sleep(POLL_S)  # the node may write the last lines after the controller saw the end
                self.stream(job, offset)
                return state, int(info.get("ExitCode", "0:0").split(":")[0]), info.get("Reason", "")
            time.sleep(POLL_S)

    def stream(self, job: str, offset: int) -> int:
        """Copy what the job wrote since ``offset`` to this process's output (the stage log)."""
        try:
            with open(self.log(job), "rb") as f:
                f.seek(offset)
                chunk = f.read()
        except FileNotFoundError:
            return offset
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        return offset + len(chunk)

    def progress(self, job: str) -> bool:
        """Whether ``job`` finished an epoch no earlier job of this stage had."""
        try:
            epochs = [int(e) for e, _ in EPOCH.findall(self.log(job).read_text(errors="replace"))]
        except FileNotFoundError:
            epochs = []
        furthest = max(epochs, default=0)
        if furthest > self.best_epoch:
            self.best_epoch = furthest
            return True
        return False

    def cancel(self, job: str) -> None:
        """``scancel`` the job and wait (briefly) for it to end."""
        subprocess.run(["scancel", job], capture_output=True, env=job_env())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = job_info(job)
            if not info or info.get("JobState") in ENDED:
                break
            time.sleep(0.5)
        self.say(f"job {job} cancelled: this run was interrupted; what the stage saved is kept")

    def ended_badly(self, job: str, state: str, reason: str) -> str:
        why = {"CANCELLED": "was cancelled (scancel, or an administrator)",
               "NODE_FAIL": "was lost with its node", "BOOT_FAIL": "was lost: its node did not boot",
               "OUT_OF_MEMORY": "ran out of memory (ask for more with --slurm-args \"--mem=...\")",
               "DEADLINE": "reached its deadline",
               "LOST": "is no longer known to SLURM (lost)"}.get(state, f"ended {state}")
        return (f"stage {self.name}: SLURM job {job} {why}{f' ({reason})' if reason not in ('', 'None') else ''}; "
                f"what it saved is kept, so run the same command again to resume (its log: {self.log(job)}).")

    def log(self, job: str) -> Path:
        return self.out_dir / f"{_safe(self.name)}.{job}.out"

    def say(self, line: str) -> None:
        print(f"slurm: {line}", flush=True)


def job_info(job: str) -> dict[str, str] | None:
    """``scontrol show job``'s fields; ``{}`` for a job SLURM no longer knows, None when it did not answer."""
    try:
        done = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True,
                              env=job_env(), timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return {} if "Invalid job id" in done.stderr else None
    return dict(re.findall(r"(\w+)=(\S*)", done.stdout))


def batch_script(argv: list[str]) -> str:
    """The job: the stage's command under this Python, with SLURM's warning passed on to it.

    The stage starts with the warning ignored, so a warning that comes before it listens
    (:func:`sdclr.runtime.time_limit.listen`, once a pretraining has started) cannot kill it,
    and a stage that never listens (an evaluation) runs on to its end or its limit. The script
    passes the warning on once the stage catches it (``SigCgt`` in ``/proc/<pid>/status``), and
    only once: Python restores the default action while it exits, and a second warning then
    would kill a stage that has finished its work.
    """
    command = shlex.join([sys.executable, *argv])
    warning = time_limit.WARNING.name.removeprefix("SIG")
    bit = time_limit.WARNING.value - 1
    return f"""#!/bin/bash
# a DVC stage's command, submitted by sdclr.pipeline.slurm
warned=
trap 'warned=1' {warning}
trap 'kill -TERM $stage 2>/dev/null' TERM
(trap '' {warning}; exec {command}) &
stage=$!
while kill -0 $stage 2>/dev/null; do
  if [ -z "$warned" ]; then
    wait $stage  # returns at the stage's end, or early for a signal
    continue
  fi
  caught=$(awk '/^SigCgt:/ {{print $2}}' /proc/$stage/status 2>/dev/null)
  if [ -n "$caught" ] && (( 0x$caught >> {bit} & 1 )); then
    kill -{warning} $stage 2>/dev/null
    warned=
  else
    sleep 1 & wait $!  # not listening yet (or never: not a pretraining)
  fi
done
wait $stage
"""


def resources(argv: list[str], options: list[str]) -> list[str]:
    """``options`` with a pretraining's ``pretrain.nproc`` GPUs (or CPUs) asked for."""
    nproc = _nproc(argv) if argv and argv[0].endswith("pretrain.py") else 1
    if nproc <= 1:
        return list(options)
    asked_gpus = [GPU_REQUEST.match(o) for o in options]
    if any(asked_gpus):
        return [f"{m.group(1)}{nproc}{m.group(3)}" if m else o for o, m in zip(options, asked_gpus)]
    return options if _has(options, "--cpus-per-task") else [*options, f"--cpus-per-task={nproc}"]


def _nproc(argv: list[str]) -> int:
    params = Path(argv[argv.index("--params") + 1]) if "--params" in argv[:-1] else Path("params.yaml")
    try:
        return int((yaml.safe_load(params.read_text()) or {}).get("pretrain", {}).get("nproc", 1))
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return 1  # the stage itself says what is wrong with the file


def job_env() -> dict[str, str]:
    """This environment without the launcher on PATH: the job's ``python`` is never the launcher."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and not p.rstrip("/").endswith(str(BIN_DIR)))
    return {**os.environ, "PATH": path}


def _has(options: list[str], name: str) -> bool:
    return any(o == name or o.startswith(f"{name}=") for o in options)


def _safe(name: str) -> str:
    return re.sub(r"[^\w.@-]", "_", name)
