"""The two reference points the pretraining benchmark is read against, measured in the same run.

- ``model_bound``: the eager model-only bound. torchvision's ResNet-18 (CIFAR stem: 3×3
  conv, no max-pool, the same shapes as the project's backbone at width 64) and a 2-layer
  projection head trained with NT-Xent on two "views" that are already on the device as
  float tensors: no augmentation, no masks, no second BatchNorm set. What a SimCLR step
  costs when the data pipeline is free.
- ``conventional``: a SimCLR input pipeline as most codebases write it: PIL images, the
  torchvision transforms of the SimCLR CIFAR recipe applied per image in DataLoader worker
  processes (two views each), pinned host batches copied to the device every step, then
  the same model and loss as ``model_bound``.

Both use the precision and memory format of the run they are compared with, so the
ratios printed by ``pretrain_throughput.py --baselines`` isolate what the project's
device-resident, batched data path buys (vs ``conventional``) and what its method code
costs over a plain model (vs ``model_bound``).
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def plain_resnet18(proj_dim: int = 128, hidden: int = 512) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem and a projection head (512-512-ReLU-proj)."""
    from torchvision.models import resnet18

    net = resnet18(num_classes=hidden)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    return nn.Sequential(net, nn.ReLU(inplace=True), nn.Linear(hidden, proj_dim))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss, written plainly: 2N-way cross-entropy with the other view as the positive."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    n = len(z1)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(logits, target)


class _TwoViews(torch.utils.data.Dataset):
    """uint8 HWC images → two independently augmented float CHW views (PIL, per image)."""

    def __init__(self, images: np.ndarray, size: int):
        from torchvision import transforms as T

        self.images = images
        self.transform = T.Compose([
            T.RandomResizedCrop(size, scale=(0.1, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.ToTensor(),
        ])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return self.transform(img), self.transform(img)


def measure(kind: str, device: torch.device, images: np.ndarray, batch: int, steps: int, warmup: int,
            use_bf16: bool, channels_last: bool, workers: int) -> dict:
    """images/s of ``kind`` ("model_bound" or "conventional") over ``steps`` timed steps."""
    torch.manual_seed(0)
    net = plain_resnet18().to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=memory_format)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    size = images.shape[1]

    def step(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x1, x2 = (x.contiguous(memory_format=memory_format) for x in (x1, x2))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = nt_xent(net(x1), net(x2), 0.2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    if kind == "model_bound":
        x = torch.rand(2, batch, 3, size, size, device=device)  # the views, already made
        batches = iter(lambda: (x[0], x[1]), None)
    else:
        loader = torch.utils.data.DataLoader(_TwoViews(images, size), batch_size=batch, shuffle=True,
                                             drop_last=True, num_workers=workers, pin_memory=device.type == "cuda",
                                             persistent_workers=workers > 0)

        def forever():
            while True:
                for v1, v2 in loader:
                    yield v1.to(device, non_blocking=True), v2.to(device, non_blocking=True)

        batches = forever()

    def run(n: int) -> float:
        total = torch.zeros((), device=device)
        for _ in range(n):
            total += step(*next(batches))
        return float(total)

    run(warmup)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    run(steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    return {"baseline": kind, "images_per_s": round(steps * batch / seconds, 1),
            "ms_per_step": round(1000 * seconds / steps, 2), "workers": workers if kind == "conventional" else 0}
