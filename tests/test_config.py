"""params.yaml validation: every bad value is one sentence naming key, value and what is accepted."""

from __future__ import annotations

import pytest
import yaml

from sdclr.config import as_flat_dict
from sdclr.errors import ConfigError
from sdclr.registry import load_params, parse_params


def test_project_params_yaml_is_valid(root):
    params = load_params(root / "params.yaml")
    assert 0 <= params.prune_ratio < 1
    assert params.data.dataset in ("fashion_mnist", "cifar10", "cifar100")
    flat = as_flat_dict(params)
    assert "prune_ratio" in flat and "subsample.imbalance_ratio" in flat


def _set(d, dotted, value):
    *path, last = dotted.split(".")
    for k in path:
        d = d[k]
    if value is _DELETE:
        del d[last]
    else:
        d[last] = value


class _Delete:
    """The key is removed (a stable repr: pytest-xdist workers must collect the same test ids)."""

    def __repr__(self) -> str:
        return "<deleted>"


_DELETE = _Delete()

BAD = [
    # (dotted key, bad value, words the message must contain)
    ("prune_ratio", 1.0, ["prune_ratio", "1.0", "[0, 1)"]),
    ("prune_ratio", -0.1, ["prune_ratio", "-0.1", "[0, 1)"]),
    ("prune_ratio", "high", ["prune_ratio", "'high'", "a number"]),
    ("prune_ratio", float("nan"), ["prune_ratio", "nan", "finite"]),
    ("subsample.imbalance_ratio", 0.5, ["subsample.imbalance_ratio", "0.5", ">= 1"]),
    ("data.dataset", "imagenet", ["data.dataset", "'imagenet'", "'fashion_mnist'", "'cifar10'", "'cifar100'"]),
    ("pretrain.amp", "fp8", ["pretrain.amp", "'fp8'", "'bf16'"]),
    ("pretrain.epochs", 0, ["pretrain.epochs", "0", "> 0"]),
    ("pretrain.epochs", -3, ["pretrain.epochs", "-3", "> 0"]),
    ("pretrain.epochs", 2.5, ["pretrain.epochs", "2.5", "an integer"]),
    ("pretrain.epochs", True, ["pretrain.epochs", "True", "an integer"]),
    ("model.width", 4, ["model.width", "4", ">= 8"]),
    ("subsample.splits", [0, 0], ["subsample.splits", "distinct"]),
    ("subsample.few_shot_fraction", 0.0, ["subsample.few_shot_fraction", "(0, 1]"]),
    ("subsample.n_max", 0, ["subsample.n_max", "positive integer or null"]),
    ("augment.crop_scale", [0.9, 0.1], ["augment.crop_scale", "low <= high"]),
    ("augment.crop_scale", [0.1], ["augment.crop_scale", "a list of 2 numbers"]),
    ("augment.flip_p", 1.5, ["augment.flip_p", "1.5", "[0, 1]"]),
    ("augment.jitter", [0.4, 0.4, 0.4, 0.9], ["augment.jitter", "hue"]),
    ("device", "tpu", ["device", "'tpu'", "'cuda:N'"]),
    ("data.download", "yes", ["data.download", "true or false"]),
    ("pretrain.bogus", 1, ["unknown key", "pretrain.bogus", "epochs"]),
    ("lr", 0.1, ["unknown key", "'lr'", "prune_ratio"]),
    ("pretrain.lr", _DELETE, ["missing key", "pretrain.lr"]),
    ("data", _DELETE, ["missing key 'data'", "the data group"]),  # a whole shared group (was a bare KeyError)
    ("sbid", _DELETE, ["missing key 'sbid'", "Single-branch"]),  # a method's block
    ("data", 3, ["data", "a mapping"]),
    ("pretrain.temperature_schedule", "linear", ["pretrain.temperature_schedule", "'cosine'"]),
    ("pretrain.tau_min", 2.0, ["pretrain.tau_min", "tau_max", "tau_min <= tau_max"]),
]


