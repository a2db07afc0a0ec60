"""The ops of a numerics fingerprint, measured here: which bytes each kernel a stage runs gives.

Portable numerics promise the same bytes on every x86-64 CPU. A promise like that can only
be checked op by op: two CPUs that agree on every kernel a stage runs train the same
encoder, and two that disagree on one (a matrix product summed in another order) do not.
So each op a pretraining or an evaluation runs is applied here, under the stage's own pins,
to inputs drawn with numpy (no torch RNG kernel involved), at the shapes of this project's
params (every convolution of the real network, found by hooks on it), and the sha256 of its
outputs is recorded, with the op's *group* ("conv backward", "linear layers", ...) that
:mod:`sdclr.pipeline.compare` names when a run differs from the committed one. Whole training steps
of the default methods close the list: if every op agrees and a step does not, the list is
missing a kernel.

Imports torch: a process must pin its numerics first, as ``python -m sdclr.pipeline.fingerprint``
does before importing this module.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from sdclr.data.augment import BatchAugment
from sdclr.data.datasets import DATASETS
from sdclr.evaluate import Heldout, extract_features, linear_probe, standardiser
from sdclr.losses import nt_xent
from sdclr.models import build_model
from sdclr.pipeline.fingerprint_format import VERSION
from sdclr.pretrain_loop import Job, build
from sdclr.registry import method_class, parse_params
from sdclr.runtime.numerics import PORTABLE_ENV, apply, cpu_model, describe, mode_in_params
from sdclr.storage.encoder_file import ModelSpec


class _Recorder:
    """Draws inputs from one numpy stream (the same on every CPU) and hashes outputs, op by op."""

    def __init__(self):
        self.rng = np.random.default_rng(0)
        self.rows: list[dict] = []

    def tensor(self, *shape, grad: bool = False):
        x = torch.from_numpy(self.rng.standard_normal(shape).astype("float32"))
        return x.requires_grad_(grad)

    def record(self, group: str, op: str, *outputs) -> None:
        digest = hashlib.sha256()
        for x in outputs:
            digest.update(x.detach().contiguous().numpy().tobytes())
        self.rows.append({"op": op, "group": group, "sha": digest.hexdigest()[:16]})


def _conv_configs(net, example) -> list[tuple]:
    """Every distinct convolution of ``net`` at its real input size: (cin, cout, k, stride, size), via hooks."""
    seen: dict[tuple, None] = {}

    def hook(module, inputs, _output):
        seen[(module.in_channels, module.out_channels, module.kernel_size[0], module.stride[0],
              inputs[0].shape[-1])] = None

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        net.eval()(example)
    for h in handles:
        h.remove()
    return list(seen)


def _kernel_ops(rec: _Recorder, params, net, size: int, channels: int) -> None:
    """The low-level kernels of a training step, at the network's shapes and the training batch (2 views)."""
    batch = 2 * params.pretrain.batch_size
    configs = _conv_configs(net.backbone, torch.zeros(2, channels, size, size))
    for cin, cout, k, stride, at in configs:
        name = f"conv{k}x{k} {cin}->{cout} @{at} s{stride}"
        x, w = rec.tensor(batch, cin, at, at, grad=True), rec.tensor(cout, cin, k, k, grad=True)
        y = F.conv2d(x, w, stride=stride, padding=k // 2)
        rec.record("conv forward", f"{name} forward", y)
        y.backward(rec.tensor(*y.shape))
        rec.record("conv backward", f"{name} grad input", x.grad)
        rec.record("conv backward", f"{name} grad weight", w.grad)
        xl = x.detach().contiguous(memory_format=torch.channels_last)  # feature extraction's layout
        with torch.no_grad():
            rec.record("conv forward, channels_last (evaluation)", f"{name} channels_last forward",
                       F.conv2d(xl, w.detach().contiguous(memory_format=torch.channels_last), stride=stride,
                                padding=k // 2))

    for c, at in dict.fromkeys((cout, (at - 1) // stride + 1) for _, cout, _, stride, at in configs):  # conv outputs
        x, weight, bias = rec.tensor(batch, c, at, at, grad=True), rec.tensor(c, grad=True), rec.tensor(c, grad=True)
        y = F.batch_norm(x, torch.zeros(c), torch.ones(c), weight, bias, training=True)
        rec.record("batch norm", f"batch_norm {c} @{at} train forward", y)
        y.backward(rec.tensor(*y.shape))
        rec.record("batch norm", f"batch_norm {c} @{at} train grads", x.grad, weight.grad, bias.grad)

    feat, hidden, out = params.model.width * 8, params.model.head_hidden, params.model.proj_dim
    x, w1 = rec.tensor(batch, feat, grad=True), rec.tensor(hidden, feat, grad=True)
    w2 = rec.tensor(out, hidden, grad=True)
    z = F.linear(F.relu(F.linear(x, w1)), w2)
    rec.record("linear layers", f"projection head {feat}->{hidden}->{out} forward", z)
    z.backward(rec.tensor(*z.shape))
    rec.record("linear layers", f"projection head {feat}->{hidden}->{out} grads", x.grad, w1.grad, w2.grad)

    p = rec.tensor(batch, feat, 4, 4, grad=True)
    q = F.adaptive_avg_pool2d(p, 1)
    q.backward(rec.tensor(*q.shape))
    rec.record("pooling", "adaptive_avg_pool2d forward and backward", q, p.grad)

    params_ = [rec.tensor(feat, feat, 3, 3).requires_grad_(True), rec.tensor(hidden, feat).requires_grad_(True)]
    opt = torch.optim.SGD(params_, lr=0.5, momentum=0.9, weight_decay=1e-4)
    for _ in range(3):
        for t in params_:
            t.grad = rec.tensor(*t.shape)
        opt.step()
    rec.record("SGD", "SGD with momentum and weight decay, 3 steps", *params_)


def _project_ops(rec: _Recorder, params, images, spec) -> None:
    """The project's own functions: NT-Xent, the batched augmentation, whole training steps."""
    z1, z2 = rec.tensor(params.pretrain.batch_size, params.model.proj_dim, grad=True), \
        rec.tensor(params.pretrain.batch_size, params.model.proj_dim, grad=True)
    loss = nt_xent(z1, z2, params.pretrain.temperature)
    loss.backward()
    rec.record("NT-Xent loss", "nt_xent loss and grads", loss, z1.grad, z2.grad)

    batch = torch.from_numpy(images[: params.pretrain.batch_size]).permute(0, 3, 1, 2).contiguous()
    gen = torch.Generator().manual_seed(0)
    rec.record("augmentation", "BatchAugment (crop, flip, resample)",
               BatchAugment(params.augment, spec.in_channels)(batch, gen))

    for method in ("simclr", "sdclr", "sbid"):
        training = build(params, Job(method_class(method), 0, images, np.arange(len(images)), spec))
        training.method.initialise(training.data, training.gen, training.local_batch, None)
        training.step_fn.train()
        training.method.on_epoch_start(0)
        for _ in range(2):
            training.step(torch.randperm(len(training.positions), generator=training.gen)[: training.local_batch])
        shape = f"width {params.model.width}, batch {params.pretrain.batch_size}"
        rec.record(f"a whole training step ({method})", f"{method}: weights after 2 steps ({shape})",
                   *training.method.state_dict().values())


def _evaluation_ops(rec: _Recorder, params, net, dataset) -> None:
    """The evaluation chain at the shapes an evaluate stage runs it on ``dataset``: features through the
    folded network at the feature batch and at each set's last, partial batch; the pool's
    standardisation; an epoch of the full-shot and of the few-shot probe at the real batch and lr,
    and their validation and test logits; kNN's similarities and top-k, at a full and each partial
    chunk of queries (per set of queries: a chunk of 1,024 as :func:`sdclr.evaluate.knn_predict`)."""
    ev, sub, n_cls = params.evaluate, params.subsample, dataset.num_classes
    per_class = dataset.train_size // n_cls - sub.val_per_class
    pool_n = n_cls * min(per_class, sub.pool_per_class or per_class)
    val_n, test_n, bs = n_cls * sub.val_per_class, dataset.test_size, ev.feature_batch_size
    size, channels = dataset.image_size, dataset.channels
    batches = sorted({min(bs, pool_n), *(n % bs for n in (pool_n, val_n, test_n) if n % bs)}, reverse=True)
    images = rec.rng.integers(0, 256, (batches[0], size, size, channels), dtype="uint8")
    for n in batches:
        rec.record("feature extraction (evaluation)", f"folded network features of {n} images",
                   extract_features(net, images[:n], torch.device("cpu"), bs))

    dim = net.backbone.feature_dim
    pool_x, val_x, test_x = rec.tensor(pool_n, dim), rec.tensor(val_n, dim), rec.tensor(test_n, dim)
    labels = lambda n: torch.from_numpy(rec.rng.integers(0, n_cls, n))  # noqa: E731
    norm = standardiser(pool_x)
    rec.record("standardisation (evaluation)", f"standardise {pool_n}x{dim} by its mean and std", norm(pool_x))

    heldout = Heldout(val_x, labels(val_n), test_x, n_cls)
    few_n = n_cls * max(1, round(per_class * sub.few_shot_fraction))
    for name, n in (("full-shot", pool_n), ("few-shot", few_n)):
        head = linear_probe(pool_x[:n], labels(n), heldout, ev.probe, 1, params.seed).head
        rec.record("linear probe (evaluation)", f"{name} probe: one epoch on {n} rows, batch {ev.probe.batch_size}, "
                   f"lr {ev.probe.lr}", head.weight, head.bias)
        with torch.no_grad():
            rec.record("linear probe (evaluation)", f"{name} probe logits on {val_n} and {test_n} rows",
                       head(norm(val_x)), head(norm(test_x)))

    knn_in = norm if ev.knn_features == "standardised" else (lambda t: t)
    memory = F.normalize(knn_in(pool_x), dim=1)
    k = min(ev.knn_k, pool_n)
    for n in sorted({min(1024, test_n), *(m % 1024 for m in (val_n, test_n) if m % 1024)}, reverse=True):
        sim, idx = (F.normalize(knn_in(test_x[:n]), dim=1) @ memory.T).topk(k, dim=1)
        rec.record("kNN similarities", f"kNN: {n} queries against {pool_n} ({ev.knn_features}), top {k}", sim, idx)


def measure(params_path: str | Path = "params.yaml") -> list[dict]:
    """This process's fingerprint at the shapes of ``params_path`` (CPU, eager, as a portable stage runs)."""
    raw = yaml.safe_load(Path(params_path).read_text())
    raw.update(device="cpu")
    raw["pretrain"].update(compile=False, nproc=1, amp="off", channels_last="off")
    params = parse_params(raw)
    apply(params.numerics)
    dataset = DATASETS[params.data.dataset]  # its images' shape (the CPU default's: Fashion-MNIST, 28 x 28 x 1)
    size, channels = dataset.image_size, dataset.channels
    rec = _Recorder()
    images = rec.rng.integers(0, 256, (4 * params.pretrain.batch_size, size, size, channels), dtype=np.uint8)
    spec = ModelSpec(channels, [0.5] * channels, [0.25] * channels)
    torch.manual_seed(0)
    net = build_model(params.model.width, channels, spec.mean, spec.std, method_class("simclr").head_spec(params))
    _kernel_ops(rec, params, net, size, channels)
    _project_ops(rec, params, images, spec)
    _evaluation_ops(rec, params, net, dataset)
    return rec.rows


def header(params_path: str | Path) -> dict:
    """What the fingerprint was taken on and under (read by a person; not compared)."""
    mode = mode_in_params(params_path)
    return {"fingerprint": VERSION, "cpu": cpu_model(), "torch": torch.__version__, "numerics": describe(mode),
            "pins": PORTABLE_ENV, "kernels": torch.backends.cpu.get_cpu_capability()}
