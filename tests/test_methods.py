"""The methods' forward passes do what their papers say (registry-wide checks live in test_dvc_deps.py)."""

from __future__ import annotations

import copy

import torch

from sdclr.losses import nt_xent
from sdclr.models import DENSE, PRUNED, HeadSpec, build_model
from sdclr.pruning import masked_convs
from sdclr.registry import METHODS, method_class


def _fixed_views(images, generator):
    """A deterministic 'augmentation' (uint8 → float), so the test can recompute the features."""
    return images.float() / 255


def _batch():
    return torch.randint(0, 256, (8, 1, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_sdclr_sends_view_two_through_the_pruned_branch():
    torch.manual_seed(0)
    net = build_model(8, 1, [0.5], [0.25], HeadSpec(2, 16, 8))
    method = method_class("sdclr")(net, temperature=0.2, prune_ratio=0.5).configure(_fixed_views, channels_last=False)
    method.train().on_epoch_start(0)
    images = _batch()
    loss, _ = method(images, torch.arange(8), torch.Generator())
    x = _fixed_views(images, None)
    pruned = net(x, branch=PRUNED)
    torch.testing.assert_close(loss, nt_xent(net(x, branch=DENSE), pruned, 0.2))
    assert not torch.allclose(loss, nt_xent(net(x, branch=DENSE), net(x, branch=DENSE), 0.2))  # i.e. not SimCLR

    # The pruned branch is the network with its weights explicitly multiplied by the masks.
    explicit = copy.deepcopy(net)
    with torch.no_grad():
        for conv in masked_convs(explicit):
            conv.weight.mul_(conv.mask)
            conv.mask.fill_(1.0)
    torch.testing.assert_close(explicit(x, branch=PRUNED), pruned)
    assert not torch.allclose(pruned, net(x, branch=DENSE))


def test_simclr_sends_both_views_through_the_dense_branch():
    torch.manual_seed(0)
    net = build_model(8, 1, [0.5], [0.25], HeadSpec(2, 16, 8))
    method = method_class("simclr")(net, temperature=0.2).configure(_fixed_views, channels_last=False).train()
    images = _batch()
    loss, _ = method(images, torch.arange(8), torch.Generator())
    z1, z2 = net(torch.cat([_fixed_views(images, None)] * 2), branch=DENSE).chunk(2)
    torch.testing.assert_close(loss, nt_xent(z1, z2, 0.2))


def test_every_method_uses_the_temperature_the_loop_sets():
    """A temperature schedule sets ``method.temperature`` each epoch: the loss must use that
    attribute, not the value params.yaml gave at construction (sbid read its params once)."""
    import yaml

    from sdclr.registry import parse_params
    from tests.dvc_project import ROOT

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"].update(width=8, head_hidden=16, proj_dim=8)
    raw["sbid"].update(head_hidden=16, proj_dim=8, negatives=0)
    raw["gh"].update(num_targets=5)
    for name, cls in ((m, method_class(m)) for m in METHODS):
        losses = []
        for built_with, set_to in ((0.5, None), (0.2, 0.5)):
            raw["pretrain"]["temperature"] = raw["sbid"]["temperature"] = built_with
            params = parse_params(raw)
            torch.manual_seed(0)
            net = build_model(8, 1, [0.5], [0.25], cls.head_spec(params))
            method = cls.from_params(params, net, num_samples=8).configure(_fixed_views, channels_last=False).train()
            method.on_epoch_start(0)
            if set_to is not None:
                method.temperature = set_to
            losses.append(method(_batch(), torch.arange(8), torch.Generator().manual_seed(3))[0])
        torch.testing.assert_close(losses[0], losses[1], msg=f"{name} ignores the temperature the loop set")
