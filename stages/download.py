"""Stage `download`: put the official dataset into data/raw/<dataset>/ as verified .npz."""

from sdclr.runtime.numerics import pin_before_torch

pin_before_torch()  # first: torch reads its kernel level once, when it loads (sdclr/runtime/numerics.py)

from pathlib import Path

from sdclr.data.sources import fetch_dataset
from sdclr.stage import run_stage


def main(params, args):
    out = args.out
    meta = fetch_dataset(
        params.data.dataset,
        out,
        source_dir=params.data.source_dir,
        allow_download=params.data.download,
    )
    print(f"{params.data.dataset}: {meta['train_count']} train / {meta['test_count']} test images "
          f"from {meta['source']['kind']} → {out}")


def add_arguments(p):
    p.add_argument("--out", required=True, type=Path, help="the dataset folder, e.g. data/raw/fashion_mnist")


if __name__ == "__main__":
    run_stage(main, __doc__, add_arguments, outputs=("out",))
