"""Single-branch instance discrimination with sqrt self-distillation (Cao & Wu 2024).

One augmented view per image per step (half the encoder work of SimCLR/SDCLR). Each
image's projection is classified against a memory bank of one unit vector per training
image: logits are cosine similarities to the batch's own entries plus ``negatives`` other
entries, the target is the image's own entry (mixed with its CutMix partner's), and the
loss is the cross-entropy at temperature τ plus λ times the sqrt self-distillation term
on the temperature-1 distribution. After each step the bank moves by the momentum rule
or by the gradient-derived rule (see :mod:`sdclr.memory_bank`). The bank is a buffer, so
it travels with the method's ``state_dict`` into resume checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch
from torch.nn import functional as F

from sdclr.data.cutmix import cutmix
from sdclr.distributed import all_reduce_sum, global_batch, is_active, rank_offset
from sdclr.losses import bank_instance_loss
from sdclr.memory_bank import MemoryBank
from sdclr.methods.base import Method, claims_against
from sdclr.models import HeadSpec
from sdclr.schema import in_range, non_negative, positive, setting


def _negatives(v):
    if v == "all" or (isinstance(v, int) and v >= 0):
        return None
    return "a non-negative integer (0 = the batch's own entries only) or 'all' (full softmax)"


@dataclass(frozen=True)
class SbidParams:
    """Single-branch instance discrimination (Cao & Wu 2024); shares the ``pretrain`` schedule."""

    head_hidden: int = setting(positive("a positive integer"),
                               "head width: feat→hidden→BN→ReLU→hidden→BN→ReLU→proj_dim (paper: 2048)",
                               deviation="sbid: head width {ours} instead of {paper}.")
    proj_dim: int = setting(positive("a positive integer"), "head output dimension = memory bank entry size")
    temperature: float = setting(positive(), "τ of the cross-entropy over the bank logits (paper: 0.2)",
                                 deviation="sbid: τ {ours} instead of {paper}.")
    self_distill_weight: float = setting(non_negative(), "λ of the sqrt self-distillation term (paper: 20; 0 = off)",
                                         deviation="sbid: self-distillation weight λ {ours} instead of {paper}.")
    negatives: Union[int, Literal["all"]] = setting(
        _negatives, "random other bank entries per step; 0 = batch only; all = full softmax",
        deviation="sbid: {ours} random negative bank entries per step instead of the whole bank ({paper}).")
    bank_update: Literal["gradient", "momentum"] = setting(
        None, "bank rule: gradient (Cao & Wu) | momentum (NPID)",
        deviation="sbid: the {ours} bank update instead of Cao & Wu's {paper} rule.")
    bank_momentum: float = setting(in_range(lo=0, hi=1, hi_open=True, what="a number"), "momentum rule: m (paper: 0.5)",
                                   recipe=False)
    bank_step: float = setting(positive(), "gradient rule: step size along Σ_i (y_ik − p_ik)·z_i", recipe=False)
    cutmix: bool = setting(None, "batch-level CutMix with mixed targets",
                           deviation="sbid: CutMix {ours} instead of {paper}.")
    cutmix_alpha: float = setting(positive(), "CutMix Beta(α, α) (paper: 0.5)")
    epochs: Optional[int] = setting(positive("a positive integer or null"), "null = pretrain.epochs (Cao & Wu: 200)",
                                    deviation="sbid: {ours} epochs instead of {paper}.")
    lr: Optional[float] = setting(positive("a positive number or null"),
                                  "null = pretrain.lr (Cao & Wu: 1.0 at batch 512)",
                                  deviation="sbid: peak lr {ours} instead of {paper}.")


class SingleBranchID(Method):
    """Single-branch instance discrimination (Cao & Wu 2024): one view against a memory bank, with
    its own head (``sbid.*``), so of ``model`` it reads only the width."""

    name = "sbid"
    views_per_image = 1
    temperature_key = "sbid.temperature"
    loss_metric = "bank_loss"  # bank cross-entropy + λ · self-distillation
    reads = ("model.width", "sbid")  # its head is sbid's own, not model.head_*
    own_settings = {"epochs": "sbid.epochs", "lr": "sbid.lr"}  # Cao & Wu: 200 epochs at lr 1.0
    params_block = ("sbid", SbidParams)
    claim_source = "Cao & Wu 2024"
    claim_heading = ("The single-branch method (sbid) should match or beat SimCLR, at about half the compute per "
                     "image (its cost is in reports/cost.json: machine-dependent).")
    claims = claims_against("simclr", minor=False)

    def __init__(self, net, sbid_params, num_samples: int):
        super().__init__(net)
        self.cfg = sbid_params
        self.temperature = sbid_params.temperature
        self.negatives = None if sbid_params.negatives == "all" else int(sbid_params.negatives)
        self.bank = MemoryBank(num_samples, sbid_params.proj_dim)

    @classmethod
    def from_params(cls, params, net, num_samples):
        return cls(net, params.sbid, num_samples)

    @classmethod
    def head_spec(cls, params):
        """feat→hidden→BN→ReLU→hidden→BN→ReLU→proj_dim, no last BN (Cao & Wu)."""
        return HeadSpec(depth=3, hidden=params.sbid.head_hidden, out_dim=params.sbid.proj_dim, last_bn=False)

    @torch.no_grad()
    def initialise(self, data, generator, batch_size: int, positions=None) -> None:
        """Fill the bank with one no-grad pass of the untrained network over the augmented set.

        Train-mode BN (batch statistics), as in the training steps that follow, so the
        entries live where the first steps' features will. Under DDP each rank fills its
        shard's rows and a sum over ranks assembles the same whole bank everywhere.
        """
        was_training = self.training
        self.train()
        n = data.shape[0]
        if positions is not None:
            self.bank.weight.zero_()
        for idx in torch.tensor_split(torch.arange(n, device=data.device), max(1, n // batch_size)):
            (x,) = self.views(data[idx], generator)
            self.bank.fill(idx if positions is None else positions[idx], self.net(x).float())
        if positions is not None:
            all_reduce_sum(self.bank.weight)
        self.train(was_training)

    def forward(self, images, indices, generator):
        cfg = self.cfg
        x = self.augment(images, generator)
        perm, lam = None, 1.0
        if cfg.cutmix:
            x, perm, lam = cutmix(x, cfg.cutmix_alpha, generator)
        x = self.memory_format(x)
        z_hat = F.normalize(self.net(x).float(), dim=1)
        b = len(indices)
        partner_pos = torch.arange(b, device=indices.device) if perm is None else perm
        if is_active():
            # DDP: every rank computes the same loss over the global batch and applies the same
            # bank update, so the banks stay identical without broadcasting them. The gather is
            # here, not in the loss (as NT-Xent's is): the bank update needs the global rows too.
            lam = torch.full((b,), lam, device=indices.device)  # CutMix draws are per rank
            z_hat, partner_pos, lam, indices = global_batch(z_hat, partner_pos + rank_offset(b), lam, indices)

        columns = self.bank.candidates(indices, self.negatives, self.shared_generator or generator)
        # Where each row's target sits among the logits' columns: the bank index itself for
        # the full softmax, else position i (own entries come first).
        own = indices if columns is None else torch.arange(len(indices), device=indices.device)
        partner = own[partner_pos]
        loss, residual, entropy_p, entropy_q = bank_instance_loss(
            z_hat, self.bank.rows(columns), own, partner, lam, self.temperature, cfg.self_distill_weight)

        with torch.no_grad():  # the loss saved only its gradient, so the bank may change in place now
            if cfg.bank_update == "momentum":
                self.bank.momentum_update(indices, z_hat.detach(), cfg.bank_momentum)
            else:
                self.bank.gradient_update(columns, z_hat.detach(), residual, cfg.bank_step)
        return loss, {"entropy": entropy_p, "entropy_tau": entropy_q}
