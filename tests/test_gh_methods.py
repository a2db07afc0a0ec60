"""SimCLR + GH and SDCLR + GH through the training code: the warm-up is the base method, GH then
changes the step, the prior's memory follows the images, and a resume is bit-identical."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from sdclr.errors import ParamError
from sdclr.pretrain_loop import Job, build
from sdclr.registry import method_class, parse_params
from sdclr.report.aggregate import load_per_image
from sdclr.report.gh import prior_section, total_variation
from sdclr.storage.encoder_file import ModelSpec
from sdclr.storage.io import load_npz
from tests.test_later_methods import straight_and_resumed
from tests.test_pretrain import tiny_project  # noqa: F401  (the fixture)

GH = {"num_targets": 5, "warmup_epochs": 1, "ramp_epochs": 2, "refresh_every": 2, "sinkhorn_iterations": 50}


def _params(proj, gh=None, **pretrain):
    raw = yaml.safe_load((proj / "params.yaml").read_text())
    raw["pretrain"].update(pretrain)
    raw["gh"].update({**GH, **(gh or {})})
    return parse_params(raw)


def _step(proj, method, epoch, params=None):
    """One step of ``method`` at the start of ``epoch`` on a fixed batch of the tiny split."""
    train = load_npz(proj / "data/raw/fashion_mnist/train.npz")
    split = load_npz(proj / "data/splits/fashion_mnist/split0.npz")
    t = build(params or _params(proj),
              Job(method_class(method), 0, train["images"], split["longtail"], ModelSpec(1, [0.3], [0.3])))
    t.method.train()
    metrics = t.method.on_epoch_start(epoch)
    loss, extras = t.step(torch.arange(t.local_batch))
    return t, float(loss), extras, metrics


@pytest.mark.parametrize("gh, base", [("simclr_gh", "simclr"), ("sdclr_gh", "sdclr")])
def test_the_warmup_is_the_base_method_and_gh_then_changes_the_step(tiny_project, gh, base):
    """In the warm-up GH's weight is 0: the step's loss is the base method's, bit for bit (the GH
    loss is only logged); in the first GH epoch the weight is 1/ramp and the loss moves by it."""
    _, plain, _, _ = _step(tiny_project, base, 0)
    t, warm, extras, metrics = _step(tiny_project, gh, 0)
    assert warm == plain and metrics["gh_weight"] == 0.0 and float(extras["gh_loss"]) > 0
    t, loss, extras, metrics = _step(tiny_project, gh, 1)
    assert metrics["gh_weight"] == 0.5
    assert loss == pytest.approx(plain + 0.5 * float(extras["gh_loss"]), rel=1e-5)
    assert t.method.targets.shape == (5, 8)  # K × proj_dim (tiny: 8)


def test_the_prior_memory_follows_each_image_and_pi_is_refreshed_on_schedule(tiny_project):
    """Epoch 1's step sets its images' rows to their view-1 logits (unit rows, the others zero);
    π is uniform until the first GH epoch, then the memory's argmax shares, then fixed until
    the next multiple of refresh_every."""
    t, _, _, _ = _step(tiny_project, "simclr_gh", 0)
    prior = t.method.prior
    rows = t.positions[torch.arange(t.local_batch)]
    torch.testing.assert_close(prior.memory[rows].norm(dim=1), torch.ones(len(rows)))
    assert prior.memory.abs().sum(1).gt(0).sum() == len(rows)
    torch.testing.assert_close(prior.prior, torch.full((5,), 0.2))
    t.method.on_epoch_start(1)  # the first GH epoch: refreshed from the memory
    counts = torch.bincount(prior.memory.argmax(1), minlength=5).float() / len(prior.memory)
    torch.testing.assert_close(prior.prior, counts)
    prior.memory.zero_()
    t.method.on_epoch_start(3)  # 3 is no multiple of refresh_every = 2: π stays
    torch.testing.assert_close(prior.prior, counts)
    t.method.on_epoch_start(4)
    torch.testing.assert_close(prior.prior, torch.eye(5)[0])  # all-zero memory: every argmax is target 0


def test_gh_stopped_and_resumed_equals_an_uninterrupted_run(tiny_project, tmp_path):
    """The targets, each image's memory and π travel in the checkpoint: stopped after the warm-up
    epoch and resumed, SDCLR + GH gives the uninterrupted run's weights, history and clusters."""
    split = load_npz(tiny_project / "data/splits/fashion_mnist/split0.npz")
    runs = straight_and_resumed(tiny_project, _params(tiny_project, epochs=3), "sdclr_gh", 1, tmp_path,
                                lambda saved: {"targets", "prior.memory", "prior.prior"} <= set(saved))
    history = pd.read_csv(runs["straight"] / "h.csv")
    assert history["gh_weight"].tolist() == [0.0, 0.5, 1.0] and (history["gh_loss"] > 0).all()
    clusters = pd.read_csv(runs["straight"] / "per_image.csv")
    assert list(clusters.columns) == ["image", "class", "group", "cluster"]
    assert clusters["cluster"].between(0, 4).all() and clusters["image"].tolist() == split["longtail"].tolist()


