"""Stage `evaluate`: frozen-encoder probes of one (method, split) → reports/metrics/<method>/split<k>.json.

``--method random`` evaluates an untrained encoder of the same architecture: the row
that shows what pretraining bought.
"""

from pathlib import Path

import torch

from sdclr.config import as_flat_dict
from sdclr.data.device_data import channel_stats
from sdclr.data.longtail import groups_of, load_split
from sdclr.io import load_npz, write_json
from sdclr.stage import run_stage


def main(params, args):
    from sdclr import tracking
    from sdclr.evaluate import evaluate_encoder
    from sdclr.models import build_model
    from sdclr.train import load_encoder, resolve_device

    dataset = params.data.dataset
    device = resolve_device(params.device)
    raw = Path(args.raw_root) / dataset
    train, test = load_npz(raw / "train.npz"), load_npz(raw / "test.npz")
    split = load_split(Path(args.splits_root) / dataset, args.split)
    groups = groups_of(split["class_order"])

    tags = {"dataset": dataset, "method": args.method, "split": args.split, "stage": "evaluate"}
    if args.method == "random":
        mean, std = channel_stats(train["images"])
        torch.manual_seed(params.seed * 1000 + args.split)
        net = build_model(params.model, train["images"].shape[-1], mean, std).to(device).eval()
    else:
        path = Path(args.models_root) / args.method / f"split{args.split}.pt"
        net, state = load_encoder(path, device)
        tags["pretrain_run_id"] = state.get("pretrain_run_id", "")

    with tracking.Run(f"sdclr-{dataset}", f"evaluate-{args.method}-split{args.split}",
                      as_flat_dict(params), tags) as run:
        metrics = evaluate_encoder(net, train["images"], train["labels"], test["images"], test["labels"],
                                   split, groups, params.evaluate, params.seed, device)
        metrics.update(method=args.method, split=args.split, dataset=dataset)
        out = Path(args.out_root) / args.method / f"split{args.split}.json"
        write_json(out, metrics)
        flat = {}
        for kind in ("full_shot", "few_shot", "knn"):
            flat[f"{kind}_accuracy"] = metrics[kind]["accuracy"]
            flat[f"{kind}_balancedness"] = metrics[kind]["balancedness"]
            for g, acc in metrics[kind]["groups"].items():
                flat[f"{kind}_{g}"] = acc
        run.log_metrics(flat, step=0)
        run.log_artifact(out, "metrics")
    print(f"{args.method} split {args.split}: full-shot {metrics['full_shot']['accuracy']:.4f}, "
          f"few-shot {metrics['few_shot']['accuracy']:.4f}, kNN {metrics['knn']['accuracy']:.4f} → {out}")


def add_arguments(p):
    p.add_argument("--method", required=True, choices=["simclr", "sdclr", "sbid", "random"])
    p.add_argument("--split", required=True, type=int)
    p.add_argument("--raw-root", default="data/raw")
    p.add_argument("--splits-root", default="data/splits")
    p.add_argument("--models-root", default="models")
    p.add_argument("--out-root", default="reports/metrics")


if __name__ == "__main__":
    run_stage(main, __doc__, add_arguments)
