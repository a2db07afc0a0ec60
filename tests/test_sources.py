"""Dataset sources: the real Debian Fashion-MNIST copy, and small CIFAR files written here
in the official python-pickle layout (the real CIFAR is not reachable from CI)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from sdclr.data.sources import fetch_dataset
from sdclr.errors import DataError
from sdclr.storage.io import load_npz, sha256_array
from tests.conftest import FASHION_SYSTEM_DIR

needs_fmnist = pytest.mark.skipif(not FASHION_SYSTEM_DIR.exists(), reason="needs Debian's dataset-fashion-mnist")

# sha256_array of the parsed official Fashion-MNIST arrays (dtype, shape and bytes).
FMNIST_ARRAYS = {
    "train_images": "e5d68b2e0b933857131e9118026bf9464a97f0ac2812e13264029c686b2a9a7a",
    "train_labels": "19c35b06ae0b67950b73d930cf6c230695f8a60378b80c4198f8968e92d51039",
    "test_images": "748369adf4e34b46422b32eddfb4f938df283772f9cc47c5105138ba7d2fe25a",
    "test_labels": "57c9f313824bec6c3d4d9d91e156002d02dc743c5b434b297637047d8ada755a",
}
FMNIST_NAMES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte"]


def _check_fmnist(out: Path):
    train, test = load_npz(out / "train.npz"), load_npz(out / "test.npz")
    assert train["images"].shape == (60000, 28, 28, 1) and train["images"].dtype == np.uint8
    assert test["images"].shape == (10000, 28, 28, 1) and test["labels"].dtype == np.int64
    assert sorted(np.unique(train["labels"])) == list(range(10))
    got = {f"{p}_{k}": sha256_array(v) for p, d in (("train", train), ("test", test)) for k, v in d.items()}
    assert got == FMNIST_ARRAYS
    return json.loads((out / "meta.json").read_text())


@needs_fmnist
def test_fashion_mnist_from_debian_copy(tmp_path):
    meta = fetch_dataset("fashion_mnist", tmp_path / "fm", allow_download=False)
    assert _check_fmnist(tmp_path / "fm") == meta
    assert meta["source"] == {"kind": "system", "path": str(FASHION_SYSTEM_DIR)}
    assert meta["class_names"][0] == "T-shirt/top" and len(meta["class_names"]) == 10
    assert (meta["train_count"], meta["test_count"]) == (60000, 10000)


@needs_fmnist
@pytest.mark.parametrize("compressed", [True, False])
def test_fashion_mnist_from_source_dir(tmp_path, compressed):
    src = tmp_path / "src"
    src.mkdir()
    for name in FMNIST_NAMES:
        raw = gzip.decompress((FASHION_SYSTEM_DIR / f"{name}.gz").read_bytes())
        if compressed:
            (src / f"{name}.gz").write_bytes(gzip.compress(raw, compresslevel=1))
        else:
            (src / name).write_bytes(raw)
    meta = fetch_dataset("fashion_mnist", tmp_path / "fm", source_dir=str(src), allow_download=False,
                         system_dir=tmp_path / "nowhere")
    assert meta["source"]["kind"] == "source_dir"
    _check_fmnist(tmp_path / "fm")


@needs_fmnist
@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_corrupt_fashion_mnist_is_refused_and_keeps_good_output(tmp_path, damage):
    out = tmp_path / "fm"
    fetch_dataset("fashion_mnist", out, allow_download=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    src = tmp_path / "src"
    src.mkdir()
    for name in FMNIST_NAMES:
        raw = bytearray(gzip.decompress((FASHION_SYSTEM_DIR / f"{name}.gz").read_bytes()))
        if name == "train-images-idx3-ubyte":
            if damage == "flip_byte":
                raw[1000] ^= 0xFF
            else:
                raw = raw[: len(raw) // 2]
        (src / name).write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte is corrupt or not the official file"):
        fetch_dataset("fashion_mnist", out, source_dir=str(src), allow_download=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing destroyed
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fm")]  # no staging left behind


def test_missing_fashion_mnist_offline_names_package_and_param(tmp_path):
    with pytest.raises(DataError) as e:
        fetch_dataset("fashion_mnist", tmp_path / "fm", allow_download=False, system_dir=tmp_path / "nowhere")
    msg = str(e.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "data.source_dir" in msg
    assert msg.count(". ") == 0 and msg.endswith(".")  # one sentence
    assert not (tmp_path / "fm").exists()


# --------------------------------------------------------------------------- CIFAR

def _batch(n, num_classes, seed, label_key):
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"testing batch",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        label_key: [int(x) for x in rng.integers(0, num_classes, size=n)],
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def _write_cifar(root: Path, dataset: str, n_per_file=7) -> dict[str, bytes]:
    """Files of the official layout with made-up content; returns name → bytes."""
    if dataset == "cifar10":
        batches = {f"data_batch_{i}": _batch(n_per_file, 10, i, b"labels") for i in range(1, 6)}
        batches["test_batch"] = _batch(n_per_file, 10, 9, b"labels")
        batches["batches.meta"] = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}
    else:
        batches = {"train": _batch(n_per_file, 100, 1, b"fine_labels"),
                   "test": _batch(n_per_file, 100, 2, b"fine_labels")}
        for b in ("train", "test"):
            batches[b][b"coarse_labels"] = [0] * n_per_file
        batches["meta"] = {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                           b"coarse_label_names": [f"k{i}".encode() for i in range(20)]}
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, obj in batches.items():
        files[name] = pickle.dumps(obj, protocol=2)
        (root / name).write_bytes(files[name])
    return files


def _md5s(files: dict[str, bytes]) -> dict[str, str]:
    return {k: hashlib.md5(v).hexdigest() for k, v in files.items()}


FOLDERS = {"cifar10": ("cifar-10-batches-py", "cifar-10-python.tar.gz"),
           "cifar100": ("cifar-100-python", "cifar-100-python.tar.gz")}


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
@pytest.mark.parametrize("packed", [False, True])
def test_cifar_parsing_from_official_layout(tmp_path, dataset, packed):
    folder, archive = FOLDERS[dataset]
    src = tmp_path / "src"
    files = _write_cifar(src / folder, dataset)
    sums = _md5s(files)
    if packed:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(src / folder, arcname=folder)
        for f in (src / folder).iterdir():
            f.unlink()
        (src / folder).rmdir()
        (src / archive).write_bytes(buf.getvalue())
        sums[archive] = hashlib.md5(buf.getvalue()).hexdigest()

    meta = fetch_dataset(dataset, tmp_path / "out", source_dir=str(src), allow_download=False, checksums=sums)
    train, test = load_npz(tmp_path / "out/train.npz"), load_npz(tmp_path / "out/test.npz")
    n_train = 35 if dataset == "cifar10" else 7
    assert train["images"].shape == (n_train, 32, 32, 3) and train["images"].dtype == np.uint8
    assert test["images"].shape == (7, 32, 32, 3) and train["labels"].dtype == np.int64
    assert len(meta["class_names"]) == (10 if dataset == "cifar10" else 100)
    # The official row layout is 1024 red, 1024 green, 1024 blue values, each row-major 32×32.
    first = pickle.loads(files["data_batch_1" if dataset == "cifar10" else "train"])
    row = first[b"data"][0]
    assert train["images"][0, 0, 1, 0] == row[1] and train["images"][0, 2, 0, 1] == row[1024 + 64]
    assert train["images"][0, 31, 31, 2] == row[3071]
    label_key = b"labels" if dataset == "cifar10" else b"fine_labels"
    assert train["labels"][: 7].tolist() == first[label_key]
    assert meta["source"]["kind"] == "source_dir"


def test_cifar_with_official_table_refuses_unofficial_files(tmp_path):
    _write_cifar(tmp_path / "src/cifar-10-batches-py", "cifar10")
    with pytest.raises(DataError, match="data_batch_1 is corrupt or not the official file"):
        fetch_dataset("cifar10", tmp_path / "out", source_dir=str(tmp_path / "src"), allow_download=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["flip_byte", "truncate"])
def test_corrupt_or_truncated_cifar_gives_clear_error_and_no_output(tmp_path, damage):
    src = tmp_path / "src/cifar-10-batches-py"
    files = _write_cifar(src, "cifar10")
    sums = _md5s(files)
    good = tmp_path / "out"
    fetch_dataset("cifar10", good, source_dir=str(tmp_path / "src"), allow_download=False, checksums=sums)
    before = (good / "train.npz").read_bytes()

    raw = bytearray(files["test_batch"])
    raw = raw[: len(raw) // 2] if damage == "truncate" else raw[:200] + bytes([raw[200] ^ 1]) + raw[201:]
    (src / "test_batch").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="test_batch is corrupt or not the official file"):
        fetch_dataset("cifar10", good, source_dir=str(tmp_path / "src"), allow_download=False, checksums=sums)
    assert (good / "train.npz").read_bytes() == before

    # Even when the table vouches for a truncated file, parsing fails with a sentence, not a traceback.
    sums["test_batch"] = hashlib.md5(bytes(raw)).hexdigest()
    if damage == "truncate":
        with pytest.raises(DataError, match="cannot be read as a CIFAR pickle"):
            fetch_dataset("cifar10", tmp_path / "out2", source_dir=str(tmp_path / "src"), allow_download=False,
                          checksums=sums)
        assert not (tmp_path / "out2").exists()


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_that_would_run_code_is_refused_even_with_matching_checksum(tmp_path):
    src = tmp_path / "src/cifar-10-batches-py"
    files = _write_cifar(src, "cifar10")
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Exploit(str(marker)), b"labels": []}, protocol=2)
    (src / "data_batch_3").write_bytes(evil)
    files["data_batch_3"] = evil
    with pytest.raises(DataError, match="refusing to unpickle"):
        fetch_dataset("cifar10", tmp_path / "out", source_dir=str(tmp_path / "src"), allow_download=False,
                      checksums=_md5s(files))
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_unreachable_download_is_one_clear_sentence(tmp_path, dataset):
    with pytest.raises(DataError) as e:
        fetch_dataset(dataset, tmp_path / "out", allow_download=True, urls=("http://127.0.0.1:9/",))
    msg = str(e.value)
    assert msg.startswith(f"no copy of {dataset} could be found or fetched") and "data.source_dir" in msg
    assert "127.0.0.1:9" in msg
    assert not (tmp_path / "out").exists()


def test_download_off_says_so(tmp_path):
    with pytest.raises(DataError, match="data.download is false"):
        fetch_dataset("cifar100", tmp_path / "out", allow_download=False)


def test_source_dir_that_is_not_a_directory(tmp_path):
    with pytest.raises(DataError, match="data.source_dir = .* is not a directory"):
        fetch_dataset("cifar10", tmp_path / "out", source_dir=str(tmp_path / "missing"))


# --------------------------------------------------------------------------- an explicit source is the only source

@needs_fmnist
def test_empty_source_dir_is_an_error_not_a_fall_back_to_the_system_copy(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(DataError) as e:  # the system copy exists, but the user asked for this folder
        fetch_dataset("fashion_mnist", tmp_path / "fm", source_dir=str(tmp_path / "src"), allow_download=False)
    msg = str(e.value)
    assert msg.startswith(f"data.source_dir = {tmp_path / 'src'} lacks train-images-idx3-ubyte.gz"), msg
    assert all(n in msg for n in FMNIST_NAMES) and "set data.source_dir to null" in msg
    assert msg.count(". ") == 0 and msg.endswith(".")
    assert not (tmp_path / "fm").exists()


@needs_fmnist
def test_incomplete_source_dir_names_the_missing_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in FMNIST_NAMES[:3]:
        (src / f"{name}.gz").write_bytes((FASHION_SYSTEM_DIR / f"{name}.gz").read_bytes())
    with pytest.raises(DataError) as e:
        fetch_dataset("fashion_mnist", tmp_path / "fm", source_dir=str(src), allow_download=True)
    msg = str(e.value)
    assert "lacks t10k-labels-idx1-ubyte.gz (or t10k-labels-idx1-ubyte)" in msg, msg
    assert "train-images" not in msg and "system copy or the download" in msg
    assert not (tmp_path / "fm").exists()


def test_incomplete_cifar_source_dir_names_the_missing_batch_instead_of_downloading(tmp_path):
    files = _write_cifar(tmp_path / "src/cifar-10-batches-py", "cifar10")
    (tmp_path / "src/cifar-10-batches-py/data_batch_4").unlink()
    with pytest.raises(DataError) as e:
        fetch_dataset("cifar10", tmp_path / "out", source_dir=str(tmp_path / "src"), allow_download=True,
                      checksums=_md5s(files), urls=("http://127.0.0.1:9/",))
    msg = str(e.value)
    assert "lacks cifar-10-python.tar.gz or its extracted folder cifar-10-batches-py/ with data_batch_4" in msg, msg
    assert "127.0.0.1" not in msg and "use the download" in msg and "system copy" not in msg
    assert not (tmp_path / "out").exists()
