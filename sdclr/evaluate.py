"""Frozen-encoder evaluation: features once, linear probes (full- and few-shot), kNN.

Everything runs where the encoder is (features, probes and kNN stay on ``device``, in
fp32), through one code path for the CPU and a GPU. Every random draw (head init,
shuffles, the authors' crops) comes from a CPU generator and is moved to the device, so
a GPU sees the same draws as the CPU and differs from it only by floating point.

Protocol (docs/recipes.md): dense branch, dense BN, eval mode. Probes are trained on the
balanced train pool (full-shot) and on few-shot subsets of it (``evaluate.few_shot``): the
split's 1 %-per-class S_b, or so many images per class (:func:`few_shot_subsets`, BCL's
100- and 50-shot); the test set of the official split is reported. Three probe protocols
(``evaluate.probe.protocol``), each the one a paper published its numbers with:

- ``features`` (the CPU default, a documented deviation) extracts features once without
  augmentation and standardises them, so the probe is a fast convex problem; the epoch is
  chosen on the validation hold-out;
- ``authors``: the SDCLR authors' probe (:func:`authors_probe`, ``presets/cifar10_paper.yaml``),
  the epoch chosen on validation as theirs is;
- ``bcl``: BCL's probe (:func:`bcl_probe`, ``presets/cifar100_paper.yaml``), the last epoch's head.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sdclr.config import EvaluateParams, ProbeParams
from sdclr.data.device_data import to_device_uint8
from sdclr.data.longtail import groups_of
from sdclr.errors import ConfigError
from sdclr.metrics import few_shot_label, few_shot_name, group_report, per_class_accuracy, probe_kinds

#: the params an evaluate stage reads (dvc.yaml lists them; ``evaluate-random`` adds ``model``,
#: the architecture of its untrained encoder, which the others read from the encoder file)
STAGE_PARAMS = ("seed", "device", "numerics", "data.dataset", "evaluate")


@torch.no_grad()
def extract_features(net, images_nhwc: np.ndarray, device: torch.device, batch_size: int) -> torch.Tensor:
    """Backbone features (dense branch, eval mode) of uint8 N×H×W×C images, as float32 on ``device``.

    Through a copy of the backbone with its BatchNorms folded into the convs (the same
    function; :meth:`sdclr.models.resnet.ResNet18.folded`), channels_last throughout:
    oneDNN's NHWC kernels run this ~2× faster on a 2-core CPU (width 16, 28×28, batch 256:
    2,255 vs 1,019 images/s), and cuDNN prefers it too.
    """
    backbone = net.backbone.folded().to(memory_format=torch.channels_last)
    out = []
    for start in range(0, len(images_nhwc), batch_size):
        x = to_device_uint8(images_nhwc[start : start + batch_size], device).float().div_(255)
        out.append(backbone(x.contiguous(memory_format=torch.channels_last)).float())
    return torch.cat(out)


@dataclass
class ProbeResult:
    best_epoch: int
    val_accuracy: float
    test_pred: np.ndarray
    val_curve: list[float]
    head: torch.nn.Module | None = None  # as trained to the last epoch (the fingerprint hashes its weights)


def _balanced_accuracy(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    pc = per_class_accuracy(logits.argmax(1).cpu().numpy(), y.cpu().numpy(), num_classes)
    return float(np.nanmean(pc))


class ProbeLinear(torch.nn.Linear):
    """A probe's linear layer, ``x Wᵀ + b`` summed in a fixed order: a broadcast product and an
    ATen sum over the feature dimension, forward and backward, instead of a BLAS call.

    Why: every other kernel of the evaluation is pinned (``numerics: portable``), but MKL's
    matrix product at a probe's small shapes (10 outputs) is the one op whose order no pin
    fixes on every CPU; an AMD EPYC Zen 4 trained the full-shot probe of ``evaluate-sbid@0`` to
    other bytes than an Intel Xeon (docs/measurements.md). ATen's reductions under the AVX2 pin
    sum in the same order on every x86-64 CPU. A probe has 10 outputs, so the product costs
    little more than the call it replaces.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.unsqueeze(-1) * self.weight.t()).sum(1) + self.bias


