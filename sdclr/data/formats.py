"""The official file formats, bytes to arrays: idx (MNIST-style) and the CIFAR Python pickles.

A parser is what a row of :data:`sdclr.data.datasets.DATASETS` names in its ``parse`` field:
``parse(files, row) -> (train, test, class_names)``, where ``train`` and ``test`` are
``{"images": uint8 (N, H, W, C), "labels": int64 (N,)}``. ``files`` hands out the verified
bytes of one official file by name (``read``) and says where it came from (``where``, for
error sentences); the row gives the file names, the image size and the channels. So a new
dataset in one of these formats needs only its row, and a new format only one function here.

Every problem is one :class:`DataError` sentence naming the file: the checksums are verified
before a parser sees the bytes, so these errors only meet files whose digest was supplied by
hand (tests, a custom table). CIFAR's pickles are read with an unpickler that only rebuilds
numpy arrays, so even a swapped file whose digest someone added can never run code.
"""

from __future__ import annotations

import io
import pickle
from typing import Protocol

import numpy as np

from sdclr.errors import DataError


class Files(Protocol):
    """The verified official files of one source (``sdclr.data.sources`` provides them)."""

    def read(self, name: str) -> bytes: ...

    def where(self, name: str) -> str: ...


# --------------------------------------------------------------------------- idx

def _idx_array(data: bytes, expected_ndim: int, where: str) -> np.ndarray:
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


def parse_idx(files: Files, row, *, class_names: tuple[str, ...]) -> tuple[dict, dict, list[str]]:
    """Grayscale images and labels from idx files: the row's train and test files are each
    (images, labels). The class names are not in the files, so the row passes them."""
    out = {}
    for part, (img_name, lbl_name) in (("train", row.train_files), ("test", row.test_files)):
        images = _idx_array(files.read(img_name), 3, files.where(img_name))
        labels = _idx_array(files.read(lbl_name), 1, files.where(lbl_name)).astype(np.int64)
        out[part] = {"images": images[..., None].copy(), "labels": labels}
    return out["train"], out["test"], list(class_names)


# --------------------------------------------------------------------------- CIFAR pickles

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


def _cifar_arrays(batches: list[dict], label_key: str, where: str, channels: int,
                  size: int) -> tuple[np.ndarray, np.ndarray]:
    """One part's batches joined: images as (N, H, W, C) from CIFAR's channel-planar rows."""
    try:
        data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    except KeyError as e:
        raise DataError(f"{where} lacks the {e.args[0]!r} entry of a CIFAR batch; replace it with the official "
                        "file.") from None
    if data.ndim != 2 or data.shape[1] != channels * size * size or len(data) != len(labels):
        raise DataError(f"{where} holds arrays of unexpected shape {data.shape}; replace it with the official file.")
    return data.reshape(-1, channels, size, size).transpose(0, 2, 3, 1).copy(), labels


def parse_cifar_pickle(files: Files, row, *, label_key: str, names_key: str) -> tuple[dict, dict, list[str]]:
    """Images and labels from CIFAR-style pickled batches, the class names from the row's meta
    file. CIFAR-10 and CIFAR-100 differ only in the keys: ``label_key`` in each batch
    (CIFAR-100's fine labels), ``names_key`` in the meta file."""
    parts = {}
    for part, names in (("train", row.train_files), ("test", row.test_files)):
        batches = [_unpickle(files.read(n), files.where(n)) for n in names]
        images, labels = _cifar_arrays(batches, label_key, files.where(names[0]), row.channels, row.image_size)
        parts[part] = {"images": images, "labels": labels}
    meta = _unpickle(files.read(row.meta_file), files.where(row.meta_file))
    if names_key not in meta:
        raise DataError(f"{files.where(row.meta_file)} lacks {names_key!r}; replace it with the official file.")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[names_key]]
    return parts["train"], parts["test"], classes


__all__ = ["Files", "parse_cifar_pickle", "parse_idx"]
