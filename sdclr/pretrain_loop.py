"""The pretraining loop shared by every method: build a run, resume it, drive it epoch by epoch.

SGD with momentum, linear warm-up then per-iteration cosine decay to 0, weight decay;
bf16 autocast and channels_last on CUDA (params ``pretrain.amp`` / ``channels_last``);
``torch.compile`` of the network and the augmentation's transform, by default on CUDA with
CUDA graphs (a failed compile is one line and the run goes on eagerly). The data is on the
device and augmented there. A NaN/inf
loss stops the run with :class:`TrainingError` and leaves the last good checkpoint in
place; checkpoints are written atomically every ``checkpoint_every`` epochs and resumed
from only when their fingerprint matches. What a run holds and its one step are
:mod:`sdclr.pretrain_step`'s.

What the run writes is a function of the params and the data only (on a given machine):
the encoder file and the per-epoch history hold no run id, time or speed, so a re-run of
the same commit gives the same bytes. Wall-clock time and images/s go to MLflow and to
:class:`PretrainResult`, which the stage records in the machine-dependent
``reports/cost.json``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sdclr import distributed
from sdclr.config import Params
from sdclr.data.augment import BatchAugment
from sdclr.data.device_data import epoch_batches, to_device_uint8
from sdclr.device import resolve_device
from sdclr.errors import ParamError, TimeLimitStop, TrainingError
from sdclr.losses import cosine_temperature
from sdclr.methods.base import Method
from sdclr.models import build_model
from sdclr.pretrain_step import CompileState, ResumeState, Schedule, Training
from sdclr.runtime import numerics, time_limit
from sdclr.storage import checkpoint
from sdclr.storage.encoder_file import ModelSpec, save_encoder
from sdclr.storage.io import write_bytes


@dataclass
class PretrainResult:
    epochs_run: int
    resumed_from_epoch: int
    final_loss: float
    images_per_s: float  # of the last epoch run
    seconds: float  # summed over the epochs run by this launch (set-up and bank fill excluded)

    def summary(self) -> str:
        """One line for the stage's output."""
        if self.epochs_run == 0:  # killed after its last checkpoint: nothing was left to train
            return (f"restored from the checkpoint of its last epoch ({self.resumed_from_epoch}), "
                    f"final loss {self.final_loss:.4f}")
        return f"final loss {self.final_loss:.4f}, {self.images_per_s:.0f} images/s"


@dataclass
class Job:
    """What one pretraining run trains: a method on one split's long-tail subset."""

    method: type[Method]  # the method's class (the stage loads it from its ``module:Class``)
    split_id: int
    images: np.ndarray  # the whole train set, uint8 N×H×W×C
    indices: np.ndarray  # the split's long-tail subset: rows of ``images``
    spec: ModelSpec  # the input channels and their normalisation

    @property
    def label(self) -> str:
        """"<method> split <k>", for progress bars and messages."""
        return f"{self.method.name} split {self.split_id}"


@dataclass
class Outputs:
    """Where a pretraining run writes: the encoder, its resume checkpoint, and optionally its
    per-epoch history and the method's per-image state (BCL's w) with ``per_image_info``'s
    columns (e.g. class and long-tail group) in front."""

    encoder: Path
    checkpoint: Path
    history: Path | None = None
    per_image: Path | None = None
    per_image_info: dict[str, np.ndarray] | None = None


def _silent(message: str) -> None:
    pass


def training_fingerprint(params: Params, job: Job, world_size: int = 1) -> str:
    """What a resume checkpoint must match: every param and datum that shapes the training."""
    p, method_cls, indices = params.pretrain, job.method, job.indices
    shaping = {
        "method": method_cls.name, "split": job.split_id, "seed": params.seed, "numerics": params.numerics,
        "width": params.model.width, "head": asdict(method_cls.head_spec(params)), "augment": asdict(params.augment),
        "pretrain": {k: v for k, v in asdict(p).items() if k not in ("checkpoint_every", "nproc")},
        "method_params": method_cls.shaping_params(params),
        "data": checkpoint.fingerprint(indices.tolist()),
    }
    if world_size > 1:  # the shards and per-rank BN batches differ: never resume across world sizes
        shaping["world_size"] = world_size
    return checkpoint.fingerprint(shaping)