@pytest.mark.parametrize("key,value,words", BAD, ids=[f"{k}={v!r}"[:40] for k, v, _ in BAD])
def test_bad_value_gives_one_sentence(raw_params, key, value, words):
    _set(raw_params, key, value)
    with pytest.raises(ConfigError) as info:
        parse_params(raw_params)
    msg = str(info.value)
    for w in words:
        assert w in msg, f"{w!r} missing from: {msg}"
    assert msg.count("\n") == 0 and msg.endswith("."), msg
    assert msg.startswith("params.yaml:")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_params(bad)


def test_int_accepted_where_number_expected(raw_params):
    raw_params["subsample"]["imbalance_ratio"] = 50
    assert parse_params(raw_params).subsample.imbalance_ratio == 50.0


def test_round_trip_through_yaml(raw_params, tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw_params))
    assert load_params(path) == parse_params(raw_params)


# ---- the file named in messages is the file read ------------------------------------------

def test_errors_name_the_params_file_actually_read(raw_params, tmp_path):
    other = tmp_path / "experiment.yaml"
    raw_params["prune_ratio"] = 1.0
    other.write_text(yaml.safe_dump(raw_params))
    with pytest.raises(ConfigError) as info:
        load_params(other)
    assert str(info.value).startswith(f"{other}: prune_ratio = 1.0 is out of range"), str(info.value)
    assert "params.yaml" not in str(info.value)


def test_a_param_error_found_later_names_the_file_given_with_params(root, tmp_path, capsys):
    """Errors raised after loading (in training, in the split recipe) name --params' file too."""
    from sdclr.errors import ParamError
    from sdclr.stage import run_stage

    other = tmp_path / "experiment.yaml"
    other.write_text((root / "params.yaml").read_text())

    def main(params, args):
        raise ParamError(f"pretrain.batch_size = {params.pretrain.batch_size} is larger than the training subset.")

    with pytest.raises(SystemExit) as exit_:
        run_stage(main, "test", argv=["--params", str(other)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {other}: pretrain.batch_size = ") and "params.yaml" not in err, err


def test_no_message_hard_codes_the_params_file(root):
    """A message that starts with "params.yaml:" would name the wrong file under --params."""
    import re

    offenders = [f"{p.relative_to(root)}:{i}" for p in sorted((root / "sdclr").rglob("*.py"))
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"""f?["']params\.yaml: """, line)]
    assert not offenders, offenders


# ---- YAML syntax errors point at the broken line ------------------------------------------------

YAML_BROKEN = [
    # (file text, the 1-based line a person would fix)
    ("seed: 0\nsplits: [0, 1\nmodel: 3\n", 2),            # unclosed '[' (PyYAML notices on line 3)
    ("seed: [1, 2\n", 1),                                  # unclosed '[' at the end of the file
    ("seed: 0\ndata: {dataset: cifar10\ndevice: cpu\n", 2),  # unclosed '{'
    ("seed: 0\nname: 'abc\ndevice: cpu\n", 2),             # unclosed quote
    ("seed: 0\nprune_ratio\ndevice: cpu\n", 2),            # a key without ':'
    ("seed: 0\ndata:\n  dataset: x\n source_dir: y\nz: 1\n", 4),  # bad indentation
    ("seed: 0\ndata:\n\tdataset: x\n", 3),                  # a tab
    ("seed: 0\nprune_ratio: 0.9: 1\n", 2),                 # a second ':'
    ("seed: 0\n%bad\n", 2),                                # a stray directive at the end
]


@pytest.mark.parametrize("text,line", YAML_BROKEN, ids=[f"line{n}-{i}" for i, (_, n) in enumerate(YAML_BROKEN)])
def test_yaml_syntax_error_names_the_broken_line(tmp_path, text, line):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: not valid YAML at line {line} ("), msg
    assert msg.endswith("; fix the syntax there.") and "\n" not in msg
