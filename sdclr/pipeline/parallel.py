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
  parent's environment (:mod:`sdclr.pipeline.numerics`), so ``--jobs`` cannot change a byte. With
  ``numerics: native`` each stage gets ``cores // jobs`` threads.
- **Allocator.** Stages run with tcmalloc where the machine has it (Debian's
  ``libtcmalloc-minimal4``, which ``scripts/setup.sh`` installs), else with glibc's malloc
  told to keep freed memory: torch's CPU kernels allocate and free every activation each
  step, and handing that memory back to the OS costs page faults. Measured: pretraining
  +6–16 % (tcmalloc) and +3–12 % (glibc tunables) on one thread; the bytes are the same
  (torch aligns every tensor itself). ``SDCLR_ALLOCATOR=system`` turns it off.
- **GPUs.** With visible GPUs each stage gets one (``CUDA_VISIBLE_DEVICES``), at most
  ``--per-gpu`` stages per GPU.
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
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sdclr.errors import SdclrError
from sdclr.pipeline import experiment

#: what DVC prints when it lost a lock race to another dvc process (repo lock or a path's rwlock)
LOCK_RACE = re.compile(r"Unable to acquire lock|is busy, it is being blocked by|Lock file .* is locked")
#: how often one stage is started again after losing a lock race
LOCK_RETRIES = 8
#: a pretraining's per-epoch line: "simclr split 0 epoch 3/6: ..."
EPOCH = re.compile(r"epoch (\d+)/(\d+)")
#: seconds without a start or finish before the runner says what is running
HEARTBEAT_S = 60.0
#: the launcher's line for a job's state: "slurm: job 42 RUNNING on node1"
JOB_STATE = re.compile(r"slurm: job (\d+) ([A-Z_]+)")
#: where each stage's output goes (DVC's own tmp folder: ignored by git and by DVC)
LOG_DIR = Path(".dvc/tmp/parallel")
#: stages at once with --slurm: jobs queued on the cluster, not cores here
SLURM_JOBS = 64


class Terminated(Exception):
    """SIGTERM reached the runner: it stops its stages as on Ctrl-C."""


@dataclass
class Plan:
    """The out-of-date stages in a runnable order, each one's out-of-date upstream stages, and
    how many out-of-date stages wait on each (directly or not)."""

    order: list[str]
    upstream: dict[str, set[str]] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)


def plan(root: Path, targets: list[str] | None = None) -> Plan:
    """Ask DVC which stages must run: the changed ones and everything downstream of them.

    ``dvc status`` only sees a stage's own changes (an upstream stage that will re-run has
    not changed its outputs yet), so every stage downstream of a changed one runs too.
    """
    from dvc.exceptions import DvcException
    from dvc.lock import LockError

    here = os.getcwd()
    os.chdir(root)  # stage addressing ("name", "name@item") is relative to the working directory
    try:
        attempt = 0
        while True:
            attempt += 1
            try:
                return _plan(targets)
            except LockError as e:  # another dvc process is writing a path `dvc status` reads
                if attempt == LOCK_RETRIES:
                    raise SdclrError(f"another DVC process holds a lock this run needs ({str(e).splitlines()[0]}); "
                                     f"wait for it to finish, or remove {root}/.dvc/tmp/rwlock if no dvc process "
                                     "runs.") from None
                time.sleep(attempt)
            except DvcException as e:  # a broken dvc.yaml or params.yaml: DVC's own first line says what
                raise SdclrError(f"DVC cannot read the pipeline in {root} ({str(e).splitlines()[0]}); fix it and "
                                 "run again (`dvc status` shows the same message).") from None
    finally:
        os.chdir(here)


def _plan(targets: list[str] | None) -> Plan:
    import networkx as nx
    from dvc.repo import Repo

    with Repo(".") as repo:
        graph = repo.index.graph  # edge (a, b): stage a depends on stage b
        by_name = {stage.addressing: stage for stage in graph.nodes}
        wanted = set(by_name)
        if targets:
            unknown = [t for t in targets if t not in by_name]
            if unknown:
                raise SdclrError(f"no stage named {', '.join(unknown)} in dvc.yaml; `dvc stage list` names them all.")
            wanted = set(targets).union(*(
                {s.addressing for s in nx.descendants(graph, by_name[t])} for t in targets))
        changed = {name for name in repo.status(targets=sorted(wanted)) if name in wanted}
    run = set(changed)
    for name in changed:  # networkx's ancestors of a stage: the stages that depend on it
        run |= {s.addressing for s in nx.ancestors(graph, by_name[name])} & wanted
    order = [s.addressing for s in reversed(list(nx.topological_sort(graph))) if s.addressing in run]
    upstream = {name: {s.addressing for s in graph.successors(by_name[name])} & run for name in order}
    waiting = {name: len({s.addressing for s in nx.ancestors(graph, by_name[name])} & run) for name in order}
    return Plan(order, upstream, waiting)


