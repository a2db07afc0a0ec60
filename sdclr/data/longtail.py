"""The SDCLR long-tail recipe, generalised to any labelled dataset.

From the official train set:

1. a balanced validation set is held out (``val_per_class`` per class, the same for
   every split, so model selection never sees a training image);
2. the rest is the *pool*; for every split id k, with its own seeded generator:
   - the long-tail subset D_i: classes are put in a random order and class at rank i
     gets ``n_i = floor(n_max * r^(-i/(C-1)))`` images drawn from its pool;
   - the balanced subset D_b: ``floor(|D_i| / C)`` images per class (same total, up to
     rounding), drawn from the pool;
   - the few-shot labelled subset S_b: ``max(1, floor(fraction * pool_c))`` per class.
3. Classes sorted by their D_i count form Major / Moderate / Minor groups (CIFAR-10:
   4/3/3; in general the first ceil-ish third, see :func:`class_groups`).

All indices point into the official train arrays. Everything is a pure function of
(labels, params, seed, split id): same inputs, bitwise-identical outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdclr.errors import DataError, ParamError
from sdclr.storage.io import atomic_dir, read_npz, save_npz, write_json


def longtail_counts(n_max: int, imbalance_ratio: float, num_classes: int) -> list[int]:
    """``n_i = floor(n_max * r^(-i/(C-1)))`` for rank i = 0..C-1.

    A tiny epsilon guards the floor against float error at exact integers
    (e.g. 4500 * 100^-1 = 45 must not become 44).
    """
    if num_classes == 1:
        return [n_max]
    return [
        int(math.floor(n_max * imbalance_ratio ** (-i / (num_classes - 1)) + 1e-9))
        for i in range(num_classes)
    ]


def class_groups(num_classes: int) -> dict[str, list[int]]:
    """Split ranks 0..C-1 (largest class first) into Major / Moderate / Minor.

    The paper's CIFAR-10 grouping is 4/3/3 and CIFAR-100's 34/33/33: Minor and
    Moderate get floor(C/3) each and Major takes the remainder.
    """
    c = num_classes
    third = c // 3
    n_major = c - 2 * third
    ranks = list(range(c))
    return {
        "major": ranks[:n_major],
        "moderate": ranks[n_major : n_major + third],
        "minor": ranks[n_major + third :],
    }


def groups_of(class_order) -> dict[str, list[int]]:
    """Major/Moderate/Minor as lists of class ids, given the classes in long-tail rank order."""
    return {g: [int(class_order[r]) for r in ranks] for g, ranks in class_groups(len(class_order)).items()}


def class_and_group(labels: np.ndarray, class_order) -> dict[str, np.ndarray]:
    """Each image's class and long-tail group name (major / moderate / minor) under ``class_order``."""
    group_of = {c: g for g, classes in groups_of(class_order).items() for c in classes}
    return {"class": np.asarray(labels), "group": np.array([group_of[int(c)] for c in labels])}


@dataclass(frozen=True)
class Split:
    """One long-tail draw. Index arrays are int64 indices into the official train set."""

    split_id: int
    class_order: np.ndarray  # class_order[i] = class id at rank i (rank 0 = largest)
    longtail: np.ndarray  # D_i
    balanced: np.ndarray  # D_b
    fewshot: np.ndarray  # S_b

    def class_counts(self, labels: np.ndarray, which: str = "longtail") -> np.ndarray:
        return np.bincount(labels[getattr(self, which)], minlength=len(self.class_order))

    def groups(self) -> dict[str, list[int]]:
        """Major/Moderate/Minor as lists of *class ids*."""
        return groups_of(self.class_order)


