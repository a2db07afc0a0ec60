"""Run the pipeline's independent stages side by side, with DVC doing every stage's work.

    python -m sdclr.pipeline.parallel --jobs 2            # what `bash scripts/reproduce.sh --jobs 2` runs
    python -m sdclr.pipeline.parallel --jobs 4 report     # only what `report` needs
    python -m sdclr.pipeline.parallel -S prune_ratio=0.5  # as `dvc exp run -S`, the stages side by side

DVC runs one stage at a time, and documents parallel execution as several ``dvc repro``
processes on independent targets: each holds read/write locks on the paths it touches,
and the repo lock only while it reads or writes ``dvc.lock`` (not while the command
runs). This module is the thin scheduler around that unit of work: it asks DVC which
stages are out of date, then starts ``dvc repro --single-item <stage>`` for every such
stage whose upstream stages are done, at most ``--jobs`` at a time, and ends with a
plain ``dvc repro`` that must find nothing left to do. Every stage's ``dvc.lock`` entry
and outputs are therefore written by DVC itself, exactly as a sequential run writes them.
With ``--slurm`` each stage's work runs as a SLURM job while ``dvc repro`` waits for it here
(:mod:`sdclr.pipeline.slurm`; docs/design.md, "Clusters").

- **Numerics.** A portable stage pins its kernels and runs on one thread whatever its
  parent's environment (:mod:`sdclr.runtime.numerics`), so ``--jobs`` cannot change a byte. With
  ``numerics: native`` each stage gets ``cores // jobs`` threads.
- **Order** (:mod:`.plan`): the stages most others wait on first, then the longest.
- **Allocator and GPUs** (:mod:`.environment`): tcmalloc for the stages where the machine has
  it; with visible GPUs each stage gets one, at most ``--per-gpu`` stages per GPU.
- **The lock race.** Two ``dvc`` processes that start or finish together can miss each
  other's lock (DVC issue #10465): the stage is started again, never failed on it.
- **Failures.** A failed stage stops the others (SIGINT: a pretraining keeps its last
  checkpoint), is named in one sentence with its own error line and its log, and the
  next run resumes: finished stages are up to date, a stopped pretraining resumes.
- **Signals.** Ctrl-C and SIGTERM (what ``timeout``, SLURM and service managers send) stop the
  running stages the same way, leave no process behind and end in one sentence.
- **One run per workspace.** A second runner started in the same workspace says which run
  holds it and since when, and stops (a lock on ``.dvc/tmp/parallel/runner.lock``, which the
  system releases when its holder dies, however it dies).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sdclr.errors import SdclrError
from sdclr.pipeline import experiment
from sdclr.pipeline.environment import default_jobs, stage_env, visible_gpus
from sdclr.pipeline.plan import LOCK_RETRIES, Plan, expected_seconds, plan, priority
from sdclr.pipeline.progress import LOG_DIR, describe, error_line

#: what DVC prints when it lost a lock race to another dvc process (repo lock or a path's rwlock)
LOCK_RACE = re.compile(r"Unable to acquire lock|is busy, it is being blocked by|Lock file .* is locked")
#: seconds without a start or finish before the runner says what is running
HEARTBEAT_S = 60.0
#: stages at once with --slurm: the jobs wait in SLURM's queue, not here
SLURM_JOBS = 64


class Terminated(Exception):
    """SIGTERM reached the runner: it stops its stages as on Ctrl-C."""


@dataclass
class Running:
    name: str
    proc: subprocess.Popen
    log: Path
    started: float
    gpu: str | None
    attempt: int


def _stop(running: dict[str, Running], grace_s: float = 60.0) -> None:
    """SIGINT every running stage (a pretraining saves nothing more but keeps its last
    checkpoint), then SIGTERM after ``grace_s``, then SIGKILL: a stage whose SIGINT is
    ignored (a background job's children inherit that) must still stop."""
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        alive = [r for r in running.values() if r.proc.poll() is None]
        for r in alive:
            try:
                os.killpg(r.proc.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        for r in alive:
            try:
                r.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass


@contextlib.contextmanager
def workspace(root: Path):
    """Hold this workspace for one runner; another one gets a sentence naming the holder."""
    path = root / LOG_DIR / "runner.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            try:
                holder = json.loads(handle.read())
            except ValueError:  # it has the lock but has not written who it is yet
                holder = {}
            pid, since = holder.get("pid", "?"), holder.get("started")
            when = (f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))} "
                    f"({time.time() - since:.0f} s ago)" if since else "")
            raise SdclrError(f"another run holds this workspace: pid {pid} (`{holder.get('command', '?')}`{when}); "
                             f"wait for it to finish, or stop it with `kill -TERM {pid}` (it stops its stages and "
                             "keeps what is done), then run again.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv) or "python",
                                 "started": time.time()}))
        handle.flush()
        yield  # the lock goes with the file's closing, or with the process


def _on_sigterm(signum, frame):
    raise Terminated()


