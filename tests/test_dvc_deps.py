"""dvc.yaml's deps cover the code every stage runs, so DVC re-runs a stage whenever it changes.

dvc.yaml is written by ``python -m sdclr.pipeline.dvc_stages`` from the registry and the closure of each
stage script (every ``import`` and ``from ... import`` anywhere in the file, function bodies
included, followed through the project's modules and their packages' ``__init__.py``), plus,
for a pretrain stage, its own method's module. Other tests edit files and params in a real
DVC project and ask ``dvc status`` which stages changed.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from sdclr.pipeline.dvc_stages import import_closure, method_module, render
from sdclr.registry import METHODS, REGISTRY, method_class
from tests.dvc_project import dvc, make_project, project_env, update_params

ROOT = Path(__file__).resolve().parents[1]


def stage_scripts(dvc_yaml: dict) -> dict[str, tuple[Path, list[str]]]:
    """{stage name: (its script, its deps)} for every stage of a parsed dvc.yaml (foreach blocks included)."""
    out = {}
    for name, stage in dvc_yaml["stages"].items():
        body = stage.get("do", stage)
        script = next(tok for tok in shlex.split(body["cmd"]) if tok.endswith(".py"))
        out[name] = (ROOT / script, [str(d) if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])])
    return out


def runs_code_of(name: str, script: Path, listed: list[str]) -> set[Path]:
    """The files a stage runs: its script's closure, plus the methods it loads by name (a pretrain
    stage its own, the report every listed one)."""
    methods = {"report": listed}.get(name, [name.removeprefix("pretrain-")] if name.startswith("pretrain-") else [])
    return import_closure(script).union(*(import_closure(method_module(m)) for m in methods))


def uncovered(dvc_yaml: dict) -> list[str]:
    """'stage: file' for every file a stage runs that none of its deps covers."""
    missing = []
    listed = [n.removeprefix("pretrain-") for n in dvc_yaml["stages"] if n.startswith("pretrain-")]
    for name, (script, deps) in stage_scripts(dvc_yaml).items():
        for path in sorted(runs_code_of(name, script, listed)):
            rel = path.relative_to(ROOT).as_posix()
            if not any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps):
                missing.append(f"{name}: {rel}")
    return missing


def _dvc_yaml(every_method: bool = True) -> dict:
    """The dvc.yaml written for params.yaml with every registered method listed (the committed
    one lists the default's)."""
    if not every_method:
        return yaml.safe_load((ROOT / "dvc.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        (Path(tmp) / "params.yaml").write_text(yaml.safe_dump({**params, "methods": list(METHODS)}, sort_keys=False))
        return yaml.safe_load(render(Path(tmp) / "params.yaml"))


def test_dvc_yaml_is_what_the_registry_and_the_imports_write():
    assert (ROOT / "dvc.yaml").read_text() == render(), "dvc.yaml is stale: run `python -m sdclr.pipeline.dvc_stages`"


def test_every_stage_depends_on_all_the_code_it_runs():
    assert not uncovered(_dvc_yaml(every_method=False))
    missing = uncovered(_dvc_yaml())
    assert not missing, "dvc.yaml misses code deps (stage: file):\n" + "\n".join(missing)


def test_a_pretrain_stage_depends_on_its_own_method_only():
    stages = stage_scripts(_dvc_yaml())
    modules = {m: method_module(m).relative_to(ROOT).as_posix() for m in METHODS}
    assert modules["sdclr"] in stages["pretrain-sdclr"][1] and modules["sbid"] not in stages["pretrain-sdclr"][1]
    assert modules["sbid"] not in stages["pretrain-simclr"][1] and modules["sdclr"] not in stages["pretrain-simclr"][1]
    # BCL-D is built on SDCLR and SimCLR: an edit of either must re-run it
    assert {modules["bcl_d"], modules["sdclr"], modules["simclr"]} <= set(stages["pretrain-bcl_d"][1])
    # an evaluation reads the encoder file, not the training code
    assert not {"sdclr/pretrain_loop.py", *modules.values()} & set(stages["evaluate-sbid"][1])


def test_the_closure_finds_lazy_imports_and_package_inits():
    closure = {p.relative_to(ROOT).as_posix() for p in import_closure(ROOT / "stages/evaluate.py")}
    # imported inside main() (lazily), and through the models package
    assert {"sdclr/evaluate.py", "sdclr/storage/encoder_file.py", "sdclr/models/resnet.py", "sdclr/models/__init__.py",
            "sdclr/__init__.py"} <= closure
    assert not {"sdclr/report/__init__.py", "sdclr/pretrain_loop.py", "sdclr/report/figures.py"} & closure


def test_a_removed_dep_is_named():
    spec = _dvc_yaml()
    deps = spec["stages"]["evaluate-random"]["do"]["deps"]
    deps.remove("sdclr/models/resnet.py")
    missing = uncovered(spec)
    assert missing == ["evaluate-random: sdclr/models/resnet.py"]


def test_dvc_yaml_has_a_block_per_registered_method_declaring_its_params():
    """What dvc.yaml declares is also what each stage's MLflow run logs as its params."""
    from sdclr.evaluate import STAGE_PARAMS as EVALUATE_PARAMS

    stages = _dvc_yaml()["stages"]
    assert {n.removeprefix("pretrain-") for n in stages if n.startswith("pretrain-")} == set(METHODS)
    assert {n.removeprefix("evaluate-") for n in stages if n.startswith("evaluate-")} == {*METHODS, "random"}
    for name in METHODS:
        cls, block = method_class(name), stages[f"pretrain-{name}"]["do"]
        assert f"--method {REGISTRY[name]} " in block["cmd"], name  # the class it loads, without the registry
        assert f"--method {name} " in stages[f"evaluate-{name}"]["do"]["cmd"]
        assert set(block["params"]) == set(cls.stage_params()), name
        assert set(stages[f"evaluate-{name}"]["do"]["params"]) == set(EVALUATE_PARAMS), name
    # the untrained encoder's architecture comes from params.yaml, not from an encoder file
    assert set(stages["evaluate-random"]["do"]["params"]) == {*EVALUATE_PARAMS, "model"}


def _out_paths(entries: list) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def test_the_report_declares_one_metrics_file_per_method_and_the_loss_plot():
    spec = _dvc_yaml()
    report = spec["stages"]["report"]
    metrics = _out_paths(report["metrics"])
    assert sorted(metrics) == sorted(f"reports/scores/{m}.json" for m in ("random", *METHODS))
    assert all(next(iter(e.values()))["cache"] is False for e in report["metrics"])  # git-tracked
    outs = _out_paths(report["outs"])
    assert {"reports/summary.json", "reports/pretrain_loss.csv", "reports/report.md"} <= set(outs)
    # The per-split histories are plain outputs: the one loss plot is the top-level one, fed by the report.
    for name in METHODS:
        assert "plots" not in spec["stages"][f"pretrain-{name}"]["do"]
    plots = {next(iter(p)): next(iter(p.values())) for p in spec["plots"]}
    assert plots["reports/pretrain_loss.csv"]["template"] == "loss_by_method"
    assert (ROOT / ".dvc/plots/loss_by_method.json").is_file()


# ---- dvc status in a real DVC project ------------------------------------------------------

TINY = {"device": "cpu", "subsample": {"splits": [0]}}


def _fake_outputs(proj: Path, methods: tuple[str, ...] = ("simclr", "sdclr", "sbid")) -> None:
    """Put a file at every output (and data dep) of the graph of ``methods``, so `dvc commit` can
    lock it as run."""
    for rel in ("data/raw/fashion_mnist/train.npz", "data/splits/fashion_mnist/split0.npz",
                "data/splits/fashion_mnist/pool_val.npz", "data/splits/fashion_mnist/summary.json",
                "reports/report.md", "reports/summary.json", "reports/pretrain_loss.csv",
                *(f"reports/figures/{f}.png" for f in ("group_accuracy", "pretrain_loss", "class_counts",
                                                        "bcl_w_by_group", "gh_prior", "paired_differences"))):
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text(rel)
    trained = list(methods)
    for m in trained:
        for rel in (f"models/{m}/split0.pt", f"reports/pretrain/{m}/split0.csv",
                    *([f"reports/pretrain/{m}/per_image_split0.csv"] if method_class(m).per_image else [])):
            (proj / rel).parent.mkdir(parents=True, exist_ok=True)
            (proj / rel).write_text(rel)
    for m in ("random", *trained):
        (proj / f"reports/metrics/{m}").mkdir(parents=True, exist_ok=True)
        (proj / f"reports/metrics/{m}/split0.json").write_text("{}")
    for m in ("random", *trained):
        (proj / f"reports/scores/{m}.json").parent.mkdir(parents=True, exist_ok=True)
        (proj / f"reports/scores/{m}.json").write_text("{}")


def _changed_stages(proj: Path) -> set[str]:
    return set(json.loads(dvc(proj, "status", "--json").stdout or "{}"))


def _edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# edited by a test\n")


@pytest.mark.slow
def test_adding_a_method_or_correcting_a_published_number_reruns_the_report_and_the_new_stages_only(tmp_path,
                                                                                                   monkeypatch):
    """A method added as docs/design.md says (its module, its registry line, its block and its name in
    ``methods``, dvc.yaml rewritten) leaves every existing stage up to date; so does a published number
    corrected: the paper tables live with the report."""
    proj = make_project(tmp_path / "proj", TINY)
    _fake_outputs(proj)
    dvc(proj, "commit", "-f")
    assert _changed_stages(proj) == set()

    (proj / "sdclr/methods/foo.py").write_text((ROOT / "tests/throwaway_method.py").read_text())
    registry = proj / "sdclr/registry.py"
    registry.write_text(registry.read_text().replace('    "sdclr_gh": "sdclr.methods.gh:SDCLRGH",\n',
                                                     '    "sdclr_gh": "sdclr.methods.gh:SDCLRGH",\n'
                                                     '    "foo": "sdclr.methods.foo:Foo",\n'))
    params = yaml.safe_load((proj / "params.yaml").read_text())
    update_params(proj, {"methods": [*params["methods"], "foo"]})
    (proj / "params.yaml").write_text((proj / "params.yaml").read_text() + "foo:\n  temperature: 0.2\n")
    subprocess.run([sys.executable, "-m", "sdclr.pipeline.dvc_stages"], cwd=proj, env=project_env(proj), check=True,
                   capture_output=True)
    assert _changed_stages(proj) == {"pretrain-foo@0", "evaluate-foo@0", "report"}

    monkeypatch.setitem(REGISTRY, "foo", "tests.throwaway_method:Foo")  # this process's registry, for the outputs
    _fake_outputs(proj, ("simclr", "sdclr", "sbid", "foo"))
    dvc(proj, "commit", "-f")
    published = proj / "sdclr/report/published.py"
    published.write_text(published.read_text().replace('"78.18 ± 4.18"', '"78.19 ± 4.18"'))
    assert _changed_stages(proj) == {"report"}


@pytest.mark.slow
def test_dvc_status_sees_a_code_change_in_exactly_the_stages_that_run_it(tmp_path):
    proj = make_project(tmp_path / "proj", TINY)
    _fake_outputs(proj)
    dvc(proj, "commit", "-f")
    assert _changed_stages(proj) == set()

    _edit(proj / "sdclr/evaluate.py")  # in the evaluate stages' closure only
    assert _changed_stages(proj) == {f"evaluate-{m}@0" for m in ("random", "simclr", "sdclr", "sbid")}
    dvc(proj, "commit", "-f")

    # one method's module: its own pretraining and the report (which reads every method's settings)
    _edit(proj / "sdclr/methods/sbid.py")
    assert _changed_stages(proj) == {"pretrain-sbid@0", "report"}
    dvc(proj, "commit", "-f")
    _edit(proj / "sdclr/methods/sdclr.py")
    assert _changed_stages(proj) == {"pretrain-sdclr@0", "report"}
    dvc(proj, "commit", "-f")

    _edit(proj / "sdclr/models/resnet.py")  # the ResNet: pretraining and every evaluation, random included
    changed = _changed_stages(proj)
    assert {"evaluate-random@0", "evaluate-simclr@0", "pretrain-sdclr@0"} <= changed
    assert not changed & {"download", "subsample"}
    dvc(proj, "commit", "-f")

    # The negative control: without the models dep, the same edit goes unseen by evaluate-random.
    spec = yaml.safe_load((proj / "dvc.yaml").read_text())
    spec["stages"]["evaluate-random"]["do"]["deps"].remove("sdclr/models/resnet.py")
    (proj / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    dvc(proj, "commit", "-f")
    _edit(proj / "sdclr/models/resnet.py")
    assert "evaluate-random@0" not in _changed_stages(proj)


@pytest.mark.slow
def test_a_bcl_or_gh_param_changes_only_their_stages_and_later_methods_are_off_by_default(tmp_path):
    """`dvc exp run -S bcl.beta=0.9` must re-run BCL-I and BCL-D (and the report, which shows
    every param), nothing else, and a `gh` param GH's two methods only; with the default
    `methods` none of their stages exists."""
    default = make_project(tmp_path / "default", TINY)
    stages = dvc(default, "stage", "list", "--name-only").stdout.split()
    assert not [s for s in stages if any(m in s for m in ("simclr_ts", "bcl_i", "bcl_d", "_gh"))], stages

    proj = make_project(tmp_path / "proj", {**TINY, "methods": list(METHODS)})
    _fake_outputs(proj, METHODS)
    dvc(proj, "commit", "-f")
    assert _changed_stages(proj) == set()
    update_params(proj, {"bcl": {"beta": 0.9}})
    assert _changed_stages(proj) == {"pretrain-bcl_i@0", "pretrain-bcl_d@0", "report"}
    update_params(proj, {"bcl": {"beta": 0.97}, "prune_ratio": 0.5})  # SDCLR's, BCL-D's and SDCLR + GH's
    assert _changed_stages(proj) == {"pretrain-sdclr@0", "pretrain-bcl_d@0", "pretrain-sdclr_gh@0", "report"}
    update_params(proj, {"prune_ratio": 0.9, "gh": {"beta": 0.99}})
    assert _changed_stages(proj) == {"pretrain-simclr_gh@0", "pretrain-sdclr_gh@0", "report"}


def test_per_split_stages_depend_on_their_own_split_file_not_the_splits_folder():
    """Adding a split changes the folder's summary and figure: a stage on the folder would re-run."""
    for name, (_, deps) in stage_scripts(_dvc_yaml()).items():
        if name.startswith(("pretrain-", "evaluate-")):
            assert "data/splits/${data.dataset}" not in deps, name
            assert {"data/splits/${data.dataset}/split${item}.npz",
                    "data/splits/${data.dataset}/pool_val.npz"} <= set(deps), name
