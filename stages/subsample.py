"""Stage `subsample`: balanced validation hold-out and the long-tail / balanced / few-shot splits."""

from sdclr.runtime.numerics import pin_before_torch

pin_before_torch()  # first: torch reads its kernel level once, when it loads (sdclr/runtime/numerics.py)

from pathlib import Path

from sdclr.data.longtail import make_splits, write_splits
from sdclr.stage import run_stage
from sdclr.storage.io import load_raw


def main(params, args):
    raw, out = args.raw, args.out
    data = load_raw(raw, parts=("train",))  # checked and verified against the download's checksums
    meta, labels = data.meta, data.train["labels"]
    pool, val, splits = make_splits(labels, params.subsample, params.seed)
    summary = write_splits(out, labels, pool, val, splits, params.subsample, params.seed, meta["class_names"])
    for s in summary["splits"]:
        print(f"split {s['split_id']}: long-tail {s['longtail_total']} images "
              f"(largest {max(s['longtail_counts'])}, smallest {min(s['longtail_counts'])}), "
              f"balanced {s['balanced_total']}, few-shot {s['fewshot_total']}")
    print(f"validation {len(val)}, pool {len(pool)} → {out}")


def add_arguments(p):
    p.add_argument("--raw", required=True, type=Path, help="the download stage's dataset folder")
    p.add_argument("--out", required=True, type=Path, help="the splits folder to write")


if __name__ == "__main__":
    run_stage(main, __doc__, add_arguments, outputs=("out",))
