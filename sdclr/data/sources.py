"""Get the official dataset files, verify them, and turn them into ``.npz`` arrays.

What a dataset's files are, their digests and how they are parsed is its row of
:data:`sdclr.data.datasets.DATASETS`; this module is the mechanics every row shares.
Sources are tried in a fixed order, so the same command works on a laptop with no
internet, on a machine with Debian's ``dataset-fashion-mnist`` and on a cloud GPU box:

1. ``data.source_dir`` from params.yaml (a directory holding the official files); when it
   is set it is the only source: a folder that lacks a file is an error naming the file,
   never a silent fall-back to another copy;
2. the system copy an OS package installs, for a row that names one (Fashion-MNIST:
   Debian's ``dataset-fashion-mnist``);
3. the official download through torchvision's downloader (when ``data.download``).

Every file is checked against the row's checksum *before* it is parsed (Fashion-MNIST:
the sha256 of the decompressed idx bytes, since Debian recompresses the ``.gz`` files;
CIFAR: the md5 table torchvision and the dataset's authors publish), then parsed by the
row's parser (:mod:`sdclr.data.formats`).

The output directory is written atomically: it appears complete or not at all.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import socket
import tarfile
import tempfile
from pathlib import Path

from sdclr.data.datasets import DATASETS, Dataset
from sdclr.errors import DataError
from sdclr.storage.io import atomic_dir, save_npz, sha256_array, write_json

DOWNLOAD_TIMEOUT_S = 20

# --------------------------------------------------------------------------- verification

def _digest(data: bytes, info: Dataset) -> str:
    """``data``'s digest by the row's algorithm (``info.digest``, a hashlib name)."""
    return hashlib.new(info.digest, data).hexdigest()


def _verified(data: bytes, name: str, dataset: str, checksums: dict, where: str) -> bytes:
    """Return ``data`` if its digest matches the table, else raise one clear sentence."""
    expected = checksums.get(name)
    got = _digest(data, DATASETS[dataset])
    if expected is None:
        raise DataError(f"{where}: no checksum is known for {name!r}, so it is not read; "
                        f"use the official {dataset} files.")
    if got != expected:
        raise DataError(f"{where} is corrupt or not the official file (checksum {got[:12]}… expected "
                        f"{expected[:12]}…); delete it and put the official {name} there, or set "
                        "data.source_dir to a directory holding good copies.")
    return data


# --------------------------------------------------------------------------- locating files

class _FileSet:
    """Reads named official files from a directory (plain or .gz) or from the row's archive
    (a CIFAR tarball); every file it hands out (``read``) is verified first."""

    def __init__(self, dataset: str, root: Path, checksums: dict, kind: str):
        self.dataset, self.root, self.checksums, self.kind = dataset, root, checksums, kind
        self.label = str(root)  # what meta.json records as the source path
        self.info = info = DATASETS[dataset]
        self._tar_members: dict[str, bytes] | None = None
        self.files: dict[str, str] = {}
        if info.archive and (root / info.archive).is_file() and not self._has_plain_files(info):
            raw = (root / info.archive).read_bytes()
            _verified(raw, info.archive, dataset, checksums, str(root / info.archive))
            self.files[info.archive] = _digest(raw, info)
            self._tar_members = self._read_tar(raw, root / info.archive)

    def _has_plain_files(self, info: Dataset) -> bool:
        return self._plain_path(info.train_files[0]) is not None

    def _plain_path(self, name: str) -> Path | None:
        info = self.info
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
        """The official files (train, test and the class-name file, if any) this source lacks."""
        info = self.info
        names = info.train_files + info.test_files + ((info.meta_file,) if info.meta_file else ())
        if self._tar_members is not None:
            return [n for n in names if n not in self._tar_members]
        return [n for n in names if self._plain_path(n) is None]

    def available(self) -> bool:
        return not self.missing()

    def read(self, name: str) -> bytes:
        if self._tar_members is not None:
            if name not in self._tar_members:
                raise DataError(f"{self.root / self.info.archive} lacks {name}; "
                                "replace it with the official archive.")
            data, where = self._tar_members[name], f"{name} in {self.root / self.info.archive}"
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
                    raise DataError(f"{path} is not a readable gzip file ({e}); replace it with the official "
                                    "file.") from None
        _verified(data, name, self.dataset, self.checksums, where)
        self.files[name] = _digest(data, self.info)
        return data

    def where(self, name: str) -> str:
        if self._tar_members is not None:
            return f"{name} in {self.root / self.info.archive}"
        return str(self._plain_path(name) or self.root / name)


def _download(dataset: str, dest: Path, urls: tuple[str, ...]) -> None:
    """Fetch the official files into ``dest`` with torchvision's downloader (verified later)."""
    from torchvision.datasets.utils import download_url

    info = DATASETS[dataset]
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
    info = DATASETS[dataset]
    wanted = info.archive or ", ".join(f"{n}.gz" for n in info.train_files + info.test_files)
    hint = f" or install Debian's package (apt-get install {info.system_copy.package})" if info.system_copy else ""
    return (f"no copy of {dataset} could be found or fetched (tried: {'; '.join(tried)}); "
            f"set data.source_dir in params.yaml to a directory holding {wanted}{hint}.")


