"""Score a setting on the validation hold-out only: how the CPU default's settings were chosen.

Pretrains one method on one split with params.yaml overridden (``-S key=value``, as ``dvc exp
run -S``), or takes an encoder file, or the untrained encoder (``--method random``), then runs
the evaluation's probes with the *validation* images as the only held-out set: the full-shot
and few-shot linear probes (their best-epoch validation accuracy) and kNN under each setting of
``--knn``. No test image or label is read, so a setting chosen with it leaves the test set to
the verdicts. One JSON line per call (appended to ``--out``):

    python benchmarks/validation_sweep.py --method simclr --split 0 -S pretrain.epochs=4 -S pretrain.lr=1.0
    python benchmarks/validation_sweep.py --method random --split 1
    python benchmarks/validation_sweep.py --encoder models/sdclr/split2.pt --split 2 --knn std:10:0.05,raw:200:0.1

Needs the default pipeline's ``data/`` (``dvc repro subsample``). Encoders it trains go to
``--work`` (one folder per setting, reused when it exists).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def knn_accuracy(pool_x, pool_y, val_x, val_y, kind: str, k: int, temperature: float) -> float:
    """Mean per-class validation accuracy of the evaluation's kNN on ``kind`` (std | raw) features."""
    import numpy as np

    from sdclr.evaluate import knn_predict, standardiser
    from sdclr.metrics import per_class_accuracy

    prepare = standardiser(pool_x) if kind == "std" else (lambda t: t)
    pred = knn_predict(prepare(pool_x), pool_y, prepare(val_x), int(pool_y.max()) + 1, k, temperature)
    return float(np.nanmean(per_class_accuracy(pred, val_y.numpy(), int(pool_y.max()) + 1)))


def main() -> None:
    p = _parser()
    args = p.parse_args()
    if (args.method is None) == (args.encoder is None):
        p.error("give --method or --encoder")

    from sdclr.runtime.numerics import pin

    pin("portable")
    params = _params_with(args.set)
    images, labels, split = _training_data(params, args.split)
    t0 = time.perf_counter()
    net = _encoder(args, params, images, split)
    seconds = time.perf_counter() - t0
    line = json.dumps(_validation_scores(args, params, net, images, labels, split, seconds))
    print(line)
    if args.out:
        with args.out.open("a") as f:
            f.write(line + "\n")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", help="a registered method to pretrain, or random (the untrained encoder)")
    p.add_argument("--encoder", type=Path, help="an encoder file to score instead")
    p.add_argument("--split", type=int, required=True)
    p.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="params.yaml override")
    p.add_argument("--knn", default="std:10:0.05,std:20:0.1,raw:200:0.1",
                   help="kNN settings to score, features:k:temperature, comma-separated")
    p.add_argument("--work", type=Path, default=ROOT / ".bench" / "sweep", help="where trained encoders go")
    p.add_argument("--out", type=Path, help="append the JSON line here")
    return p


def _params_with(overrides: list[str]):
    """params.yaml with the ``-S`` overrides; its numerics applied to torch (after :func:`pin`)."""
    import yaml

    from benchmarks.pretrain_throughput import apply_overrides
    from sdclr.registry import parse_params
    from sdclr.runtime.numerics import apply

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    apply_overrides(raw, overrides)
    params = parse_params(raw)
    apply(params.numerics)
    return params


def _training_data(params, split_index: int):
    """The training images, their labels and the split's index sets (longtail, pool, val, fewshot)."""
    from sdclr.data.longtail import load_split
    from sdclr.storage.io import load_raw

    train = load_raw(ROOT / "data" / "raw" / params.data.dataset, parts=("train",)).train
    images, labels = train["images"], train["labels"]
    split = load_split(ROOT / "data" / "splits" / params.data.dataset, split_index, num_train=len(images))
    return images, labels, split


def _encoder(args, params, images, split):
    """The encoder to score: ``--encoder``'s file, the untrained one (``random``), or one pretrained here."""
    import torch

    from sdclr.data.device_data import channel_stats
    from sdclr.methods.base import Method
    from sdclr.models import build_model
    from sdclr.storage.encoder_file import load_encoder

    if args.encoder:
        return load_encoder(args.encoder)[0]
    if args.method == "random":
        torch.manual_seed(params.seed * 1000 + args.split)  # the evaluate stage's untrained encoder of this split
        return build_model(params.model.width, images.shape[-1], *channel_stats(images), Method.head_spec(params))
    return _pretrained_encoder(args, params, images, split)


def _pretrained_encoder(args, params, images, split):
    """``--method`` pretrained on the split's long-tailed subset, in a ``--work`` folder per setting (reused)."""
    from sdclr.data.device_data import channel_stats
    from sdclr.pretrain_loop import Job, Outputs, pretrain
    from sdclr.registry import method_class
    from sdclr.storage.encoder_file import ModelSpec, load_encoder

    folder = args.work / f"{args.method}-split{args.split}-{'-'.join(args.set) or 'default'}".replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "encoder.pt").exists():
        job = Job(method_class(args.method), args.split, images, split["longtail"],
                  ModelSpec(images.shape[-1], *channel_stats(images)))
        pretrain(params, job, Outputs(folder / "encoder.pt", folder / "checkpoint.ckpt"), log=lambda line: None)
    return load_encoder(folder / "encoder.pt")[0]


def _validation_scores(args, params, net, images, labels, split, seconds: float) -> dict:
    """The JSON line: the linear probes' best-epoch validation accuracy and kNN's under each ``--knn`` setting."""
    import numpy as np
    import torch

    from sdclr.evaluate import Heldout, extract_features, linear_probe

    net.eval()
    cpu, bs = torch.device("cpu"), params.evaluate.feature_batch_size
    pool, val = split["pool"], split["val"]
    pool_x, val_x = extract_features(net, images[pool], cpu, bs), extract_features(net, images[val], cpu, bs)
    pool_y, val_y = torch.from_numpy(labels[pool]), torch.from_numpy(labels[val])
    heldout = Heldout(val_x, val_y, val_x[:1], int(labels.max()) + 1)  # no test set: validation is all it sees
    probe = params.evaluate.probe
    few = torch.from_numpy(np.searchsorted(pool, split["fewshot"]))
    row = {"method": args.method or str(args.encoder), "split": args.split, "set": args.set,
           "pretrain_s": round(seconds, 1),
           "full_shot_val": linear_probe(pool_x, pool_y, heldout, probe, probe.full_shot_epochs,
                                         params.seed).val_accuracy,
           "few_shot_val": linear_probe(pool_x[few], pool_y[few], heldout, probe, probe.few_shot_epochs,
                                        params.seed).val_accuracy}
    for setting in args.knn.split(","):
        kind, k, temperature = setting.split(":")
        row[f"knn_{kind}_k{k}_T{temperature}_val"] = knn_accuracy(pool_x, pool_y, val_x, val_y, kind, int(k),
                                                                   float(temperature))
    return row


if __name__ == "__main__":
    main()
