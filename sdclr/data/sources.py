"""Get the official dataset files, verify them, and turn them into ``.npz`` arrays.

Sources are tried in a fixed order, so the same command works on a laptop with no
internet, on a machine with Debian's ``dataset-fashion-mnist`` and on a cloud GPU box:

1. ``data.source_dir`` from params.yaml (a directory holding the official files); when it
   is set it is the only source: a folder that lacks a file is an error naming the file,
   never a silent fall-back to another copy;
2. the system copy from Debian's ``dataset-fashion-mnist`` (Fashion-MNIST only);
3. the official download through torchvision's downloader (when ``data.download``).

Every file is checked against a checksum *before* it is parsed: Fashion-MNIST by the
sha256 of the decompressed idx bytes (Debian recompresses the ``.gz`` files, so the
compressed digests differ from upstream while the content is identical), CIFAR by the
md5 table torchvision and the dataset's authors publish. CIFAR ships as Python pickles;
even a verified pickle is read with an unpickler that only accepts the numpy classes
an array needs, so a swapped file can never run code.

The output directory is written atomically: it appears complete or not at all.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import socket
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdclr.errors import DataError
from sdclr.io import atomic_dir, save_npz, sha256_array, write_json

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_TIMEOUT_S = 20

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

#: sha256 of the *decompressed* official idx files, and their exact sizes.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte": ("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", 47040016),
    "train-labels-idx1-ubyte": ("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", 60008),
    "t10k-images-idx3-ubyte": ("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", 7840016),
    "t10k-labels-idx1-ubyte": ("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", 10008),
}

#: md5 of the official CIFAR files (archive and members), as published with the data.
CIFAR10_MD5 = {
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
CIFAR100_MD5 = {
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}


@dataclass(frozen=True)
class DatasetInfo:
    archive: str | None        # CIFAR: the official tarball; Fashion-MNIST: None (four .gz files)
    folder: str | None         # the folder the archive unpacks to
    urls: tuple[str, ...]      # official download locations, tried in order
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str | None
    checksums: dict


DATASET_INFO = {
    "fashion_mnist": DatasetInfo(
        None, None,
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        None, {k: v[0] for k, v in FASHION_MNIST_FILES.items()}),
    "cifar10": DatasetInfo(
        "cifar-10-python.tar.gz", "cifar-10-batches-py",
        ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
        tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta", CIFAR10_MD5),
    "cifar100": DatasetInfo(
        "cifar-100-python.tar.gz", "cifar-100-python",
        ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
        ("train",), ("test",), "meta", CIFAR100_MD5),
}


# --------------------------------------------------------------------------- verification

def _digest(data: bytes, name: str, dataset: str) -> str:
    return hashlib.sha256(data).hexdigest() if dataset == "fashion_mnist" else hashlib.md5(data).hexdigest()


def _verified(data: bytes, name: str, dataset: str, checksums: dict, where: str) -> bytes:
    """Return ``data`` if its digest matches the table, else raise one clear sentence."""
    expected = checksums.get(name)
    got = _digest(data, name, dataset)
    if expected is None:
        raise DataError(f"{where}: no checksum is known for {name!r}, so it is not read; "
                        f"use the official {dataset} files.")
    if got != expected:
        raise DataError(f"{where} is corrupt or not the official file (checksum {got[:12]}… expected "
                        f"{expected[:12]}…); delete it and put the official {name} there, or set "
                        "data.source_dir to a directory holding good copies.")
    return data


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and nothing else (no code execution)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        # How Python 3 writes bytes in pickle protocol 2 (the official files, from
        # Python 2, need only the entries above): a string codec, it cannot run code.
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise DataError(f"refusing to unpickle {module}.{name}: a CIFAR file may only hold arrays, "
                        "lists and strings; replace it with the official file.")


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    except Exception as e:  # truncated or garbled pickle
        raise DataError(f"{where} cannot be read as a CIFAR pickle ({type(e).__name__}); "
                        "replace it with the official file.") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where} does not hold a CIFAR batch dictionary; replace it with the official file.")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


# --------------------------------------------------------------------------- parsing

def _parse_idx(data: bytes, expected_ndim: int, where: str) -> np.ndarray:
    """Parse an idx file (big-endian header: magic 0x0000 08 <ndim>, then the dims)."""
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] != expected_ndim:
        raise DataError(f"{where} is not an unsigned-byte idx file with {expected_ndim} dimension(s); "
                        "replace it with the official file.")
    dims = np.frombuffer(data, dtype=">u4", count=expected_ndim, offset=4).astype(np.int64)
    offset = 4 + 4 * expected_ndim
    if len(data) - offset != int(np.prod(dims)):
        raise DataError(f"{where} is truncated ({len(data) - offset} bytes of data for shape {tuple(dims)}); "
                        "replace it with the official file.")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(tuple(dims))


def _cifar_arrays(batches: list[dict], label_key: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    except KeyError as e:
        raise DataError(f"{where} lacks the {e.args[0]!r} entry of a CIFAR batch; replace it with the official file.")
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataError(f"{where} holds arrays of unexpected shape {data.shape}; replace it with the official file.")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


# --------------------------------------------------------------------------- locating files

class _FileSet:
    """Reads named official files from a directory (plain or .gz) or from a CIFAR tarball."""

    def __init__(self, dataset: str, root: Path, checksums: dict, kind: str):
        self.dataset, self.root, self.checksums, self.kind = dataset, root, checksums, kind
        self.label = str(root)  # what meta.json records as the source path
        info = DATASET_INFO[dataset]
        self._tar_members: dict[str, bytes] | None = None
        self.files: dict[str, str] = {}
        if info.archive and (root / info.archive).is_file() and not self._has_plain_files(info):
            raw = (root / info.archive).read_bytes()
            _verified(raw, info.archive, dataset, checksums, str(root / info.archive))
            self.files[info.archive] = _digest(raw, info.archive, dataset)
            self._tar_members = self._read_tar(raw, root / info.archive)

    def _has_plain_files(self, info: DatasetInfo) -> bool:
        return self._plain_path(info.train_files[0]) is not None

    def _plain_path(self, name: str) -> Path | None:
        info = DATASET_INFO[self.dataset]
        for folder in (self.root, self.root / info.folder if info.folder else None):
            if folder is None:
                continue
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
        return None

    @staticmethod
    def _read_tar(raw: bytes, where: Path) -> dict[str, bytes]:
        try:
            with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
                return {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{where} cannot be unpacked ({e}); replace it with the official archive.") from None

    def missing(self) -> list[str]:
        """The official files (train, test and, for CIFAR, the class-name file) this source lacks."""
        info = DATASET_INFO[self.dataset]
        names = info.train_files + info.test_files + ((info.meta_file,) if info.meta_file else ())
        if self._tar_members is not None:
            return [n for n in names if n not in self._tar_members]
        return [n for n in names if self._plain_path(n) is None]

    def available(self) -> bool:
        return not self.missing()

    def read(self, name: str) -> bytes:
        if self._tar_members is not None:
            if name not in self._tar_members:
                raise DataError(f"{self.root / DATASET_INFO[self.dataset].archive} lacks {name}; "
                                "replace it with the official archive.")
            data, where = self._tar_members[name], f"{name} in {self.root / DATASET_INFO[self.dataset].archive}"
        else:
            path = self._plain_path(name)
            if path is None:
                raise DataError(f"{self.root} lacks {name}; put the official file there.")
            where = str(path)
            data = path.read_bytes()
            if path.suffix == ".gz":
                try:
                    data = gzip.decompress(data)
                except (OSError, EOFError) as e:
                    raise DataError(f"{path} is not a readable gzip file ({e}); replace it with the official file.") from None
        _verified(data, name, self.dataset, self.checksums, where)
        self.files[name] = _digest(data, name, self.dataset)
        return data

    def where(self, name: str) -> str:
        if self._tar_members is not None:
            return f"{name} in {self.root / DATASET_INFO[self.dataset].archive}"
        return str(self._plain_path(name) or self.root / name)


def _download(dataset: str, dest: Path, urls: tuple[str, ...]) -> None:
    """Fetch the official files into ``dest`` with torchvision's downloader (verified later)."""
    from torchvision.datasets.utils import download_url

    info = DATASET_INFO[dataset]
    names = [info.archive] if info.archive else [f"{n}.gz" for n in info.train_files + info.test_files]
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    errors = []
    try:
        for url in urls:
            try:
                for name in names:
                    full = url if url.endswith(name) else url.rstrip("/") + "/" + name
                    download_url(full, str(dest), filename=name)
                return
            except Exception as e:  # every network failure mode (DNS, refused, HTTP, timeout)
                errors.append(f"{url}: {type(e).__name__}: {e}")
    finally:
        socket.setdefaulttimeout(old_timeout)
    raise DataError(f"download of {dataset} failed ({'; '.join(errors)[:300]})")


