"""A real ``mlflow server`` on 127.0.0.1 over a test store, read through its REST API, and a
headless-Chromium screenshot of its runs table: what a researcher's browser gets."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

#: Debian's headless Chromium (`apt-get install chromium-headless-shell`; .ci/run installs it)
CHROMIUM = next((c for c in ("chromium-headless-shell", "chromium", "chromium-browser") if shutil.which(c)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str):
        self.url = url

    def api(self, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"{}")

    def screenshot(self, url: str, out: Path, size: str = "1600,900") -> Path:
        """A PNG of ``url`` (a page of this server, e.g. ``tracking.runs_link(id, server.url)``) once its scripts
        have run."""
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size={size}", "--virtual-time-budget=25000", f"--screenshot={out}",
                        url], check=True, capture_output=True, timeout=180)
        return out


@contextlib.contextmanager
def mlflow_server(store_uri: str, log: Path) -> Iterator[Server]:
    """``mlflow server`` on a free loopback port over ``store_uri``; stopped (whole process group) after."""
    port = _free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri,
                                 "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}")
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(server.url + "/health", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"mlflow server did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        yield server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def tags_of(entity: dict) -> dict[str, str]:
    return {t["key"]: t.get("value", "") for t in entity.get("tags", [])}


def check_runs_view(server: Server, experiment: str, methods: tuple[str, ...], model_md5: dict[str, str],
                    splits: tuple[int, ...] = (0,)) -> dict:
    """What the runs table must show a researcher, through the REST API a browser uses; returns the experiment.

    1. the experiment's saved view (``tracking.runs_link`` opens it) shows one top-level row per (method, split),
       best full-shot accuracy first, the three probe accuracies as its first columns;
    2. each run logs the method and only the params its stage reads, resolved; standard source tags,
       ``git_dirty`` and the data split's md5;
    3. one top-level row per (method, split), sortable by probe accuracy; evaluations nested under
       their pretraining run; ``random`` a row of its own;
    4. each encoder a logged model tagged with its DVC md5.
    """
    exp = server.api(f"/api/2.0/mlflow/experiments/get-by-name?experiment_name={experiment}")["experiment"]
    view = json.loads(tags_of(exp)["mlflow.sharedViewState.runs"])
    state = json.loads(view["state"])
    accuracies = ["metrics.`full_shot_accuracy`", "metrics.`few_shot_accuracy`", "metrics.`knn_accuracy`"]
    assert state["selectedColumns"] == state["columnOrder"] == accuracies, state
    assert (state["orderByKey"], state["orderByAsc"]) == (accuracies[0], False), state
    runs = server.api("/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 500})
    runs = runs["runs"]
    shown = server.api("/api/2.0/mlflow/runs/search", {  # what the view's table asks the server for
        "experiment_ids": [exp["experiment_id"]], "filter": state["searchFilter"], "max_results": 500,
        "order_by": [f"{state['orderByKey']} DESC"]})["runs"]
    expected = {f"{'evaluate' if m == 'random' else 'pretrain'}-{m}-split{s}"
                for m in ("random", *methods) for s in splits}
    assert sorted(r["info"]["run_name"] for r in shown) == sorted(expected)  # one row per (method, split)
    full_shot = [next(x["value"] for x in r["data"]["metrics"] if x["key"] == "full_shot_accuracy") for r in shown]
    assert full_shot == sorted(full_shot, reverse=True)
    by_name = {}
    for run in runs:
        by_name.setdefault(run["info"]["run_name"], []).append(run)
    for run in runs:
        tags = tags_of(run["data"])
        params = {p["key"]: p["value"] for p in run["data"].get("params", [])}
        assert len(tags["mlflow.source.git.commit"]) == 40 and tags["mlflow.source.name"].startswith("stages/"), tags
        assert tags["git_dirty"] in ("true", "false") and len(tags["data_split_md5"]) == 32
        assert params["method"] == tags["method"] and params["split"] == tags["split"]
        assert ("prune_ratio" in params) == (tags["method"] == "sdclr" and tags["stage"] == "pretrain"), params
        assert not any(k.startswith("sbid.") for k in params) or tags["method"] == "sbid", params
        assert "None" not in params.values(), params  # placeholders are logged resolved
    for split in splits:
        for m in ("random", *methods):
            evaluation = by_name[f"evaluate-{m}-split{split}"][-1]
            metrics = {x["key"]: x["value"] for x in evaluation["data"]["metrics"]}
            row = evaluation if m == "random" else by_name[f"pretrain-{m}-split{split}"][-1]
            row_metrics = {x["key"]: x["value"] for x in row["data"]["metrics"]}
            for kind in ("full_shot", "few_shot", "knn"):
                assert 0 <= metrics[f"{kind}_accuracy"] <= 1  # fractions everywhere
                assert row_metrics[f"{kind}_accuracy"] == metrics[f"{kind}_accuracy"]
            parent = tags_of(evaluation["data"]).get("mlflow.parentRunId", "")
            assert parent == ("" if m == "random" else row["info"]["run_id"])
            assert "mlflow.parentRunId" not in tags_of(row["data"])  # the row is top-level
    models = server.api("/api/2.0/mlflow/logged-models/search", {"experiment_ids": [exp["experiment_id"]]})["models"]
    logged = {(tags_of(m["info"])["method"], tags_of(m["info"])["split"]): tags_of(m["info"])["model_md5"]
              for m in models}
    for m, md5 in model_md5.items():
        assert md5 in {v for (method, _), v in logged.items() if method == m}, (m, md5, logged)
    return exp
