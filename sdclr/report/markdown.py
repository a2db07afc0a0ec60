"""The report's markdown pieces that are not claims: the accuracy tables and the notes on numerics,
uncertainty and published reference numbers."""

from __future__ import annotations

import pandas as pd

from sdclr.config import param
from sdclr.data.datasets import DATASETS
from sdclr.report.aggregate import GROUPS, pct, pm, reported_methods
from sdclr.report.published import PUBLISHED
from sdclr.stats import CONFIDENCE


def markdown_table(agg: dict, kind: str) -> str:
    head = ("| method | accuracy | major | moderate | minor | balancedness ↓ (mean of per-split std) "
            "| std of mean groups ↓ | splits |")
    lines = [head, "|" + "---|" * 8]
    for method in reported_methods(agg):
        e = agg[method].get(kind)
        if e is None:
            continue
        cells = [pm(e[f"{c}_mean"], e[f"{c}_std"]) for c in ("accuracy", *GROUPS, "balancedness")]
        spread = pct(e["balancedness_of_mean_groups"])
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {spread:.2f} | {e['splits']} |")
    return "\n".join(lines)


def numerics_note(df: pd.DataFrame) -> list[str]:
    """Which numerics made the evaluations' numbers: bytes-portable or tied to a machine."""
    kinds = sorted(set(df["numerics"]))
    if all(k.startswith("portable") for k in kinds):
        return [f"Numerics: {kinds[0]} per stage, so every number here comes out the same, byte for byte, on any "
                "x86-64 CPU with AVX2 (`numerics: portable`); a GPU, or `numerics: native`, gives numbers of its own.",
                ""]
    return [f"Numerics: {'; '.join(kinds)}. These numbers belong to that hardware: another CPU or GPU gives "
            "different digits (`numerics: portable` makes a CPU run the same on any x86-64 CPU).", ""]


def uncertainty_note(n_splits: int) -> list[str]:
    if n_splits >= 2:
        return [f"{n_splits} splits: every table shows mean ± sample std over splits, and each claim a paired "
                f"{CONFIDENCE:.0%} interval.", ""]
    return ["**One split: this run measures no uncertainty.** The ± column shows `—`, and no claim can be "
            "decided (every verdict is *inconclusive*): a difference between two methods on one long-tail draw "
            "cannot be told from split-to-split noise. For intervals and verdicts, run several splits, e.g. "
            "`bash scripts/reproduce.sh --preset fmnist_gpu` (Fashion-MNIST-LT, 5 splits, the paper's ResNet-18 "
            "width on a GPU) or `dvc exp run -S 'subsample.splits=[0,1,2,3,4]'` on this configuration.", ""]


def reference_section(params, agg: dict) -> list[str]:
    """Published numbers for the same dataset only, and beside them ours with the difference
    when this run shares the paper's protocol and settings (the row's ``protocol``); when it
    does not, the paper's table alone and the keys that differ: no subtraction across protocols."""
    dataset = params.data.dataset
    ref = PUBLISHED.get(dataset)
    if ref is None:
        return []
    md = [f"## Reference: {ref.title}", ""]
    differ = [f"`{key}` = {param(params, key)} (paper: {theirs})" for key, theirs in ref.protocol.items()
              if param(params, key) != theirs]
    if differ:
        md += ["Not subtracted from ours: this run's evaluation protocol or settings differ from the paper's ("
               + "; ".join(differ) + f"). `bash scripts/reproduce.sh --preset {DATASETS[dataset].recipe_preset}` "
               "runs the paper's.", "", "| method | " + " | ".join(ref.columns) + " |",
               "|" + "---|" * (len(ref.columns) + 1)]
        md += [f"| {m} | " + " | ".join(cells) + " |" for m, cells in ref.rows.items()]
        return md + [""]
    md += ["Like for like: this run uses the paper's protocol and settings ("
           + ", ".join(f"`{k}` = {v}" for k, v in ref.protocol.items()) + "). Ours is the mean ± sample std over "
           "this run's splits (%), the paper's as published; the difference is ours minus the paper's, in points.",
           "", "| method | measure | paper | ours | splits | ours − paper |", "|---|---|---|---|---|---|"]
    for method, cells in ref.rows.items():
        for column, (kind, field), cell in zip(ref.columns, ref.measures, cells):
            entry = agg.get(method, {}).get(kind)
            if entry is None:
                md.append(f"| {method} | {column} | {cell} | not run | 0 | — |")
                continue
            diff = pct(entry[f"{field}_mean"]) - float(cell.split("±")[0])
            md.append(f"| {method} | {column} | {cell} | {pm(entry[f'{field}_mean'], entry[f'{field}_std'])} | "
                      f"{entry['splits']} | {diff:+.2f} |")
    return md + [""]
