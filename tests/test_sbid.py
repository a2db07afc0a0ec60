"""The sbid method module (Cao & Wu 2024): bank fill pass, logits' column layout, update rules, params."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.nn import functional as F

from sdclr.errors import ConfigError
from sdclr.methods.sbid import SingleBranchID
from sdclr.models import build_model
from sdclr.registry import method_class, parse_params
from tests.reference_ops import sqrt_self_distillation

N, B = 40, 8


def _to_float(images, generator):
    """A fixed 'augmentation' (uint8 → float), so a test can recompute the features."""
    return images.float() / 255


def _sbid(raw_params, **sbid):
    raw_params["model"]["width"] = 8
    raw_params["sbid"].update({"head_hidden": 16, "proj_dim": 8, "cutmix": False, **sbid})
    params = parse_params(raw_params)
    torch.manual_seed(0)
    net = build_model(params.model.width, 1, [0.5], [0.25], SingleBranchID.head_spec(params))
    return SingleBranchID.from_params(params, net, N).configure(_to_float, channels_last=False).train(), params


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (N, 1, 12, 12), dtype=torch.uint8, generator=g)


def test_head_is_the_papers_shape_and_ends_in_a_plain_linear(raw_params):
    method, params = _sbid(raw_params)
    head = method.net.head
    assert [tuple(lin.weight.shape) for lin in head.linears] == [(16, 64), (16, 16), (8, 16)]
    assert len(head.bns) == 2 and head.linears[-1].bias is not None and head.linears[0].bias is None
    assert method.bank.weight.shape == (N, 8)


def test_initial_fill_is_one_pass_of_the_untrained_network(raw_params):
    method, _ = _sbid(raw_params)
    data = _data()
    before = method.bank.weight.clone()
    method.initialise(data, torch.Generator(), batch_size=B)
    assert not torch.equal(before, method.bank.weight)
    torch.testing.assert_close(method.bank.weight.norm(dim=1), torch.ones(N))
    with torch.no_grad():  # the same chunk through the same train-mode network gives the same rows
        expected = F.normalize(method.net(_to_float(data[:B], None)), dim=1)
    torch.testing.assert_close(method.bank.weight[:B], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("negatives", ["all", 5, 0])
def test_loss_targets_each_images_own_bank_entry(raw_params, negatives):
    """Same value as cross-entropy toward the own entry + λ·sqrt term, for every column layout."""
    method, params = _sbid(raw_params, negatives=negatives, bank_update="momentum")
    data = _data()
    method.initialise(data, torch.Generator(), B)
    idx = torch.tensor([3, 17, 0, 22, 39, 8, 11, 30])
    gen = torch.Generator().manual_seed(5)
    replay = torch.Generator().manual_seed(5)
    bank_before = method.bank.weight.clone()
    loss, extras = method(data[idx], idx, gen)

    columns = method.bank.candidates(idx, None if negatives == "all" else negatives, replay)
    cols = torch.arange(N) if columns is None else columns
    target = idx if columns is None else torch.arange(B)
    assert len(cols) == {"all": N, 5: B + 5, 0: B}[negatives]
    with torch.no_grad():
        z = F.normalize(method.net(_to_float(data[idx], None)), dim=1)
    cos = z @ bank_before[cols].T
    tau, lam = params.sbid.temperature, params.sbid.self_distill_weight
    reference = F.cross_entropy(cos / tau, target) + lam * sqrt_self_distillation(cos)
    torch.testing.assert_close(loss.detach(), reference, rtol=1e-5, atol=1e-5)
    assert 0 < extras["entropy"] <= torch.log(torch.tensor(float(len(cols)))) + 1e-5


def test_momentum_rule_moves_only_the_batch_rows_and_gradient_rule_moves_every_column(raw_params):
    data = _data()
    idx = torch.arange(B) + 3  # not one of the fill pass's chunks, whose features would equal the rows already
    for rule, negatives, expected_changed in (("momentum", "all", B), ("gradient", 5, B + 5), ("gradient", "all", N)):
        method, _ = _sbid(raw_params, negatives=negatives, bank_update=rule)
        method.initialise(data, torch.Generator(), B)
        before = method.bank.weight.clone()
        loss, _ = method(data[idx], idx, torch.Generator().manual_seed(0))
        loss.backward()  # the in-place bank update after the forward must not break backward
        changed = (method.bank.weight != before).any(1)
        assert int(changed.sum()) == expected_changed, (rule, negatives)
        if rule == "momentum":
            assert changed[idx].all()
        torch.testing.assert_close(method.bank.weight.norm(dim=1), torch.ones(N))
        assert method.net.backbone.conv1.weight.grad.abs().sum() > 0  # the gradient reached the encoder


def test_cutmix_step_runs_and_trains(raw_params):
    method, _ = _sbid(raw_params)
    method.cfg = dataclasses.replace(method.cfg, cutmix=True)
    data = _data()
    idx = torch.arange(B)
    loss, _ = method(data[idx], idx, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and method.net.head.linears[0].weight.grad.abs().sum() > 0


def test_params_schedule_and_fingerprint_inputs(raw_params):
    raw_params["sbid"].update(epochs=3, lr=1.0)
    params = parse_params(raw_params)
    sbid, simclr = method_class("sbid"), method_class("simclr")
    assert (sbid.setting(params, "epochs"), sbid.setting(params, "lr")) == (3, 1.0)
    assert sbid.setting_key(params, "lr") == "sbid.lr"
    assert sbid.resolved_params(params) == {"sbid.epochs": 3, "sbid.lr": 1.0}
    assert (simclr.setting(params, "epochs"), simclr.setting(params, "lr")) == (params.pretrain.epochs,
                                                                              params.pretrain.lr)
    assert sbid.shaping_params(params)["sbid"]["bank_update"] == params.sbid.bank_update
    assert method_class("sbid").head_spec(params).last_bn is False
    assert method_class("sdclr").head_spec(params).last_bn is True


@pytest.mark.parametrize("value,ok", [(0, True), (4096, True), ("all", True), (-1, False), ("most", False),
                                      (True, False), (2.5, False)])
def test_negatives_accepts_a_count_or_all(raw_params, value, ok):
    raw_params["sbid"]["negatives"] = value
    if ok:
        assert parse_params(raw_params).sbid.negatives == value
    else:
        with pytest.raises(ConfigError, match=r"sbid\.negatives") as info:
            parse_params(raw_params)
        assert "accepted" in str(info.value) and str(info.value).count(".") >= 1


def test_unknown_bank_rule_is_one_sentence(raw_params):
    raw_params["sbid"]["bank_update"] = "ema"
    with pytest.raises(ConfigError, match=r"sbid\.bank_update = 'ema' is not a known choice; accepted: one of "
                                          r"'gradient', 'momentum'"):
        parse_params(raw_params)
