"""Pretraining throughput and peak memory per method: one JSON line per configuration.

Builds each run through the training code itself (``sdclr.pretrain_loop.build``: data on the
device, model, method, optimizer, precision, memory format, compile) and times its
``Training.step`` (augmentation on the device, forward of every branch, backward, SGD)
on synthetic uint8 images, so it can never measure something training does not run.
Each configuration runs in a fresh subprocess, so peak memory is that configuration's
own (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's peak RSS) and
``torch.compile``'s in-memory state doesn't leak between configurations. ``--warm-parallel``
first runs every compiled configuration for a few steps at once, so Inductor's on-disk
cache is warm when each is then timed alone: the same numbers, minutes sooner.

Examples::

    # this machine's CPU default (Fashion-MNIST-sized images)
    python benchmarks/pretrain_throughput.py --width 16 --batch 256 --size 28 --channels 1
    # the paper's CIFAR setting on a GPU, bf16, eager and two torch.compile modes
    python benchmarks/pretrain_throughput.py --device cuda --width 64 --batch 512 --size 32 \
        --channels 3 --amp bf16 --compile off,default,reduce-overhead --warm-parallel

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


def apply_overrides(raw: dict, items: list[str]) -> None:
    """``KEY=VALUE`` items (dotted keys, YAML values) written into a params.yaml dict."""
    import yaml

    for item in items:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = raw
        for k in parents:
            node = node[k]
        node[leaf] = yaml.safe_load(value)


def measure(args) -> dict:
    """Build the run exactly as training does (``sdclr.pretrain_loop.build``) and time ``Training.step``."""
    params = _bench_params(args)
    t = _build_synthetic_run(args, params)
    _apply_levers(args, t)
    warmup_s, seconds, losses = _time_steps(args, t)
    peak = _peak_memory(t.data.device)
    return _measurement_row(args, params, t, warmup_s, seconds, losses, peak)


def _bench_params(args):
    """params.yaml with this configuration's settings and the ``--set`` overrides written in."""
    import yaml

    from sdclr.registry import parse_params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["device"] = args.device
    raw["model"]["width"] = args.width
    raw["pretrain"].update(batch_size=args.batch, amp=args.amp, channels_last=args.channels_last,
                           compile=args.compile != "off", nproc=1)
    if args.compile != "off":
        raw["pretrain"]["compile_mode"] = args.compile
    apply_overrides(raw, args.set or [])  # e.g. sbid.negatives=4096
    return parse_params(raw)


def _build_synthetic_run(args, params):
    """Training's own run of ``args.method`` (``sdclr.pretrain_loop.build``), on synthetic images."""
    import numpy as np

    from sdclr.pretrain_loop import Job, build
    from sdclr.registry import method_class
    from sdclr.storage.encoder_file import ModelSpec

    # Synthetic uint8 images, as many as the real training subset (sbid's bank has one entry per image).
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.train_images, args.size, args.size, args.channels), dtype=np.uint8)
    spec = ModelSpec(args.channels, [0.5] * args.channels, [0.25] * args.channels)
    return build(params, Job(method_class(args.method), 0, images, np.arange(args.train_images), spec))


def _apply_levers(args, t) -> None:
    """Override, one lever at a time, what ``build`` chose, so each lever's effect can be measured."""
    import torch

    if args.cudnn_benchmark != "auto":  # a lever measured on its own (build turns it on for CUDA)
        torch.backends.cudnn.benchmark = args.cudnn_benchmark == "on"
    if args.augment_compile == "off":  # a lever measured on its own: compile the network only
        t.method.augment.uncompile()
    if args.sgd != "auto":  # a lever measured on its own: one fused kernel for the SGD update, or not
        group = t.optimizer.param_groups[0]
        t.optimizer = torch.optim.SGD(t.method.parameters(), lr=group["lr"], momentum=group["momentum"],
                                      weight_decay=group["weight_decay"], fused=args.sgd == "fused" or None)


