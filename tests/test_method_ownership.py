"""A method owns its params block, its claims and its dvc.yaml stages: a throw-away method added
as one module and one registry entry reaches params checking, dvc.yaml, the claims and the report,
and params.yaml's ``methods`` decides which methods run."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import yaml

from sdclr.errors import ParamError
from sdclr.pipeline.dvc_stages import render
from sdclr.registry import REGISTRY, parse_params
from sdclr.report.aggregate import load_metrics
from sdclr.report.claims import compare, verdict_sections
from tests.dvc_project import ROOT, project_env
from tests.test_pretrain import tiny_project  # noqa: F401  (a fixture)
from tests.test_report import _write_metrics


@pytest.fixture
def foo_registered(monkeypatch):
    """``foo`` in the registry for this test only: one entry, as a new method adds."""
    monkeypatch.setitem(REGISTRY, "foo", "tests.throwaway_method:Foo")
    for name in ("registry", "pipeline.dvc_stages", "report", "report.aggregate", "report.claims",
                 "report.deviations"):  # each module that reads the tuple of names
        monkeypatch.setattr(importlib.import_module(f"sdclr.{name}"), "METHODS", tuple(REGISTRY))


def _raw(methods: list[str], **blocks) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    return {**raw, "methods": methods, **blocks}


def test_a_new_method_is_checked_rendered_and_claimed_from_its_own_module(foo_registered, tmp_path):
    params = parse_params(_raw(["simclr", "foo"], foo={"temperature": 0.3}))
    assert params.foo.temperature == 0.3
    with pytest.raises(ParamError,
                       match=r"^params.yaml: foo.temperature = -1.0 is out of range; "
                             r"accepted: a positive number > 0\.$"):
        parse_params(_raw(["simclr", "foo"], foo={"temperature": -1}))
    with pytest.raises(ParamError,
                       match=r"^params.yaml: missing key 'foo' \(SimCLR at its own temperature\.\); "
                             r"add it to the file\.$"):
        parse_params(_raw(["simclr"]))

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_raw(["simclr", "foo"], foo={"temperature": 0.3})))
    stages = yaml.safe_load(render(tmp_path / "params.yaml"))["stages"]
    assert {"pretrain-foo", "evaluate-foo", "pretrain-simclr"} <= set(stages) and "pretrain-sdclr" not in stages
    assert "foo" in stages["pretrain-foo"]["do"]["params"]
    assert "tests/throwaway_method.py" in stages["pretrain-foo"]["do"]["deps"]
    assert "reports/scores/foo.json" in str(stages["report"]["metrics"])

    df = load_metrics(_write_metrics(tmp_path / "metrics", {"simclr": [0.80, 0.81, 0.79], "foo": [0.85, 0.86, 0.84]}))
    rows = [r for r in compare(df) if r["source"] == "a throw-away example"]
    assert [(r["a"], r["b"], r["kind"], r["metric"], r["verdict"]) for r in rows] == [
        ("foo", "simclr", "knn", "accuracy", "agrees")]
    md = "\n".join(verdict_sections(compare(df), tmp_path / "f.png"))
    assert "### a throw-away example" in md and "foo should beat SimCLR in kNN accuracy." in md


def test_methods_must_be_registered_and_distinct():
    with pytest.raises(ParamError,
                       match=r"^params.yaml: methods\[1\] = 'simclrr' is not a known choice; "
                             r"accepted: one of 'simclr', 'sdclr'"):
        parse_params(_raw(["simclr", "simclrr"]))
    with pytest.raises(ParamError,
                       match=r"^params.yaml: methods = \['simclr', 'simclr'\] is out of range; "
                             r"accepted: a non-empty list"):
        parse_params(_raw(["simclr", "simclr"]))


def test_the_report_stage_names_the_command_when_a_listed_method_has_no_stages(tiny_project, tmp_path):
    """`dvc exp run -S 'methods=[...]'` cannot add stages: the report says what to run instead."""
    raw = yaml.safe_load((tiny_project / "params.yaml").read_text())
    (tiny_project / "params.yaml").write_text(yaml.safe_dump({**raw, "methods": ["simclr", "simclr_ts"]}))
    metrics = tiny_project / "reports/metrics"
    (metrics / "simclr").mkdir(parents=True)
    before = (tiny_project / "reports/report.md").read_bytes()  # the committed report, copied with the project
    env = project_env(tiny_project, tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = subprocess.run([sys.executable, "stages/report.py", "--metrics", str(metrics),
                          "--history", "reports/pretrain", "--splits", "data/splits/fashion_mnist", "--out", "reports"],
                         cwd=tiny_project, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip() == (f"error: params.yaml lists simclr_ts in methods, but {metrics} has no metrics for "
                                  "them: dvc.yaml has no stages for them yet; run `python -m "
                                  "sdclr.pipeline.dvc_stages`, then `dvc repro`."), out.stderr
    assert (tiny_project / "reports/report.md").read_bytes() == before  # nothing produced is touched


def test_the_list_of_every_method_comes_from_the_registry():
    """``python -m sdclr.registry`` lists every registered method in the report's order, and params.yaml
    points there instead of keeping a hand-written copy that a new method would leave stale."""
    out = subprocess.run([sys.executable, "-m", "sdclr.registry"], cwd=ROOT, capture_output=True, text=True,
                         check=True, env=project_env(ROOT)).stdout
    assert [line.split()[0] for line in out.splitlines()] == list(REGISTRY)
    assert all(REGISTRY[line.split()[0]] == line.split()[1] for line in out.splitlines())
    params_text = (ROOT / "params.yaml").read_text()
    assert "python -m sdclr.registry" in params_text and ", ".join(list(REGISTRY)[3:]) not in params_text