def hold_out_validation(labels: np.ndarray, val_per_class: int, seed: int,
                        pool_per_class: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Balanced validation hold-out → (pool indices, validation indices), both sorted; the pool is every
    other image, or a random ``pool_per_class`` of each class (from the same permutation)."""
    rng = np.random.default_rng([seed, 0x5A11])
    num_classes = int(labels.max()) + 1
    pool, val = [], []
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= val_per_class:
            raise ParamError(
                f"subsample.val_per_class = {val_per_class} leaves no training images for class {c} "
                f"(it has {len(idx)}); accepted: an integer below {len(idx)}."
            )
        idx = rng.permutation(idx)
        val.append(idx[:val_per_class])
        pool.append(idx[val_per_class:][:pool_per_class])
    return np.sort(np.concatenate(pool)).astype(np.int64), np.sort(np.concatenate(val)).astype(np.int64)


def draw_split(
    labels: np.ndarray,
    pool: np.ndarray,
    split_id: int,
    imbalance_ratio: float,
    n_max: int | None,
    few_shot_fraction: float,
    seed: int,
) -> Split:
    """Draw D_i, D_b and S_b for one split id from the pool (see the module docstring)."""
    num_classes = int(labels.max()) + 1
    rng = np.random.default_rng([seed, split_id])
    per_class = [pool[labels[pool] == c] for c in range(num_classes)]
    smallest_pool = min(len(p) for p in per_class)
    if n_max is None:
        n_max = smallest_pool
    if n_max > smallest_pool:
        raise ParamError(
            f"subsample.n_max = {n_max} is larger than the smallest class pool ({smallest_pool} images); "
            f"accepted: null or an integer <= {smallest_pool}."
        )
    counts = longtail_counts(n_max, imbalance_ratio, num_classes)
    if counts[-1] < 1:
        raise ParamError(
            f"subsample.n_max = {n_max} with imbalance_ratio = {imbalance_ratio} leaves the rarest class "
            "with no image; accepted: n_max >= imbalance_ratio."
        )
    class_order = rng.permutation(num_classes).astype(np.int64)
    n_balanced = sum(counts) // num_classes

    longtail, balanced, fewshot = [], [], []
    for rank, c in enumerate(class_order):
        # One permutation per class per purpose keeps the draws independent of each other.
        longtail.append(rng.permutation(per_class[c])[: counts[rank]])
    for c in range(num_classes):
        balanced.append(rng.permutation(per_class[c])[:n_balanced])
    for c in range(num_classes):
        k = max(1, int(math.floor(few_shot_fraction * len(per_class[c]) + 1e-9)))
        fewshot.append(rng.permutation(per_class[c])[:k])

    def cat(parts):
        return np.sort(np.concatenate(parts)).astype(np.int64)

    return Split(split_id, class_order, cat(longtail), cat(balanced), cat(fewshot))


def make_splits(labels: np.ndarray, sub, seed: int) -> tuple[np.ndarray, np.ndarray, list[Split]]:
    """Validation hold-out plus one :class:`Split` per id in ``sub.splits`` (SubsampleParams)."""
    pool, val = hold_out_validation(labels, sub.val_per_class, seed, sub.pool_per_class)
    splits = [
        draw_split(labels, pool, k, sub.imbalance_ratio, sub.n_max, sub.few_shot_fraction, seed)
        for k in sub.splits
    ]
    return pool, val, splits


def split_summary(split: Split, labels: np.ndarray, class_names: list[str]) -> dict:
    lt = split.class_counts(labels, "longtail")
    return {
        "split_id": split.split_id,
        "class_order": [int(c) for c in split.class_order],
        "class_order_names": [class_names[c] for c in split.class_order],
        "longtail_counts": [int(x) for x in lt],
        "longtail_counts_by_rank": [int(lt[c]) for c in split.class_order],
        "longtail_total": int(lt.sum()),
        "balanced_counts": [int(x) for x in split.class_counts(labels, "balanced")],
        "balanced_total": int(len(split.balanced)),
        "fewshot_counts": [int(x) for x in split.class_counts(labels, "fewshot")],
        "fewshot_total": int(len(split.fewshot)),
        "groups": split.groups(),
    }


def write_splits(out_dir, labels, pool, val, splits, sub, seed, class_names) -> dict:
    """Write the index files and summary.json into ``out_dir`` atomically (the report draws the
    class counts from summary.json)."""
    summary = {
        "seed": seed,
        "num_classes": len(class_names),
        "class_names": class_names,
        "imbalance_ratio": sub.imbalance_ratio,
        "n_max": sub.n_max,
        "pool_per_class": sub.pool_per_class,
        "val_per_class": sub.val_per_class,
        "few_shot_fraction": sub.few_shot_fraction,
        "pool_total": int(len(pool)),
        "val_total": int(len(val)),
        "splits": [split_summary(s, labels, class_names) for s in splits],
    }
    with atomic_dir(out_dir) as tmp:
        save_npz(tmp / "pool_val.npz", pool=pool, val=val)
        for s in splits:
            save_npz(
                split_file(tmp, s.split_id),
                longtail=s.longtail, balanced=s.balanced, fewshot=s.fewshot, class_order=s.class_order,
            )
        write_json(tmp / "summary.json", summary)
    return summary


SPLIT_ARRAYS = ("longtail", "balanced", "fewshot", "class_order")


def split_file(splits_dir, split_id: int) -> Path:
    """Where :func:`write_splits` puts split ``split_id``'s index arrays."""
    return Path(splits_dir) / f"split{split_id}.npz"


def load_split(splits_dir, split_id: int, listed_splits=None, num_train: int | None = None) -> dict[str, np.ndarray]:
    """Index arrays of one split plus the shared pool and validation indices, checked.

    ``listed_splits`` (``subsample.splits``) decides the advice when the split's file is
    missing: a listed split needs ``dvc repro subsample``, another one must be added to the
    list first. With ``num_train`` every index must point into the train set of that size.
    Any problem is one :class:`DataError` sentence naming the file and the fix.
    """
    splits_dir = Path(splits_dir)
    fix = f"restore it with `dvc checkout {splits_dir}` or re-create it with `dvc repro subsample`"
    if not splits_dir.is_dir():
        raise DataError(f"the splits folder {splits_dir} does not exist; create it with `dvc repro subsample`.")
    path = split_file(splits_dir, split_id)
    if not path.exists():
        if listed_splits is not None and split_id not in listed_splits:
            raise DataError(f"{path} does not exist because split {split_id} is not in subsample.splits "
                            f"({list(listed_splits)}); add {split_id} to subsample.splits in params.yaml and run "
                            "`dvc repro subsample`.")
        if listed_splits is None:
            raise DataError(f"{path} is missing; run `dvc repro subsample` (after adding {split_id} to "
                            "subsample.splits in params.yaml if it is not listed there).")
        raise DataError(f"{path} is missing although split {split_id} is in subsample.splits; "
                        f"run `dvc repro subsample` (or `dvc checkout {splits_dir}` to restore it).")
    arrays = {**read_npz(splits_dir / "pool_val.npz", ("pool", "val"), fix), **read_npz(path, SPLIT_ARRAYS, fix)}
    for name, a in arrays.items():
        where = splits_dir / "pool_val.npz" if name in ("pool", "val") else path
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise DataError(f"{where}: {name} is not a list of indices ({a.dtype}, shape {a.shape}); {fix}.")
        bound = len(arrays["class_order"]) if name == "class_order" else num_train
        if bound is not None and len(a) and (a.min() < 0 or a.max() >= bound):
            what = "classes" if name == "class_order" else "train images"
            raise DataError(f"{where}: {name} holds indices outside the {bound} {what} (the splits were made "
                            f"from other data); re-create them with `dvc repro subsample`.")
    return arrays
