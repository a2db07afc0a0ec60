"""Stage `pretrain`: train one method on one long-tail split without labels.

Writes the encoder (``--out``) and its per-epoch history (``--history``); a resume
checkpoint (``--checkpoint``) lives until the run finishes. One MLflow run per (method,
split), tagged with the encoder file's md5; the time it took goes to MLflow and to the
machine-dependent ``--cost`` file (not a DVC output).

Runs unchanged under ``torchrun --nproc_per_node N`` (DistributedDataParallel; rank 0
writes and tracks); with ``pretrain.nproc > 1`` it launches torchrun itself.
"""

from pathlib import Path

from sdclr import cost, distributed, tracking
from sdclr.config import as_flat_dict
from sdclr.data.device_data import channel_stats
from sdclr.data.longtail import load_split
from sdclr.io import load_npz, md5_file
from sdclr.methods import METHODS
from sdclr.stage import run_stage
from sdclr.train import ModelSpec, pretrain, resolve_device


def main(params, args):
    if params.pretrain.nproc > 1 and not distributed.launched_by_torchrun():
        distributed.relaunch_under_torchrun(params.pretrain.nproc)
    ctx, device = distributed.init_from_env(resolve_device(params.device))
    images = load_npz(args.raw / "train.npz")["images"]
    split = load_split(args.splits, args.split)
    spec = ModelSpec(images.shape[-1], *channel_stats(images))
    train = dict(params=params, method_name=args.method, split_id=args.split, images=images,
                 indices=split["longtail"], spec=spec, out_path=args.out, ckpt_path=args.checkpoint)
    try:
        if not ctx.is_main:  # the other ranks train; rank 0 writes and tracks
            pretrain(**train)
            return
        tags = {"dataset": params.data.dataset, "method": args.method, "split": args.split, "stage": "pretrain",
                "world_size": ctx.world_size}
        with tracking.Run(f"sdclr-{params.data.dataset}", f"pretrain-{args.method}-split{args.split}",
                          as_flat_dict(params), tags) as run:
            result = pretrain(**train, history_path=args.history, run=run)
            run.log_artifact(args.out, "model")
            run.set_tags({"resumed_from_epoch": result.resumed_from_epoch, "model_md5": md5_file(args.out)})
        cost.record(f"pretrain/{args.method}/split{args.split}", {
            "seconds": round(result.seconds, 1), "images_per_s": round(result.images_per_s, 1),
            "epochs": result.epochs_run, "resumed_from_epoch": result.resumed_from_epoch,
            "device": cost.device_name(device) + (f" x{ctx.world_size}" if ctx.world_size > 1 else "")}, args.cost)
    finally:
        distributed.shutdown()
    args.checkpoint.unlink(missing_ok=True)  # the final encoder supersedes the resume checkpoint
    print(f"{args.method} split {args.split}: final loss {result.final_loss:.4f}, "
          f"{result.images_per_s:.0f} images/s → {args.out}")


def add_arguments(p):
    p.add_argument("--method", required=True, choices=list(METHODS))
    p.add_argument("--split", required=True, type=int)
    for name, what in (("raw", "the dataset folder (train.npz)"), ("splits", "the splits folder"),
                       ("out", "the encoder file to write"), ("history", "the per-epoch history CSV to write"),
                       ("checkpoint", "the resume checkpoint"), ("cost", "the machine-dependent timings file")):
        p.add_argument(f"--{name}", required=True, type=Path, help=what)


if __name__ == "__main__":
    run_stage(main, __doc__, add_arguments)
