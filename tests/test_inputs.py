"""Stage inputs that are missing, damaged or altered: one sentence naming the file and the fix.

What a user sees is checked where it is seen: the loaders (``load_raw``, ``load_split``,
``load_encoder``) on real files in ``tmp_path``, and the real stage scripts run as DVC runs
them, which must end with one ``error: ...`` line and status 2 (no traceback, never numpy's
or torch's advice to load a file unsafely) and leave the results already produced alone.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sdclr.data.longtail import load_split
from sdclr.errors import DataError
from sdclr.registry import parse_params
from sdclr.storage.encoder_file import load_encoder
from sdclr.storage.io import load_raw, save_npz, sha256_array, write_json
from tests.dvc_project import make_project, project_env, run_in_process, stage_command
from tests.test_pretrain import TINY, tiny_dataset

UNSAFE_ADVICE = ("allow_pickle", "weights_only", "Traceback")
RAW = "data/raw/fashion_mnist"
SPLITS = "data/splits/fashion_mnist"


def _one_sentence(msg: str) -> None:
    assert "\n" not in msg and msg.endswith(".") and msg.count(". ") == 0, msg
    for words in UNSAFE_ADVICE:
        assert words not in msg, msg


def _random_bytes(path: Path, n: int = 4096) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes())


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --------------------------------------------------------------------------- the download's output

def _write_raw(raw: Path) -> dict:
    rng = np.random.default_rng(1)
    parts = {p: {"images": rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), "labels": np.arange(n) % 10}
             for p, n in (("train", 50), ("test", 20))}
    for part, arrays in parts.items():
        save_npz(raw / f"{part}.npz", **arrays)
    write_json(raw / "meta.json", {"class_names": [f"c{i}" for i in range(10)],
                                   "arrays_sha256": {f"{p}_{k}": sha256_array(v) for p, a in parts.items()
                                                     for k, v in a.items()}})
    return parts


def _swap_one_image(path: Path) -> None:
    """A well-formed .npz whose content differs from the download's (an edited or swapped file)."""
    arrays = dict(np.load(path))
    arrays["images"] = arrays["images"].copy()
    arrays["images"][3, 5, 5, 0] ^= 1
    save_npz(path, **arrays)


RAW_DAMAGE = {
    "random bytes": (lambda raw: _random_bytes(raw / "train.npz"), "train.npz cannot be read as an .npz"),
    "truncated": (lambda raw: _truncate(raw / "train.npz"), "train.npz cannot be read as an .npz"),
    "missing file": (lambda raw: (raw / "test.npz").unlink(), "test.npz is missing"),
    "one image changed": (lambda raw: _swap_one_image(raw / "train.npz"), "does not match the checksum recorded"),
    "missing meta.json": (lambda raw: (raw / "meta.json").unlink(), "meta.json is missing"),
    "meta.json garbled": (lambda raw: _random_bytes(raw / "meta.json", 100), "meta.json cannot be read as JSON"),
    "meta.json without checksums": (lambda raw: write_json(raw / "meta.json", {"class_names": ["a"]}),
                                    "does not record the arrays' checksums"),
}


def test_load_raw_returns_the_verified_arrays(tmp_path):
    parts = _write_raw(tmp_path / "raw")
    data = load_raw(tmp_path / "raw")
    for part in ("train", "test"):
        for k, v in parts[part].items():
            np.testing.assert_array_equal(getattr(data, part)[k], v)
    assert data.meta["class_names"][0] == "c0"
    only_train = load_raw(tmp_path / "raw", parts=("train",))
    assert only_train.test is None and len(only_train.train["labels"]) == 50


@pytest.mark.parametrize("damage", list(RAW_DAMAGE))
def test_damaged_raw_data_is_one_sentence_naming_file_and_fix(tmp_path, damage):
    raw = tmp_path / "raw"
    _write_raw(raw)
    do, words = RAW_DAMAGE[damage]
    do(raw)
    with pytest.raises(DataError) as info:
        load_raw(raw)
    msg = str(info.value)
    assert words in msg and str(raw) in msg, msg
    assert "`dvc repro download`" in msg and f"`dvc checkout {raw}`" in msg, msg
    _one_sentence(msg)


