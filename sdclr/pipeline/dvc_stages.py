"""dvc.yaml, written from params.yaml's ``methods``, the method registry and the stage scripts' imports.

Each stage depends on exactly the project files its script can import (the import closure,
read from the source), plus, for a pretrain stage, its own method's module and what that
imports (its command names the method's ``module:Class``, which it loads without the
registry). So editing ``sbid.py`` re-runs sbid's stages and the report, adding a method re-runs
the report only, and nothing else. Each method params.yaml lists gets its
``pretrain-``/``evaluate-`` stages here, on ``subsample.splits``, with the params it declares
(``stage_params``); the report declares its scores and its own figures.

    python -m sdclr.pipeline.dvc_stages           # rewrite dvc.yaml (after editing params.yaml's methods)
    python -m sdclr.pipeline.dvc_stages --check   # exit 1 if dvc.yaml is not what this writes

DVC cannot add stages from a param, so a change of ``methods`` needs this command (a preset
that changes it runs it itself); the report stage says so if the two disagree.
tests/test_dvc_deps.py checks that the committed dvc.yaml is current.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import sys
import textwrap
from pathlib import Path

from sdclr.config import Params
from sdclr.evaluate import STAGE_PARAMS
from sdclr.registry import METHODS, REGISTRY, declared, load_params, method_class
from sdclr.report import section_figures

ROOT = Path(__file__).resolve().parents[2]
DATA = "data/raw/${data.dataset}"
SPLITS = "data/splits/${data.dataset}"
SPLIT_FILES = (f"{SPLITS}/pool_val.npz", f"{SPLITS}/split${{item}}.npz")


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
    """Every project file that running ``script`` can import (transitively, function bodies
    included), ``script`` included."""
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


def method_module(name: str, root: Path = ROOT) -> Path:
    """The file of a registered method's module."""
    return _module_file(REGISTRY[name].split(":")[0], root)


@functools.cache  # every evaluate stage has the same deps: computed once
def code_deps(script: str, methods: tuple[str, ...] = (), root: Path = ROOT) -> tuple[str, ...]:
    """The script, then every other project file it and the named methods' modules (which it loads
    by name at run time) can import."""
    files = import_closure(root / script, root)
    for name in methods:
        files |= import_closure(method_module(name, root), root)
    rest = sorted(p.relative_to(root).as_posix() for p in files if p != (root / script).resolve())
    return (script, *rest)


def _list(key: str, items, indent: int) -> list[str]:
    return [" " * indent + line for line in (f"{key}:", *(f"  - {item}" for item in items))]


def _pretrain(name: str, cls) -> list[str]:
    out_files = [f"models/{name}/split${{item}}.pt", f"reports/pretrain/{name}/split${{item}}.csv"]
    per_image = f" --per-image reports/pretrain/{name}/per_image_split${{item}}.csv" if cls.per_image else ""
    if per_image:
        out_files.append(f"reports/pretrain/{name}/per_image_split${{item}}.csv")
    about = " ".join((cls.__doc__ or name).strip().split("\n\n")[0].split())
    return [
        *(f"  # {line}" for line in textwrap.wrap(about, 100, break_on_hyphens=False)),
        f"  pretrain-{name}:",
        "    foreach: ${subsample.splits}",
        "    do:",
        "      cmd: >-",
        f"        python stages/pretrain.py --method {REGISTRY[name]} --split ${{item}} --raw {DATA} --splits {SPLITS}",
        f"        --out models/{name}/split${{item}}.pt --history reports/pretrain/{name}/split${{item}}.csv",
        f"        --checkpoint checkpoints/{name}/split${{item}}.ckpt --cost reports/cost.json{per_image}",
        *_list("deps", [*code_deps("stages/pretrain.py", (name,)), DATA, *SPLIT_FILES], 6),
        f"      params: [{', '.join(cls.stage_params())}]",
        *_list("outs", out_files, 6),
        "",
    ]


def _evaluate(name: str, params: tuple[str, ...]) -> list[str]:
    model = [] if name == "random" else [f"models/{name}/split${{item}}.pt"]
    model_arg = "" if name == "random" else f" --model models/{name}/split${{item}}.pt"
    return [
        f"  evaluate-{name}:",
        "    foreach: ${subsample.splits}",
        "    do:",
        "      cmd: >-",
        f"        python stages/evaluate.py --method {name} --split ${{item}} --raw {DATA} --splits {SPLITS}"
        f"{model_arg}",
        f"        --out reports/metrics/{name}/split${{item}}.json --cost reports/cost.json",
        *_list("deps", [*code_deps("stages/evaluate.py"), DATA, *SPLIT_FILES, *model], 6),
        f"      params: [{', '.join(params)}]",
        *_list("outs", [f"reports/metrics/{name}/split${{item}}.json"], 6),
        "",
    ]


