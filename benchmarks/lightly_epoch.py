"""One SimCLR epoch here against lightly 1.6.0's at the same settings and the same thread count.

Both sides train the same network (this project's ResNet-18, CIFAR stem, ``model.width``) on
the same long-tail subset (split ``--split`` of the default pipeline's ``data/``), batch
``pretrain.batch_size``, SGD with ``pretrain.lr``/momentum/weight decay, NT-Xent at
``pretrain.temperature``, a 2-layer 512-d projection head, random resized crops of scale
``augment.crop_scale`` and horizontal flips (no colour ops: 1-channel images). What differs is
what each library brings: lightly's ``SimCLRTransform`` (PIL, per image, in a ``DataLoader``),
``SimCLRProjectionHead`` and ``NTXentLoss``; here, the batched on-device augmentation and
``sdclr.pretrain_step.Training.step``. Each side runs in its own process under the stages' numerics
pins (``numerics: portable`` = one thread; ``--loader-workers`` adds lightly's loader processes).

    pip install --target .bench/lightly --no-deps lightly==1.6.0 lightning_utilities
    python benchmarks/lightly_epoch.py --steps 40 --repeats 3 --out benchmarks/results/lightly-$(date +%F).jsonl

Prints one JSON line per side and repeat (seconds per epoch of the subset, from ``--steps``
timed steps after ``--warmup``), then the median ratio ours / lightly's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIGHTLY = ROOT / ".bench" / "lightly"


def _setup(numerics_mode: str):
    sys.path[:0] = [str(ROOT), str(LIGHTLY)]
    from sdclr.runtime import numerics

    numerics.pin(numerics_mode)
    import torch

    numerics.apply(numerics_mode)
    from sdclr.data.device_data import channel_stats
    from sdclr.data.longtail import load_split
    from sdclr.registry import load_params
    from sdclr.storage.io import load_raw

    params = load_params(ROOT / "params.yaml")
    train = load_raw(ROOT / "data" / "raw" / params.data.dataset, parts=("train",)).train
    return torch, params, train, load_split, channel_stats


def ours(args) -> tuple[float, int]:
    """Seconds per step of this project's SimCLR (``Training.step``: augmentation, forward, backward, SGD)."""
    torch, params, train, load_split, channel_stats = _setup(args.numerics)
    from sdclr.pretrain_loop import Job, build
    from sdclr.registry import method_class
    from sdclr.storage.encoder_file import ModelSpec

    images = train["images"]
    split = load_split(ROOT / "data" / "splits" / params.data.dataset, args.split, num_train=len(images))
    spec = ModelSpec(images.shape[-1], *channel_stats(images))
    training = build(params, Job(method_class("simclr"), args.split, images, split["longtail"], spec))
    training.step_fn.train()
    batches = torch.randperm(len(training.positions)).split(training.local_batch)
    for idx in batches[: args.warmup]:
        training.step(idx)
    t0 = time.perf_counter()
    for idx in batches[args.warmup : args.warmup + args.steps]:
        training.step(idx)
    return (time.perf_counter() - t0) / args.steps, training.schedule.steps_per_epoch


def lightly(args) -> tuple[float, int]:
    """Seconds per step of lightly 1.6.0's SimCLR recipe on the same network and subset."""
    torch, params, train, load_split, channel_stats = _setup(args.numerics)
    try:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead
        from lightly.transforms import SimCLRTransform
    except ImportError as e:
        sys.exit(f"lightly is not importable ({e}); install it with: pip install --target {LIGHTLY} --no-deps "
                 "lightly==1.6.0 lightning_utilities")
    from PIL import Image

    from sdclr.models.resnet import ResNet18

    images, p = train["images"], params.pretrain
    split = load_split(ROOT / "data" / "splits" / params.data.dataset, args.split, num_train=len(images))
    mean, std = channel_stats(images)
    transform = SimCLRTransform(input_size=images.shape[1], cj_prob=0.0, min_scale=params.augment.crop_scale[0],
                                random_gray_scale=0.0, gaussian_blur=0.0, hf_prob=params.augment.flip_p,
                                normalize={"mean": mean, "std": std})
    subset = [Image.fromarray(images[i][:, :, 0], mode="L") for i in split["longtail"]]

    class Views(torch.utils.data.Dataset):
        def __len__(self):
            return len(subset)

        def __getitem__(self, i):
            return transform(subset[i])

    loader = torch.utils.data.DataLoader(Views(), batch_size=p.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.loader_workers)
    # lightly's transform normalises, so the backbone's own normalisation is the identity here
    backbone = ResNet18(1, params.model.width, [0.0], [1.0])
    head = SimCLRProjectionHead(backbone.feature_dim, params.model.head_hidden, params.model.proj_dim)
    model = torch.nn.Sequential(backbone, head)
    criterion = NTXentLoss(temperature=p.temperature)
    optimizer = torch.optim.SGD(model.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)
    batches = iter(loader)

    def step():
        x0, x1 = next(batches)
        loss = criterion(model(x0), model(x1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    return (time.perf_counter() - t0) / args.steps, len(loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", type=int, default=0)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per side and repeat")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each side")
    parser.add_argument("--numerics", default="portable", choices=("portable", "native"))
    parser.add_argument("--loader-workers", type=int, default=0, help="lightly's DataLoader processes (0: in-process)")
    parser.add_argument("--side", choices=("ours", "lightly"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="append the JSON lines to this file")
    args = parser.parse_args()
    if args.side:  # one measurement, in its own process
        seconds, steps = (ours if args.side == "ours" else lightly)(args)
        print(json.dumps({"s_per_step": seconds, "steps_per_epoch": steps}))
        return
    sys.path.insert(0, str(ROOT))
    from sdclr.runtime.numerics import cpu_model

    rows = []
    for repeat in range(args.repeats):
        for side in ("ours", "lightly"):
            cmd = [sys.executable, __file__, "--side", side, "--split", str(args.split), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--numerics", args.numerics,
                   "--loader-workers", str(args.loader_workers)]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                sys.exit(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"{side} failed")
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            s = measured["s_per_step"]
            row = {"side": side, "repeat": repeat, "s_per_step": round(s, 5), "steps": args.steps,
                   "epoch_s": round(s * measured["steps_per_epoch"], 2), "numerics": args.numerics,
                   "loader_workers": args.loader_workers, "cpu": cpu_model(), "date": time.strftime("%Y-%m-%d")}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    ratio = [o["s_per_step"] / lt["s_per_step"] for o, lt in zip(rows[::2], rows[1::2])]
    print(f"ours / lightly per epoch: median {statistics.median(ratio):.3f} "
          f"(min {min(ratio):.3f}, max {max(ratio):.3f}, "
          f"{len(ratio)} alternating pairs)")


if __name__ == "__main__":
    main()