def test_missing_raw_folder_says_to_run_download(tmp_path):
    with pytest.raises(DataError) as info:
        load_raw(tmp_path / "raw/cifar10")
    msg = str(info.value)
    assert f"{tmp_path / 'raw/cifar10'} does not exist" in msg and "`dvc repro download`" in msg
    _one_sentence(msg)


# --------------------------------------------------------------------------- the subsample stage's output

def _write_splits(folder: Path) -> None:
    save_npz(folder / "pool_val.npz", pool=np.arange(0, 40), val=np.arange(40, 50))
    save_npz(folder / "split0.npz", longtail=np.arange(0, 30), balanced=np.arange(0, 20), fewshot=np.arange(0, 10),
             class_order=np.arange(10))


def test_load_split_reads_a_good_split(tmp_path):
    _write_splits(tmp_path / "s")
    split = load_split(tmp_path / "s", 0, [0], num_train=50)
    assert set(split) == {"pool", "val", "longtail", "balanced", "fewshot", "class_order"}


SPLIT_DAMAGE = {
    "missing pool_val.npz": (lambda s: (s / "pool_val.npz").unlink(), "pool_val.npz is missing"),
    "random bytes": (lambda s: _random_bytes(s / "split0.npz"), "split0.npz cannot be read as an .npz"),
    "truncated pool_val.npz": (lambda s: _truncate(s / "pool_val.npz"), "pool_val.npz cannot be read"),
    "indices of other data": (lambda s: save_npz(s / "split0.npz", longtail=np.arange(0, 90), balanced=np.arange(3),
                                                 fewshot=np.arange(3), class_order=np.arange(10)),
                              "longtail holds indices outside the 50 train images"),
}


@pytest.mark.parametrize("damage", list(SPLIT_DAMAGE))
def test_damaged_splits_are_one_sentence_naming_file_and_fix(tmp_path, damage):
    folder = tmp_path / "s"
    _write_splits(folder)
    do, words = SPLIT_DAMAGE[damage]
    do(folder)
    with pytest.raises(DataError) as info:
        load_split(folder, 0, [0], num_train=50)
    msg = str(info.value)
    assert words in msg and str(folder) in msg and "`dvc repro subsample`" in msg, msg
    _one_sentence(msg)


def test_missing_split_file_advice_depends_on_whether_it_is_listed(tmp_path):
    folder = tmp_path / "s"
    _write_splits(folder)
    (folder / "split0.npz").unlink()
    with pytest.raises(DataError) as listed:  # listed, file gone: re-run subsample (not "add 0 to ...")
        load_split(folder, 0, [0, 1])
    assert "split0.npz is missing although split 0 is in subsample.splits" in str(listed.value)
    assert "`dvc repro subsample`" in str(listed.value) and "add 0" not in str(listed.value)
    with pytest.raises(DataError) as unlisted:
        load_split(folder, 3, [0, 1])
    assert "add 3 to subsample.splits" in str(unlisted.value) and "`dvc repro subsample`" in str(unlisted.value)
    with pytest.raises(DataError, match=r"splits folder .* does not exist; create it with `dvc repro subsample`"):
        load_split(tmp_path / "nowhere", 0, [0])
    for e in (listed, unlisted):
        _one_sentence(str(e.value))


# --------------------------------------------------------------------------- encoder files

class _Foreign:
    """Any class torch's weights_only unpickler does not allow: loading it needs weights_only=False."""


def _foreign_pickle(path: Path) -> None:
    torch.save({"net": _Foreign()}, path)


def _truncated_torch_file(path: Path) -> None:
    torch.save({"net": {"w": torch.zeros(64, 64)}}, path)
    _truncate(path)


ENCODER_DAMAGE = {
    "random bytes": (_random_bytes, "cannot be read as an encoder file"),
    "pickle of a foreign class": (_foreign_pickle, "cannot be read as an encoder file"),
    "truncated": (_truncated_torch_file, "cannot be read as an encoder file"),
    "not an encoder": (lambda p: torch.save({"a": torch.zeros(2)}, p), "does not hold an encoder"),
    "missing": (lambda p: None, "is missing"),
}


