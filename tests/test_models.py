"""CIFAR ResNet-18 with dual BatchNorm and projection heads: shapes, BN separation, memory format."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sdclr.models import DualBatchNorm, HeadSpec, MaskedConv2d, ProjectionHead, ResNet18, SSLNet, build_model

WIDTH = 8


def small_model(in_channels=3, depth=2, seed=0) -> SSLNet:
    torch.manual_seed(seed)
    return build_model(WIDTH, in_channels, [0.5] * in_channels, [0.25] * in_channels, HeadSpec(depth, 16, 8))


def dual_bns(model):
    return [m for m in model.modules() if isinstance(m, DualBatchNorm)]


def running_stats(model, branch):
    return [
        t.clone()
        for m in dual_bns(model)
        for t in (m.bns[branch].running_mean, m.bns[branch].running_var, m.bns[branch].num_batches_tracked)
    ]


def all_equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("in_channels", [1, 3])
def test_output_shapes(in_channels):
    model = small_model(in_channels)
    x = torch.rand(5, in_channels, 16, 16)
    assert model.backbone.feature_dim == 8 * WIDTH
    for branch in (0, 1):
        assert model(x, branch).shape == (5, 8)
        assert model.backbone(x, branch).shape == (5, 8 * WIDTH)
    assert model.features(x).shape == (5, 8 * WIDTH)


def test_resnet_structure():
    net = ResNet18(3, WIDTH, [0.5] * 3, [0.25] * 3)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(isinstance(c, MaskedConv2d) and c.bias is None for c in convs)
    # stem + 8 blocks x 2 convs + 3 shortcuts (stages 2-4 change shape)
    assert len(convs) == 1 + 16 + 3
    assert [c.kernel_size for c in convs].count((1, 1)) == 3
    # every BatchNorm belongs to a DualBatchNorm pair: stem + 16 block BNs + 3 shortcut BNs
    plain_bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(dual_bns(net)) == 20 and len(plain_bns) == 2 * 20
    assert net.conv1.stride == (1, 1) and net.conv1.kernel_size == (3, 3)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())


def test_normalisation_is_inside_the_model():
    net = ResNet18(2, WIDTH, [0.2, 0.7], [0.5, 0.1]).eval()
    x = torch.rand(3, 2, 16, 16)
    ref = ResNet18(2, WIDTH, [0.0, 0.0], [1.0, 1.0]).eval()
    ref.load_state_dict({k: v for k, v in net.state_dict().items() if k not in ("mean", "std")}, strict=False)
    x_norm = (x - torch.tensor([0.2, 0.7]).view(1, 2, 1, 1)) / torch.tensor([0.5, 0.1]).view(1, 2, 1, 1)
    torch.testing.assert_close(net(x), ref(x_norm))
    assert "mean" in net.state_dict() and "std" in net.state_dict()
    with pytest.raises(ValueError, match="one value per input channel"):
        ResNet18(3, WIDTH, [0.5], [0.25])


@pytest.mark.parametrize("depth,n_linear", [(1, 1), (2, 2), (3, 3)])
def test_head_depths(depth, n_linear):
    head = ProjectionHead(32, 16, 8, depth)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == n_linear
    assert [layer.out_features for layer in linears] == [16] * (n_linear - 1) + [8]
    assert linears[0].in_features == 32
    assert len(dual_bns(head)) == n_linear
    out = head(torch.randn(6, 32), 1)
    assert out.shape == (6, 8)
    model = small_model(depth=depth)
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 8)


def test_bn_sets_stay_separate():
    model = small_model().train()
    x = torch.rand(8, 3, 16, 16)
    before0, before1 = running_stats(model, 0), running_stats(model, 1)

    model(x, 1)
    assert all_equal(running_stats(model, 0), before0)
    assert not all_equal(running_stats(model, 1), before1)

    after1 = running_stats(model, 1)
    model(x, 0)
    assert all_equal(running_stats(model, 1), after1)
    assert not all_equal(running_stats(model, 0), before0)


def test_bn_affine_params_are_per_branch():
    model = small_model().train()
    model(torch.rand(8, 3, 16, 16), 1).square().sum().backward()
    for bn in dual_bns(model):
        assert bn.bns[0].weight.grad is None and bn.bns[0].bias.grad is None
        assert bn.bns[1].weight.grad is not None


def test_eval_uses_dense_bn_set():
    model = small_model().train()
    for _ in range(3):
        model(torch.rand(8, 3, 16, 16) * 0.5, 0)
        model(torch.rand(8, 3, 16, 16) * 2.0, 1)
    model.eval()
    x = torch.rand(4, 3, 16, 16)
    feats, out = model.features(x), model(x)
    torch.testing.assert_close(model.backbone(x, 0), feats)
    assert not torch.allclose(model(x, 1), out)

    # Scrambling the pruned set's statistics leaves evaluation untouched...
    with torch.no_grad():
        for bn in dual_bns(model):
            bn.bns[1].running_mean.add_(3.0)
            bn.bns[1].running_var.mul_(7.0)
    assert torch.equal(model.features(x), feats) and torch.equal(model(x), out)
    # ...and scrambling the dense set's statistics changes it.
    with torch.no_grad():
        for bn in dual_bns(model):
            bn.bns[0].running_mean.add_(3.0)
    assert not torch.allclose(model.features(x), feats)


def test_eval_is_deterministic_per_sample():
    model = small_model().eval()
    x = torch.rand(6, 3, 16, 16)
    torch.testing.assert_close(model.features(x)[:2], model.features(x[:2]))


@pytest.mark.parametrize("train", [False, True])
def test_channels_last_matches_contiguous(train):
    model = small_model()
    model.train(train)
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert cl_model.backbone.conv1.mask.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 16, 16)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    for branch in (0, 1):
        torch.testing.assert_close(cl_model(x_cl, branch), model(x, branch), atol=1e-5, rtol=1e-4)


def test_bf16_autocast_runs():
    model = small_model().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(4, 3, 16, 16), 1)
    assert out.shape == (4, 8) and torch.isfinite(out.float()).all()


def test_the_folded_network_computes_the_same_features_and_leaves_the_original_alone():
    torch.manual_seed(0)
    net = ResNet18(3, WIDTH, [0.4, 0.5, 0.6], [0.2, 0.25, 0.3])
    net.train()
    with torch.no_grad():  # non-trivial running statistics and affine maps in every dense BN
        for _ in range(3):
            net(torch.rand(16, 3, 16, 16))
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    net.eval()
    before = copy.deepcopy(net.state_dict())
    x = torch.rand(8, 3, 16, 16)
    folded = net.folded()
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with pytest.raises(ValueError, match="dense branch only"):
        folded(x, 1)
    # the control: a wrong running mean in one BN shows in the features
    folded_wrong = copy.deepcopy(net)
    folded_wrong.layer2[0].bn1.bns[0].running_mean += 0.5
    with torch.no_grad():
        assert not torch.allclose(folded_wrong.folded()(x), net(x), rtol=1e-4, atol=1e-5)