# --------------------------------------------------------------------------- entry point

def _no_source_message(dataset: str, tried: list[str]) -> str:
    info = DATASET_INFO[dataset]
    wanted = info.archive or ", ".join(f"{n}.gz" for n in info.train_files + info.test_files)
    hint = " or install Debian's package (apt-get install dataset-fashion-mnist)" if dataset == "fashion_mnist" else ""
    return (f"no copy of {dataset} could be found or fetched (tried: {'; '.join(tried)}); "
            f"set data.source_dir in params.yaml to a directory holding {wanted}{hint}.")


def _incomplete_source_message(dataset: str, source_dir: str, files: _FileSet) -> str:
    info, missing = DATASET_INFO[dataset], files.missing()
    if files._tar_members is not None:
        where = f"{', '.join(missing)} inside {info.archive}"
    elif info.archive:
        where = f"{info.archive} or its extracted folder {info.folder}/ with {', '.join(missing)}"
    else:
        where = ", ".join(f"{n}.gz (or {n})" for n in missing)
    fallback = "the system copy or the download" if dataset == "fashion_mnist" else "the download"
    return (f"data.source_dir = {source_dir} lacks {where}; put the official {dataset} files there, "
            f"or set data.source_dir to null to use {fallback}.")


def _parse(dataset: str, files: _FileSet) -> tuple[dict, dict, list[str]]:
    info = DATASET_INFO[dataset]
    if dataset == "fashion_mnist":
        out = {}
        for part, (img_name, lbl_name) in (("train", info.train_files), ("test", info.test_files)):
            images = _parse_idx(files.read(img_name), 3, files.where(img_name))
            labels = _parse_idx(files.read(lbl_name), 1, files.where(lbl_name)).astype(np.int64)
            out[part] = {"images": images[..., None].copy(), "labels": labels}
        return out["train"], out["test"], list(FASHION_MNIST_CLASSES)
    label_key = "labels" if dataset == "cifar10" else "fine_labels"
    names_key = "label_names" if dataset == "cifar10" else "fine_label_names"
    parts = {}
    for part, names in (("train", info.train_files), ("test", info.test_files)):
        batches = [_unpickle(files.read(n), files.where(n)) for n in names]
        images, labels = _cifar_arrays(batches, label_key, files.where(names[0]))
        parts[part] = {"images": images, "labels": labels}
    meta = _unpickle(files.read(info.meta_file), files.where(info.meta_file))
    if names_key not in meta:
        raise DataError(f"{files.where(info.meta_file)} lacks {names_key!r}; replace it with the official file.")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    return parts["train"], parts["test"], classes


