"""The report stage's work: metrics files → tables, paired verdicts, figures and report.md.

Split by job: :mod:`~sdclr.report.aggregate` (metrics files → numbers),
:mod:`~sdclr.report.claims` (the methods' published claims → verdicts), :mod:`~sdclr.report.markdown`
(tables and notes), :mod:`~sdclr.report.figures`, :mod:`~sdclr.report.deviations` (the run against
its paper's recipe), and a method family's own section (:mod:`~sdclr.report.bcl`, :mod:`~sdclr.report.gh`),
which its classes name (``report_section``).

Every number is mean ± sample std (n − 1) over splits; with one split the std is ``—``,
never 0. Balancedness is reported both ways docs/recipes.md describes: the authors' mean over
splits of the per-split group std, and the std of the split-averaged group accuracies.
Accuracies, balancedness and their differences are fractions in [0, 1] in every file written
here, as in the evaluate stages' metrics files; only report.md and the figures show %.
Claims (each method's own, e.g. SDCLR over SimCLR, and any method over the untrained encoder)
are judged by paired differences over splits with a Student-t interval (:mod:`sdclr.stats`), and
once more family-wise: each source's claims are one family, their paired t p-values adjusted by
Holm's method, so a reader knows which verdicts survive testing that many claims at once.

Everything written here is a function of the metrics files, histories and params only, so a
re-run of the same commit gives the same bytes; machine timings live in reports/cost.json.

What the report stage writes under its ``--out`` folder (dvc.yaml declares each):

- ``scores/<method>.json``: a few flat headline numbers per method, the DVC metrics
  (``dvc metrics show`` prints one row per file, ``dvc exp show`` one column per key);
- ``summary.json``: the whole aggregate and every paired difference;
- ``pretrain_loss.csv``: every method's and split's pretraining loss in one long table
  (method, split, epoch, loss), the data of the one overlaid ``dvc plots show`` loss plot;
- ``report.md`` and ``figures/*.png``.
"""


from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from sdclr.config import as_flat_dict
from sdclr.metrics import few_shot_label
from sdclr.registry import METHODS, method_class
from sdclr.report import bcl, gh
from sdclr.report.aggregate import (
    aggregate,
    load_metrics,
    load_per_image,
    loss_table,
    probe_titles,
    scores,
    write_scores,
)
from sdclr.report.claims import compare, undecided_section, verdict_sections
from sdclr.report.figures import plot_class_counts, plot_group_bars, plot_loss_curves, plot_paired_differences
from sdclr.report.markdown import markdown_table, numerics_note, reference_section, uncertainty_note
from sdclr.storage.io import write_bytes, write_json

#: a method family's own report section, by the key its classes name (``Method.report_section``):
#: ``f(per_image, params, figures_dir) -> markdown lines``, and the figures it draws
#: (``reports/figures/<name>.png``, declared in dvc.yaml)
SECTIONS = {"bcl": (bcl.weight_section, ("bcl_w_by_group",)), "gh": (gh.prior_section, ("gh_prior",))}


def section_figures(methods) -> tuple[str, ...]:
    """The figures the own sections of ``methods`` draw, each once."""
    keys = dict.fromkeys(method_class(m).report_section for m in methods if method_class(m).report_section)
    return tuple(name for key in keys for name in SECTIONS[key][1])


def method_sections(methods: list[str], per_image: pd.DataFrame, params, figures: Path) -> list[str]:
    """The own report sections of the methods that ran, each once (BCL-I and BCL-D share BCL's)."""
    md = []
    for key in dict.fromkeys(method_class(m).report_section for m in methods if method_class(m).report_section):
        md += SECTIONS[key][0](per_image, params, figures)
    return md


def few_shot_words(few_shot: list, fewshot_total: int) -> str:
    """The few-shot subsets the probes trained on, in words (the split's S_b with its size)."""
    if few_shot == [few_shot[0]] and isinstance(few_shot[0], float):
        return f"its few-shot subset ({fewshot_total} images)"
    named = [f"S_b ({fewshot_total} images)" if isinstance(e, float) else few_shot_label(e) for e in few_shot]
    return f"its few-shot subsets ({', '.join(named)}; nested, the first one headline)"


def selection_words(protocol: str, val_total: int) -> str:
    if protocol == "bcl":
        return f"the last epoch's head as in BCL's protocol (the validation hold-out of {val_total} images not used)"
    return f"epoch chosen on the validation hold-out ({val_total} images)"


def write_report(metrics_root: Path, history_root: Path, splits_summary: Path, params, out_dir: Path,
                 deviations: list[str]) -> dict:
    """scores/<method>.json, summary.json, pretrain_loss.csv, report.md and figures/*.png under
    ``out_dir``; returns the aggregate."""
    methods = [m for m in METHODS if m in params.methods]  # the report's order: the registry's
    df = load_metrics(metrics_root, ("random", *methods))
    agg = aggregate(df)
    titles = probe_titles(df)
    paired = compare(df)
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    plot_group_bars(agg, figures / "group_accuracy.png", titles)
    has_loss = plot_loss_curves(history_root, figures / "pretrain_loss.png")
    summary = json.loads(Path(splits_summary).read_text())
    plot_class_counts(summary, figures / "class_counts.png")
    write_json(out_dir / "summary.json", {**agg, "paired_differences": paired})
    write_scores(scores(agg, ("random", *methods)), out_dir / "scores")
    write_bytes(out_dir / "pretrain_loss.csv", loss_table(history_root).encode())

    n_splits = int(df["split"].nunique())
    lt = summary["splits"][0]
    md = [
        f"# SDCLR reproduction report — {params.data.dataset}",
        "",
        f"Long-tail subsets: imbalance ratio {summary['imbalance_ratio']:g}, {lt['longtail_total']} images per split, "
        f"{n_splits} split(s) evaluated; probes trained on the balanced pool ({summary['pool_total']} images) "
        f"or {few_shot_words(params.evaluate.few_shot, lt['fewshot_total'])}, "
        f"{selection_words(params.evaluate.probe.protocol, summary['val_total'])}, reported on the official test "
        "set. Accuracy is the mean of per-class accuracies (%); groups are the long-tail Major/Moderate/Minor "
        "classes; mean ± sample std over splits.",
        "",
        *numerics_note(df),
        *uncertainty_note(n_splits),
    ]
    for kind, title in titles.items():
        md += [f"## {title}", "", markdown_table(agg, kind), ""]
    plot_paired_differences(paired, figures / "paired_differences.png")
    md += verdict_sections(paired, figures / "paired_differences.png")
    md += undecided_section(paired, n_splits)
    md += method_sections(methods, load_per_image(history_root), params, figures)
    md += reference_section(params, agg)
    md += ["## Figures", "", "![group accuracy](figures/group_accuracy.png)", ""]
    if has_loss:
        md += ["![pretraining loss](figures/pretrain_loss.png)", ""]
    md += ["![class counts](figures/class_counts.png)", "",
           "## Cost", "", "Pretraining and evaluation times depend on the machine, so they are kept out of this "
           "file (which must not change when nothing it depends on did): see `reports/cost.json` "
           "(`python -m sdclr.runtime.cost` prints it as a table) and the MLflow runs.", "",
           "## Deviations from the paper's recipe", "", *[f"- {d}" for d in deviations], "",
           "## Settings", "", "| param | value |", "|---|---|",
           *[f"| `{k}` | `{v}` |" for k, v in as_flat_dict(params).items()], ""]
    write_bytes(out_dir / "report.md", "\n".join(md).encode())
    return agg
