"""Presets: merged into params.yaml with comments kept, validated, never half-applied."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from sdclr.config import PRESET_DIR
from sdclr.data.longtail import longtail_counts
from sdclr.errors import ConfigError
from sdclr.pipeline.presets import apply_preset, available
from sdclr.registry import load_params
from tests.dvc_project import ROOT


@pytest.fixture
def params_copy(tmp_path):
    dest = tmp_path / "params.yaml"
    shutil.copyfile(ROOT / "params.yaml", dest)
    return dest


@pytest.mark.parametrize("name,dataset,classes,train_per_class,total_lt,evaluation", [
    ("cifar10_paper", "cifar10", 10, 5000, 11_165, ("authors", 30.0, 0.0, 128, [0.01])),  # SDCLR's own
    ("cifar100_paper", "cifar100", 100, 500, 9_754, ("bcl", 0.01, 5e-6, 1000, [100, 50]))])  # BCL's, its table's
def test_paper_presets_apply_and_validate(params_copy, name, dataset, classes, train_per_class, total_lt, evaluation):
    assert name in available()
    changed = apply_preset(name, params_copy)
    p = load_params(params_copy)
    assert "data.dataset" in changed and p.data.dataset == dataset
    assert (p.model.width, p.pretrain.epochs, p.pretrain.batch_size) == (64, 2000, 512)
    assert p.subsample.splits == [0, 1, 2, 3, 4] and p.subsample.n_max is None
    pool = train_per_class - p.subsample.val_per_class  # n_max = null: the per-class pool
    assert sum(longtail_counts(pool, p.subsample.imbalance_ratio, classes)) == total_lt  # the preset's comment
    probe = p.evaluate.probe
    assert (probe.protocol, probe.lr, probe.weight_decay, probe.batch_size, p.evaluate.few_shot) == evaluation
    assert p.prune_ratio == 0.9
    text = params_copy.read_text()
    assert "# the single source of every hyperparameter" in text.lower()  # the user's comments survive
    assert apply_preset(name, params_copy) == []  # idempotent


def test_unknown_preset_names_the_available_ones(params_copy):
    before = params_copy.read_bytes()
    with pytest.raises(ConfigError, match="not found.*cifar10_paper"):
        apply_preset("cifar11", params_copy)
    assert params_copy.read_bytes() == before


@pytest.mark.parametrize("body,words", [
    ("model:\n  widht: 64\n", "unknown key 'model.widht'"),
    ("model:\n  width: 4\n", "model.width = 4"),
    ("prune_ratio: 1.5\n", "prune_ratio = 1.5"),
    ("model: 3\n", "model = 3 has the wrong type"),
    ("prune_ratio:\n  value: 0.5\n", "not a group"),
])
def test_a_bad_preset_leaves_params_untouched(params_copy, tmp_path, body, words):
    bad = tmp_path / "bad.yaml"
    bad.write_text(body)
    before = params_copy.read_bytes()
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        apply_preset(str(bad), params_copy)
    assert params_copy.read_bytes() == before


def test_cli_prints_one_sentence_and_exits_2(params_copy):
    proc = subprocess.run([sys.executable, "-m", "sdclr.pipeline.presets", "nope", "--params", str(params_copy)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: preset 'nope' not found") and proc.stderr.count("\n") == 1
    ok = subprocess.run([sys.executable, "-m", "sdclr.pipeline.presets", "cifar10_paper", "--params", str(params_copy)],
                        capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0 and "data.dataset" in ok.stdout


def test_presets_dir_ships_with_the_repo():
    assert PRESET_DIR == ROOT / "presets"