def expected_seconds(root: Path) -> dict[str, float]:
    """Each stage's time on its last run here (reports/cost.json), by stage name; a split not
    timed yet gets the method's mean over the splits that were."""
    try:
        cost = json.loads((root / "reports" / "cost.json").read_text())
    except (OSError, ValueError):
        return {}
    by_kind: dict[str, list[float]] = {}
    out = {}
    for key, entry in cost.items():
        parts = key.split("/")  # pretrain/<method>/split<k>
        if len(parts) == 3 and parts[2].startswith("split") and isinstance(entry.get("seconds"), (int, float)):
            out[f"{parts[0]}-{parts[1]}@{parts[2].removeprefix('split')}"] = entry["seconds"]
            by_kind.setdefault(f"{parts[0]}-{parts[1]}", []).append(entry["seconds"])
    out.update({kind: sum(v) / len(v) for kind, v in by_kind.items()})
    return out


def priority(the_plan: Plan, seconds: dict[str, float]):
    """Which ready stage starts first: the one most stages wait on, then the longest (as last
    timed): long pretrainings first, so that short evaluations fill the lanes at the end."""
    def key(name: str) -> tuple[int, float]:
        return -the_plan.waiting.get(name, 0), -seconds.get(name, seconds.get(name.split("@")[0], 0.0))
    return key


def visible_gpus(env=None) -> list[str]:
    """The GPUs a stage could use: ``CUDA_VISIBLE_DEVICES`` when set (in ``env``, default this
    process's environment), else what nvidia-smi lists."""
    env = os.environ if env is None else env
    if "CUDA_VISIBLE_DEVICES" in env:
        return [g.strip() for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() not in ("", "-1")]
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def default_jobs(gpus: list[str], per_gpu: int) -> int:
    """Stages at once: the cores (one thread each in portable numerics), or the GPU slots."""
    return len(gpus) * per_gpu if gpus else max(1, len(os.sched_getaffinity(0)))


#: where Debian, Fedora and others put tcmalloc's minimal build
TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4",
            "/usr/lib/libtcmalloc_minimal.so.4")
#: glibc malloc without tcmalloc: serve activations from the heap and keep freed memory there
GLIBC_KEEP = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
              "MALLOC_TOP_PAD_": str(256 << 20)}


def allocator_env(env: dict[str, str]) -> dict[str, str]:
    """The environment variables that give the stages a faster allocator (see the module doc)."""
    if env.get("SDCLR_ALLOCATOR") == "system":
        return {}
    found = next((path for path in TCMALLOC if Path(path).is_file()), None)
    if found is None:
        return {name: env.get(name, value) for name, value in GLIBC_KEEP.items()}
    preload = env.get("LD_PRELOAD", "")
    return {} if "tcmalloc" in preload else {"LD_PRELOAD": f"{found} {preload}".strip()}


@dataclass
class Running:
    name: str
    proc: subprocess.Popen
    log: Path
    started: float
    gpu: str | None
    attempt: int


def _error_line(text: str) -> str:
    """The stage's own one-sentence error (``error: ...``), else DVC's first error line, else the last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for prefix in ("error: ", "ERROR: "):
        found = [line for line in lines if line.startswith(prefix)]
        if found:
            return found[0].removeprefix(prefix)
    return lines[-1] if lines else "no output"


def _progress(r: Running) -> str:
    """A running stage, with its SLURM job and state and the last epoch its log shows (pretrainings
    print one line per epoch)."""
    tail = r.log.read_text(errors="replace")[-4000:] if r.log.exists() else ""
    jobs, epochs = JOB_STATE.findall(tail), EPOCH.findall(tail)
    where = (f"job {jobs[-1][0]} {jobs[-1][1]}, " if jobs else "") + (f"epoch {epochs[-1][0]}/{epochs[-1][1]}, " if epochs else "")
    return f"{r.name} ({where}{time.monotonic() - r.started:.0f} s)"


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
        handle.write(json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv) or "python", "started": time.time()}))
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
    with workspace(root):
        _run(root, jobs, targets, per_gpu, log, env, stop_grace_s, dvc, slurm_args)


def stage_env(root: Path, env: dict[str, str], jobs: int, slurm_args: list[str] | None) -> dict[str, str]:
    """The stages' environment: with ``--slurm``, the job launcher; here, the allocator and the threads."""
    if slurm_args is not None:
        from sdclr.pipeline import slurm

        if not shutil.which("sbatch", path=env.get("PATH")):
            raise SdclrError("--slurm needs SLURM's `sbatch` on PATH; run on the cluster's submit host, or without "
                             "--slurm to run the stages here.")
        return slurm.stage_env(env, root, slurm_args)
    env = {**env, **allocator_env(env)}
    if _numerics(root) == "native":
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // jobs))
    return env


