"""The datasets this pipeline runs on: one row each, holding everything about it.

A row says where the official files are and what their digests are, how to parse them, what
the images look like, where an OS package puts a copy and which preset holds the papers' recipe
for it (the numbers the papers published are the report's: :mod:`sdclr.report.published`). No code outside this
table branches on a dataset's name: :mod:`sdclr.data.sources` fetches and verifies the
row's files, :mod:`sdclr.config` accepts ``data.dataset`` only as a key of :data:`DATASETS`,
:mod:`sdclr.report` and :mod:`sdclr.pipeline.fingerprint` read the rest from the row. Adding a
dataset in a format :mod:`sdclr.data.formats` reads is one row here plus its recipe preset
(tests/test_dataset_table.py registers a throw-away one and runs it through the download).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Mapping

from sdclr.data.formats import parse_cifar_pickle, parse_idx


@dataclass(frozen=True)
class SystemCopy:
    """A copy an OS package installs; read when ``data.source_dir`` is null, before any download."""

    path: Path
    package: str  # what the error sentence tells the user to apt-get install


@dataclass(frozen=True)
class Dataset:
    """Everything about one dataset (see the module docstring)."""

    urls: tuple[str, ...]         # official download locations, tried in order
    archive: str | None           # the official tarball, or None: the files are served one by one (.gz)
    folder: str | None            # the folder the archive unpacks to
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str | None         # the file holding the class names, if the files have one
    #: digest of each official file (and the archive); ``digest`` is its hashlib algorithm,
    #: ``checksum_kind`` how meta.json describes it
    checksums: Mapping[str, str]
    digest: str
    checksum_kind: str
    #: ``parse(files, row) -> (train, test, class_names)``: a parser of sdclr.data.formats
    parse: Callable
    channels: int
    image_size: int               # square images: height = width
    #: the official split's sizes and classes (the fingerprint measures the evaluation at these shapes)
    train_size: int
    test_size: int
    num_classes: int
    system_copy: SystemCopy | None
    recipe_preset: str            # presets/<name>.yaml: the papers' recipe the report's deviations compare with
    #: said after "Dataset: <ours> instead of <the recipe's>" in the deviations, if anything
    deviation: str | None


DATASETS: dict[str, Dataset] = {
    "fashion_mnist": Dataset(
        urls=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        archive=None, folder=None,
        train_files=("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        test_files=("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        meta_file=None,
        # sha256 of the *decompressed* idx files: Debian recompresses the .gz files, so the
        # compressed digests differ from upstream while the content is identical
        checksums={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        digest="sha256", checksum_kind="sha256 of decompressed file",
        parse=partial(parse_idx, class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                              "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")),
        channels=1, image_size=28, train_size=60_000, test_size=10_000, num_classes=10,
        system_copy=SystemCopy(Path("/usr/share/datasets/fashion-mnist"), "dataset-fashion-mnist"),
        recipe_preset="cifar10_paper",
        deviation="colour jitter and grayscale are skipped for its 1-channel images",
    ),
    "cifar10": Dataset(
        urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        # md5 of the archive and its members, as published with the data (and in torchvision)
        checksums={
            "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
        digest="md5", checksum_kind="md5",
        parse=partial(parse_cifar_pickle, label_key="labels", names_key="label_names"),
        channels=3, image_size=32, train_size=50_000, test_size=10_000, num_classes=10,
        system_copy=None,
        recipe_preset="cifar10_paper",
        deviation=None,
    ),
    "cifar100": Dataset(
        urls=("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
        archive="cifar-100-python.tar.gz", folder="cifar-100-python",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        checksums={
            "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
        digest="md5", checksum_kind="md5",
        parse=partial(parse_cifar_pickle, label_key="fine_labels", names_key="fine_label_names"),
        channels=3, image_size=32, train_size=50_000, test_size=10_000, num_classes=100,
        system_copy=None,
        recipe_preset="cifar100_paper",
        deviation=None,
    ),
}


__all__ = ["DATASETS", "Dataset", "SystemCopy"]