@pytest.mark.parametrize("damage", list(ENCODER_DAMAGE))
def test_damaged_encoder_is_one_sentence_without_unsafe_advice(tmp_path, damage):
    path = tmp_path / "models/simclr/split0.pt"
    path.parent.mkdir(parents=True)
    do, words = ENCODER_DAMAGE[damage]
    do(path)
    with pytest.raises(DataError) as info:
        load_encoder(path, stage="pretrain-simclr@0")
    msg = str(info.value)
    assert words in msg and str(path) in msg, msg
    assert f"`dvc checkout {path}`" in msg and "`dvc repro pretrain-simclr@0`" in msg, msg
    _one_sentence(msg)


# --------------------------------------------------------------------------- the stages, as DVC runs them

@pytest.fixture
def tiny(tmp_path):
    proj = make_project(tmp_path / "proj", TINY)
    tiny_dataset(proj, parse_params(yaml.safe_load((proj / "params.yaml").read_text())))
    return proj


def _run(proj: Path, stage: str, item: int | None = None) -> subprocess.CompletedProcess:
    """The stage's script with DVC's command line, in this process (what it says is the test)."""
    env = project_env(proj, tracking_uri=f"sqlite:///{proj.parent / 'mlflow.db'}")
    return run_in_process(stage_command(proj, stage, item), proj, env)


def _assert_one_error_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out[-3000:]
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    for w in (*words,):
        assert w in proc.stderr, proc.stderr
    for w in UNSAFE_ADVICE:
        assert w not in out, out[-3000:]
    return proc.stderr


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.slow
def test_stages_refuse_a_garbled_dataset_file_and_keep_earlier_results(tiny):
    _random_bytes(tiny / RAW / "train.npz")
    splits_before = _digests(tiny / SPLITS)
    for stage, item in (("subsample", None), ("pretrain-simclr", 0), ("evaluate-random", 0)):
        _assert_one_error_line(_run(tiny, stage, item), f"{RAW}/train.npz cannot be read", "`dvc repro download`",
                               f"`dvc checkout {RAW}`")
    assert _digests(tiny / SPLITS) == splits_before  # the splits already produced are untouched
    assert not (tiny / "models/simclr/split0.pt").exists()
    assert not (tiny / "reports/metrics/random/split0.json").exists()


@pytest.mark.slow
def test_subsample_stage_refuses_arrays_that_differ_from_the_download(tiny):
    _swap_one_image(tiny / RAW / "train.npz")
    _assert_one_error_line(_run(tiny, "subsample"), f"{RAW}/train.npz: its images array does not match the checksum")


@pytest.mark.slow
def test_pretrain_stage_on_a_listed_split_whose_file_is_gone_says_run_subsample(tiny):
    (tiny / SPLITS / "split0.npz").unlink()
    err = _assert_one_error_line(_run(tiny, "pretrain-sdclr", 0), f"{SPLITS}/split0.npz is missing",
                                 "`dvc repro subsample`")
    assert "add 0" not in err


@pytest.mark.slow
def test_evaluate_stage_refuses_a_damaged_encoder_without_unsafe_advice(tiny):
    model = tiny / "models/simclr/split0.pt"
    model.parent.mkdir(parents=True)
    _foreign_pickle(model)  # what torch answers with a traceback advising weights_only=False
    _assert_one_error_line(_run(tiny, "evaluate-simclr", 0), "models/simclr/split0.pt cannot be read as an encoder",
                           "`dvc repro pretrain-simclr@0`", "`dvc checkout models/simclr/split0.pt`")
    assert not (tiny / "reports/metrics/simclr/split0.json").exists()


def test_foreign_pickle_really_needs_weights_only_false(tmp_path):
    """The negative control: without the checked loader, torch's own error gives the unsafe advice."""
    path = tmp_path / "m.pt"
    _foreign_pickle(path)
    with pytest.raises(pickle.UnpicklingError, match="weights_only"):
        torch.load(path, weights_only=True)
    assert os.path.getsize(path) > 0
