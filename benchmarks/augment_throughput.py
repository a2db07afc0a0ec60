"""Throughput of the on-device batch augmentation (``sdclr.data.augment.BatchAugment``).

Times one augmented view of a random uint8 batch with the paper's augmentation
parameters, after a warm-up, and prints one JSON line. Run from the repository root:

    python benchmarks/augment_throughput.py                          # CUDA if available, else CPU
    python benchmarks/augment_throughput.py --device cpu --size 28 --channels 1
    python benchmarks/augment_throughput.py --batch 512 --size 32 --channels 3 --iters 50
    python benchmarks/augment_throughput.py --compile default      # the transform through torch.compile
    python benchmarks/augment_throughput.py --randaugment 2         # then BCL-D's RandAugment (n = 2)

A training step calls the augmentation twice (two views), so per-step augmentation
time is about 2 × ``ms_per_batch``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from sdclr.config import AugmentParams  # noqa: E402
from sdclr.data.augment import BatchAugment  # noqa: E402
from sdclr.data.randaugment import rand_augment  # noqa: E402

PAPER = AugmentParams(crop_scale=(0.1, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_p=0.5, jitter=(0.4, 0.4, 0.4, 0.1),
                      jitter_p=0.8, gray_p=0.2, interpolation="bicubic")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3, choices=(1, 3))
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", default="off", help="off, or a torch.compile mode for the transform")
    ap.add_argument("--randaugment", type=int, default=0, metavar="N",
                    help="then BCL's RandAugment with N ops per view, at BCL-D's probability and magnitude "
                         "for w ~ U(0, 1) (p = w, m = 5 + 25·w·U)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (args.batch, args.channels, args.size, args.size), dtype=torch.uint8,
                           generator=gen, device=device)
    augment = BatchAugment(PAPER, channels=args.channels)
    if args.compile != "off":
        augment.compile(args.compile)
    w = torch.rand(args.batch, generator=gen, device=device)
    prob, magnitude = w, 5 + 25 * w * torch.rand(args.batch, generator=gen, device=device)

    def view():
        x = augment(images, gen)
        return rand_augment(x, args.randaugment, prob, magnitude, gen) if args.randaugment else x

    for _ in range(args.warmup):
        view()
    sync()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        view()
    sync()
    seconds = (time.perf_counter() - t0) / args.iters
    result = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else "cpu", "compile": args.compile, "randaugment_ops": args.randaugment,
              "batch": args.batch, "size": args.size, "channels": args.channels,
              "images_per_s": round(args.batch / seconds, 1), "ms_per_batch": round(1000 * seconds, 3)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
