"""Stage `pretrain`: train one method on one long-tail split without labels.

Writes the encoder (``--out``) and its per-epoch history (``--history``); a resume
checkpoint (``--checkpoint``) lives until the run finishes. One MLflow run per (method,
split), tagged with the encoder file's md5 and holding the encoder as an MLflow logged
model (``SDCLR_LOG_MODEL=0`` skips that: torch.export takes seconds); a run resumed from
its checkpoint continues the same MLflow run. The time it took goes to MLflow and to the
machine-dependent ``--cost`` file (not a DVC output).

Runs unchanged under ``torchrun --nproc_per_node N`` (DistributedDataParallel; rank 0
writes and tracks); with ``pretrain.nproc > 1`` it launches torchrun itself.
"""

from sdclr.runtime.numerics import pin_before_torch

pin_before_torch()  # first: torch reads its kernel level once, when it loads (sdclr/runtime/numerics.py)

import os
from pathlib import Path

from sdclr import distributed
from sdclr.config import as_flat_dict
from sdclr.data.device_data import channel_stats, example_batch
from sdclr.data.longtail import class_and_group, load_split, split_file
from sdclr.device import resolve_device
from sdclr.methods.base import declared_by, load_method
from sdclr.pretrain_loop import Job, Outputs, checkpoint_run_id, pretrain
from sdclr.runtime import cost, tracking
from sdclr.stage import run_stage
from sdclr.storage.encoder_file import ModelSpec, load_encoder
from sdclr.storage.io import load_raw, md5_file


def main(params, args):
    if params.pretrain.nproc > 1 and not distributed.launched_by_torchrun():
        distributed.relaunch_under_torchrun(params.pretrain.nproc)
    ctx, device = distributed.init_from_env(resolve_device(params.device))
    if ctx.is_main:
        tracking.check_store()
    train_set = load_raw(args.raw, parts=("train",)).train  # verified against the download's checksums
    images = train_set["images"]
    split = load_split(args.splits, args.split, params.subsample.splits, num_train=len(images))
    cls = load_method(args.method)
    job = Job(cls, args.split, images, split["longtail"], ModelSpec(images.shape[-1], *channel_stats(images)))
    try:
        if not ctx.is_main:  # the other ranks train; rank 0 writes and tracks
            pretrain(params, job, Outputs(args.out, args.checkpoint))
            return
        logged = {**tracking.select_params(as_flat_dict(params), cls.stage_params()), **cls.resolved_params(params),
                  "method": cls.name, "split": args.split}
        machine = cost.machine(device, params.numerics)
        tags = {"dataset": params.data.dataset, "method": cls.name, "split": args.split, "stage": "pretrain",
                "world_size": ctx.world_size, "data_split_md5": md5_file(split_file(args.splits, args.split)),
                **machine}
        resume = checkpoint_run_id(args.checkpoint, params, job, ctx.world_size)
        with tracking.Run(tracking.experiment_name(params.data.dataset), f"pretrain-{cls.name}-split{args.split}",
                          logged, tags, "stages/pretrain.py", resume_run_id=resume) as run:
            per_image_info = class_and_group(train_set["labels"][split["longtail"]], split["class_order"])
            outputs = Outputs(args.out, args.checkpoint, args.history, args.per_image, per_image_info)
            result = pretrain(params, job, outputs, run=run)
            model_md5 = md5_file(args.out)
            run.set_tags({"resumed_from_epoch": result.resumed_from_epoch, "model_md5": model_md5})
            if os.environ.get("SDCLR_LOG_MODEL", "1") != "0":
                encoder = load_encoder(args.out)[0].backbone
                run.log_model(encoder, example_batch(images), {**tags, "model_md5": model_md5})
        cost.record(f"pretrain/{cls.name}/split{args.split}", {
            "seconds": round(result.seconds, 1), "images_per_s": round(result.images_per_s, 1),
            "epochs": result.epochs_run, "resumed_from_epoch": result.resumed_from_epoch, **machine,
            "device": machine["device"] + (f" x{ctx.world_size}" if ctx.world_size > 1 else "")}, args.cost)
    finally:
        distributed.shutdown()
    args.checkpoint.unlink(missing_ok=True)  # the final encoder supersedes the resume checkpoint
    print(f"{cls.name} split {args.split}: {result.summary()} → {args.out}")


def add_arguments(p):
    p.add_argument("--method", required=True, metavar="MODULE:CLASS",
                   help="the method's class, as sdclr/registry.py lists it (e.g. sdclr.methods.simclr:SimCLR)")
    p.add_argument("--split", required=True, type=int)
    for name, what in (("raw", "the dataset folder (train.npz)"), ("splits", "the splits folder"),
                       ("out", "the encoder file to write"), ("history", "the per-epoch history CSV to write"),
                       ("checkpoint", "the resume checkpoint"), ("cost", "the machine-dependent timings file")):
        p.add_argument(f"--{name}", required=True, type=Path, help=what)
    p.add_argument("--per-image", type=Path, help="a CSV of the method's per-image state (BCL: w per image)")


if __name__ == "__main__":
    run_stage(main, __doc__, add_arguments, outputs=("out", "history", "checkpoint", "per_image"),
              shared_outputs=("cost",), declared=lambda args: declared_by(load_method(args.method)))