def _linear_head(dim: int, num_classes: int, generator: torch.Generator, device) -> torch.nn.Linear:
    """The probe's linear layer: N(0, 0.01) weights, zero bias, drawn from the CPU ``generator``."""
    head = ProbeLinear(dim, num_classes)
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=generator)
        head.bias.zero_()
    return head.to(device)


def _probe_step(head: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    """One SGD step of a probe's linear head on features ``x`` with labels ``y``."""
    loss = F.cross_entropy(head(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


@dataclass
class Heldout:
    """What a probe is selected and scored on: validation features and labels, test features
    (never test labels), and the number of classes."""

    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    num_classes: int


class _BestOnValidation:
    """Model selection shared by both probes: after each epoch, score the head on validation
    (mean per-class accuracy) and keep the test predictions of the best epoch so far."""

    def __init__(self, heldout: Heldout, device):
        self.val_x, self.val_y = heldout.val_x.to(device), heldout.val_y
        self.test_x, self.num_classes = heldout.test_x.to(device), heldout.num_classes
        self.best = (-1.0, 0, None)
        self.curve: list[float] = []

    @torch.no_grad()
    def after_epoch(self, head: torch.nn.Module, epoch: int) -> None:
        acc = _balanced_accuracy(head(self.val_x), self.val_y, self.num_classes)
        self.curve.append(acc)
        if acc > self.best[0]:
            self.best = (acc, epoch, head(self.test_x).argmax(1).cpu().numpy())

    def result(self) -> ProbeResult:
        acc, epoch, pred = self.best
        return ProbeResult(best_epoch=epoch, val_accuracy=acc, test_pred=pred, val_curve=self.curve)


def standardiser(x: torch.Tensor):
    """The map ``t ↦ (t − μ) / σ`` with ``x``'s per-dimension mean and std (σ floored at 1e-6)."""
    mu, sigma = x.mean(0, keepdim=True), x.std(0, keepdim=True).clamp_min(1e-6)
    return lambda t: (t - mu) / sigma


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, heldout: Heldout, probe: ProbeParams, epochs: int,
                 seed: int) -> ProbeResult:
    """Softmax regression on standardised frozen features, SGD + cosine schedule, on the features' device.

    Model selection: the epoch with the best validation mean per-class accuracy; its
    test predictions are returned (test labels are never looked at here).
    """
    norm = standardiser(train_x)
    tx = norm(train_x)
    g = torch.Generator().manual_seed(seed)
    head = _linear_head(tx.shape[1], heldout.num_classes, g, tx.device)
    n = len(tx)
    bs = min(probe.batch_size, n)
    steps, step = math.ceil(n / bs) * epochs, 0
    sgd = _HeavyBall(list(head.parameters()), momentum=0.9, weight_decay=probe.weight_decay)
    selection = _BestOnValidation(Heldout(norm(heldout.val_x), heldout.val_y, norm(heldout.test_x),
                                          heldout.num_classes), tx.device)
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g).to(tx.device)
        for start in range(0, n, bs):
            idx = perm[start : start + bs]
            sgd.step(F.cross_entropy(head(tx[idx]), train_y[idx]),
                     probe.lr * 0.5 * (1 + math.cos(math.pi * step / steps)))
            step += 1
        selection.after_epoch(head, epoch + 1)
    return dataclasses.replace(selection.result(), head=head)


class _HeavyBall:
    """SGD with momentum and L2 weight decay (``torch.optim.SGD``'s update: g ← ∇ + λθ, v ← μv + g,
    θ ← θ − lr·v), written out for the features probe: a ``torch.optim`` optimizer imports
    ``torch._dynamo`` on first use, 1.2–1.6 s of every evaluation stage's start-up on a 2-core CPU."""

    def __init__(self, params: list[torch.Tensor], momentum: float, weight_decay: float):
        self.params, self.momentum, self.weight_decay = params, momentum, weight_decay
        self.velocity = [torch.zeros_like(p) for p in params]

    def step(self, loss: torch.Tensor, lr: float) -> None:
        grads = torch.autograd.grad(loss, self.params)
        with torch.no_grad():
            for p, g, v in zip(self.params, grads, self.velocity):
                v.mul_(self.momentum).add_(g.add(p, alpha=self.weight_decay) if self.weight_decay else g)
                p.add_(v, alpha=-lr)


def bcl_head(train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, probe: ProbeParams, epochs: int,
             generator: torch.Generator) -> torch.nn.Linear:
    """BCL's linear probe, trained: Adam on the raw frozen features (no standardisation, no
    augmentation), lr decayed exponentially from ``probe.lr`` to ``probe.final_lr`` over the
    epochs (stepped once per epoch), a fresh shuffle every epoch (MediaBrain-SJTU/BCL
    eval_cifar.py, docs/recipes.md). PyTorch's default init of the layer, U(±1/√dim) for the
    weights and the bias, drawn from ``generator``; the head has the features' dtype and device.
    """
    dim, n = train_x.shape[1], len(train_x)
    bound = 1 / math.sqrt(dim)
    head = ProbeLinear(dim, num_classes, dtype=train_x.dtype)
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.uniform_(-bound, bound, generator=generator)
    head = head.to(train_x.device)
    opt = torch.optim.Adam(head.parameters(), lr=probe.lr, weight_decay=probe.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=(probe.final_lr / probe.lr) ** (1 / epochs))
    bs = min(probe.batch_size, n)
    for _ in range(epochs):
        for idx in torch.randperm(n, generator=generator).to(train_x.device).split(bs):
            _probe_step(head, opt, train_x[idx], train_y[idx])
        sched.step()
    return head


def bcl_probe(train_x: torch.Tensor, train_y: torch.Tensor, heldout: Heldout, probe: ProbeParams, epochs: int,
              seed: int) -> ProbeResult:
    """BCL's probe (:func:`bcl_head`) scored as BCL scores it: the last epoch's head on the test
    set, no model selection; its validation accuracy is recorded, not used."""
    head = bcl_head(train_x, train_y, heldout.num_classes, probe, epochs, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        val = _balanced_accuracy(head(heldout.val_x), heldout.val_y, heldout.num_classes)
        test_pred = head(heldout.test_x).argmax(1).cpu().numpy()
    return ProbeResult(best_epoch=epochs, val_accuracy=val, test_pred=test_pred, val_curve=[val])


def few_shot_subsets(pool: np.ndarray, labels: np.ndarray, shots: list[int], seed: int,
                     split: int) -> dict[int, np.ndarray]:
    """{n: sorted train-set indices of n images per class of the balanced ``pool``}, nested.

    One random order of each class's pool images per (seed, split); each subset is its first
    n images, so the 50-shot subset lies inside the 100-shot one and a re-run draws the same.
    A class with fewer than n pool images is one sentence.
    """
    rng = np.random.default_rng([seed, split, 0x5107])  # a stream of its own: no other draw shifts it
    pool_labels = labels[pool]
    orders = [rng.permutation(pool[pool_labels == c]) for c in range(int(labels.max()) + 1)]
    short = min(orders, key=len)
    if max(shots) > len(short):
        raise ConfigError(f"evaluate.few_shot asks for {max(shots)} images per class, but class "
                          f"{int(labels[short[0]]) if len(short) else '?'} has only {len(short)} in the balanced pool; "
                          f"accepted: at most {len(short)} (or raise subsample.pool_per_class).")
    return {n: np.sort(np.concatenate([order[:n] for order in orders])) for n in shots}


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Per-sample RandomCrop(size, padding=pad, zero fill) + horizontal flip of a float NCHW batch.

    One gather for the whole batch (no per-image Python): the authors' probe augmentation.
    The offsets are drawn from ``generator`` (the CPU's) and moved to ``x``'s device.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    rows = top[:, None] + torch.arange(h, device=x.device)
    cols = left[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    out = padded[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)  # advanced indexing put the channel dim last


def authors_probe(net, images_nhwc: np.ndarray, labels: np.ndarray, heldout: Heldout, probe: ProbeParams,
                  epochs: int, milestones: list[int], seed: int, device: torch.device, pad: int = 4) -> ProbeResult:
    """The SDCLR authors' linear evaluation: a linear layer on the frozen backbone.

    Training images are re-augmented every epoch (random crop with 4-pixel zero padding,
    flip) and passed through the frozen backbone in eval mode; SGD (momentum 0.9) with
    the lr multiplied by 0.1 at each milestone epoch. Validation and test images are not
    augmented, so their (deterministic) features are computed once by the caller.
    """
    net.eval().to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(seed)
    head = _linear_head(heldout.val_x.shape[1], heldout.num_classes, g, device)
    opt = torch.optim.SGD(head.parameters(), lr=probe.lr, momentum=0.9, weight_decay=probe.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(milestones), gamma=0.1)
    data = to_device_uint8(images_nhwc, device)
    y = torch.from_numpy(labels).to(device)
    selection = _BestOnValidation(heldout, device)
    n, bs = len(data), min(probe.batch_size, len(data))
    for epoch in range(epochs):
        for idx in torch.randperm(n, generator=g).to(device).split(bs):
            with torch.no_grad():
                x = random_crop_flip(data[idx].float().div_(255), pad, g)
                feats = net.features(x.contiguous(memory_format=torch.channels_last)).float()
            _probe_step(head, opt, feats, y[idx])
        sched.step()
        selection.after_epoch(head, epoch + 1)
    return selection.result()


@torch.no_grad()
def knn_predict(memory_x: torch.Tensor, memory_y: torch.Tensor, query_x: torch.Tensor, num_classes: int,
                k: int, temperature: float, chunk: int = 1024) -> np.ndarray:
    """Cosine kNN with exp(sim / T) vote weights (Wu et al. 2018), memory = balanced pool.

    The caller chooses the features (``evaluate.knn_features``): standardised with the pool's
    statistics, as the linear probes see them, or raw.

    The votes are summed through a one-hot product, not ``scatter_add_``, whose CUDA kernel
    adds in a nondeterministic order (a near-tie could flip between two identical runs).
    """
    mem = F.normalize(memory_x, dim=1)
    k = min(k, len(mem))
    preds = []
    for start in range(0, len(query_x), chunk):
        q = F.normalize(query_x[start : start + chunk], dim=1)
        sim, idx = (q @ mem.T).topk(k, dim=1)
        votes = (F.one_hot(memory_y[idx], num_classes) * (sim / temperature).exp()[:, :, None]).sum(1)
        preds.append(votes.argmax(1))
    return torch.cat(preds).cpu().numpy()


@contextlib.contextmanager
def full_fp32():
    """No TF32 inside (cuDNN convolutions default to it on Ampere and later): the probes' fp32 is fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def evaluate_encoder(net, train: dict, test: dict, split: dict, eval_params: EvaluateParams, seed: int,
                     device: torch.device, log=print, split_id: int = 0) -> dict:
    """All probes of one encoder on one split → metrics dict (see module docstring), in fp32.

    ``train`` and ``test`` are the dataset's parts (``images`` uint8 N×H×W×C, ``labels``);
    ``split`` the split's index arrays (:func:`sdclr.data.longtail.load_split`) and ``split_id``
    its id, which seeds the few-shot draws per class.
    """
    images_train, labels_train, labels_test = train["images"], train["labels"], test["labels"]
    groups = groups_of(split["class_order"])
    with full_fp32():  # the probes run where the encoder is; on a GPU, in true fp32
        num_classes = int(labels_train.max()) + 1
        pool, val, fewshot = split["pool"], split["val"], split["fewshot"]
        bs = eval_params.feature_batch_size
        log("extracting features (pool, validation, test)...")
        feats_pool = extract_features(net, images_train[pool], device, bs)
        feats_val = extract_features(net, images_train[val], device, bs)
        feats_test = extract_features(net, test["images"], device, bs)
        y_pool = torch.from_numpy(labels_train[pool]).to(device)
        heldout = Heldout(feats_val, torch.from_numpy(labels_train[val]).to(device), feats_test, num_classes)

        out = {"num_classes": num_classes, "groups": groups, "feature_dim": int(feats_pool.shape[1])}
        p = eval_params.probe
        shots = [e for e in eval_params.few_shot if isinstance(e, int)]
        drawn = few_shot_subsets(pool, labels_train, shots, seed, split_id) if shots else {}
        settings = {  # name: (train-set indices into the train images, epochs, milestones, subset)
            "full_shot": (pool, p.full_shot_epochs, p.full_shot_milestones, None)}
        for i, entry in enumerate(eval_params.few_shot):
            rows = np.asarray(fewshot) if isinstance(entry, float) else drawn[entry]
            settings[few_shot_name(entry, i == 0)] = (rows, p.few_shot_epochs, p.few_shot_milestones, entry)
        for name, (rows, epochs, milestones, entry) in settings.items():
            log(f"linear probe {name} ({p.protocol}): {len(rows)} training images, {epochs} epochs")
            in_pool = (slice(None) if rows is pool else  # a subset ⊂ pool: its rows of the pool's features
                       torch.from_numpy(np.searchsorted(pool, rows)).to(device))
            if p.protocol == "authors":
                res = authors_probe(net, images_train[rows], labels_train[rows], heldout, p, epochs, milestones, seed,
                                    device)
            elif p.protocol == "bcl":
                res = bcl_probe(feats_pool[in_pool], y_pool[in_pool], heldout, p, epochs, seed)
            else:
                res = linear_probe(feats_pool[in_pool], y_pool[in_pool], heldout, p, epochs, seed)
            pc = per_class_accuracy(res.test_pred, labels_test, num_classes)
            out[name] = {**group_report(pc, groups), "best_epoch": res.best_epoch,
                         "val_accuracy": res.val_accuracy, "train_size": len(rows), "val_curve": res.val_curve,
                         **({} if entry is None else {"subset": few_shot_label(entry)})}
        knn_in = standardiser(feats_pool) if eval_params.knn_features == "standardised" else (lambda t: t)
        memory, k, temperature = knn_in(feats_pool), eval_params.knn_k, eval_params.knn_temperature
        pred = knn_predict(memory, y_pool, knn_in(feats_test), num_classes, k, temperature)
        val_pred = knn_predict(memory, y_pool, knn_in(feats_val), num_classes, k, temperature)
        out["knn"] = {**group_report(per_class_accuracy(pred, labels_test, num_classes), groups),
                      "k": k, "features": eval_params.knn_features,
                      "val_accuracy": float(np.nanmean(per_class_accuracy(val_pred, labels_train[val], num_classes)))}
        out["protocol"] = {"probe": p.protocol, "few_shot": list(eval_params.few_shot)}
        return out


def flat_metrics(metrics: dict) -> dict[str, float]:
    """The headline numbers of :func:`evaluate_encoder`'s result as flat MLflow metric names."""
    flat = {}
    for kind in probe_kinds(metrics):
        flat[f"{kind}_accuracy"] = metrics[kind]["accuracy"]
        flat[f"{kind}_balancedness"] = metrics[kind]["balancedness"]
        flat.update({f"{kind}_{g}": acc for g, acc in metrics[kind]["groups"].items()})
    return flat

