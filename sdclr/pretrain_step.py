"""What one pretraining run holds and how it takes one optimisation step.

:class:`Training` (the method, optimizer, device data, generator, schedule, resume and
compile state) and its :meth:`Training.step`, apart from :mod:`sdclr.pretrain_loop`, which builds
it, resumes it and drives it epoch by epoch. The benchmark times the same ``Training.step``
(``benchmarks/pretrain_throughput.py``), and the compile fallback of the first step lives
here with the step it guards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from sdclr import distributed
from sdclr.methods.base import Method


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_step(step_fn, optimizer, images, indices, generator,
               use_bf16: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimisation step of any method → (detached float loss, detached extras); no host sync."""
    with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=use_bf16):
        loss, extras = step_fn(images, indices, generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach().float(), {k: v.detach().float() for k, v in extras.items()}


@dataclass(frozen=True)
class Schedule:
    """How long the run is and what each step's learning rate and each epoch's τ are."""

    epochs: int
    steps_per_epoch: int
    warmup_steps: int
    peak_lr: float
    lr_key: str  # the params.yaml key ``peak_lr`` came from (named when the loss diverges)
    temperature_at: Callable[[int], float] | None = None  # epoch (from 1) → τ, when a schedule is set

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def lr(self, epoch: int, step: int) -> float:
        """The learning rate of step ``step`` (from 0) of epoch ``epoch`` (from 0): :func:`lr_at`."""
        return lr_at(epoch * self.steps_per_epoch + step, self.total_steps, self.warmup_steps, self.peak_lr)


@dataclass
class ResumeState:
    """What ties a run to its checkpoints: what one must match, and what it carries back."""

    fingerprint: str  # of everything that shapes the training (:func:`sdclr.pretrain_loop.training_fingerprint`)
    history: list[dict] = field(default_factory=list)  # per-epoch metrics, carried through checkpoints
    start_epoch: int = 0  # the first epoch this launch trains (after a resume: the checkpoint's)


@dataclass
class CompileState:
    """torch.compile as the first step applies it (see :meth:`Training._first_compiled_step`)."""

    mode: str | None = None  # torch.compile mode for the first step to apply; None: eager
    pending: bool = False  # compile is asked for and the first step is still to come
    cuda_graphs: bool = False  # the compiled network replays CUDA graphs (mode: reduce-overhead)


@dataclass
class Training:
    """Everything one pretraining run holds: made by :func:`sdclr.pretrain_loop.build`, advanced by
    :func:`sdclr.pretrain_loop.run_epoch`.

    The generator every rank shares under DDP (sbid's negative columns) is not held here: it
    is the method's ``shared_generator``, where it is drawn from.
    """

    method: Method
    step_fn: Callable  # the method, DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer
    data: torch.Tensor  # this rank's shard of the subset, uint8 NCHW on the device
    positions: torch.Tensor  # the shard rows' indices in the whole subset (= sbid's bank rows)
    gen: torch.Generator  # per rank: batches, augmentation, CutMix
    ctx: distributed.Context
    use_bf16: bool
    local_batch: int
    label: str  # "<method> split <k>", for progress bars and messages
    schedule: Schedule
    resume: ResumeState
    compile: CompileState
    log: Callable[[str], None] = print

    @property
    def global_batch(self) -> int:
        return self.local_batch * self.ctx.world_size

    def step(self, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimisation step on the shard rows ``idx`` (what the benchmark times, too)."""
        if self.compile.pending:
            return self._first_compiled_step(idx)
        if self.compile.cuda_graphs:  # a new step: the graphs' output buffers of the last one may be reused
            torch.compiler.cudagraph_mark_step_begin()
        return train_step(self.step_fn, self.optimizer, self.data[idx], self.positions[idx], self.gen, self.use_bf16)

    def _first_compiled_step(self, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The first step compiles; if compiling fails, say so in one line and go on eagerly.

        Compiling here, not in :func:`sdclr.pretrain_loop.build`, keeps everything before the first
        step eager (sbid's bank fill pass), so no compile can happen outside this fallback.

        A failed attempt may have run part of the step (augmentation draws, BatchNorm
        statistics, sbid's bank), so the weights, buffers and random states are restored
        first: the eager run then continues exactly as if compile had never been asked for.
        """
        self.compile.pending = False
        net = self.method.net  # the network and the augmentation's transform; the losses stay eager
        net.forward = torch.compile(net.forward, mode=self.compile.mode)  # (their kernels failed on an H100)
        self.method.augment.compile(self.compile.mode)
        saved = ({k: v.clone() for k, v in self.method.state_dict().items()}, self.gen.get_state(),
                 torch.get_rng_state())
        try:
            return self.step(idx)
        except Exception as e:  # Dynamo, AOTAutograd, Inductor, Triton or the C++ compiler
            self.method.load_state_dict(saved[0])
            self.gen.set_state(saved[1])
            torch.set_rng_state(saved[2])
            del self.method.net.forward  # the instance attribute torch.compile set: back to the eager forward
            self.method.augment.uncompile()
            self.compile.cuda_graphs = False
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            self.log(f"note: torch.compile failed ({type(e).__name__}: {first}); {self.label} continues without it "
                     "(set pretrain.compile: false to skip the attempt).")
            return self.step(idx)
