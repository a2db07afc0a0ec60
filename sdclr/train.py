"""The pretraining loop shared by every method.

SGD with momentum, linear warm-up then per-iteration cosine decay to 0, weight decay;
bf16 autocast and channels_last on CUDA (params ``pretrain.amp`` / ``channels_last``);
optional ``torch.compile``. The data is on the device and augmented there. A NaN/inf
loss stops the run with :class:`TrainingError` and leaves the last good checkpoint in
place; checkpoints are written atomically every ``checkpoint_every`` epochs and resumed
from only when their fingerprint matches.

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
from itertools import islice
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sdclr import checkpoint, distributed
from sdclr.config import Params
from sdclr.data.augment import BatchAugment
from sdclr.data.device_data import epoch_batches, to_device_uint8
from sdclr.errors import ConfigError, TrainingError
from sdclr.methods import build_method, head_spec, method_params, schedule
from sdclr.models import build_model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"params.yaml: device = {name!r} but no CUDA device is visible; accepted here: 'auto' or 'cpu'.")
    return torch.device(name)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_step(step_fn, optimizer, images, indices, augment, generator, channels_last: bool,
               use_bf16: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step of any method → (detached float loss, detached extras); no host sync.

    Shared by the loop and ``benchmarks/pretrain_throughput.py`` so the benchmark measures
    exactly what training runs.
    """
    with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        loss, extras = step_fn(images, indices, augment, generator, channels_last)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach().float(), {k: v.detach().float() for k, v in extras.items()}


@dataclass
class PretrainResult:
    epochs_run: int
    resumed_from_epoch: int
    final_loss: float
    images_per_s: float  # of the last epoch
    seconds: float  # summed over the epochs run by this launch (set-up and bank fill excluded)


@dataclass
class ModelSpec:
    """What evaluation needs to rebuild the network from a saved state dict."""

    in_channels: int
    mean: list[float]
    std: list[float]


def _silent(message: str) -> None:
    pass


def training_fingerprint(params: Params, method: str, split_id: int, indices: np.ndarray, world_size: int = 1) -> str:
    p = params.pretrain
    shaping = {
        "method": method, "split": split_id, "seed": params.seed,
        "width": params.model.width, "head": asdict(head_spec(method, params)), "augment": asdict(params.augment),
        "pretrain": {k: v for k, v in asdict(p).items() if k not in ("checkpoint_every", "nproc")},
        "method_params": method_params(method, params),
        "data": checkpoint.fingerprint(indices.tolist()),
    }
    if world_size > 1:  # the shards and per-rank BN batches differ: never resume across world sizes
        shaping["world_size"] = world_size
    return checkpoint.fingerprint(shaping)