def _run(root, jobs, targets, per_gpu, log, env, stop_grace_s, dvc, slurm_args) -> None:
    the_plan = plan(root, targets)
    total = len(the_plan.order)
    env = dict(os.environ if env is None else env)
    final_env = dict(env)
    gpus = [] if slurm_args is not None else visible_gpus(env)  # on a cluster, SLURM gives each job its GPUs
    slots = {g: per_gpu for g in gpus}
    log(f"parallel: {total} stage(s) to run, at most {jobs} at once"
        + (f", {per_gpu} per GPU on {len(gpus)} GPU(s)" if gpus else "")
        + (f", each as a SLURM job ({shlex.join(slurm_args) or 'default options'})" if slurm_args is not None else "")
        + (": nothing to do." if not total else "."))
    env = stage_env(root, env, jobs, slurm_args)
    logs = root / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    pending, running, done = list(the_plan.order), {}, set()
    first = priority(the_plan, expected_seconds(root))
    attempts: dict[str, int] = {}
    t_start = last_line = time.monotonic()
    previous_sigint = _interruptible()
    try:
        previous_sigterm = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave SIGTERM as it is
        previous_sigterm = None

    def start(name: str) -> None:
        gpu = next((g for g, free in slots.items() if free > 0), None)
        child_env = {**env, "SDCLR_STAGE": name}
        if gpu is not None:
            slots[gpu] -= 1
            child_env["CUDA_VISIBLE_DEVICES"] = gpu
        attempts[name] = attempts.get(name, 0) + 1
        path = logs / f"{name}.log"
        with open(path, "w") as out:
            proc = subprocess.Popen([*dvc, "--wait-for-lock", "repro", "--single-item", name], cwd=root,
                                    env=child_env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        running[name] = Running(name, proc, path, time.monotonic(), gpu, attempts[name])
        log(f"start {name}" + (f" on GPU {gpu}" if gpu else "")
            + (f", attempt {attempts[name]} (it lost a lock race)" if attempts[name] > 1 else "")
            + f" ({len(running)} running, {total - len(done) - len(running)} waiting)")

    try:
        while pending or running:
            gpu_free = not gpus or any(free > 0 for free in slots.values())
            for name in sorted(pending, key=first):
                if len(running) >= jobs or not gpu_free:
                    break
                if the_plan.upstream[name] <= done:
                    pending.remove(name)
                    start(name)
                    gpu_free = not gpus or any(free > 0 for free in slots.values())
            time.sleep(0.2)
            if running and time.monotonic() - last_line > HEARTBEAT_S:
                log("running: " + ", ".join(_progress(r) for r in running.values()))
                last_line = time.monotonic()
            for name, r in list(running.items()):
                rc = r.proc.poll()
                if rc is None:
                    continue
                del running[name]
                if r.gpu is not None:
                    slots[r.gpu] += 1
                seconds = time.monotonic() - r.started
                last_line = time.monotonic()
                if rc == 0:
                    done.add(name)
                    log(f"done  {name} in {seconds:.0f} s ({len(done)}/{total} done, {len(running)} running)")
                    continue
                text = r.log.read_text(errors="replace")
                if LOCK_RACE.search(text) and r.attempt <= LOCK_RETRIES:
                    time.sleep(0.5 * r.attempt)
                    pending.insert(0, name)
                    continue
                _stop(running, stop_grace_s)
                raise SdclrError(f"stage {name} failed after {seconds:.0f} s ({_error_line(text)}); the stages "
                                 f"running beside it were stopped and every finished stage is kept: fix the cause "
                                 f"and run the same command again (its log: {r.log.relative_to(root)}).")
    except (KeyboardInterrupt, Terminated):
        _stop(running, stop_grace_s)
        raise
    finally:
        if previous_sigint is signal.SIG_IGN and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    if total:
        log(f"parallel: {total} stage(s) in {time.monotonic() - t_start:.0f} s with {jobs} at once.")
    final = subprocess.run([*dvc, "--wait-for-lock", "repro", *(targets or [])], cwd=root, env=final_env,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    ran = re.findall(r"Running stage '([^']+)'", final.stdout)
    if final.returncode != 0:
        raise SdclrError(f"the closing `dvc repro` failed ({_error_line(final.stdout + final.stderr)}).")
    log("dvc repro: nothing left to do, every stage is up to date." if not ran else
        f"dvc repro: also ran {', '.join(ran)}, which the parallel pass had left out.")


def _numerics(root: Path) -> str:
    from sdclr.pipeline.numerics import mode_in_params

    return mode_in_params(root / "params.yaml")


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
    p.add_argument("--slurm", action="store_true", help="run each stage's work as a SLURM job (sdclr/pipeline/slurm.py)")
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
