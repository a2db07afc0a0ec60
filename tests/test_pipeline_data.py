"""`dvc repro` of the data stages (download → subsample) in a real temporary DVC project."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdclr.storage.io import load_npz
from tests.conftest import FASHION_SYSTEM_DIR
from tests.dvc_project import dvc, make_project, update_params

pytestmark = pytest.mark.skipif(not FASHION_SYSTEM_DIR.exists(), reason="needs Debian's dataset-fashion-mnist")


def test_data_stages_through_dvc_repro(tmp_path):
    proj = make_project(tmp_path / "proj", {"subsample": {"splits": [0, 1]}})
    dvc(proj, "repro", "subsample")

    raw = proj / "data/raw/fashion_mnist"
    train = load_npz(raw / "train.npz")
    assert train["images"].shape == (60000, 28, 28, 1) and train["images"].dtype == np.uint8
    meta = json.loads((raw / "meta.json").read_text())
    assert meta["source"]["kind"] == "system"

    out = proj / "data/splits/fashion_mnist"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["val_total"] == 6000 and summary["pool_total"] == 54000
    assert [s["longtail_total"] for s in summary["splits"]] == [13399, 13399]
    for k in (0, 1):
        split = load_npz(out / f"split{k}.npz")
        assert set(split) == {"longtail", "balanced", "fewshot", "class_order"}

    # Nothing to do on a second run; a changed split list re-runs only `subsample`.
    assert "didn't change" in dvc(proj, "repro", "subsample").stdout or "up to date" in dvc(proj, "status").stdout
    status = dvc(proj, "repro", "--dry", "subsample", "-s").stdout
    assert "download" not in status


def test_bad_param_fails_the_stage_with_one_sentence(tmp_path):
    proj = make_project(tmp_path / "proj")
    dvc(proj, "repro", "download")
    update_params(proj, {"subsample": {"imbalance_ratio": 0.5}})
    proc = dvc(proj, "repro", "subsample", check=False)
    assert proc.returncode != 0
    said = proc.stderr + proc.stdout
    assert "params.yaml: subsample.imbalance_ratio = 0.5 is out of range; accepted: a number >= 1." in said
    assert "Traceback" not in proc.stderr + proc.stdout
    assert (proj / "data/raw/fashion_mnist/train.npz").exists()  # earlier results are kept


def test_channel_stats_from_histograms_equal_a_float64_pass_over_every_pixel():
    from sdclr.data.device_data import channel_stats

    rng = np.random.default_rng(0)
    for channels in (1, 3):
        images = rng.integers(0, 256, (50, 9, 7, channels), dtype=np.uint8)
        images[..., 0] //= 3  # channels with different statistics
        x = images.reshape(-1, channels).astype(np.float64) / 255.0
        mean, std = channel_stats(images)
        np.testing.assert_allclose(mean, x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(std, x.std(0), rtol=1e-12)