def _incomplete_source_message(dataset: str, source_dir: str, files: _FileSet) -> str:
    info, missing = DATASETS[dataset], files.missing()
    if files._tar_members is not None:
        where = f"{', '.join(missing)} inside {info.archive}"
    elif info.archive:
        where = f"{info.archive} or its extracted folder {info.folder}/ with {', '.join(missing)}"
    else:
        where = ", ".join(f"{n}.gz (or {n})" for n in missing)
    fallback = "the system copy or the download" if info.system_copy else "the download"
    return (f"data.source_dir = {source_dir} lacks {where}; put the official {dataset} files there, "
            f"or set data.source_dir to null to use {fallback}.")


def _local_sources(info, source_dir: str | None, system_dir: str | Path | None) -> list[tuple[str, Path]]:
    """Where to look before any download, in order: ``data.source_dir``, then the row's system copy."""
    candidates: list[tuple[str, Path]] = []
    if source_dir:
        src = Path(source_dir).expanduser()
        if not src.is_dir():
            raise DataError(f"data.source_dir = {source_dir} is not a directory; point it at the folder "
                            "holding the official files, or set it to null.")
        candidates.append(("source_dir", src))
    if info.system_copy is not None:
        candidates.append(("system", Path(system_dir or info.system_copy.path)))
    return candidates


def _verified_files(name: str, candidates: list[tuple[str, Path]], source_dir: str | None, checksums: dict,
                    allow_download: bool, tmp: Path, urls: tuple[str, ...]) -> "_FileSet":
    """The first source whose files are all there and verified, else the download into ``tmp``, else
    one sentence naming everything tried."""
    tried = []
    for kind, root in candidates:
        fs = _FileSet(name, root, checksums, kind) if root.is_dir() else None
        if fs is not None and fs.available():
            return fs
        if kind == "source_dir":  # an explicit source that lacks files is a mistake, not a reason to look elsewhere
            raise DataError(_incomplete_source_message(name, source_dir, fs))
        tried.append(f"{kind} {root}")
    if not allow_download:
        raise DataError(_no_source_message(name, [*tried, "download (off: data.download is false)"]))
    try:
        _download(name, tmp, urls)
        files = _FileSet(name, tmp, checksums, "download")  # verifies an archive as it opens it
    except DataError as e:
        raise DataError(_no_source_message(name, [*tried, str(e)])) from None
    files.label = urls[0]
    return files


def fetch_dataset(name: str, out_dir: str | Path, source_dir: str | None = None, allow_download: bool = True,
                  system_dir: str | Path | None = None, checksums: dict | None = None,
                  urls: tuple[str, ...] | None = None) -> dict:
    """Write ``out_dir/{train,test}.npz`` and ``meta.json`` for dataset ``name``; return the meta.

    ``checksums`` and ``urls`` replace the row's tables (tests use them with small files
    they write in the official format); ``system_dir`` replaces the row's system copy
    (a row without one has no system source).
    Raises :class:`DataError` with one sentence when no verified copy can be had; on any
    failure ``out_dir`` is left exactly as it was.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; accepted: {', '.join(DATASETS)}.")
    info = DATASETS[name]
    checksums = dict(info.checksums if checksums is None else checksums)
    with tempfile.TemporaryDirectory(prefix=f"sdclr-{name}-") as tmp:
        files = _verified_files(name, _local_sources(info, source_dir, system_dir), source_dir, checksums,
                                allow_download, Path(tmp), urls or info.urls)
        train, test, classes = info.parse(files, info)
        meta = {
            "dataset": name,
            "class_names": classes,
            "source": {"kind": files.kind, "path": files.label},
            "checksums": dict(sorted(files.files.items())),
            "checksum_kind": info.checksum_kind,
            "arrays_sha256": {f"{part}_{k}": sha256_array(v) for part, d in (("train", train), ("test", test))
                              for k, v in sorted(d.items())},
            "train_count": int(len(train["labels"])),
            "test_count": int(len(test["labels"])),
            "image_shape": list(train["images"].shape[1:]),
        }
        with atomic_dir(Path(out_dir)) as staging:
            save_npz(staging / "train.npz", **train)
            save_npz(staging / "test.npz", **test)
            write_json(staging / "meta.json", meta)
    return meta


__all__ = ["fetch_dataset"]
