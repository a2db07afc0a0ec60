"""Stage `evaluate`: frozen-encoder probes of one (method, split) → a metrics JSON (``--out``).

``--method random`` evaluates an untrained encoder of the same architecture: the row
that shows what pretraining bought. The MLflow run is a child of the pretraining run
that made the encoder (found by the encoder file's md5), and the probe accuracies also
land on that pretraining run, the (method, split) row of the runs table. The time it
took goes to MLflow and to the machine-dependent ``--cost`` file (not a DVC output).
"""

from sdclr.runtime.numerics import pin_before_torch

pin_before_torch()  # first: torch reads its kernel level once, when it loads (sdclr/runtime/numerics.py)

import time
from pathlib import Path

import torch

from sdclr.config import as_flat_dict
from sdclr.data.device_data import channel_stats
from sdclr.data.longtail import load_split, split_file
from sdclr.device import resolve_device
from sdclr.errors import ConfigError
from sdclr.evaluate import STAGE_PARAMS, evaluate_encoder, flat_metrics
from sdclr.methods.base import Method
from sdclr.models import build_model
from sdclr.runtime import cost, tracking
from sdclr.stage import run_stage
from sdclr.storage.encoder_file import load_encoder
from sdclr.storage.io import load_raw, md5_file, write_json


def main(params, args):
    tracking.check_store()
    device = resolve_device(params.device)
    raw = load_raw(args.raw)  # verified against the download's checksums
    train, test = raw.train, raw.test
    split = load_split(args.splits, args.split, params.subsample.splits, num_train=len(train["labels"]))
    experiment = tracking.experiment_name(params.data.dataset)
    machine = cost.machine(device, params.numerics)
    tags = {"dataset": params.data.dataset, "method": args.method, "split": args.split, "stage": "evaluate",
            "data_split_md5": md5_file(split_file(args.splits, args.split)), **machine}
    read = (*STAGE_PARAMS, "model") if args.method == "random" else STAGE_PARAMS
    logged = {**tracking.select_params(as_flat_dict(params), read), "method": args.method, "split": args.split}
    parent = ""  # random has no pretraining run: its evaluation is its row in MLflow
    if args.method == "random":
        torch.manual_seed(params.seed * 1000 + args.split)
        head = Method.head_spec(params)  # the shared model head; only the backbone's features are probed
        net = build_model(params.model.width, train["images"].shape[-1], *channel_stats(train["images"]), head)
    else:
        if args.model is None:
            raise ConfigError(f"evaluate --method {args.method} needs --model (the encoder file to evaluate).")
        net, state = load_encoder(args.model, stage=f"pretrain-{args.method}@{args.split}")
        made_by = state.get("numerics", "not recorded")
        if made_by != machine["numerics"]:  # e.g. pretrained on a GPU, probed on the CPU
            machine["numerics"] = f"pretrained: {made_by}; evaluated: {machine['numerics']}"
        tags["model_md5"] = md5_file(args.model)
        parent = tracking.latest_run_id(experiment, {"stage": "pretrain", "model_md5": tags["model_md5"]})
        tags["pretrain_run_id"] = parent

    with tracking.Run(experiment, f"evaluate-{args.method}-split{args.split}", logged, tags, "stages/evaluate.py",
                      parent_run_id=parent) as run:
        t0 = time.perf_counter()
        metrics = evaluate_encoder(net.to(device).eval(), train, test, split, params.evaluate, params.seed, device,
                                  split_id=args.split)
        metrics.update(method=args.method, split=args.split, dataset=params.data.dataset, numerics=machine["numerics"])
        write_json(args.out, metrics)
        seconds = time.perf_counter() - t0
        run.log_metrics({**flat_metrics(metrics), "evaluate_seconds": seconds}, step=0)
        if parent:  # the (method, split) row: the pretraining run, sortable by these accuracies
            tracking.log_metrics_to(parent, flat_metrics(metrics))
        run.log_artifact(args.out, "metrics")
    cost.record(f"evaluate/{args.method}/split{args.split}", {"seconds": round(seconds, 1), **machine}, args.cost)
    print(f"{args.method} split {args.split}: full-shot {metrics['full_shot']['accuracy']:.4f}, "
          f"few-shot {metrics['few_shot']['accuracy']:.4f}, kNN {metrics['knn']['accuracy']:.4f} → {args.out}")


def add_arguments(p):
    p.add_argument("--method", required=True, help="the method whose encoder this is (its name), or random")
    p.add_argument("--split", required=True, type=int)
    p.add_argument("--model", type=Path, help="the encoder file (not with --method random)")
    for name, what in (("raw", "the dataset folder (train.npz, test.npz)"), ("splits", "the splits folder"),
                       ("out", "the metrics JSON to write"), ("cost", "the machine-dependent timings file")):
        p.add_argument(f"--{name}", required=True, type=Path, help=what)


if __name__ == "__main__":
    run_stage(main, __doc__, add_arguments, outputs=("out",), shared_outputs=("cost",))