def fetch_dataset(name: str, out_dir: str | Path, source_dir: str | None = None, allow_download: bool = True,
                  system_dir: str | Path = SYSTEM_FASHION_MNIST, checksums: dict | None = None,
                  urls: tuple[str, ...] | None = None) -> dict:
    """Write ``out_dir/{train,test}.npz`` and ``meta.json`` for dataset ``name``; return the meta.

    ``checksums`` and ``urls`` replace the official tables (tests use them with small
    files they write in the official format); ``system_dir`` is the Debian copy.
    Raises :class:`DataError` with one sentence when no verified copy can be had; on any
    failure ``out_dir`` is left exactly as it was.
    """
    if name not in DATASET_INFO:
        raise DataError(f"unknown dataset {name!r}; accepted: {', '.join(DATASET_INFO)}.")
    info = DATASET_INFO[name]
    checksums = dict(info.checksums if checksums is None else checksums)
    out_dir = Path(out_dir)

    candidates: list[tuple[str, Path]] = []
    if source_dir:
        src = Path(source_dir).expanduser()
        if not src.is_dir():
            raise DataError(f"data.source_dir = {source_dir} is not a directory; point it at the folder "
                            "holding the official files, or set it to null.")
        candidates.append(("source_dir", src))
    if name == "fashion_mnist":
        candidates.append(("system", Path(system_dir)))

    tried = []
    with tempfile.TemporaryDirectory(prefix=f"sdclr-{name}-") as tmp:
        files = None
        for kind, root in candidates:
            fs = _FileSet(name, root, checksums, kind) if root.is_dir() else None
            if fs is not None and fs.available():
                files = fs
                break
            if kind == "source_dir":  # an explicit source that lacks files is a mistake, not a reason to look elsewhere
                raise DataError(_incomplete_source_message(name, source_dir, fs))
            tried.append(f"{kind} {root}")
        if files is None and allow_download:
            try:
                _download(name, Path(tmp), urls or info.urls)
                files = _FileSet(name, Path(tmp), checksums, "download")
                files.label = (urls or info.urls)[0]
            except DataError as e:
                tried.append(str(e))
        elif files is None:
            tried.append("download (off: data.download is false)")
        if files is None:
            raise DataError(_no_source_message(name, tried))

        train, test, classes = _parse(name, files)
        meta = {
            "dataset": name,
            "class_names": classes,
            "source": {"kind": files.kind, "path": files.label},
            "checksums": dict(sorted(files.files.items())),
            "checksum_kind": "sha256 of decompressed file" if name == "fashion_mnist" else "md5",
            "arrays_sha256": {f"{part}_{k}": sha256_array(v) for part, d in (("train", train), ("test", test))
                              for k, v in sorted(d.items())},
            "train_count": int(len(train["labels"])),
            "test_count": int(len(test["labels"])),
            "image_shape": list(train["images"].shape[1:]),
        }
        with atomic_dir(out_dir) as staging:
            save_npz(staging / "train.npz", **train)
            save_npz(staging / "test.npz", **test)
            write_json(staging / "meta.json", meta)
    return meta


__all__ = ["DATASET_INFO", "fetch_dataset", "SYSTEM_FASHION_MNIST"]
