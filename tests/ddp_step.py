"""One training step of a method, run either under torchrun (DDP) or in one process.

Used by ``tests/test_distributed.py``: ``torchrun --nproc_per_node 2 tests/ddp_step.py
CASES.json OUT.pt`` and ``python tests/ddp_step.py CASES.json OUT.pt`` must give, for each
case (a params dict naming its ``method_under_test``), the same loss, the same gradients
(on every rank) and the same sbid bank afterwards. All cases run in one launch: a torchrun
start costs seconds.

The network runs in eval mode (BatchNorm from running statistics), so each image's
features do not depend on how the global batch is split over ranks; the 'augmentation'
is deterministic per image (view 1 as is, view 2 flipped), for the same reason.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdclr import distributed  # noqa: E402
from sdclr.models import build_model  # noqa: E402
from sdclr.pruning import mask_fingerprint  # noqa: E402
from sdclr.registry import (
    method_class,  # noqa: E402
    parse_params,  # noqa: E402
)

GLOBAL_BATCH, BANK = 16, 40


class FlipEveryOtherView:
    """Call 1 → the images, call 2 → flipped, call 3 → as is, ... (per image, batch-split independent)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, images, generator):
        self.calls += 1
        x = images.float() / 255
        return x.flip(-1) if self.calls % 2 == 0 else x


def one_step(raw: dict, ctx, device) -> dict:
    """One step of the case's method on a fixed global batch → loss, per-rank gradients (and masks, bank)."""
    raw = dict(raw)
    method_name = raw.pop("method_under_test")
    params = parse_params(raw)
    torch.manual_seed(0)
    cls = method_class(method_name)
    net = build_model(params.model.width, 1, [0.5], [0.25], cls.head_spec(params))
    method = cls.from_params(params, net, num_samples=BANK).configure(FlipEveryOtherView(), channels_last=False)
    shared = torch.Generator().manual_seed(7)
    method.shared_generator = shared
    if hasattr(method, "bank"):  # sbid: a fixed bank (the fill pass depends on BN batches): same on every rank
        g = torch.Generator().manual_seed(3)
        method.bank.weight.copy_(torch.nn.functional.normalize(torch.randn(BANK, method.bank.weight.shape[1],
                                                                            generator=g), dim=1))
    method.on_epoch_start(0)  # SDCLR: masks (checked identical across ranks inside)
    trained = distributed.wrap(method, ctx, device, sync_bn=False)
    trained.eval()

    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (GLOBAL_BATCH, 1, 12, 12), dtype=torch.uint8, generator=g)
    indices = torch.randperm(BANK, generator=g)[:GLOBAL_BATCH]
    rows = GLOBAL_BATCH // ctx.world_size
    mine = slice(ctx.rank * rows, (ctx.rank + 1) * rows)  # rank-major, the order gathers use
    loss, _ = trained(images[mine], indices[mine], torch.Generator().manual_seed(5))
    loss.backward()

    grads = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                       for p in method.parameters()])
    result = {
        "loss": loss.detach(),
        "grads": distributed.gather(grads[None]),  # one row per rank
        "world_size": torch.tensor(ctx.world_size),
    }
    if hasattr(method, "prune_ratio"):  # SDCLR
        result["masks"] = distributed.gather(mask_fingerprint(method.net)[None])
    if hasattr(method, "bank"):  # sbid
        result["bank"] = distributed.gather(method.bank.weight[None])
    return result


def main(cases_json: str, out: str) -> None:
    ctx, device = distributed.init_from_env(torch.device("cpu"))
    results = [one_step(raw, ctx, device) for raw in json.loads(Path(cases_json).read_text())]
    if ctx.is_main:
        torch.save(results, out)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
