"""Stage `pretrain`: train one method on one long-tail split without labels.

Writes models/<method>/split<k>.pt; a resume checkpoint lives in checkpoints/ until
the run finishes. One MLflow run per (method, split), tagged with the model file's md5;
the time it took goes to MLflow and reports/cost.json (machine-dependent, not a DVC output).

Runs unchanged under ``torchrun --nproc_per_node N`` (DistributedDataParallel; rank 0
writes and tracks); with ``pretrain.nproc > 1`` it launches torchrun itself.
"""

import os
import sys
from pathlib import Path

from sdclr.config import as_flat_dict
from sdclr.data.device_data import channel_stats
from sdclr.data.longtail import load_split
from sdclr.io import load_npz, md5_file
from sdclr.stage import run_stage


def relaunch_under_torchrun(nproc: int) -> None:
    """Replace this process by ``torchrun --standalone --nproc_per_node nproc`` running this script."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.abspath(sys.argv[0]), *sys.argv[1:]]
    print(f"pretrain.nproc = {nproc}: launching {' '.join(cmd[1:])}", flush=True)
    os.execv(sys.executable, cmd)


def main(params, args):
    from sdclr import cost, distributed, tracking
    from sdclr.train import ModelSpec, pretrain, resolve_device

    if params.pretrain.nproc > 1 and not distributed.launched_by_torchrun():
        relaunch_under_torchrun(params.pretrain.nproc)
    ctx, device = distributed.init_from_env(resolve_device(params.device))

    dataset = params.data.dataset
    train = load_npz(Path(args.raw_root) / dataset / "train.npz")
    split = load_split(Path(args.splits_root) / dataset, args.split)
    images = train["images"]
    mean, std = channel_stats(images)
    spec = ModelSpec(in_channels=images.shape[-1], mean=mean, std=std)
    out = Path(args.out_root) / args.method / f"split{args.split}.pt"
    ckpt = Path(args.checkpoint_root) / args.method / f"split{args.split}.ckpt"
    history = Path(args.history_root) / args.method / f"split{args.split}.csv"

    tags = {"dataset": dataset, "method": args.method, "split": args.split, "stage": "pretrain",
            "world_size": ctx.world_size}
    try:
        if not ctx.is_main:  # the other ranks train; rank 0 writes and tracks
            pretrain(params, args.method, args.split, images, split["longtail"], spec, out, ckpt)
            return
        with tracking.Run(f"sdclr-{dataset}", f"pretrain-{args.method}-split{args.split}",
                          as_flat_dict(params), tags) as run:
            result = pretrain(params, args.method, args.split, images, split["longtail"], spec, out, ckpt,
                              history_path=history, run=run)
            run.log_artifact(out, "model")
            run.set_tags({"resumed_from_epoch": result.resumed_from_epoch, "model_md5": md5_file(out)})
        cost.record(f"pretrain/{args.method}/split{args.split}", {
            "seconds": round(result.seconds, 1), "images_per_s": round(result.images_per_s, 1),
            "epochs": result.epochs_run, "resumed_from_epoch": result.resumed_from_epoch,
            "device": cost.device_name(device) + (f" x{ctx.world_size}" if ctx.world_size > 1 else "")},
            Path(args.cost))
    finally:
        distributed.shutdown()
    ckpt.unlink(missing_ok=True)  # the final encoder supersedes the resume checkpoint
    print(f"{args.method} split {args.split}: final loss {result.final_loss:.4f}, "
          f"{result.images_per_s:.0f} images/s → {out}")


def add_arguments(p):
    p.add_argument("--method", required=True, choices=["simclr", "sdclr", "sbid"])
    p.add_argument("--split", required=True, type=int)
    p.add_argument("--raw-root", default="data/raw")
    p.add_argument("--splits-root", default="data/splits")
    p.add_argument("--out-root", default="models")
    p.add_argument("--checkpoint-root", default="checkpoints")
    p.add_argument("--history-root", default="reports/pretrain")
    p.add_argument("--cost", default="reports/cost.json", help="machine-dependent timings (not a DVC output)")


if __name__ == "__main__":
    run_stage(main, __doc__, add_arguments)
