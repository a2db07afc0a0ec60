"""Pretraining throughput and peak memory per method: one JSON line per configuration.

Runs the real training step (``sdclr.train.train_step``: augmentation on the device,
forward of every branch, backward, SGD) on synthetic uint8 images held on the device.
Each configuration runs in a fresh subprocess, so peak memory is that configuration's
own (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's peak RSS) and
``torch.compile`` caches don't leak between configurations.

Examples::

    # this machine's CPU default (Fashion-MNIST-sized images)
    python benchmarks/pretrain_throughput.py --width 16 --batch 256 --size 28 --channels 1
    # the paper's CIFAR setting on a GPU, bf16, with and without torch.compile
    python benchmarks/pretrain_throughput.py --device cuda --width 64 --batch 512 --size 32 \
        --channels 3 --amp bf16 --compile both

"images_per_s" counts source images (each gives two augmented views for simclr/sdclr, one for
sbid); "epoch_s" is the time of one epoch over ``--train-images`` images at that rate.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(args) -> dict:
    import torch
    import yaml

    from sdclr.config import parse_params
    from sdclr.data.augment import BatchAugment
    from sdclr.methods import build_method, head_spec
    from sdclr.models import build_model
    from sdclr.train import resolve_device, train_step

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"]["width"] = args.width
    raw["pretrain"]["batch_size"] = args.batch
    for item in args.set or []:  # e.g. sbid.negatives=4096
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = raw
        for k in parents:
            node = node[k]
        node[leaf] = yaml.safe_load(value)
    params = parse_params(raw)
    device = resolve_device(args.device)
    on_cuda = device.type == "cuda"
    channels_last = args.channels_last == "on" or (args.channels_last == "auto" and on_cuda)
    use_bf16 = args.amp == "bf16"

    torch.manual_seed(0)
    n = args.batch * 4
    data = torch.randint(0, 256, (n, args.channels, args.size, args.size), dtype=torch.uint8, device=device)
    net = build_model(params.model, args.channels, [0.5] * args.channels, [0.25] * args.channels,
                      head_spec(args.method, params))
    # sbid's memory bank has one entry per training image: size it like the real run.
    method = build_method(args.method, params, net, num_samples=max(n, args.train_images)).to(device)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    method.train()
    method.on_epoch_start(0)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    augment = BatchAugment(params.augment, channels=args.channels)
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    step_fn = torch.compile(method) if args.compile == "on" else method

    def run(steps: int) -> float:
        loss = torch.zeros((), device=device)
        for s in range(steps):
            idx = torch.randperm(n, device=device, generator=gen)[: args.batch]
            loss += train_step(step_fn, optimizer, data[idx], idx, augment, gen, channels_last, use_bf16)[0]
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
    return {
        "method": args.method, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "width": args.width, "batch": args.batch, "size": args.size, "channels": args.channels,
        "head": asdict(head_spec(args.method, params)), "overrides": args.set or [], "amp": args.amp, "channels_last": channels_last, "compile": args.compile == "on",
        "threads": torch.get_num_threads(), "steps": args.steps,
        "images_per_s": round(args.steps * args.batch / seconds, 1),
        "ms_per_step": round(1000 * seconds / args.steps, 2),
        "epoch_s": round((args.train_images // args.batch) * seconds / args.steps, 1),
        "warmup_s": round(warmup_s, 2),
        "peak_memory_mb": round(peak_mb, 1), "memory_kind": kind,
        "loss_finite": bool(final == final and abs(final) != float("inf")),
        "torch": torch.__version__,
    }


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
    p.add_argument("--method", help=argparse.SUPPRESS)  # internal: run one configuration in this process
    args = p.parse_args()

    if args.method:
        print(json.dumps(measure(args)), flush=True)
        return
    compiles = ["off", "on"] if args.compile == "both" else [args.compile]
    base = [a for a in sys.argv[1:]]
    for method in args.methods.split(","):
        for comp in compiles:
            cmd = [sys.executable, __file__, *base, "--method", method, "--compile", comp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(json.dumps({"method": method, "compile": comp == "on",
                                  "error": proc.stderr.strip().splitlines()[-1:]}), flush=True)
            else:
                print(proc.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
