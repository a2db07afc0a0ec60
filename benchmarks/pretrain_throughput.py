"""Pretraining throughput and peak memory per method: one JSON line per configuration.

Builds each run through the training code itself (``sdclr.train.build``: data on the
device, model, method, optimizer, precision, memory format, compile) and times its
``Training.step`` (augmentation on the device, forward of every branch, backward, SGD)
on synthetic uint8 images, so it can never measure something training does not run.
Each configuration runs in a fresh subprocess, so peak memory is that configuration's
own (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's peak RSS) and
``torch.compile`` caches don't leak between configurations.

Examples::

    # this machine's CPU default (Fashion-MNIST-sized images)
    python benchmarks/pretrain_throughput.py --width 16 --batch 256 --size 28 --channels 1
    # the paper's CIFAR setting on a GPU, bf16, with and without torch.compile
    python benchmarks/pretrain_throughput.py --device cuda --width 64 --batch 512 --size 32 \
        --channels 3 --amp bf16 --compile both

"images_per_s" counts source images; "views_per_s" the augmented views through the encoder
(two per image for simclr/sdclr, one for sbid); "epoch_s" is the time of one epoch over
``--train-images`` images at that rate.

``--baselines`` (3-channel images) also measures, in the same run, the eager model-only
bound and a conventional DataLoader pipeline (``benchmarks/baselines.py``) and prints the
ratios; ``--out FILE`` appends every line to a JSON-lines file (one per device and date
under ``benchmarks/results/``), so the numbers can be re-read::

    python benchmarks/pretrain_throughput.py --device cuda --width 64 --batch 512 --size 32 \
        --channels 3 --amp bf16 --baselines --out benchmarks/results/h100-$(date +%F).jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(args) -> dict:
    """Build the run exactly as training does (``sdclr.train.build``) and time ``Training.step``."""
    import numpy as np
    import torch
    import yaml

    from sdclr.config import parse_params
    from sdclr.methods import METHODS
    from sdclr.train import ModelSpec, build

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["device"] = args.device
    raw["model"]["width"] = args.width
    raw["pretrain"].update(batch_size=args.batch, amp=args.amp, channels_last=args.channels_last,
                           compile=args.compile == "on", nproc=1)
    for item in args.set or []:  # e.g. sbid.negatives=4096
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = raw
        for k in parents:
            node = node[k]
        node[leaf] = yaml.safe_load(value)
    params = parse_params(raw)

    # Synthetic uint8 images, as many as the real training subset (sbid's bank has one entry per image).
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.train_images, args.size, args.size, args.channels), dtype=np.uint8)
    spec = ModelSpec(args.channels, [0.5] * args.channels, [0.25] * args.channels)
    t = build(params, args.method, 0, images, np.arange(args.train_images), spec)
    device = t.data.device
    on_cuda = device.type == "cuda"
    t.step_fn.train()
    t.method.on_epoch_start(0)

    def run(steps: int) -> float:
        loss = torch.zeros((), device=device)
        for _ in range(steps):
            idx = torch.randperm(len(t.positions), device=device, generator=t.gen)[: args.batch]
            loss += t.step(idx)[0]
        return float(loss)  # one sync at the end

    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t_warm = time.perf_counter()
    run(args.warmup)
    warmup_s = time.perf_counter() - t_warm
    if on_cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    final = run(args.steps)
    if on_cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    if on_cuda:
        peak_mb, kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    else:
        peak_mb, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"
    cls = METHODS[args.method]
    return {
        "method": args.method, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "width": args.width, "batch": args.batch, "size": args.size, "channels": args.channels,
        "head": asdict(cls.head_spec(params)), "overrides": args.set or [], "amp": args.amp,
        "channels_last": t.method.channels_last, "compile": args.compile == "on",
        "threads": torch.get_num_threads(), "steps": args.steps,
        "images_per_s": round(args.steps * args.batch / seconds, 1),
        "views_per_s": round(args.steps * args.batch * cls.views_per_image / seconds, 1),
        "ms_per_step": round(1000 * seconds / args.steps, 2),
        "epoch_s": round((args.train_images // args.batch) * seconds / args.steps, 1),
        "warmup_s": round(warmup_s, 2),
        "peak_memory_mb": round(peak_mb, 1), "memory_kind": kind,
        "loss_finite": bool(final == final and abs(final) != float("inf")),
        "torch": torch.__version__,
    }


def measure_baseline(args) -> dict:
    import numpy as np
    import torch

    from benchmarks.baselines import measure as measure_one
    from sdclr.train import resolve_device

    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (max(args.batch * 4, 2048), args.size, args.size, 3), dtype=np.uint8)
    on_cuda = device.type == "cuda"
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and on_cuda)
    row = measure_one(args.baseline, device, images, args.batch, args.steps, args.warmup, args.amp == "bf16",
                      channels_last, args.workers)
    return {**row, "device": str(device), "device_name": torch.cuda.get_device_name(device) if on_cuda else "cpu",
            "width": 64, "batch": args.batch, "size": args.size, "channels": 3, "amp": args.amp,
            "channels_last": channels_last, "threads": torch.get_num_threads(), "steps": args.steps,
            "torch": torch.__version__}


def ratios(rows: list[dict]) -> dict:
    """Each method's images/s over the baselines' and over SimCLR's (same run, same settings)."""
    rate = {r.get("method") or r.get("baseline"): r["images_per_s"] for r in rows if "images_per_s" in r}
    out = {}
    for m in (r["method"] for r in rows if "method" in r and "images_per_s" in r):  # every method measured
        for ref in ("model_bound", "conventional", "simclr"):
            if m in rate and ref in rate and m != ref:
                out[f"{m}/{ref}"] = round(rate[m] / rate[ref], 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="simclr,sdclr,sbid", help="comma-separated method keys")
    p.add_argument("--device", default="auto")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--amp", choices=["off", "bf16"], default="off")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--compile", choices=["off", "on", "both"], default="off")
    p.add_argument("--train-images", type=int, default=13_399,
                   help="training-set size = sbid memory-bank entries (default: the Fashion-MNIST-LT subset of params.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a params.yaml key for every configuration, e.g. --set sbid.negatives=4096")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--baselines", action="store_true",
                   help="also the eager model-only bound and a conventional DataLoader pipeline (3 channels)")
    p.add_argument("--workers", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)),
                   help="DataLoader worker processes of the conventional baseline")
    p.add_argument("--out", type=Path, help="append every JSON line to this file")
    p.add_argument("--method", help=argparse.SUPPRESS)  # internal: run one configuration in this process
    p.add_argument("--baseline", help=argparse.SUPPRESS)  # internal: run one baseline in this process
    args = p.parse_args()

    if args.method:
        print(json.dumps(measure(args)), flush=True)
        return
    if args.baseline:
        print(json.dumps(measure_baseline(args)), flush=True)
        return
    if args.baselines and (args.channels != 3 or args.width != 64):
        p.error("--baselines needs --channels 3 and --width 64: the baselines are torchvision's ResNet-18 "
                "and the SimCLR CIFAR input pipeline, comparable only to the paper's setting")
    compiles = ["off", "on"] if args.compile == "both" else [args.compile]
    base = [a for a in sys.argv[1:]]
    configs = [(["--method", m, "--compile", c], {"method": m, "compile": c == "on"})
               for m in args.methods.split(",") for c in compiles]
    if args.baselines:
        configs += [(["--baseline", b], {"baseline": b}) for b in ("model_bound", "conventional")]
    rows = []
    for extra, label in configs:
        proc = subprocess.run([sys.executable, __file__, *base, *extra], capture_output=True, text=True)
        row = ({**label, "error": proc.stderr.strip().splitlines()[-1:]} if proc.returncode != 0
               else json.loads(proc.stdout.strip().splitlines()[-1]))
        rows.append(row)
        emit(row, args.out)
    if args.baselines or len(rows) > 1:
        emit({"ratios": ratios(rows), "date": time.strftime("%Y-%m-%d")}, args.out)


def emit(row: dict, out: Path | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
