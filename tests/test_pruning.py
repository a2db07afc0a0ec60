"""Global magnitude masks and the pruned forward, checked against an explicitly pruned copy."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from sdclr.models import HeadSpec, build_model
from sdclr.pruning import masked_convs, update_global_masks
from tests.reference_ops import mask_sparsity


def small_model(seed=0):
    torch.manual_seed(seed)
    return build_model(8, 3, [0.5] * 3, [0.25] * 3, HeadSpec(2, 16, 8))


def total_conv_weights(model):
    return sum(c.weight.numel() for c in masked_convs(model))


def test_masked_convs_cover_every_conv_in_a_fixed_order():
    model = small_model()
    convs = masked_convs(model)
    assert len(convs) == 20  # stem + 16 block convs + 3 shortcuts; head linears excluded
    assert convs[0] is model.backbone.conv1
    assert [id(c) for c in masked_convs(model)] == [id(c) for c in convs]


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.37, 0.5, 0.9, 0.99])
def test_sparsity_is_exact(ratio):
    model = small_model()
    total = total_conv_weights(model)
    achieved = update_global_masks(model, ratio)
    zeros = sum(int((c.mask == 0).sum()) for c in masked_convs(model))
    assert zeros == int(ratio * total)
    assert achieved == pytest.approx(zeros / total)
    assert all(bool(((c.mask == 0) | (c.mask == 1)).all()) for c in masked_convs(model))
    assert mask_sparsity(model)["overall"] == pytest.approx(zeros / total)


def test_zero_ratio_keeps_everything():
    model = small_model()
    update_global_masks(model, 0.9)
    update_global_masks(model, 0.0)
    assert all(bool((c.mask == 1).all()) for c in masked_convs(model))


def test_threshold_is_global():
    model = small_model()
    update_global_masks(model, 0.7)
    convs = masked_convs(model)
    kept = torch.cat([c.weight.detach().abs()[c.mask == 1] for c in convs])
    pruned = torch.cat([c.weight.detach().abs()[c.mask == 0] for c in convs])
    assert kept.min() >= pruned.max()
    per_layer = [v for k, v in mask_sparsity(model).items() if k != "overall"]
    assert len(per_layer) == len(convs)
    assert max(per_layer) - min(per_layer) > 0.2  # one threshold, not one ratio per layer


def test_masks_follow_the_live_weights_in_place():
    model = small_model()
    update_global_masks(model, 0.5)
    mask_objects = [c.mask for c in masked_convs(model)]
    with torch.no_grad():
        model.backbone.conv1.weight.mul_(1000.0)  # now the largest weights of the net
    update_global_masks(model, 0.5)
    assert all(a is c.mask for a, c in zip(mask_objects, masked_convs(model)))
    assert bool((model.backbone.conv1.mask == 1).all())


def test_ties_are_broken_deterministically():
    model = small_model()
    with torch.no_grad():
        for c in masked_convs(model):
            c.weight.fill_(0.5)
    update_global_masks(model, 0.3)
    first = [c.mask.clone() for c in masked_convs(model)]
    update_global_masks(model, 0.3)
    assert all(torch.equal(a, c.mask) for a, c in zip(first, masked_convs(model)))
    assert sum(int((m == 0).sum()) for m in first) == int(0.3 * total_conv_weights(model))


def explicitly_pruned_copy(model):
    """A deep copy whose conv weights are zeroed where masked, with all-ones masks."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for c in masked_convs(ref):
            c.weight.mul_(c.mask)
            c.mask.fill_(1.0)
    return ref


@pytest.mark.parametrize("train", [False, True])
def test_pruned_forward_equals_explicitly_pruned_model(train):
    model = small_model()
    update_global_masks(model, 0.8)
    ref = explicitly_pruned_copy(model)
    model.train(train)
    ref.train(train)
    x = torch.rand(6, 3, 16, 16)
    torch.testing.assert_close(model(x, 1), ref(x, 1), rtol=0, atol=1e-6)
    # and it really is a different network from the dense one
    assert not torch.allclose(model(x, 1), model(x, 0), atol=1e-3)


def test_dense_forward_is_unchanged_by_pruning():
    model = small_model().eval()
    x = torch.rand(4, 3, 16, 16)
    before = model(x, 0)
    update_global_masks(model, 0.9)
    assert torch.equal(model(x, 0), before)


def test_gradients_of_pruned_branch_skip_masked_weights():
    # 32x32 inputs: on a 2x2 layer4 map a corner kernel tap sees one pixel per
    # image, which ReLU can zero for the whole batch (an exact-zero gradient
    # that has nothing to do with the mask).
    model = small_model().train()
    update_global_masks(model, 0.5)
    ref = explicitly_pruned_copy(model)
    x = torch.rand(8, 3, 32, 32)
    model(x, 1).square().sum().backward()
    ref(x, 1).square().sum().backward()
    for c, r in zip(masked_convs(model), masked_convs(ref)):
        g, keep = c.weight.grad, c.mask == 1
        assert torch.all(g[~keep] == 0)
        assert torch.all(g[keep] != 0)
        torch.testing.assert_close(g[keep], r.weight.grad[keep], rtol=1e-4, atol=1e-6)

    model.zero_grad(set_to_none=True)
    model(x, 0).square().sum().backward()
    # the dense branch trains every weight, masked ones included
    assert all(bool((c.weight.grad[c.mask == 0] != 0).any()) for c in masked_convs(model))


def test_masks_survive_state_dict_round_trip():
    model = small_model(seed=0)
    update_global_masks(model, 0.6)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    fresh = small_model(seed=1)
    assert not all(torch.equal(a.mask, b.mask) for a, b in zip(masked_convs(fresh), masked_convs(model)))
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert "backbone.conv1.mask" in model.state_dict()
    assert all(torch.equal(a.mask, b.mask) for a, b in zip(masked_convs(fresh), masked_convs(model)))


def test_works_through_channels_last_and_bf16():
    model = small_model()
    update_global_masks(model, 0.5)
    expected = [c.mask.clone() for c in masked_convs(model)]
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    update_global_masks(cl, 0.5)
    assert all(torch.equal(a, c.mask) for a, c in zip(expected, masked_convs(cl)))
    half = copy.deepcopy(model).to(torch.bfloat16)
    update_global_masks(half, 0.5)
    assert all(c.mask.dtype == torch.bfloat16 for c in masked_convs(half))


def test_bad_ratio_is_refused():
    with pytest.raises(ValueError, match="prune_ratio"):
        update_global_masks(small_model(), 1.0)
