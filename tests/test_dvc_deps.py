"""dvc.yaml's deps cover the code every stage runs, so DVC re-runs a stage whenever it changes.

The closure of a stage script is computed from its source (every ``import`` and ``from ...
import`` anywhere in the file, function bodies included, followed through the project's
modules and their packages' ``__init__.py``): no hand-kept list. A second test edits a
file in a real DVC project and asks ``dvc status`` which stages changed.
"""

from __future__ import annotations

import ast
import json
import shlex
from pathlib import Path

import pytest
import yaml

from sdclr.methods import METHODS
from tests.dvc_project import dvc, make_project, update_params

ROOT = Path(__file__).resolve().parents[1]


def _module_file(name: str, root: Path) -> Path | None:
    """The project file of module ``name`` (a .py or a package's __init__.py), or None if not ours."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(path: Path, root: Path) -> set[str]:
    """Dotted names imported anywhere in ``path``; ``from a import b`` gives both a and a.b."""
    names: set[str] = set()
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this file's package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_closure(script: Path, root: Path = ROOT) -> set[Path]:
    """Every project file that running ``script`` can import (transitively), ``script`` included."""
    seen: set[Path] = set()
    todo = [script.resolve()]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imported_names(path, root):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
                found = _module_file(".".join(parts[:i]), root)
                if found is not None and found not in seen:
                    todo.append(found)
    return seen


def stage_scripts(dvc_yaml: dict) -> dict[str, tuple[Path, list[str]]]:
    """{stage name: (its script, its deps)} for every stage of a parsed dvc.yaml (foreach blocks included)."""
    out = {}
    for name, stage in dvc_yaml["stages"].items():
        body = stage.get("do", stage)
        script = next(tok for tok in shlex.split(body["cmd"]) if tok.endswith(".py"))
        out[name] = (ROOT / script, [str(d) if isinstance(d, str) else next(iter(d)) for d in body.get("deps", [])])
    return out


def uncovered(dvc_yaml: dict) -> list[str]:
    """'stage: file' for every file of a stage's import closure that none of its deps covers."""
    missing = []
    for name, (script, deps) in stage_scripts(dvc_yaml).items():
        for path in sorted(import_closure(script)):
            rel = path.relative_to(ROOT).as_posix()
            if not any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps):
                missing.append(f"{name}: {rel}")
    return missing


def _dvc_yaml() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())


def test_every_stage_depends_on_its_whole_import_closure():
    missing = uncovered(_dvc_yaml())
    assert not missing, "dvc.yaml misses code deps (stage: file):\n" + "\n".join(missing)


def test_the_closure_finds_lazy_imports_and_package_inits():
    closure = {p.relative_to(ROOT).as_posix() for p in import_closure(ROOT / "stages/evaluate.py")}
    # imported inside main() (lazily), and through the models package
    assert {"sdclr/evaluate.py", "sdclr/train.py", "sdclr/models/resnet.py", "sdclr/models/__init__.py",
            "sdclr/__init__.py", "sdclr/distributed.py"} <= closure
    assert "sdclr/report.py" not in closure


def test_a_removed_dep_is_named():
    spec = _dvc_yaml()
    deps = spec["stages"]["evaluate-random"]["do"]["deps"]
    deps.remove("sdclr/models")
    missing = uncovered(spec)
    assert "evaluate-random: sdclr/models/resnet.py" in missing
    assert not [m for m in missing if not m.startswith("evaluate-random:")]


def test_dvc_yaml_has_a_block_per_registered_method_declaring_its_params():
    """What dvc.yaml declares is also what each stage's MLflow run logs as its params."""
    from sdclr.evaluate import STAGE_PARAMS as EVALUATE_PARAMS
    from sdclr.methods import METHODS

    stages = _dvc_yaml()["stages"]
    assert {n.removeprefix("pretrain-") for n in stages if n.startswith("pretrain-")} == set(METHODS)
    assert {n.removeprefix("evaluate-") for n in stages if n.startswith("evaluate-")} == {*METHODS, "random"}
    for name, cls in METHODS.items():
        block = stages[f"pretrain-{name}"]["do"]
        assert f"--method {name} " in block["cmd"] and f"--method {name} " in stages[f"evaluate-{name}"]["do"]["cmd"]
        assert set(block["params"]) == set(cls.stage_params()), name
        assert set(stages[f"evaluate-{name}"]["do"]["params"]) == set(EVALUATE_PARAMS), name
    # the untrained encoder's architecture comes from params.yaml, not from an encoder file
    assert set(stages["evaluate-random"]["do"]["params"]) == {*EVALUATE_PARAMS, "model"}


def _out_paths(entries: list) -> list[str]:
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def test_the_report_declares_one_metrics_file_per_method_and_the_loss_plot():
    from sdclr.methods import METHODS

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


