"""A preset's pretrain and evaluate jobs on one GPU without DVC or MLflow (the GPU machine has neither).

Each (method, split) job runs the stages' own functions (``sdclr.pretrain_loop.pretrain``,
``sdclr.evaluate.evaluate_encoder``) in its own process, ``--concurrent`` of them at a
time on the same GPU, split by split so that complete splits finish first; no job starts
once ``--deadline`` seconds have passed since the start. It writes the files the report
stage reads, so the table is then built on any machine::

    metrics/<method>/split<k>.json   pretrain/<method>/split<k>.csv   jobs.jsonl (seconds per job)

    # here: the preset's splits, to carry with data/raw/fashion_mnist (benchmarks/gpu_verdict.sh)
    python benchmarks/gpu_preset.py prepare --preset fmnist_gpu --raw data/raw/fashion_mnist --splits .gpu/splits
    # on the GPU machine
    PYTHONPATH=$PWD python benchmarks/gpu_preset.py run --preset fmnist_gpu --raw data/raw/fashion_mnist \\
        --splits .gpu/splits --out $OUT/fmnist_gpu --concurrent 3 --deadline 420
    # aggregate pretraining images/s with 1..4 SimCLR trainings sharing the GPU (JSON lines)
    PYTHONPATH=$PWD python benchmarks/gpu_preset.py sweep --preset fmnist_gpu --raw data/raw/fashion_mnist \\
        --splits .gpu/splits --epochs 4 --counts 1,2,3,4 --out $OUT/concurrency.jsonl

    # back on any machine: the report (scores, summary, figures) from what came back
    python benchmarks/gpu_preset.py report --preset fmnist_gpu --raw data/raw/fashion_mnist \
        --splits data/splits/fashion_mnist --out docs/results/fmnist_gpu --from <the run's --out>

A dry run on a CPU: ``--device cpu --set model.width=8 --set pretrain.epochs=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_params(preset: str, device: str, sets: list[str]):
    """params.yaml with ``preset`` merged in and ``--set key=value`` overrides, validated."""
    import yaml

    from benchmarks.pretrain_throughput import apply_overrides
    from sdclr.pipeline.presets import apply_preset
    from sdclr.registry import parse_params

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "params.yaml"
        shutil.copyfile(ROOT / "params.yaml", path)
        if preset:
            apply_preset(preset, path)
        raw = yaml.safe_load(path.read_text())
    raw["device"] = device
    apply_overrides(raw, sets)
    return parse_params(raw, f"preset {preset}")


def job(args) -> None:
    """One (method, split): pretrain (unless ``random``), then every probe → the metrics JSON."""
    import torch

    from sdclr.data.device_data import channel_stats
    from sdclr.data.longtail import load_split
    from sdclr.device import resolve_device
    from sdclr.evaluate import evaluate_encoder
    from sdclr.methods.base import Method
    from sdclr.models import build_model
    from sdclr.pretrain_loop import Job, Outputs, pretrain
    from sdclr.registry import method_class
    from sdclr.runtime.numerics import describe
    from sdclr.storage.encoder_file import ModelSpec, load_encoder
    from sdclr.storage.io import load_raw, write_json

    params = load_params(args.preset, args.device, args.set)
    device = resolve_device(params.device)
    raw = load_raw(args.raw)
    train, test = raw.train, raw.test
    split = load_split(args.splits, args.split, params.subsample.splits, num_train=len(train["labels"]))
    spec = ModelSpec(train["images"].shape[-1], *channel_stats(train["images"]))
    out, t0 = Path(args.out), time.perf_counter()
    record = {"method": args.method, "split": args.split}
    if args.method == "random":
        torch.manual_seed(params.seed * 1000 + args.split)
        net = build_model(params.model.width, spec.in_channels, spec.mean, spec.std, Method.head_spec(params))
    else:
        encoder = out / "models" / args.method / f"split{args.split}.pt"
        job = Job(method_class(args.method), args.split, train["images"], split["longtail"], spec)
        history = out / "pretrain" / args.method / f"split{args.split}.csv"
        result = pretrain(params, job, Outputs(encoder, encoder.with_suffix(".ckpt"), history),
                          log=lambda m: print(m, flush=True))
        record.update(pretrain_seconds=round(result.seconds, 1), images_per_s=round(result.images_per_s, 1))
        if args.pretrain_only:
            print("JOB " + json.dumps(record), flush=True)
            return
        net = load_encoder(encoder)[0]
        encoder.unlink()  # 45 MB at width 64: the metrics are what comes back
    t1 = time.perf_counter()
    metrics = evaluate_encoder(net.to(device).eval(), train, test, split, params.evaluate, params.seed, device,
                               split_id=args.split)
    metrics.update(method=args.method, split=args.split, dataset=params.data.dataset,
                   numerics=describe(params.numerics, device))
    write_json(out / "metrics" / args.method / f"split{args.split}.json", metrics)
    record.update(evaluate_seconds=round(time.perf_counter() - t1, 1), seconds=round(time.perf_counter() - t0, 1))
    print("JOB " + json.dumps(record), flush=True)


def _launch(args, method: str, split: int, out: Path, extra: list[str] = (), share: int = 1) -> subprocess.Popen:
    """One job in its own process, with its ``1/share`` of the CPU threads (jobs side by side must not
    oversubscribe the cores: two 2-thread CPU trainings on 2 cores ran at half one's rate together)."""
    cmd = [sys.executable, __file__, "job", "--method", method, "--split", str(split), "--preset", args.preset,
           "--device", args.device, "--raw", str(args.raw), "--splits", str(args.splits), "--out", str(out), *extra]
    for item in args.set:
        cmd += ["--set", item]
    log = open(out / "logs" / f"{method}-split{split}.log", "w")
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, len(os.sched_getaffinity(0)) // share))}
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def _job_record(out: Path, method: str, split: int) -> dict | None:
    for line in (out / "logs" / f"{method}-split{split}.log").read_text().splitlines():
        if line.startswith("JOB "):
            return json.loads(line[4:])
    return None


def run(args) -> None:
    """Every (method, split), ``--concurrent`` at a time, split by split, until the deadline."""
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    todo = [(m, s) for s in args.split_ids for m in args.methods]
    running: dict[tuple, subprocess.Popen] = {}
    start = time.time()
    with open(out / "jobs.jsonl", "a") as jobs:
        while todo or running:
            while todo and len(running) < args.concurrent and time.time() - start < args.deadline:
                key = todo.pop(0)
                running[key] = _launch(args, *key, out, share=args.concurrent)
                print(f"[{time.time() - start:5.0f}s] start {key[0]} split {key[1]}", flush=True)
            if todo and time.time() - start >= args.deadline and not running:
                break
            time.sleep(2)
            for key, proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[key]
                rec = _job_record(out, *key) or {"method": key[0], "split": key[1], "error": f"exit {proc.returncode}"}
                jobs.write(json.dumps({**rec, "concurrent": args.concurrent,
                                       "finished_at_s": round(time.time() - start, 1)})
                           + "\n")
                jobs.flush()
                print(f"[{time.time() - start:5.0f}s] done {key[0]} split {key[1]}: {rec}", flush=True)
    print(f"wall {time.time() - start:.0f} s; not started: {todo}")


def sweep(args) -> None:
    """Aggregate pretraining images/s with N SimCLR trainings (``--epochs`` each) at once, N in ``--counts``."""
    import torch

    out = Path(args.out)
    for n in args.counts:
        work = Path(tempfile.mkdtemp())
        (work / "logs").mkdir()
        t0 = time.time()
        procs = [_launch(args, "simclr", s % 5, work, ["--pretrain-only"], share=n) for s in range(n)]
        codes = [p.wait() for p in procs]
        wall = time.time() - t0
        recs = [_job_record(work, "simclr", s % 5) for s in range(n)]
        line = {"benchmark": "concurrent_pretrain", "device": torch.cuda.get_device_name() if torch.cuda.is_available()
                else "cpu", "concurrent": n, "method": "simclr", "epochs": args.epochs, "exit_codes": codes,
                "wall_s": round(wall, 1), "steady_images_per_s_each": [r and r.get("images_per_s") for r in recs],
                "aggregate_images_per_s": round(sum((r or {}).get("images_per_s", 0) for r in recs), 1)}
        print(json.dumps(line), flush=True)
        with open(out, "a") as f:
            f.write(json.dumps(line) + "\n")
        shutil.rmtree(work)


def prepare(args) -> None:
    """The preset's splits into ``--splits`` (the subsample stage's function), to carry to the GPU machine."""
    from sdclr.data.longtail import make_splits, write_splits
    from sdclr.storage.io import load_raw

    params = load_params(args.preset, args.device, args.set)
    data = load_raw(args.raw, parts=("train",))
    labels = data.train["labels"]
    pool, val, splits = make_splits(labels, params.subsample, params.seed)
    write_splits(args.splits, labels, pool, val, splits, params.subsample, params.seed, data.meta["class_names"])
    print(f"{len(splits)} splits → {args.splits}")


def report(args) -> None:
    """The report stage's outputs from a run's metrics and histories (no MLflow run)."""
    from sdclr.report import write_report
    from sdclr.report.deviations import deviations

    params = load_params(args.preset, args.device, args.set)
    src = Path(args.source)
    write_report(src / "metrics", src / "pretrain", args.splits / "summary.json", params, args.out, deviations(params))
    shutil.copyfile(src / "jobs.jsonl", args.out / "jobs.jsonl")
    print(f"→ {args.out / 'report.md'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("prepare", "job", "run", "sweep", "report"):
        q = sub.add_parser(name)
        q.add_argument("--preset", default="fmnist_gpu")
        q.add_argument("--device", default="cuda")
        q.add_argument("--set", action="append", default=[], help="key=value over the preset (dotted keys)")
        q.add_argument("--raw", type=Path, required=True, help="the dataset folder (train.npz, test.npz, meta.json)")
        q.add_argument("--splits", type=Path, required=True, help="the splits folder")
        q.add_argument("--out", type=Path, required=name != "prepare")
    job_p, run_p, sweep_p = sub.choices["job"], sub.choices["run"], sub.choices["sweep"]
    sub.choices["report"].add_argument("--from", dest="source", required=True, help="a run's --out folder")
    job_p.add_argument("--method", required=True)
    job_p.add_argument("--split", type=int, required=True)
    job_p.add_argument("--pretrain-only", action="store_true")
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    run_p.add_argument("--methods", type=lambda s: s.split(","), default=["simclr", "sdclr", "sbid", "random"])
    run_p.add_argument("--split-ids", type=ints, default=[0, 1, 2, 3, 4])
    run_p.add_argument("--concurrent", type=int, default=3)
    run_p.add_argument("--deadline", type=float, default=float("inf"), help="seconds after which no job starts")
    sweep_p.add_argument("--counts", type=ints, default=[1, 2, 3, 4])
    sweep_p.add_argument("--epochs", type=int, default=4)
    args = p.parse_args()
    if args.command == "sweep":
        args.set = [*args.set, f"pretrain.epochs={args.epochs}"]
    {"prepare": prepare, "job": job, "run": run, "sweep": sweep, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
