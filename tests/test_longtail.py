"""The SDCLR long-tail recipe: exact counts, disjointness, determinism, groups."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest

from sdclr.data.longtail import (
    class_groups,
    draw_split,
    hold_out_validation,
    longtail_counts,
    make_splits,
    write_splits,
)
from sdclr.errors import ConfigError
from tests.conftest import balanced_labels


def sub_params(**kw):
    base = dict(val_per_class=500, imbalance_ratio=100.0, n_max=None, pool_per_class=None, splits=[0, 1],
                few_shot_fraction=0.01)
    base.update(kw)
    return SimpleNamespace(**base)


def test_cifar10_counts_match_the_paper():
    assert longtail_counts(4500, 100, 10) == [4500, 2697, 1617, 969, 581, 348, 208, 125, 75, 45]
    assert sum(longtail_counts(4500, 100, 10)) == 11165


def test_cifar100_total_matches_the_paper():
    assert sum(longtail_counts(450, 100, 100)) == 9754


def test_cifar10_layout_end_to_end():
    labels = balanced_labels(10, 5000)
    pool, val, (split, _) = make_splits(labels, sub_params(), seed=0)
    assert len(val) == 5000 and len(pool) == 45000
    assert np.all(np.bincount(labels[val]) == 500)
    by_rank = np.bincount(labels[split.longtail], minlength=10)[split.class_order]
    assert by_rank.tolist() == [4500, 2697, 1617, 969, 581, 348, 208, 125, 75, 45]
    assert np.all(np.bincount(labels[split.balanced]) == 1116)  # 11165 // 10
    assert np.all(np.bincount(labels[split.fewshot]) == 45)  # 1% of 4500


def test_cifar100_layout_fewshot_is_four_per_class():
    labels = balanced_labels(100, 500)
    pool, val, (split,) = make_splits(labels, sub_params(val_per_class=50, splits=[0]), seed=0)
    assert len(split.longtail) == 9754
    assert np.all(np.bincount(labels[split.fewshot]) == 4)  # floor(0.01 * 450)
    groups = split.groups()
    assert [len(groups[g]) for g in ("major", "moderate", "minor")] == [34, 33, 33]


def test_validation_is_disjoint_from_every_training_subset_and_subsets_are_in_the_pool():
    labels = balanced_labels(10, 600)
    pool, val, splits = make_splits(labels, sub_params(val_per_class=60, splits=[0, 1, 2]), seed=3)
    assert not set(pool) & set(val)
    assert len(set(pool) | set(val)) == len(labels)
    for s in splits:
        for subset in (s.longtail, s.balanced, s.fewshot):
            assert not set(subset) & set(val)
            assert set(subset) <= set(pool)
            assert len(np.unique(subset)) == len(subset)


def test_another_split_is_another_draw_and_validation_is_shared():
    labels = balanced_labels(10, 600)
    _, _, (a, b) = make_splits(labels, sub_params(val_per_class=60), seed=0)
    assert not np.array_equal(a.longtail, b.longtail)
    assert not np.array_equal(a.fewshot, b.fewshot)


def test_groups_follow_long_tail_rank():
    assert class_groups(10) == {"major": [0, 1, 2, 3], "moderate": [4, 5, 6], "minor": [7, 8, 9]}
    labels = balanced_labels(10, 600)
    pool, _ = hold_out_validation(labels, 60, seed=0)
    split = draw_split(labels, pool, 0, 100.0, None, 0.01, seed=0)
    counts = np.bincount(labels[split.longtail], minlength=10)
    g = split.groups()
    assert min(counts[g["major"]]) > max(counts[g["moderate"]]) > 0
    assert min(counts[g["moderate"]]) > max(counts[g["minor"]])


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.npz"))}


def test_same_seed_gives_byte_identical_files(tmp_path):
    labels = balanced_labels(10, 600)
    names = [f"c{i}" for i in range(10)]
    sub = sub_params(val_per_class=60)
    for out in ("a", "b"):
        pool, val, splits = make_splits(labels, sub, seed=7)
        write_splits(tmp_path / out, labels, pool, val, splits, sub, 7, names)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert (tmp_path / "a" / "summary.json").read_bytes() == (tmp_path / "b" / "summary.json").read_bytes()
    pool, val, splits = make_splits(labels, sub, seed=8)
    write_splits(tmp_path / "c", labels, pool, val, splits, sub, 8, names)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


@pytest.mark.parametrize(
    "kw,words",
    [
        (dict(val_per_class=600), ["subsample.val_per_class", "600", "below 600"]),
        (dict(val_per_class=60, n_max=999), ["subsample.n_max", "999", "<= 540"]),
        (dict(val_per_class=60, n_max=50), ["subsample.n_max", "50", "n_max >= imbalance_ratio"]),
    ],
)
def test_impossible_sizes_are_one_sentence(kw, words):
    labels = balanced_labels(10, 600)
    with pytest.raises(ConfigError) as info:
        make_splits(labels, sub_params(**kw), seed=0)
    for w in words:
        assert w in str(info.value)


def test_a_capped_pool_is_a_per_class_subset_of_the_whole_pool_and_leaves_validation_alone():
    labels = balanced_labels(10, 600)
    whole, val = hold_out_validation(labels, 60, seed=3)
    capped, val_capped = hold_out_validation(labels, 60, seed=3, pool_per_class=100)
    assert np.array_equal(val, val_capped) and set(capped) < set(whole)
    assert np.bincount(labels[capped]).tolist() == [100] * 10
    assert np.array_equal(hold_out_validation(labels, 60, seed=3, pool_per_class=None)[0], whole)
    # the long-tail subsets are drawn from the capped pool (n_max defaults to its per-class size)
    pool, _, splits = make_splits(labels, sub_params(val_per_class=60, pool_per_class=100, imbalance_ratio=10), 3)
    assert set(splits[0].longtail) <= set(pool) and max(np.bincount(labels[splits[0].longtail])) == 100


def test_the_written_splits_and_summary_say_what_the_arrays_hold(tmp_path):
    """What the report and the stages read back: every index array as drawn, and a summary.json
    whose every field is recomputed here from the arrays (counts per class and per rank, totals,
    groups by long-tail rank), not copied from the code that wrote it."""
    import json

    from sdclr.data.longtail import load_split

    labels = balanced_labels(10, 80, seed=3)
    names = [f"class{c}" for c in range(10)]
    sub = sub_params(val_per_class=20, imbalance_ratio=10.0, n_max=50, pool_per_class=60, splits=[0, 2],
                     few_shot_fraction=0.1)
    pool, val, splits = make_splits(labels, sub, seed=5)
    returned = write_splits(tmp_path, labels, pool, val, splits, sub, 5, names)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert returned == summary
    assert {k: summary[k] for k in summary if k != "splits"} == {
        "seed": 5, "num_classes": 10, "class_names": names, "imbalance_ratio": 10.0, "n_max": 50,
        "pool_per_class": 60, "val_per_class": 20, "few_shot_fraction": 0.1, "pool_total": 600, "val_total": 200}
    assert [s["split_id"] for s in summary["splits"]] == [0, 2]
    for split, row in zip(splits, summary["splits"]):
        arrays = load_split(tmp_path, split.split_id, [0, 2], num_train=len(labels))
        for name in ("longtail", "balanced", "fewshot", "class_order"):
            assert np.array_equal(arrays[name], getattr(split, name)), name
        assert np.array_equal(arrays["pool"], pool) and np.array_equal(arrays["val"], val)
        order = arrays["class_order"].tolist()
        counts = {k: np.bincount(labels[arrays[k]], minlength=10).tolist() for k in ("longtail", "balanced", "fewshot")}
        assert counts["longtail"][order[0]] == 50 and counts["longtail"][order[-1]] == 5  # n_max, n_max / r
        assert row == {
            "split_id": split.split_id, "class_order": order, "class_order_names": [names[c] for c in order],
            "longtail_counts": counts["longtail"], "longtail_counts_by_rank": [counts["longtail"][c] for c in order],
            "longtail_total": len(arrays["longtail"]),
            "balanced_counts": counts["balanced"], "balanced_total": len(arrays["balanced"]),
            "fewshot_counts": counts["fewshot"], "fewshot_total": len(arrays["fewshot"]),
            "groups": {"major": order[:4], "moderate": order[4:7], "minor": order[7:]}}


def _written_split(tmp_path):
    labels = balanced_labels(10, 30, seed=1)
    sub = sub_params(val_per_class=5, imbalance_ratio=5.0, n_max=20, splits=[0], few_shot_fraction=0.1)
    pool, val, splits = make_splits(labels, sub, seed=0)
    write_splits(tmp_path, labels, pool, val, splits, sub, 0, [f"c{c}" for c in range(10)])
    return len(labels), pool, val, splits[0]


@pytest.mark.parametrize("file, name, value, words", [
    ("pool_val.npz", "pool", "at_bound", "pool holds indices outside the 300 train images"),
    ("pool_val.npz", "val", "negative", "val holds indices outside the 300 train images"),
    ("split0.npz", "longtail", "at_bound", "longtail holds indices outside the 300 train images"),
    ("split0.npz", "class_order", "at_bound", "class_order holds indices outside the 10 classes"),
    ("split0.npz", "fewshot", "floats", "fewshot is not a list of indices (float64, shape"),
    ("pool_val.npz", "val", "matrix", "val is not a list of indices (int64, shape (2, 3))"),
])
def test_a_split_file_with_bad_indices_is_one_sentence_naming_its_file(tmp_path, file, name, value, words):
    """Each array is checked in the file that holds it, against the right bound (the train set for
    image indices, the number of classes for the class order); an index equal to the bound is out."""
    from sdclr.data.longtail import load_split
    from sdclr.errors import DataError
    from sdclr.storage.io import load_npz, save_npz

    num_train, *_ = _written_split(tmp_path)
    arrays = dict(load_npz(tmp_path / file))
    bound = 10 if name == "class_order" else num_train
    a = arrays[name].copy()
    if value == "at_bound":
        a[-1] = bound
    elif value == "negative":
        a[0] = -1
    arrays[name] = {"floats": a.astype(np.float64), "matrix": np.zeros((2, 3), np.int64)}.get(value, a)
    save_npz(tmp_path / file, **arrays)
    with pytest.raises(DataError) as e:
        load_split(tmp_path, 0, [0], num_train=num_train)
    assert str(e.value).startswith(f"{tmp_path / file}: ") and words in str(e.value), str(e.value)


def test_a_missing_split_file_says_how_to_make_it_whether_or_not_the_list_is_known(tmp_path):
    from sdclr.data.longtail import load_split
    from sdclr.errors import DataError

    _written_split(tmp_path)
    with pytest.raises(DataError) as e:
        load_split(tmp_path, 4)
    assert str(e.value) == (f"{tmp_path / 'split4.npz'} is missing; run `dvc repro subsample` (after adding 4 to "
                            "subsample.splits in params.yaml if it is not listed there).")