def test_too_many_targets_for_the_projection_is_one_sentence_when_gh_runs(tiny_project):
    """Checked with the params when GH's stages exist (before any stage trains); otherwise the
    default K may exceed a small test projection without harm."""
    raw = yaml.safe_load((tiny_project / "params.yaml").read_text())
    raw["gh"]["num_targets"] = 10
    parse_params(raw)  # no GH stage: accepted
    raw["methods"] = [*raw["methods"], "sdclr_gh"]
    with pytest.raises(ParamError, match=r"gh.num_targets = 10 does not fit a simplex in model.proj_dim = 8"):
        parse_params(raw)


def test_a_warmup_as_long_as_the_pretraining_is_one_sentence_when_gh_runs(tiny_project):
    """GH that never acts would publish its base method under GH's name: rejected before training."""
    raw = yaml.safe_load((tiny_project / "params.yaml").read_text())
    raw["methods"] = [*raw["methods"], "simclr_gh"]
    raw["gh"]["num_targets"] = raw["model"]["proj_dim"]  # fits the tiny projection
    raw["gh"]["warmup_epochs"] = raw["pretrain"]["epochs"] - 1
    parse_params(raw)  # GH acts in the last epoch: accepted
    raw["gh"]["warmup_epochs"] = raw["pretrain"]["epochs"]
    with pytest.raises(ParamError, match=r"gh.warmup_epochs = \d+ is not below the \d+ pretraining epochs"):
        parse_params(raw)


def test_the_report_compares_pi_with_the_class_frequencies(tmp_path):
    """π from the clusters column, both sorted: a run whose clusters are the classes has TV 0 and
    beats the uniform prior on every split; the figure is written either way."""
    for split in (0, 1, 2):
        counts = [40, 20, 10, 5, 5]
        classes = [c for c, n in enumerate(counts) for _ in range(n)]
        frame = pd.DataFrame({"image": range(80), "class": classes, "group": "major",
                              "cluster": [(c + split) % 5 for c in classes]})  # any labelling of the classes
        (tmp_path / "sdclr_gh").mkdir(exist_ok=True)
        frame.to_csv(tmp_path / "sdclr_gh" / f"per_image_split{split}.csv", index=False)
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params = parse_params({**raw, "gh": {**raw["gh"], "num_targets": 5}})
    lines = prior_section(load_per_image(tmp_path), params, tmp_path)
    row = next(line for line in lines if line.startswith("| sdclr_gh"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    uniform = total_variation([0.2] * 5, [0.5, 0.25, 0.125, 0.0625, 0.0625])
    assert cells[1] == "5.0 of 5" and cells[2] == "0.500" and cells[3] == "0.000" and cells[4] == f"{uniform:.3f}"
    assert cells[7] == "3" and cells[8] == "**agrees**", row
    assert (tmp_path / "gh_prior.png").stat().st_size > 5_000
    (tmp_path / "gh_prior.png").unlink()
    assert prior_section(pd.DataFrame(), params, tmp_path) == [] and (tmp_path / "gh_prior.png").exists()


def test_every_source_of_claims_has_its_section_in_the_report():
    """A claim whose source has no heading would be computed and never shown (GH's were, at first)."""
    from sdclr.report.claims import claim_headings, claims

    assert {c.source for c in claims()} == set(claim_headings())
    pairs = {(c.a, c.claim.b, c.claim.metric) for c in claims() if c.source == "GH (Zhou et al. 2023)"}
    assert pairs == {(gh, base, metric) for gh, base in (("simclr_gh", "simclr"), ("sdclr_gh", "sdclr"))
                     for metric in ("accuracy", "minor", "balancedness")}