def _interruptible() -> object:
    """Let the stages get SIGINT: a process started in the background by a shell ignores it,
    and its children inherit that; a handler (unlike SIG_IGN) is reset to the default on exec.
    Returns the disposition to restore."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        except ValueError:  # not the main thread: leave it
            pass
    return previous


def run(root: Path, jobs: int, targets: list[str] | None = None, per_gpu: int = 1, log=print,
        env: dict[str, str] | None = None, stop_grace_s: float = 60.0,
        dvc: tuple[str, ...] = (sys.executable, "-m", "dvc"), slurm_args: list[str] | None = None) -> None:
    """Bring ``targets`` (default: every stage) up to date with at most ``jobs`` stages at once.

    ``env``: the stages' environment (default: this process's). ``slurm_args``: run each
    stage's work as a SLURM job with these ``sbatch`` options (None: here). Raises
    :class:`SdclrError` with one sentence when a stage fails, after stopping the others
    (SIGINT, then SIGTERM after ``stop_grace_s``).
    """
    root = root.resolve()
    env = dict(os.environ if env is None else env)
    with workspace(root):
        the_plan = plan(root, targets)
        gpus = [] if slurm_args is not None else visible_gpus(env)  # on a cluster, SLURM gives each job its GPUs
        log(f"parallel: {len(the_plan.order)} stage(s) to run, at most {jobs} at once"
            + (f", {per_gpu} per GPU on {len(gpus)} GPU(s)" if gpus else "")
            + (f", each as a SLURM job ({shlex.join(slurm_args) or 'default options'})"
               if slurm_args is not None else "")
            + (": nothing to do." if not the_plan.order else "."))
        lanes = Lanes(root, the_plan, jobs, {g: per_gpu for g in gpus}, stage_env(root, env, jobs, slurm_args), dvc,
                      log)
        t_start = time.monotonic()
        with _signals_stop(lanes, stop_grace_s):
            lanes.run_all(stop_grace_s)
        if the_plan.order:
            log(f"parallel: {len(the_plan.order)} stage(s) in {time.monotonic() - t_start:.0f} s with {jobs} at once.")
        _closing_repro(root, targets, env, dvc, log)


@contextlib.contextmanager
def _signals_stop(lanes: "Lanes", stop_grace_s: float):
    """While the stages run: Ctrl-C and SIGTERM stop them (and are raised on); the dispositions are
    restored after."""
    previous_sigint = _interruptible()
    try:
        previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave SIGTERM as it is
        previous_sigterm = None
    try:
        yield
    except (KeyboardInterrupt, Terminated):
        _stop(lanes.running, stop_grace_s)
        raise
    finally:
        if previous_sigint is signal.SIG_IGN and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


class Lanes:
    """A plan's stages, each as its own ``dvc repro --single-item`` process: at most ``jobs`` at once,
    each in a GPU slot when there are GPUs, the ready ones in :func:`~sdclr.pipeline.plan.priority`'s order."""

    def __init__(self, root: Path, the_plan: Plan, jobs: int, slots: dict[str, int], env: dict[str, str],
                 dvc: tuple[str, ...], log):
        self.root, self.plan, self.jobs, self.slots = root, the_plan, jobs, slots
        self.env, self.dvc, self.log = env, dvc, log
        self.pending, self.running, self.done = list(the_plan.order), {}, set()
        self.attempts: dict[str, int] = {}
        self.first = priority(the_plan, expected_seconds(root))
        self.logs = root / LOG_DIR
        self.logs.mkdir(parents=True, exist_ok=True)
        self.last_line = time.monotonic()

    def run_all(self, stop_grace_s: float) -> None:
        while self.pending or self.running:
            self.start_ready()
            time.sleep(0.2)
            if self.running and time.monotonic() - self.last_line > HEARTBEAT_S:
                self.log("running: " + ", ".join(describe(r.name, r.log, r.started) for r in self.running.values()))
                self.last_line = time.monotonic()
            for r in list(self.running.values()):
                if r.proc.poll() is not None:
                    self.finished(r, stop_grace_s)

    def gpu_free(self) -> bool:
        return not self.slots or any(free > 0 for free in self.slots.values())

    def start_ready(self) -> None:
        for name in sorted(self.pending, key=self.first):
            if len(self.running) >= self.jobs or not self.gpu_free():
                return
            if self.plan.upstream[name] <= self.done:
                self.pending.remove(name)
                self.start(name)

    def start(self, name: str) -> None:
        gpu = next((g for g, free in self.slots.items() if free > 0), None)
        child_env = {**self.env, "SDCLR_STAGE": name}
        if gpu is not None:
            self.slots[gpu] -= 1
            child_env["CUDA_VISIBLE_DEVICES"] = gpu
        attempt = self.attempts[name] = self.attempts.get(name, 0) + 1
        path = self.logs / f"{name}.log"
        with open(path, "w") as out:
            proc = subprocess.Popen([*self.dvc, "--wait-for-lock", "repro", "--single-item", name], cwd=self.root,
                                    env=child_env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.running[name] = Running(name, proc, path, time.monotonic(), gpu, attempt)
        waiting = len(self.plan.order) - len(self.done) - len(self.running)
        self.log(f"start {name}" + (f" on GPU {gpu}" if gpu else "")
                 + (f", attempt {attempt} (it lost a lock race)" if attempt > 1 else "")
                 + f" ({len(self.running)} running, {waiting} waiting)")

    def finished(self, r: Running, stop_grace_s: float) -> None:
        """A stage's process ended: done, started again after a lost lock race, or the run stops."""
        del self.running[r.name]
        if r.gpu is not None:
            self.slots[r.gpu] += 1
        seconds = time.monotonic() - r.started
        self.last_line = time.monotonic()
        if r.proc.returncode == 0:
            self.done.add(r.name)
            self.log(f"done  {r.name} in {seconds:.0f} s ({len(self.done)}/{len(self.plan.order)} done, "
                     f"{len(self.running)} running)")
            return
        text = r.log.read_text(errors="replace")
        if LOCK_RACE.search(text) and r.attempt <= LOCK_RETRIES:
            time.sleep(0.5 * r.attempt)
            self.pending.insert(0, r.name)
            return
        _stop(self.running, stop_grace_s)
        raise SdclrError(f"stage {r.name} failed after {seconds:.0f} s ({error_line(text)}); the stages "
                         f"running beside it were stopped and every finished stage is kept: fix the cause "
                         f"and run the same command again (its log: {r.log.relative_to(self.root)}).")


def _closing_repro(root: Path, targets: list[str] | None, env: dict[str, str], dvc: tuple[str, ...], log) -> None:
    """A plain ``dvc repro``, which must find nothing left to do (or says what it ran)."""
    final = subprocess.run([*dvc, "--wait-for-lock", "repro", *(targets or [])], cwd=root, env=env,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    ran = re.findall(r"Running stage '([^']+)'", final.stdout)
    if final.returncode != 0:
        raise SdclrError(f"the closing `dvc repro` failed ({error_line(final.stdout + final.stderr)}).")
    log("dvc repro: nothing left to do, every stage is up to date." if not ran else
        f"dvc repro: also ran {', '.join(ran)}, which the parallel pass had left out.")


def _options_as_one_value(argv: list[str], flag: str) -> list[str]:
    """``flag VALUE`` as ``flag=VALUE``: argparse takes a lone value that starts with ``-`` for an
    option (``--slurm-args "--gres=gpu:1"`` would fail), never the ``=`` form."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] == flag and i + 1 < len(argv):
            out.append(f"{flag}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("targets", nargs="*", help="stages to bring up to date (default: all)")
    p.add_argument("--jobs", "-j", type=int, default=0, help="stages at once (default: the cores, or the GPU slots)")
    p.add_argument("--per-gpu", type=int, default=1, help="stages sharing one GPU (default 1)")
    p.add_argument("--slurm", action="store_true",
                   help="run each stage's work as a SLURM job (sdclr/pipeline/slurm.py)")
    p.add_argument("--slurm-args", default=None,
                   help="sbatch options for every job, e.g. \"--partition=gpu --time=04:00:00 --gres=gpu:1\" "
                        "(default: $SDCLR_SLURM_ARGS)")
    p.add_argument("--set-param", "-S", action="append", default=[], metavar="KEY=VALUE",
                   help="as `dvc exp run -S`: set the param, run, and save the result as a DVC experiment "
                        "(sdclr/pipeline/experiment.py)")
    p.add_argument("--name", "-n", default=None, help="the experiment's name with -S (default: DVC's two random words)")
    args = p.parse_args(_options_as_one_value(sys.argv[1:] if argv is None else argv, "--slurm-args"))
    if args.jobs < 0 or args.per_gpu < 1:
        p.error("--jobs must be >= 1 (0 = the default) and --per-gpu >= 1")
    if args.slurm_args is not None and not args.slurm:
        p.error("--slurm-args needs --slurm")
    if args.name is not None and not args.set_param:
        p.error("--name needs -S (it names the experiment -S records)")
    slurm_args = args.slurm_args if args.slurm_args is not None else os.environ.get("SDCLR_SLURM_ARGS", "")
    jobs = args.jobs or (SLURM_JOBS if args.slurm else default_jobs(visible_gpus(), args.per_gpu))
    env = dict(os.environ)
    try:
        if args.set_param:
            name = args.name or experiment.new_name()
            experiment.set_params(Path.cwd(), args.set_param)
            env["DVC_EXP_NAME"] = name  # the stages' MLflow runs carry it, as under `dvc exp run`
        run(Path.cwd(), jobs, args.targets or None, args.per_gpu, env=env,
            slurm_args=shlex.split(slurm_args) if args.slurm else None)
        if args.set_param:
            print(f"experiment {name} ({' '.join(args.set_param)}): {experiment.save(Path.cwd(), name)}; "
                  "`dvc exp show` lists it.")
    except SdclrError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: the running stages were stopped; finished stages are kept, run again to resume.",
              file=sys.stderr)
        sys.exit(130)
    except Terminated:
        print("terminated (SIGTERM): the running stages were stopped; finished stages are kept, run again to "
              "resume.", file=sys.stderr)
        sys.exit(143)


if __name__ == "__main__":
    main()
