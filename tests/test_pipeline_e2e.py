"""The whole pipeline through real `dvc repro` on a tiny config, with a temporary MLflow store.

Checks every stage's outputs, the report's tables and figures, and the MLflow runs (pretrain and
evaluate per method, per-epoch metrics with steps). Then that a fresh clone of the committed
results, reproduced from scratch by the parallel runner (two stages at once) without the kernel pin
and thread setting of this process, where the first run was a sequential `dvc repro` under a pinned
two-thread parent, gives byte-identical outputs and `dvc.lock`, a clean `dvc status`, and a `git
status` clean but for the machine-dependent reports/cost.json, and fills its own MLflow store with
every row of the report, checked through a real `mlflow server`'s REST API (and a headless-Chromium
screenshot of the runs table in test-artifacts/); and that a queued `-S prune_ratio=...` sweep run
by two workers re-runs only SDCLR's stages and the report (not SimCLR's or sbid's) and lands in one
MLflow store, each run tagged with its experiment; and that `dvc exp run -S 'evaluate.few_shot=[20,
10]'` re-runs the evaluations and the report only.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import time
import warnings

import pytest
import yaml

from sdclr.runtime.numerics import PORTABLE_ENV, THREAD_ENV
from sdclr.runtime.tracking import runs_link
from tests.conftest import FASHION_SYSTEM_DIR
from tests.dvc_project import ROOT, dvc, make_project, project_env
from tests.mlflow_ui import CHROMIUM, check_runs_view, mlflow_server

#: where the test leaves what a person would look at (the MLflow runs-table screenshot)
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not FASHION_SYSTEM_DIR.exists(), reason="needs Debian's dataset-fashion-mnist")]

TINY = {
    "device": "cpu",
    "subsample": {"val_per_class": 100, "n_max": 100, "pool_per_class": 200, "imbalance_ratio": 10, "splits": [0]},
    "model": {"width": 8, "head_hidden": 32, "proj_dim": 16},
    "pretrain": {"epochs": 1, "batch_size": 64, "warmup_epochs": 0},
    "sbid": {"head_hidden": 32, "proj_dim": 16},
    "evaluate": {"probe": {"full_shot_epochs": 2, "few_shot_epochs": 3}, "knn_k": 20},
}
METHODS = ("simclr", "sdclr", "sbid")


def test_tiny_pipeline_end_to_end(tmp_path):
    import mlflow

    from sdclr.pipeline.parallel import run as run_in_parallel

    proj = make_project(tmp_path / "proj", TINY)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = project_env(proj, tracking_uri=store)
    dvc(proj, "repro", env={**env, "OMP_NUM_THREADS": "2"})  # portable numerics: the parent's threads don't count

    for m in METHODS:
        assert (proj / f"models/{m}/split0.pt").stat().st_size > 10_000
        assert (proj / f"reports/pretrain/{m}/split0.csv").read_text().startswith("epoch,loss")
    for m in ("random", *METHODS):
        metrics = json.loads((proj / f"reports/metrics/{m}/split0.json").read_text())
        for kind in ("full_shot", "few_shot", "knn"):
            assert 0.0 <= metrics[kind]["accuracy"] <= 1.0
            assert set(metrics[kind]["groups"]) == {"major", "moderate", "minor"}
            assert len(metrics[kind]["per_class"]) == 10
    report = (proj / "reports/report.md").read_text()
    for needle in ("## Linear probe, full-shot", "| simclr |", "| sdclr |", "| sbid |", "| random |",
                   "## Deviations from the paper's recipe", "figures/group_accuracy.png"):
        assert needle in report
    for fig in ("group_accuracy", "pretrain_loss", "class_counts", "paired_differences"):
        assert (proj / f"reports/figures/{fig}.png").stat().st_size > 5_000
    summary = json.loads((proj / "reports/summary.json").read_text())
    assert {"random", "simclr", "sdclr", "sbid"} <= set(summary)

    mlflow.set_tracking_uri(store)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    by_name = {r.info.run_name: r for r in runs}
    for m in METHODS:
        run = by_name[f"pretrain-{m}-split0"]
        assert run.info.status == "FINISHED"
        assert run.data.tags["method"] == m and run.data.tags["dataset"] == "fashion_mnist"
        assert run.data.params["method"] == m
        assert run.data.params.get("prune_ratio") == ("0.9" if m == "sdclr" else None)  # only what it reads
        loss = "bank_loss" if m == "sbid" else "ntxent_loss"  # one chart per kind of loss
        history = mlflow.MlflowClient().get_metric_history(run.info.run_id, loss)
        assert [h.step for h in history] == [1]
        ev = by_name[f"evaluate-{m}-split0"]
        assert ev.data.tags["pretrain_run_id"] == run.info.run_id == ev.data.tags["mlflow.parentRunId"]
        assert run.data.metrics["knn_accuracy"] == ev.data.metrics["knn_accuracy"]  # the row sorts by accuracy
    assert "mask_sparsity" in by_name["pretrain-sdclr-split0"].data.metrics
    sbid = by_name["pretrain-sbid-split0"].data
    wanted = yaml.safe_load((proj / "params.yaml").read_text())["sbid"]
    assert sbid.params["sbid.bank_update"] == wanted["bank_update"]
    assert sbid.params["sbid.negatives"] == str(wanted["negatives"])
    assert sbid.params["sbid.epochs"] == "1"  # resolved: null in params.yaml means pretrain.epochs
    entries = json.loads((proj / "data/splits/fashion_mnist/summary.json").read_text())["splits"][0]["longtail_total"]
    assert 0 < sbid.metrics["entropy"] <= math.log(entries) + 1e-6  # mean entropy of p ≤ log(#bank entries)
    assert "report" in by_name
    cost = json.loads((proj / "reports/cost.json").read_text())
    assert cost["pretrain/sdclr/split0"]["seconds"] > 0 and cost["evaluate/random/split0"]["seconds"] > 0

    # A fresh clone of the committed results, reproduced from nothing (no data, models or DVC cache) by
    # the parallel runner: the same bytes and lock entries as the sequential run, a clean `dvc status`, and a
    # clean `git status` apart from the machine-dependent cost file.
    subprocess.run(["git", "add", "-A"], cwd=proj, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "baseline results"], cwd=proj, check=True, env=env)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(proj), str(clone)], check=True, env=env)
    clone_store = f"sqlite:///{tmp_path / 'clone-mlflow.db'}"
    clone_env = project_env(clone, tracking_uri=clone_store, log_model=True)
    for name in (*PORTABLE_ENV, *THREAD_ENV):  # each stage pins its own kernels and thread, whatever its parent's
        clone_env.pop(name, None)
    lines: list[str] = []
    run_in_parallel(clone, 2, log=lines.append, env=clone_env)
    assert lines[-1].startswith("dvc repro: nothing left to do"), lines
    assert json.loads(dvc(clone, "status", "--json", env=clone_env).stdout or "{}") == {}
    outputs = ["dvc.lock", "reports/summary.json", "reports/pretrain_loss.csv", "reports/report.md",
               *(f"reports/scores/{m}.json" for m in ("random", *METHODS)), *(f"models/{m}/split0.pt" for m in METHODS),
               *(f"reports/pretrain/{m}/split0.csv" for m in METHODS),
               *(f"reports/metrics/{m}/split0.json" for m in ("random", *METHODS)),
               *(f"reports/figures/{f}.png" for f in ("group_accuracy", "pretrain_loss", "class_counts",
                                                        "paired_differences"))]
    differ = [f for f in outputs if (proj / f).read_bytes() != (clone / f).read_bytes()]
    assert not differ, f"a re-run of the same commit changed: {differ}"
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, check=True, capture_output=True,
                            text=True).stdout.splitlines()
    assert status == [" M reports/cost.json"], status
    for stage, cost in json.loads((clone / "reports/cost.json").read_text()).items():
        assert cost["numerics"] == "portable (AVX2 kernels, MKL COMPATIBLE, 1 thread)", stage
        assert cost["device"].endswith(", 1 thread"), stage

    # The clone's own store holds every row of the report, `random` included, as a researcher's
    # browser sees it through `mlflow server` (tests/mlflow_ui.py checks the REST API).
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    model_md5 = {m: next(o["md5"] for o in lock[f"pretrain-{m}@0"]["outs"] if o["path"].endswith(".pt"))
                 for m in METHODS}
    with mlflow_server(clone_store, tmp_path / "mlflow-server.log") as server:
        exp = check_runs_view(server, "sdclr-fashion_mnist", METHODS, model_md5)
        if CHROMIUM is None:
            warnings.warn("no headless Chromium here (Debian: apt-get install chromium-headless-shell): "
                          "the runs-table screenshot is skipped; the REST checks ran")
        else:
            shot = server.screenshot(runs_link(exp["experiment_id"], server.url), ARTIFACTS / "mlflow_runs.png")
            assert shot.stat().st_size > 20_000  # a drawn page, not a blank one

    # A queued sweep, run by two workers at once, as the README shows it: each `-S prune_ratio=...`
    # experiment re-runs SDCLR's stages and the report only (its MLflow runs, tagged with its
    # name, say which stages ran), and `dvc exp show` sees the changed metrics.
    dvc(proj, "exp", "run", "--queue", "-S", "prune_ratio=0.3,0.5", env=env)
    dvc(proj, "queue", "start", "-j", "2", env=env)
    deadline, ask_dvc_at = time.time() + 900, 0.0
    while True:  # a finished experiment leaves a git ref: a cheap poll; DVC (a second of CPU a call) less often
        refs = subprocess.run(["git", "for-each-ref", "refs/exps"], cwd=proj, capture_output=True, text=True).stdout
        if len(refs.splitlines()) >= 2 or time.time() >= ask_dvc_at:
            status = dvc(proj, "queue", "status", env=env).stdout
            if not re.search(r"\b(Queued|Running)\b", status):
                break
            ask_dvc_at = time.time() + 15
        assert time.time() < deadline, status
        time.sleep(2)
    dvc(proj, "queue", "stop", env=env)  # let idle workers go
    assert "Failed" not in status, status
    by_exp: dict[str, list] = {}
    for r in mlflow.search_runs(search_all_experiments=True, output_format="list"):
        if r.data.tags.get("dvc_exp_name"):
            by_exp.setdefault(r.data.tags["dvc_exp_name"], []).append(r)
    assert len(by_exp) == 2, status  # each run tagged with its experiment
    for runs in by_exp.values():
        assert sorted(r.info.run_name for r in runs) == ["evaluate-sdclr-split0", "pretrain-sdclr-split0", "report"]
        assert all(r.info.status == "FINISHED" for r in runs)
    ratios = sorted(r.data.params["prune_ratio"] for runs in by_exp.values() for r in runs
                    if r.info.run_name == "pretrain-sdclr-split0")
    assert ratios == ["0.3", "0.5"]

    rows = json.loads(dvc(proj, "exp", "show", "--json", env=env).stdout)
    metrics = {}
    for row in rows:  # the workspace, the baseline commit, and under it its experiments
        for rev in [row, *(r for exp in row.get("experiments") or [] for r in exp["revs"])]:
            acc = {m: rev["data"]["metrics"].get(f"reports/scores/{m}.json", {}).get("data", {})
                   for m in ("sdclr", "simclr")}
            if all(acc.values()):  # the kNN accuracy of each method's `dvc metrics show` row
                metrics[rev["name"] or rev["rev"]] = (rev["data"]["params"]["params.yaml"]["data"]["prune_ratio"],
                                                      acc["sdclr"]["knn"],
                                                      acc["simclr"]["knn"])
    assert set(by_exp) <= set(metrics), metrics
    by_ratio = {v[0]: v for v in metrics.values()}
    assert {0.9, 0.5, 0.3} <= set(by_ratio), metrics
    assert by_ratio[0.9][2] == by_ratio[0.5][2] == by_ratio[0.3][2]  # SimCLR untouched
    assert by_ratio[0.9][1] != by_ratio[0.5][1]  # SDCLR re-trained

    # Another few-shot protocol is an evaluation change: DVC re-runs the evaluations and the report only.
    done = dvc(proj, "exp", "run", "-S", "evaluate.few_shot=[20, 10]", env=env)
    ran = re.findall(r"Running stage '([^']+)'", done.stdout)
    assert sorted(ran) == sorted(["report", *(f"evaluate-{m}@0" for m in ("random", *METHODS))]), ran
    metrics = json.loads((proj / "reports/metrics/sdclr/split0.json").read_text())
    assert metrics["protocol"]["few_shot"] == [20, 10] and metrics["few_shot"]["train_size"] == 20 * 10
    assert metrics["few_shot_10shot"]["subset"] == "10 per class"
    assert "## Linear probe, few-shot (10 per class)" in (proj / "reports/report.md").read_text()
