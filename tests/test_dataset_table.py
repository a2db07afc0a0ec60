"""A new dataset costs one row of sdclr/data/datasets.py plus its recipe preset, nothing else.

Each test registers a throw-away row in the real table (``monkeypatch.setitem`` on our own
registry, undone after the test) and runs the real code on files written here in a format
sdclr/data/formats.py reads: params validation, the download stage script (find, verify,
parse, write), ``load_raw`` as the later stages call it, and the report's reference table and
recipe deviations. No other file knows the row, so passing shows no other file needs a change.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import yaml

from sdclr.data.datasets import DATASETS, Dataset, SystemCopy
from sdclr.data.formats import parse_cifar_pickle, parse_idx
from sdclr.errors import ConfigError
from sdclr.registry import parse_params
from sdclr.report.deviations import deviations
from sdclr.report.markdown import reference_section
from sdclr.report.published import PUBLISHED, PaperReference
from sdclr.storage.io import load_raw
from tests.dvc_project import ROOT, run_in_process, stage_command
from tests.test_sources import _batch, _md5s

CLASSES = ("ant", "bee", "cat", "dog")
REFERENCE = PaperReference("A made-up table", ("all",), {"simclr": ("50.0",), "sdclr": ("60.0",)},
                           measures=(("full_shot", "accuracy"),), protocol={"pretrain.epochs": 777})


def _idx(array: np.ndarray) -> bytes:
    """An unsigned-byte idx file: magic 0x0000 08 <ndim>, the dims (big-endian), the bytes."""
    return bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">u4").tobytes() + array.astype(np.uint8).tobytes()


def _idx_dataset(tmp_path: Path) -> tuple[Dataset, dict, dict]:
    """4 classes of 8 x 8 grayscale images as .gz idx files in a source folder (``data.source_dir``)."""
    rng = np.random.default_rng(0)
    arrays = {part: {"images": rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), "labels": np.arange(n) % 4}
              for part, n in (("train", 24), ("test", 8))}
    files = {f"tiny-{part}-{key}": _idx(a) for part, d in arrays.items() for key, a in d.items()}
    src = tmp_path / "src"
    src.mkdir()
    for name, data in files.items():
        (src / f"{name}.gz").write_bytes(gzip.compress(data))
    row = Dataset(
        urls=("http://127.0.0.1:9/",), archive=None, folder=None,
        train_files=("tiny-train-images", "tiny-train-labels"), test_files=("tiny-test-images", "tiny-test-labels"),
        meta_file=None,
        checksums={n: hashlib.sha256(d).hexdigest() for n, d in files.items()},
        digest="sha256", checksum_kind="sha256 of decompressed file",
        parse=partial(parse_idx, class_names=CLASSES),
        channels=1, image_size=8, train_size=24, test_size=8, num_classes=4, system_copy=None,
        recipe_preset="cifar10_paper", deviation="its 8 x 8 images are a quarter of CIFAR's side",
    )
    expected = {part: {"images": d["images"][..., None], "labels": d["labels"]} for part, d in arrays.items()}
    return row, expected, {"source_dir": str(src), "kind": "source_dir", "path": str(src)}


def _cifar_dataset(tmp_path: Path) -> tuple[Dataset, dict, dict]:
    """4 classes in CIFAR's pickled batches, packed in a tarball where the row's system copy lives."""
    batches = {"tiny_train_1": _batch(6, 4, 1, b"labels"), "tiny_train_2": _batch(5, 4, 2, b"labels"),
               "tiny_test": _batch(4, 4, 3, b"labels"), "tiny_meta": {b"label_names": [c.encode() for c in CLASSES]}}
    files = {name: pickle.dumps(obj, protocol=2) for name, obj in batches.items()}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(f"tiny-batches-py/{name}")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    system = tmp_path / "usr/share/datasets/tiny"
    system.mkdir(parents=True)
    (system / "tiny-python.tar.gz").write_bytes(buf.getvalue())
    row = Dataset(
        urls=("http://127.0.0.1:9/",), archive="tiny-python.tar.gz", folder="tiny-batches-py",
        train_files=("tiny_train_1", "tiny_train_2"), test_files=("tiny_test",), meta_file="tiny_meta",
        checksums={**_md5s(files), "tiny-python.tar.gz": hashlib.md5(buf.getvalue()).hexdigest()},
        digest="md5", checksum_kind="md5",
        parse=partial(parse_cifar_pickle, label_key="labels", names_key="label_names"),
        channels=3, image_size=32, train_size=11, test_size=4, num_classes=4, system_copy=SystemCopy(system,
                                                                                                     "dataset-tiny"),
        recipe_preset="tiny_paper", deviation=None,
    )

    def part(*names):  # CIFAR rows are 1024 red, 1024 green, 1024 blue values, each row-major 32 x 32
        data = np.concatenate([batches[n][b"data"] for n in names])
        return {"images": data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1),
                "labels": np.concatenate([batches[n][b"labels"] for n in names])}

    expected = {"train": part("tiny_train_1", "tiny_train_2"), "test": part("tiny_test")}
    return row, expected, {"source_dir": None, "kind": "system", "path": str(system)}


@pytest.mark.parametrize("make", [_idx_dataset, _cifar_dataset], ids=["idx", "cifar_pickle"])
def test_a_new_dataset_is_one_row_and_its_preset(tmp_path, monkeypatch, raw_params, make):
    row, expected, source = make(tmp_path)
    monkeypatch.setitem(DATASETS, "tiny", row)
    if row.archive is None:  # a dataset with a published table: the report's, apart from the row
        monkeypatch.setitem(PUBLISHED, "tiny", REFERENCE)

    # its recipe preset: the idx row names cifar10_paper, as Fashion-MNIST does; the CIFAR-format
    # one its own, CIFAR-10's recipe at another epoch count
    presets = tmp_path / "presets"
    presets.mkdir()
    recipe = yaml.safe_load((ROOT / "presets/cifar10_paper.yaml").read_text())
    (presets / "cifar10_paper.yaml").write_text(yaml.safe_dump(recipe))
    recipe["data"]["dataset"], recipe["pretrain"]["epochs"] = "tiny", 777
    (presets / "tiny_paper.yaml").write_text(yaml.safe_dump(recipe))

    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "stages").symlink_to(ROOT / "stages")
    (proj / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    raw_params["data"].update(dataset="tiny", source_dir=source["source_dir"], download=False)
    (proj / "params.yaml").write_text(yaml.safe_dump(raw_params, sort_keys=False))

    done = run_in_process(stage_command(proj, "download"), proj, dict(os.environ))
    assert done.returncode == 0, done.stderr
    n_train, n_test = len(expected["train"]["labels"]), len(expected["test"]["labels"])
    assert done.stdout.startswith(f"tiny: {n_train} train / {n_test} test images from {source['kind']}")

    raw = load_raw(proj / "data/raw/tiny")  # what subsample, pretrain and evaluate read: verified
    for part in ("train", "test"):
        np.testing.assert_array_equal(getattr(raw, part)["images"], expected[part]["images"])
        np.testing.assert_array_equal(getattr(raw, part)["labels"], expected[part]["labels"])
        assert getattr(raw, part)["images"].dtype == np.uint8 and getattr(raw, part)["labels"].dtype == np.int64
    assert raw.meta["class_names"] == list(CLASSES)
    assert raw.meta["image_shape"] == [row.image_size, row.image_size, row.channels]
    assert raw.meta["source"] == {"kind": source["kind"], "path": source["path"]}
    assert raw.meta["checksum_kind"] == row.checksum_kind and set(raw.meta["checksums"]) <= set(row.checksums)

    params = parse_params(raw_params)
    if row.archive is None:  # the idx row has a made-up paper's table: another epoch count, so not subtracted
        section = reference_section(params, {})
        assert section[:2] == ["## Reference: A made-up table", ""]
        assert section[4:6] == ["| method | all |", "|---|---|"]
        assert section[2].startswith("Not subtracted from ours") and "`pretrain.epochs` = " in section[2]
    else:
        assert reference_section(params, {}) == []
    said = deviations(params, presets)
    if row.recipe_preset == "cifar10_paper":
        assert said[0] == "Dataset: tiny instead of cifar10; its 8 x 8 images are a quarter of CIFAR's side."
    else:
        assert not any(d.startswith("Dataset:") for d in said)
        assert f"{params.pretrain.epochs} pretraining epochs instead of 777." in said


def test_params_accept_exactly_the_table_rows(tmp_path, monkeypatch, raw_params):
    raw_params["data"]["dataset"] = "tiny"
    with pytest.raises(ConfigError) as e:
        parse_params(raw_params)
    assert str(e.value) == ("params.yaml: data.dataset = 'tiny' is not a known choice; accepted: one of "
                            "'fashion_mnist', 'cifar10', 'cifar100'.")

    row, _, _ = _idx_dataset(tmp_path)
    monkeypatch.setitem(DATASETS, "tiny", row)
    assert parse_params(raw_params).data.dataset == "tiny"
    raw_params["data"]["dataset"] = "imagenet"
    with pytest.raises(ConfigError, match="accepted: one of 'fashion_mnist', 'cifar10', 'cifar100', 'tiny'."):
        parse_params(raw_params)