def _time_steps(args, t):
    """Warm-up seconds, the median seconds of ``--repeats`` windows of ``--steps`` steps, and every step's loss."""
    import torch

    device = t.data.device
    on_cuda = device.type == "cuda"
    t.step_fn.train()
    t.method.on_epoch_start(0)

    def run(steps: int) -> torch.Tensor:
        losses = []
        for _ in range(steps):
            idx = torch.randperm(len(t.positions), device=device, generator=t.gen)[: args.batch]
            losses.append(t.step(idx)[0])
        return torch.stack(losses).cpu()  # one sync at the end

    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t_warm = time.perf_counter()
    warm_losses = run(args.warmup)
    warmup_s = time.perf_counter() - t_warm
    times, losses = [], [warm_losses]
    for _ in range(args.repeats):  # the median of several timed windows
        if on_cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        losses.append(run(args.steps))
        times.append(time.perf_counter() - t0)
    seconds = sorted(times)[len(times) // 2]
    return warmup_s, seconds, torch.cat(losses)


def _peak_memory(device) -> tuple[float, str]:
    """The peak memory in MiB and what it counts (CUDA: allocated tensors; CPU: the process's peak RSS)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_peak_rss"


def _measurement_row(args, params, t, warmup_s: float, seconds: float, losses, peak: tuple[float, str]) -> dict:
    """The JSON line of one configuration: its settings, rates, peak memory and losses."""
    import torch

    from sdclr.registry import method_class
    from sdclr.runtime.numerics import cpu_model

    device = t.data.device
    on_cuda = device.type == "cuda"
    peak_mb, kind = peak
    cls = method_class(args.method)
    return {
        "method": args.method, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if on_cuda else f"cpu: {cpu_model()}",
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
        "concurrent": int(os.environ.get("BENCH_CONCURRENT", 1)),
        "allocator": os.environ.get("BENCH_ALLOCATOR", "system"),
        "width": args.width, "batch": args.batch, "size": args.size, "channels": args.channels,
        "head": asdict(cls.head_spec(params)), "overrides": args.set or [], "amp": args.amp,
        "channels_last": t.method.channels_last, "compile": args.compile,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "sgd": "fused" if t.optimizer.defaults.get("fused") else "default",
        "augment_compiled": args.compile != "off" and args.augment_compile == "auto",
        "threads": torch.get_num_threads(), "steps": args.steps, "repeats": args.repeats,
        "images_per_s": round(args.steps * args.batch / seconds, 1),
        "views_per_s": round(args.steps * args.batch * cls.views_per_image / seconds, 1),
        "ms_per_step": round(1000 * seconds / args.steps, 2),
        "epoch_s": round((args.train_images // args.batch) * seconds / args.steps, 1),
        "warmup_s": round(warmup_s, 2),
        "peak_memory_mb": round(peak_mb, 1), "memory_kind": kind,
        "loss_finite": bool(torch.isfinite(losses).all()),
        # the loss of every step from the first (warm-up included), same seed for every
        # configuration: an optimised path must follow the plain one within bf16 noise
        "loss_first": round(float(losses[0]), 5), "loss_mean": round(float(losses.mean()), 5),
        "loss_last": round(float(losses[-1]), 5),
        "torch": torch.__version__,
    }


def measure_baseline(args) -> dict:
    import numpy as np
    import torch

    from benchmarks.baselines import measure as measure_one
    from sdclr.device import resolve_device

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


def _label(row: dict) -> str:
    """``simclr`` (eager), ``simclr+reduce-overhead`` (compiled), or the baseline's name."""
    if "baseline" in row:
        return row["baseline"]
    mode = row.get("compile", "off")
    return row["method"] if mode in ("off", False) else f"{row['method']}+{'default' if mode is True else mode}"


def ratios(rows: list[dict]) -> dict:
    """Each configuration's images/s over the baselines' and over SimCLR's in the same compile
    mode (same run, same settings)."""
    rate = {_label(r): r["images_per_s"] for r in rows if "images_per_s" in r}
    out = {}
    for r in rows:
        if "method" not in r or "images_per_s" not in r:
            continue
        label = _label(r)
        simclr = label.replace(r["method"], "simclr", 1)
        for ref in ("model_bound", "conventional", simclr):
            if ref in rate and ref != label:
                out[f"{label}/{ref}"] = round(rate[label] / rate[ref], 3)
    return out


def main() -> None:
    p = _parser()
    args = p.parse_args()

    if args.method:
        print(json.dumps(measure(args)), flush=True)
        return
    if args.baseline:
        print(json.dumps(measure_baseline(args)), flush=True)
        return
    compiles = _compile_modes(p, args)
    base = _without(sys.argv[1:], "--compile")
    configs = [(["--method", m, "--compile", c], {"method": m, "compile": c})
               for m in args.methods.split(",") for c in compiles]
    if args.warm_parallel:
        _warm_inductor_cache(base, configs)
    if args.baselines:  # first: a run cut short by a time limit still has them
        configs = [(["--baseline", b], {"baseline": b}) for b in ("model_bound", "conventional")] + configs
    rows = _run_configs(base, configs, args.out)
    if args.baselines or len(rows) > 1:
        emit({"ratios": ratios(rows), "date": time.strftime("%Y-%m-%d")}, args.out)


def _parser() -> argparse.ArgumentParser:
    """The command line; ``--method`` and ``--baseline`` are internal: one configuration per subprocess."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="simclr,sdclr,sbid", help="comma-separated method keys")
    p.add_argument("--device", default="auto")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--amp", choices=["off", "bf16"], default="off")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--compile", default="off",
                   help="comma-separated: off | default | reduce-overhead | max-autotune-no-cudagraphs (on = default)")
    p.add_argument("--warm-parallel", action="store_true",
                   help="run the compiled configurations briefly side by side first, to fill Inductor's cache")
    p.add_argument("--cudnn-benchmark", choices=["auto", "on", "off"], default="auto",
                   help="auto = as training sets it (on for CUDA)")
    p.add_argument("--augment-compile", choices=["auto", "off"], default="auto",
                   help="auto = as training does (compiled with the network); off = the network only")
    p.add_argument("--sgd", choices=["auto", "fused", "default"], default="auto",
                   help="auto = as training builds it (fused when compiled on CUDA); fused; default = "
                        "torch's default (foreach on CUDA)")
    p.add_argument("--repeats", type=int, default=3, help="timed windows of --steps steps; the median counts")
    p.add_argument("--train-images", type=int, default=13_399,
                   help="training-set size = sbid memory-bank entries "
                        "(default: the Fashion-MNIST-LT subset of params.yaml)")
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
    return p


def _compile_modes(p: argparse.ArgumentParser, args) -> list[str]:
    """The ``--compile`` modes (``on`` read as ``default``), after checking them and ``--baselines``."""
    if args.baselines and (args.channels != 3 or args.width != 64):
        p.error("--baselines needs --channels 3 and --width 64: the baselines are torchvision's ResNet-18 "
                "and the SimCLR CIFAR input pipeline, comparable only to the paper's setting")
    compiles = [{"on": "default"}.get(c, c) for c in args.compile.split(",")]
    unknown = set(compiles) - {"off", "default", "reduce-overhead", "max-autotune-no-cudagraphs"}
    if unknown:
        p.error(f"--compile: unknown mode(s) {sorted(unknown)}")
    return compiles


def _warm_inductor_cache(base: list[str], configs: list[tuple[list[str], dict]]) -> None:
    """Run every compiled configuration for a few steps at once, so each is then timed with a warm cache."""
    warm = [subprocess.Popen([sys.executable, __file__, *base, *extra, "--steps", "1", "--warmup", "2",
                              "--repeats", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for extra, label in configs if label["compile"] != "off"]
    for proc in warm:
        proc.wait()


def _run_configs(base: list[str], configs: list[tuple[list[str], dict]], out: Path | None) -> list[dict]:
    """Each configuration in a fresh subprocess, one after another; every row emitted as it comes."""
    rows = []
    for extra, label in configs:
        proc = subprocess.run([sys.executable, __file__, *base, *extra], capture_output=True, text=True)
        row = ({**label, "error": proc.stderr.strip().splitlines()[-1:]} if proc.returncode != 0
               else json.loads(proc.stdout.strip().splitlines()[-1]))
        rows.append(row)
        emit(row, out)
    return rows


def _without(argv: list[str], flag: str) -> list[str]:
    """``argv`` less ``flag`` and its value (either ``--flag v`` or ``--flag=v``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def emit(row: dict, out: Path | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
