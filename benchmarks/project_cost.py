"""Projected pretraining time of a whole recipe from measured throughputs.

The rates come from a JSON-lines file written by ``pretrain_throughput.py --out`` (the
last line of each method/baseline wins) or from ``--rate METHOD=IMAGES_PER_S``; the
schedule (epochs per method, splits) and the training-set size from a preset. Evaluation
is not included (it is minutes, against hours of pretraining at the paper's setting).

    python benchmarks/project_cost.py --preset cifar10_paper --train-images 11165 \\
        --rate simclr=21796 --rate sdclr=16692 --rate sbid=37068
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def read_rates(path: Path) -> dict[str, float]:
    rates = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        key = row.get("method") or row.get("baseline")
        if key and "images_per_s" in row:
            rates[key] = row["images_per_s"]
    return rates


def project(epochs: dict[str, int], splits: int, train_images: int, rates: dict[str, float]) -> dict:
    """Seconds per method and split, and the total over every split, at the given rates."""
    per_split = {m: epochs[m] * train_images / rates[m] for m in epochs if m in rates}
    return {"per_split_s": {m: round(s) for m, s in per_split.items()}, "splits": splits,
            "total_h": round(splits * sum(per_split.values()) / 3600, 2)}


def merge(target: dict, update: dict) -> None:
    """A preset over params.yaml's dict, in memory (``python -m sdclr.pipeline.presets`` writes the file)."""
    for key, value in update.items():
        if isinstance(value, dict):
            merge(target[key], value)
        else:
            target[key] = value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cifar10_paper", help="a presets/ name: its epochs and splits")
    p.add_argument("--train-images", type=int, required=True, help="images in one long-tail training subset")
    p.add_argument("--results", type=Path, help="a pretrain_throughput.py --out file")
    p.add_argument("--rate", action="append", default=[], metavar="METHOD=IMAGES_PER_S")
    p.add_argument("--conventional", type=float,
                   help="images/s of a conventional pipeline, applied to SimCLR and SDCLR")
    args = p.parse_args()

    import yaml

    from sdclr.config import PRESET_DIR
    from sdclr.registry import METHODS, method_class, parse_params

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    merge(raw, yaml.safe_load((PRESET_DIR / f"{args.preset}.yaml").read_text()))
    params = parse_params(raw, f"params.yaml with preset {args.preset}")
    epochs = {name: method_class(name).setting(params, "epochs") for name in METHODS}
    rates = read_rates(args.results) if args.results else {}
    rates.update({k: float(v) for k, v in (r.split("=", 1) for r in args.rate)})
    print(json.dumps({"preset": args.preset, "rates": rates,
                      **project(epochs, len(params.subsample.splits), args.train_images, rates)}))
    if args.conventional:
        conventional = {m: args.conventional for m in ("simclr", "sdclr")} | {m: r for m,
                                                                              r in rates.items() if m == "sbid"}
        print(json.dumps({"preset": args.preset, "pipeline": "conventional", "rates": conventional,
                          **project(epochs, len(params.subsample.splits), args.train_images, conventional)}))


if __name__ == "__main__":
    main()