def _fake_outputs(proj: Path, followups: bool = False) -> None:
    """Put a file at every output (and data dep) of the graph, so `dvc commit` can lock it as run
    (the follow-ups' outputs too when ``followups``: their stages then run on split 0)."""
    for rel in ("data/raw/fashion_mnist/train.npz", "data/splits/fashion_mnist/split0.npz",
                "data/splits/fashion_mnist/pool_val.npz",
                "reports/report.md", "reports/summary.json", "reports/pretrain_loss.csv",
                *(f"reports/figures/{f}.png" for f in ("group_accuracy", "pretrain_loss", "class_counts",
                                                        "bcl_w_by_group"))):
        (proj / rel).parent.mkdir(parents=True, exist_ok=True)
        (proj / rel).write_text(rel)
    trained = [m for m, cls in METHODS.items() if followups or not cls.followup]
    for m in trained:
        for rel in (f"models/{m}/split0.pt", f"reports/pretrain/{m}/split0.csv",
                    *([f"reports/pretrain/{m}/w_split0.csv"] if m.startswith("bcl") else [])):
            (proj / rel).parent.mkdir(parents=True, exist_ok=True)
            (proj / rel).write_text(rel)
    for m in ("random", *trained):
        (proj / f"reports/metrics/{m}").mkdir(parents=True, exist_ok=True)
        (proj / f"reports/metrics/{m}/split0.json").write_text("{}")
    for m in ("random", *METHODS):
        (proj / f"reports/scores/{m}.json").parent.mkdir(parents=True, exist_ok=True)
        (proj / f"reports/scores/{m}.json").write_text("{}")


def _changed_stages(proj: Path) -> set[str]:
    return set(json.loads(dvc(proj, "status", "--json").stdout or "{}"))


def _edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# edited by a test\n")


@pytest.mark.slow
def test_dvc_status_sees_a_change_in_evaluate_code(tmp_path):
    proj = make_project(tmp_path / "proj", TINY)
    _fake_outputs(proj)
    dvc(proj, "commit", "-f")
    assert _changed_stages(proj) == set()

    _edit(proj / "sdclr/evaluate.py")  # in the evaluate stages' closure only
    assert _changed_stages(proj) == {f"evaluate-{m}@0" for m in ("random", "simclr", "sdclr", "sbid")}
    dvc(proj, "commit", "-f")

    _edit(proj / "sdclr/models/resnet.py")  # the ResNet: pretraining and every evaluation, random included
    changed = _changed_stages(proj)
    assert {"evaluate-random@0", "evaluate-simclr@0", "pretrain-sdclr@0"} <= changed
    assert not changed & {"download", "subsample"}
    dvc(proj, "commit", "-f")

    # The negative control: without the models dep, the same edit goes unseen by evaluate-random.
    spec = yaml.safe_load((proj / "dvc.yaml").read_text())
    spec["stages"]["evaluate-random"]["do"]["deps"].remove("sdclr/models")
    (proj / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    dvc(proj, "commit", "-f")
    _edit(proj / "sdclr/models/resnet.py")
    assert "evaluate-random@0" not in _changed_stages(proj)


@pytest.mark.slow
def test_a_bcl_param_changes_only_bcls_stages_and_followups_are_off_by_default(tmp_path):
    """`dvc exp run -S bcl.beta=0.9` must re-run BCL-I and BCL-D (and the report, which shows
    every param), nothing else; with the default `followups.splits: []` no follow-up stage exists."""
    default = make_project(tmp_path / "default", TINY)
    stages = dvc(default, "stage", "list", "--name-only").stdout.split()
    assert not [s for s in stages if any(m in s for m in ("simclr_ts", "bcl_i", "bcl_d"))], stages

    proj = make_project(tmp_path / "proj", {**TINY, "followups": {"splits": [0]}})
    _fake_outputs(proj, followups=True)
    dvc(proj, "commit", "-f")
    assert _changed_stages(proj) == set()
    update_params(proj, {"bcl": {"beta": 0.9}})
    assert _changed_stages(proj) == {"pretrain-bcl_i@0", "pretrain-bcl_d@0", "report"}
    update_params(proj, {"bcl": {"beta": 0.97}, "prune_ratio": 0.5})  # SDCLR's and BCL-D's
    assert _changed_stages(proj) == {"pretrain-sdclr@0", "pretrain-bcl_d@0", "report"}


def test_per_split_stages_depend_on_their_own_split_file_not_the_splits_folder():
    """Adding a split changes the folder's summary and figure: a stage on the folder would re-run."""
    for name, (_, deps) in stage_scripts(_dvc_yaml()).items():
        if name.startswith(("pretrain-", "evaluate-")):
            assert "data/splits/${data.dataset}" not in deps, name
            assert {"data/splits/${data.dataset}/split${item}.npz",
                    "data/splits/${data.dataset}/pool_val.npz"} <= set(deps), name
