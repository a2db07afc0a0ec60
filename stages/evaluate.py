"""Stage `evaluate`: frozen-encoder probes of one (method, split) → reports/metrics/<method>/split<k>.json.

``--method random`` evaluates an untrained encoder of the same architecture: the row
that shows what pretraining bought. The MLflow run is tagged with the id of the
pretraining run that made the encoder (found by the encoder file's md5); the time it
took goes to MLflow and reports/cost.json (machine-dependent, not a DVC output).
"""

import time
from pathlib import Path

import torch

from sdclr.config import as_flat_dict
from sdclr.data.device_data import channel_stats
from sdclr.data.longtail import groups_of, load_split
from sdclr.io import load_npz, md5_file, write_json
from sdclr.stage import run_stage


def main(params, args):
    from sdclr import cost, tracking
    from sdclr.evaluate import evaluate_encoder
    from sdclr.models import build_model
    from sdclr.train import load_encoder, resolve_device

    dataset = params.data.dataset
    device = resolve_device(params.device)
    raw = Path(args.raw_root) / dataset
    train, test = load_npz(raw / "train.npz"), load_npz(raw / "test.npz")
    split = load_split(Path(args.splits_root) / dataset, args.split)
    groups = groups_of(split["class_order"])

    experiment = f"sdclr-{dataset}"
    tags = {"dataset": dataset, "method": args.method, "split": args.split, "stage": "evaluate"}
    if args.method == "random":
        mean, std = channel_stats(train["images"])
        torch.manual_seed(params.seed * 1000 + args.split)
        net = build_model(params.model, train["images"].shape[-1], mean, std).to(device).eval()
    else:
        path = Path(args.models_root) / args.method / f"split{args.split}.pt"
        net, _ = load_encoder(path, device)
        tags["model_md5"] = md5_file(path)
        tags["pretrain_run_id"] = tracking.latest_run_id(experiment, {"stage": "pretrain", "model_md5": tags["model_md5"]})

    with tracking.Run(experiment, f"evaluate-{args.method}-split{args.split}", as_flat_dict(params), tags) as run:
        t0 = time.perf_counter()
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
        seconds = time.perf_counter() - t0
        run.log_metrics({**flat, "evaluate_seconds": seconds}, step=0)
        run.log_artifact(out, "metrics")
    cost.record(f"evaluate/{args.method}/split{args.split}",
                {"seconds": round(seconds, 1), "device": cost.device_name(device)}, Path(args.cost))
    print(f"{args.method} split {args.split}: full-shot {metrics['full_shot']['accuracy']:.4f}, "
          f"few-shot {metrics['few_shot']['accuracy']:.4f}, kNN {metrics['knn']['accuracy']:.4f} → {out}")


def add_arguments(p):
    p.add_argument("--method", required=True, choices=["simclr", "sdclr", "sbid", "random"])
    p.add_argument("--split", required=True, type=int)
    p.add_argument("--raw-root", default="data/raw")
    p.add_argument("--splits-root", default="data/splits")
    p.add_argument("--models-root", default="models")
    p.add_argument("--out-root", default="reports/metrics")
    p.add_argument("--cost", default="reports/cost.json", help="machine-dependent timings (not a DVC output)")


if __name__ == "__main__":
    run_stage(main, __doc__, add_arguments)