def _uncached(key: str, paths: list[str]) -> list[str]:
    return [f"    {key}:", *(line for p in paths for line in (f"      - {p}:", "          cache: false"))]


HEADER = """\
# Written by `python -m sdclr.pipeline.dvc_stages` from params.yaml's `methods`, the method registry
# (sdclr/registry.py) and the stage scripts' imports: edit those and re-run it, not this
# file (tests/test_dvc_deps.py checks that this file is what it writes).
#
# Each stage declares, as deps, the project files its script can import (a pretrain stage: and
# its own method's module, named as module:Class in its command), plus its data, and exactly the
# params it reads, so any change it could feel re-runs it and nothing else: `dvc exp run -S
# prune_ratio=0.5` re-runs SDCLR's stages, an edit of sdclr/methods/sbid.py re-runs sbid's, and a
# new method re-runs the report only. Paths are written once, here:
# the stage scripts take them as arguments. Machine-dependent timings go to reports/cost.json,
# which no stage declares.
stages:
"""

PLOTS = """\
# `dvc plots show`: every method's and split's pretraining loss overlaid in one plot. The report
# stage gathers the per-split histories into one long table (method, split, epoch, loss), so the
# plot follows the splits and the registry without naming a file per split; the template
# (.dvc/plots/loss_by_method.json) colours by method and draws each split (and, with
# `dvc plots diff`, each revision) as its own line. The report's PNG figures are image plots above.
plots:
  - reports/pretrain_loss.csv:
      template: loss_by_method
      x: epoch
      y: loss
      title: Pretraining loss per epoch, every method and split
      x_label: epoch
      y_label: pretraining loss (each method its own objective)
"""


def render(params_path: Path = ROOT / "params.yaml") -> str:
    """The whole dvc.yaml for the methods ``params_path`` lists."""
    listed = load_params(params_path).methods
    methods = tuple(m for m in METHODS if m in listed)  # the registry's order, as the report's
    lines = [
        "  download:",
        f"    cmd: python stages/download.py --out {DATA}",
        *_list("deps", code_deps("stages/download.py"), 4),
        "    params:", "      - data",
        *_list("outs", [DATA], 4),
        "",
        "  subsample:",
        f"    cmd: python stages/subsample.py --raw {DATA} --out {SPLITS}",
        *_list("deps", [*code_deps("stages/subsample.py"), DATA], 4),
        "    params: [seed, data.dataset, subsample]",
        *_list("outs", [SPLITS], 4),
        "",
    ]
    for name in methods:
        lines += _pretrain(name, method_class(name))
    lines += ["  # The untrained encoder of the same architecture (its `model` from params.yaml): what pretraining"
              " bought.",
              *_evaluate("random", (*STAGE_PARAMS, "model"))]
    for name in methods:
        lines += _evaluate(name, STAGE_PARAMS)
    figures = ("group_accuracy", "pretrain_loss", "class_counts", "paired_differences", *section_figures(methods))
    every_param = [*(f.name for f in dataclasses.fields(Params) if f.name != "blocks"), *declared().blocks]
    lines += [
        "  report:",
        "    cmd: >-",
        f"      python stages/report.py --metrics reports/metrics --history reports/pretrain --splits {SPLITS}",
        "      --out reports",
        *_list("deps", [*code_deps("stages/report.py", methods), "presets", "reports/metrics",
                        "reports/pretrain", f"{SPLITS}/summary.json"], 4),
        "    # The report's settings table shows every param, so it reads them all.",
        f"    params: [{', '.join(every_param)}]",
        "    # `dvc metrics show`: one row per method, a few headline numbers (fractions; the keys of",
        "    # sdclr.report.aggregate.SCORES).",
        *_uncached("metrics", [f"reports/scores/{m}.json" for m in ("random", *methods)]),
        *_uncached("outs", ["reports/summary.json", "reports/pretrain_loss.csv", "reports/report.md"]),
        *_uncached("plots", [f"reports/figures/{f}.png" for f in figures]),
        "",
    ]
    return HEADER + "\n".join(lines) + "\n" + PLOTS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml differs from what would be written")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml",
                        help="the params file whose methods it lists")
    parser.add_argument("--out", type=Path, default=ROOT / "dvc.yaml")
    args = parser.parse_args(argv)
    text = render(args.params)
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is not current: run `python -m sdclr.pipeline.dvc_stages` and commit it.",
                  file=sys.stderr)
            sys.exit(1)
        print(f"{args.out} is current.")
        return
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