def build(params: Params, job: Job) -> Training:
    """Device, precision, this rank's shard on the device, the seeded network, method and optimizer."""
    p, cls, split_id, indices, spec = params.pretrain, job.method, job.split_id, job.indices, job.spec
    ctx, device = distributed.init_from_env(resolve_device(params.device))
    on_cuda = device.type == "cuda"
    channels_last = p.channels_last == "on" or (p.channels_last == "auto" and on_cuda)
    epochs, peak_lr = cls.setting(params, "epochs"), cls.setting(params, "lr")
    n = len(indices)
    if n < p.batch_size:
        raise ParamError(f"pretrain.batch_size = {p.batch_size} is larger than the training subset "
                         f"({n} images); accepted: an integer <= {n}.")
    if p.batch_size % ctx.world_size:
        raise ParamError(f"pretrain.batch_size = {p.batch_size} does not split evenly over "
                         f"{ctx.world_size} processes; accepted: a multiple of {ctx.world_size}.")
    positions = torch.arange(ctx.rank, n, ctx.world_size)  # rows rank, rank + W, rank + 2W, ...
    data = to_device_uint8(job.images[indices[positions.numpy()]], device)
    local_batch = p.batch_size // ctx.world_size
    steps_per_epoch = (n // ctx.world_size) // local_batch  # the same on every rank

    torch.manual_seed(params.seed * 1000 + split_id)  # same initial weights on every rank
    net = build_model(params.model.width, spec.in_channels, spec.mean, spec.std, cls.head_spec(params))
    method = cls.from_params(params, net, num_samples=n).to(device)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    method.configure(BatchAugment(params.augment, channels=spec.in_channels), channels_last)
    gen = torch.Generator(device=device)
    gen.manual_seed(params.seed * 1000 + split_id + 1 + 100_003 * ctx.rank)
    if ctx.active:  # one process draws everything from ``gen``
        method.shared_generator = torch.Generator(device=device)
        method.shared_generator.manual_seed(params.seed * 1000 + split_id + 2)
    compiled = p.compile is True or (p.compile == "auto" and on_cuda)  # applied by the first step
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # static shapes: cuDNN may time its algorithms once
    trained = distributed.wrap(method, ctx, device, p.sync_bn)
    # One fused update kernel where it was measured to pay (compiled, on CUDA: sbid +27 % on an H100)
    optimizer = torch.optim.SGD(method.parameters(), lr=peak_lr, momentum=p.momentum,
                                weight_decay=cls.setting(params, "weight_decay"),
                                fused=True if compiled and on_cuda else None)
    schedule = Schedule(
        epochs=epochs, steps_per_epoch=steps_per_epoch, warmup_steps=min(p.warmup_epochs, epochs) * steps_per_epoch,
        peak_lr=peak_lr, lr_key=cls.setting_key(params, "lr"),
        temperature_at=partial(cosine_temperature, tau_min=p.tau_min, tau_max=p.tau_max, period_epochs=p.period_epochs)
        if "cosine" in (p.temperature_schedule, cls.temperature_schedule) else None)
    return Training(
        method=method, step_fn=trained, optimizer=optimizer, data=data, positions=positions.to(device), gen=gen,
        ctx=ctx, use_bf16=p.amp == "bf16" or (p.amp == "auto" and on_cuda), local_batch=local_batch,
        label=job.label, schedule=schedule, resume=ResumeState(training_fingerprint(params, job, ctx.world_size)),
        compile=CompileState(mode=p.compile_mode if compiled else None, pending=compiled,
                             cuda_graphs=compiled and on_cuda and p.compile_mode == "reduce-overhead"))


def restore(training: Training, ckpt_path: Path, log: Callable[[str], None]) -> None:
    """Resume from ``ckpt_path`` when its fingerprint matches; else the method's one-time initialisation."""
    resume = training.resume
    state = checkpoint.try_resume(ckpt_path, resume.fingerprint, map_location=training.data.device, log=log)
    if state is None:
        training.method.initialise(training.data, training.gen, training.local_batch,
                                   training.positions if training.ctx.active else None)
        return
    training.method.load_state_dict(state["method"])
    training.optimizer.load_state_dict(state["optimizer"])
    if training.ctx.active:
        training.gen.set_state(state["rank_generators"][training.ctx.rank].cpu())
        training.method.shared_generator.set_state(state["shared_generator"].cpu())
        torch.set_rng_state(state["rank_torch_rng"][training.ctx.rank].cpu())
    else:
        training.gen.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
    resume.start_epoch = int(state["epoch"])
    resume.history = [dict(zip(state["history_keys"], row)) for row in state["history"].tolist()]
    log(f"resuming {training.label} from epoch {resume.start_epoch} ({ckpt_path})")


def checkpoint_run_id(ckpt_path: Path, params: Params, job: Job, world_size: int = 1) -> str:
    """The MLflow run a resumable checkpoint at ``ckpt_path`` was logging to ("" when none).

    A resumed pretraining continues that run, so one run holds the whole loss curve.
    """
    fingerprint = training_fingerprint(params, job, world_size)
    state = checkpoint.try_resume(ckpt_path, fingerprint, map_location="cpu", log=_silent)
    return str(state.get("mlflow_run_id", "")) if state else ""


def save_checkpoint(training: Training, path: Path, epoch_done: int, run_id: str = "") -> None:
    """Weights, optimizer, every rank's random state, the history so far and the MLflow run
    being logged to (a collective under DDP)."""
    extra = {}
    if training.ctx.active:  # every rank's random state (all ranks call this), rank 0 writes
        extra = {"rank_generators": distributed.all_gather_objects(training.gen.get_state()),
                 "rank_torch_rng": distributed.all_gather_objects(torch.get_rng_state()),
                 "shared_generator": training.method.shared_generator.get_state()}
    if not training.ctx.is_main:
        return
    history = training.resume.history
    checkpoint.save(path, {
        "fingerprint": training.resume.fingerprint, "epoch": epoch_done, "method": training.method.state_dict(),
        "optimizer": training.optimizer.state_dict(), "generator": training.gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history_keys": list(history[0]) if history else [],
        "history": torch.tensor([list(h.values()) for h in history], dtype=torch.float64),
        "mlflow_run_id": run_id,
        **extra,
    })


def run_epoch(training: Training, epoch: int, ckpt_path: Path) -> tuple[dict[str, float], dict[str, float]]:
    """One epoch → (its metrics: loss, lr, temperature, method extras; its timing: images/s, seconds).

    The host syncs once every ~10 % of the epoch, to show progress and to stop on a NaN/inf loss.
    """
    from tqdm import tqdm

    schedule, steps = training.schedule, training.schedule.steps_per_epoch
    training.step_fn.train()
    if schedule.temperature_at is not None:
        training.method.temperature = schedule.temperature_at(epoch + 1)
    metrics = training.method.on_epoch_start(epoch)
    loss_sum, extra_sums = torch.zeros((), device=training.data.device), {}
    t0 = time.perf_counter()
    bar = tqdm(total=steps, desc=f"{training.label} ep {epoch + 1}/{schedule.epochs}", unit="step", leave=False,
               disable=None if training.ctx.is_main else True, file=sys.stderr, dynamic_ncols=True)
    report_every = max(1, steps // 10)
    batches = epoch_batches(len(training.positions), training.local_batch, training.gen, training.data.device)
    for i, idx in enumerate(islice(batches, steps)):
        lr = schedule.lr(epoch, i)
        for group in training.optimizer.param_groups:
            group["lr"] = lr
        loss, extras = training.step(idx)
        loss_sum += loss
        for key, value in extras.items():
            extra_sums[key] = extra_sums.get(key, 0) + value
        if (i + 1) % report_every == 0 or i + 1 == steps:
            running = loss_sum.item() / (i + 1)
            if not math.isfinite(running):
                bar.close()
                raise _diverged(training, running, epoch, i, ckpt_path)
            bar.set_postfix(loss=f"{running:.4f}",
                            img_s=f"{(i + 1) * training.global_batch / (time.perf_counter() - t0):.0f}")
            bar.update(i + 1 - bar.n)
    bar.close()
    if training.data.device.type == "cuda":
        torch.cuda.synchronize(training.data.device)
    seconds = time.perf_counter() - t0
    metrics = {"loss": loss_sum.item() / steps, "lr": lr, "temperature": training.method.temperature,
               **metrics, **{k: v.item() / steps for k, v in extra_sums.items()}}
    return metrics, {"images_per_s": steps * training.global_batch / seconds, "epoch_seconds": seconds}


def _diverged(training: Training, loss: float, epoch: int, step: int, ckpt_path: Path) -> TrainingError:
    """The one sentence for a NaN/inf loss: which keys to change, from what, and that the checkpoint is kept."""
    schedule = training.schedule
    tau_key = "pretrain.tau_min" if schedule.temperature_at else training.method.temperature_key
    return TrainingError(
        f"{training.label}: the loss became {loss} at epoch {epoch + 1} step {step + 1}; lower {schedule.lr_key} "
        f"(now {schedule.peak_lr}) or raise {tau_key} (τ now {training.method.temperature}) — "
        f"the last good checkpoint {ckpt_path} is kept.")


def pretrain(params: Params, job: Job, outputs: Outputs, run=None, log: Callable[[str], None] = print,
             stop_after_epoch: int | None = None) -> PretrainResult:
    """Pretrain ``job``'s method on its subset and write ``outputs``.

    ``run`` is an optional :class:`sdclr.runtime.tracking.Run` receiving per-epoch metrics;
    ``stop_after_epoch`` ends the loop early (after checkpointing) — used to test resume.
    """
    time_limit.listen()  # a cluster job's warning before its time limit: stop after this epoch
    training = build(params, job)
    log = log if training.ctx.is_main else _silent  # rank 0 speaks, writes and tracks; the others only compute
    training.log = log
    restore(training, outputs.checkpoint, log)
    epochs, resume = training.schedule.epochs, training.resume
    rate, seconds, last = 0.0, 0.0, resume.start_epoch
    for epoch in range(resume.start_epoch, epochs):
        metrics, timing = run_epoch(training, epoch, outputs.checkpoint)
        resume.history.append({"epoch": epoch + 1, **metrics})  # deterministic values only: it is an output
        rate, seconds, last = timing["images_per_s"], seconds + timing["epoch_seconds"], epoch + 1
        log(f"{training.label} epoch {epoch + 1}/{epochs}: {rate:.0f} images/s, "
            + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if run is not None:
            # under the method's own loss name: MLflow charts one key per plot, and losses of different
            # methods are different quantities (the history CSV keeps one `loss` column for DVC's overlay)
            loss_name = {"loss": type(training.method).loss_metric}
            run.log_metrics({**{loss_name.get(k, k): v for k, v in metrics.items()}, **timing}, step=epoch + 1)
        stop_for_time_limit = time_limit.warned() and epoch + 1 < epochs
        if (epoch + 1) % params.pretrain.checkpoint_every == 0 or epoch + 1 == epochs or stop_for_time_limit:
            save_checkpoint(training, outputs.checkpoint, epoch + 1, run.run_id if run is not None else "")
        if stop_for_time_limit:
            raise TimeLimitStop(f"{training.label}: the job's time-limit warning came; stopped after epoch "
                                f"{epoch + 1}/{epochs} with its checkpoint {outputs.checkpoint}, which the next "
                                "job resumes from.")
        if stop_after_epoch is not None and stop_after_epoch <= epoch + 1 < epochs:
            break
    if last == epochs and training.ctx.is_main:
        made_by = numerics.describe(params.numerics, training.data.device)
        save_encoder(outputs.encoder, training.method, job.spec, params, resume.fingerprint, made_by)
        if outputs.history is not None:
            write_history_csv(outputs.history, resume.history)
        if outputs.per_image is not None:
            write_per_image_csv(outputs.per_image, job.indices,
                                {**(outputs.per_image_info or {}), **training.method.per_image_state()})
    final_loss = resume.history[-1]["loss"] if resume.history else float("nan")
    return PretrainResult(last - resume.start_epoch, resume.start_epoch, final_loss, rate, seconds)


def write_history_csv(path: Path, history: list[dict]) -> None:
    """Per-epoch metrics as CSV (a DVC plots file: ``dvc plots show`` draws the loss curve)."""
    keys = list(history[0]) if history else ["epoch", "loss"]
    lines = [",".join(keys)] + [",".join(f"{h[k]:.6g}" for k in keys) for h in history]
    write_bytes(path, ("\n".join(lines) + "\n").encode())


def write_per_image_csv(path: Path, indices: np.ndarray, columns: dict) -> None:
    """One row per training image: its index in the dataset's train set, then ``columns``
    (numpy arrays or tensors, one value per image; floats with 6 significant digits)."""
    values = [c.detach().double().cpu().numpy() if torch.is_tensor(c) else np.asarray(c) for c in columns.values()]

    def cell(v) -> str:
        return f"{v:.6g}" if isinstance(v, (float, np.floating)) else str(v)

    lines = [",".join(["image", *columns])] + [
        ",".join([str(int(i)), *(cell(v[r]) for v in values)]) for r, i in enumerate(indices)]
    write_bytes(path, ("\n".join(lines) + "\n").encode())
