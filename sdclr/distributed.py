"""Multi-process training with PyTorch's own engine (torchrun + DistributedDataParallel).

Single-process runs never touch ``torch.distributed``: every helper here is the identity
when the process group is not initialised, so the same method code runs both ways.

Under DDP the global batch (``pretrain.batch_size``) is split evenly over the ranks and
every rank computes the *same* global loss from features gathered from all ranks
(:func:`global_batch`): NT-Xent sees all 2·B negatives, sbid's bank sees every row of
the global batch. The NT-Xent losses gather their inputs themselves (:mod:`sdclr.losses`),
so a method hands them this rank's projections; a method that needs more of the global
batch (its images' indices, sbid's bank targets) gathers it with :func:`global_batch`.
The gather's backward sums each rank's gradient contributions, so with DDP's gradient
averaging the parameter gradient equals the single-process gradient of that global loss
(``tests/test_distributed.py`` checks it on two CPU processes).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from sdclr.errors import ParamError, TrainingError


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the torchrun agent dies (torchrun starts workers in their own
    sessions, so killing the agent — e.g. ``kill -9`` of the stage — would orphan them)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def relaunch_under_torchrun(nproc: int) -> None:
    """Replace this process by ``torchrun --standalone --nproc_per_node nproc`` running the same script."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.abspath(sys.argv[0]), *sys.argv[1:]]
    print(f"pretrain.nproc = {nproc}: launching {' '.join(cmd[1:])}", flush=True)
    # a cluster job's time-limit warning (SIGUSR1, sdclr.runtime.time_limit) would kill torchrun: it is
    # ignored, and the next job resumes from the last periodic checkpoint instead
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    os.execv(sys.executable, cmd)


def init_from_env(device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU); else a 1-process context.

    On CUDA each rank takes ``cuda:LOCAL_RANK``.
    """
    if not launched_by_torchrun():
        return Context(), device
    ctx = Context(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        _die_with_parent()
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ctx, device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward all-reduces (sums) the gradient and keeps this rank's slice.

    Written with all_reduce only, which every backend (gloo included) supports.
    """

    @staticmethod
    def forward(ctx, x):
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def global_batch(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Each of this rank's per-row ``tensors`` → the global batch's rows (every rank's, rank-major).

    One call for everything a step needs of the global batch, so projections, indices and
    per-row targets are gathered in the same rank-major order. A tensor that requires grad
    is gathered differentiably (its backward hands this rank the gradient of its rows,
    summed over the ranks); the others without autograd. In one process: the tensors as given.
    """
    if not is_active():
        return tensors
    return tuple(_GatherWithGrad.apply(x) if x.requires_grad else gather(x) for x in tensors)


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` from every rank, rank-major, without gradient (identity in one process)."""
    if not is_active():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if is_active():
        dist.all_reduce(x)
    return x


def rank_offset(rows: int) -> int:
    """Where this rank's ``rows`` rows start in a :func:`gather`-ed tensor."""
    return dist.get_rank() * rows if is_active() else 0


def all_gather_objects(obj) -> list:
    if not is_active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def check_identical(name: str, value: torch.Tensor) -> None:
    """Fail loudly when a quantity that must agree across ranks (e.g. SDCLR's masks) does not."""
    if not is_active():
        return
    values = gather(value.detach().double().reshape(1, -1))
    if not torch.equal(values, values[:1].expand_as(values)):
        raise TrainingError(f"{name} differs across ranks ({values.flatten().tolist()}); the ranks' weights have "
                            "diverged — re-run, and report it if it happens again.")


def wrap(method: torch.nn.Module, ctx: Context, device: torch.device, sync_bn: bool) -> torch.nn.Module:
    """DistributedDataParallel around ``method`` (unchanged in one process).

    Buffers are synced once at construction, not every step: masks and the sbid bank are
    updated identically on every rank (checked), and BN running statistics stay per rank
    unless ``sync_bn`` (CUDA).
    Unused parameters exist by design (the pruned branch's BN set outside SDCLR).
    """
    if not ctx.active:
        return method
    if sync_bn:
        if device.type != "cuda":
            raise ParamError("pretrain.sync_bn = true needs CUDA (PyTorch's SyncBatchNorm has no CPU "
                             "kernel); accepted on this machine: false.")
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                   forward_sync_buffers=False, find_unused_parameters=True)