def pretrain(
    params: Params,
    method_name: str,
    split_id: int,
    images: np.ndarray,
    indices: np.ndarray,
    spec: ModelSpec,
    out_path: Path,
    ckpt_path: Path,
    history_path: Path | None = None,
    run=None,
    log: Callable[[str], None] = print,
    stop_after_epoch: int | None = None,
) -> PretrainResult:
    """Pretrain ``method_name`` on ``images[indices]`` (uint8 N×H×W×C) and save the network.

    ``run`` is an optional :class:`sdclr.tracking.Run` receiving per-epoch metrics.
    ``stop_after_epoch`` ends the loop early (after checkpointing) — used to test resume.
    """
    p = params.pretrain
    ctx, device = distributed.init_from_env(resolve_device(params.device))
    if not ctx.is_main:
        log = _silent  # rank 0 speaks, writes and tracks; the other ranks only compute
    on_cuda = device.type == "cuda"
    use_bf16 = p.amp == "bf16" or (p.amp == "auto" and on_cuda)
    channels_last = p.channels_last == "on" or (p.channels_last == "auto" and on_cuda)

    epochs, peak_lr = schedule(method_name, params)
    lr_key = "sbid.lr" if method_name == "sbid" and params.sbid.lr else "pretrain.lr"  # named in errors
    tau_key = "sbid.temperature" if method_name == "sbid" else "pretrain.temperature"
    n = len(indices)
    if n < p.batch_size:
        raise ConfigError(f"params.yaml: pretrain.batch_size = {p.batch_size} is larger than the training subset "
                          f"({n} images); accepted: an integer <= {n}.")
    if p.batch_size % ctx.world_size:
        raise ConfigError(f"params.yaml: pretrain.batch_size = {p.batch_size} does not split evenly over "
                          f"{ctx.world_size} processes; accepted: a multiple of {ctx.world_size}.")
    # Each rank holds its shard of the subset on its device: rows rank, rank + W, rank + 2W, ...
    # ``positions`` are the shard rows' indices in the whole subset (= sbid's bank rows).
    positions = torch.arange(ctx.rank, n, ctx.world_size)
    data = to_device_uint8(images[indices[positions.numpy()]], device)
    positions = positions.to(device)
    local_batch = p.batch_size // ctx.world_size
    steps_per_epoch = (n // ctx.world_size) // local_batch  # the same on every rank
    total_steps = steps_per_epoch * epochs
    warmup_steps = min(p.warmup_epochs * steps_per_epoch, total_steps)

    torch.manual_seed(params.seed * 1000 + split_id)  # same initial weights on every rank
    head = head_spec(method_name, params)
    net = build_model(params.model, spec.in_channels, spec.mean, spec.std, head)
    method = build_method(method_name, params, net, num_samples=n).to(device)
    if channels_last:
        method = method.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(method.parameters(), lr=peak_lr, momentum=p.momentum, weight_decay=p.weight_decay)
    augment = BatchAugment(params.augment, channels=spec.in_channels)
    gen = torch.Generator(device=device)  # per rank: batches, augmentation, CutMix
    gen.manual_seed(params.seed * 1000 + split_id + 1 + 100_003 * ctx.rank)
    shared_gen = torch.Generator(device=device)  # the same on every rank (sbid's negative columns)
    shared_gen.manual_seed(params.seed * 1000 + split_id + 2)
    method.shared_generator = shared_gen if ctx.active else None
    trained = distributed.wrap(method, ctx, device, p.sync_bn)
    step_fn = torch.compile(trained) if p.compile else trained

    fp = training_fingerprint(params, method_name, split_id, indices, ctx.world_size)
    start_epoch = 0
    history: list[dict] = []  # per-epoch metrics, carried through checkpoints so resumed curves are whole
    state = checkpoint.try_resume(ckpt_path, fp, map_location=device, log=log)
    if state is not None:
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        if ctx.active:
            gen.set_state(state["rank_generators"][ctx.rank].cpu())
            shared_gen.set_state(state["shared_generator"].cpu())
            torch.set_rng_state(state["rank_torch_rng"][ctx.rank].cpu())
        else:
            gen.set_state(state["generator"].cpu())
            torch.set_rng_state(state["torch_rng"].cpu())
        start_epoch = int(state["epoch"])
        history = [dict(zip(state["history_keys"], row)) for row in state["history"].tolist()]
        log(f"resuming {method_name} split {split_id} from epoch {start_epoch} ({ckpt_path})")
    else:
        method.initialise(data, augment, gen, local_batch, channels_last, positions if ctx.active else None)

    def save_checkpoint(epoch_done: int):
        extra = {}
        if ctx.active:  # every rank's random state (a collective: all ranks call it), rank 0 writes
            extra = {"rank_generators": distributed.all_gather_objects(gen.get_state()),
                     "rank_torch_rng": distributed.all_gather_objects(torch.get_rng_state()),
                     "shared_generator": shared_gen.get_state()}
        if not ctx.is_main:
            return
        checkpoint.save(ckpt_path, {
            "fingerprint": fp, "epoch": epoch_done, "method": method.state_dict(),
            "optimizer": optimizer.state_dict(), "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
            "history_keys": list(history[0]) if history else [],
            "history": torch.tensor([list(h.values()) for h in history], dtype=torch.float64),
            **extra,
        })

    from tqdm import tqdm

    last_loss, rate, train_seconds = float("nan"), 0.0, 0.0
    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, epochs):
        trained.train()
        epoch_metrics = method.on_epoch_start(epoch)
        loss_sum = torch.zeros((), device=device)
        extra_sums: dict[str, torch.Tensor] = {}
        t0 = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, desc=f"{method_name} s{split_id} ep {epoch + 1}/{epochs}",
                   unit="step", leave=False, disable=None if ctx.is_main else True, file=sys.stderr,
                   dynamic_ncols=True)
        report_every = max(1, steps_per_epoch // 10)
        for i, idx in enumerate(islice(epoch_batches(len(positions), local_batch, gen, device), steps_per_epoch)):
            lr = lr_at(step, total_steps, warmup_steps, peak_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, extras = train_step(step_fn, optimizer, data[idx], positions[idx], augment,
                                      gen, channels_last, use_bf16)
            loss_sum += loss
            for key, value in extras.items():
                extra_sums[key] = extra_sums.get(key, 0) + value
            step += 1
            if (i + 1) % report_every == 0 or i + 1 == steps_per_epoch:
                running = loss_sum.item() / (i + 1)  # one host sync every ~10% of an epoch
                if not math.isfinite(running):
                    bar.close()
                    raise TrainingError(
                        f"{method_name} split {split_id}: the loss became {running} at epoch {epoch + 1} step {i + 1}; "
                        f"lower {lr_key} (now {peak_lr}) or raise {tau_key} (now {method.temperature}) — "
                        f"the last good checkpoint {ckpt_path} is kept."
                    )
                elapsed = time.perf_counter() - t0
                bar.set_postfix(loss=f"{running:.4f}", img_s=f"{(i + 1) * p.batch_size / elapsed:.0f}")
                bar.update(i + 1 - bar.n)
        bar.close()
        if on_cuda:
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        last_loss = loss_sum.item() / steps_per_epoch
        rate = steps_per_epoch * p.batch_size / seconds
        epoch_metrics.update({k: v.item() / steps_per_epoch for k, v in extra_sums.items()})
        metrics = {"loss": last_loss, "lr": lr, "temperature": method.temperature, **epoch_metrics}
        history.append({"epoch": epoch + 1, **metrics})  # deterministic values only: the history is an output
        log(f"{method_name} split {split_id} epoch {epoch + 1}/{epochs}: loss {last_loss:.4f}, "
            f"lr {lr:.4f}, {rate:.0f} images/s" + "".join(f", {k} {v:.4f}" for k, v in epoch_metrics.items()))
        if run is not None:
            run.log_metrics({**metrics, "images_per_s": rate, "epoch_seconds": seconds}, step=epoch + 1)
        if (epoch + 1) % p.checkpoint_every == 0 or epoch + 1 == epochs:
            save_checkpoint(epoch + 1)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < epochs:
            return PretrainResult(epoch + 1 - start_epoch, start_epoch, last_loss, rate, train_seconds)

    if ctx.is_main:
        save_encoder(out_path, method, method_name, spec, params, head, fp)
        if history_path is not None:
            write_history_csv(history_path, history)
    return PretrainResult(epochs - start_epoch, start_epoch, last_loss, rate, train_seconds)


def write_history_csv(path: Path, history: list[dict]) -> None:
    """Per-epoch metrics as CSV (a DVC plots file: ``dvc plots show`` draws the loss curve)."""
    from sdclr.io import write_bytes

    keys = list(history[0]) if history else ["epoch", "loss"]
    lines = [",".join(keys)] + [",".join(f"{h[k]:.6g}" for k in keys) for h in history]
    write_bytes(path, ("\n".join(lines) + "\n").encode())


def save_encoder(path: Path, method, method_name: str, spec: ModelSpec, params: Params, head, fp: str) -> None:
    """The trained network (masks included) and what is needed to rebuild it.

    No run id or time: the file is a DVC output whose hash must only change with the weights
    (MLflow finds the pretraining run from this file's md5, the run's ``model_md5`` tag).
    """
    net_state = {k: v.detach().cpu().contiguous() for k, v in method.net.state_dict().items()}
    checkpoint.save(path, {
        "method": method_name,
        "fingerprint": fp,
        "net": net_state,
        "spec": asdict(spec),
        "model": asdict(params.model),
        "head": asdict(head),
    })


def load_encoder(path: Path, device: torch.device | str = "cpu"):
    """Rebuild the network saved by :func:`save_encoder` (weights_only load) in eval mode."""
    from sdclr.config import ModelParams
    from sdclr.models import HeadSpec

    state = checkpoint.load(Path(path), map_location="cpu")
    spec = state["spec"]
    head = HeadSpec(**state["head"]) if "head" in state else None  # files before sbid: the model head
    net = build_model(ModelParams(**state["model"]), spec["in_channels"], spec["mean"], spec["std"], head)
    net.load_state_dict(state["net"])
    return net.to(device).eval(), state
