"""Aggregate metrics files into tables, paired verdicts, figures and report.md.

Every number is mean ± sample std (n − 1) over splits; with one split the std is ``—``,
never 0. Balancedness is reported both ways docs/recipes.md describes: the authors' mean over
splits of the per-split group std, and the std of the split-averaged group accuracies.
Accuracies, balancedness and their differences are fractions in [0, 1] in every file written
here, as in the evaluate stages' metrics files; only report.md and the figures show %.
Claims (SDCLR over SimCLR, sbid over SimCLR, any method over the untrained encoder) are
judged by paired differences over splits with a Student-t interval (:mod:`sdclr.stats`), and
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from sdclr.config import as_flat_dict
from sdclr.data.datasets import DATASETS
from sdclr.errors import DataError
from sdclr.io import write_bytes, write_json
from sdclr.methods import METHODS, method_class
from sdclr.plots import _pyplot, plot_class_counts, save_figure
from sdclr.presets import PRESET_DIR
from sdclr.stats import (AGREES, ALPHA, CONFIDENCE, DISAGREES, INCONCLUSIVE, holm, paired_difference,
                         splits_to_decide, verdict_from_p)

KINDS = {"full_shot": "Linear probe, full-shot", "few_shot": "Linear probe, few-shot (1 % per class)", "knn": "kNN"}
GROUPS = ("major", "moderate", "minor")
METHOD_ORDER = ("random", *METHODS)

@dataclass(frozen=True)
class Claim:
    """A published direction: ``a`` − ``b`` on ``metric`` of probe ``kind`` should have sign ``direction``."""

    a: str
    b: str
    kind: str
    metric: str  # accuracy | minor | balancedness
    direction: int
    source: str


def claims() -> list[Claim]:
    sdclr = "SDCLR paper (Jiang et al. 2021)"
    out = [Claim("sdclr", "simclr", k, "accuracy", +1, sdclr) for k in KINDS]
    out += [Claim("sdclr", "simclr", k, "minor", +1, sdclr) for k in ("full_shot", "few_shot")]
    out += [Claim("sdclr", "simclr", k, "balancedness", -1, sdclr) for k in ("full_shot", "few_shot")]
    out += [Claim("sbid", "simclr", k, "accuracy", +1, "Cao & Wu 2024") for k in KINDS]
    bcl, ts, gh = "BCL (Zhou et al. 2022)", "TS (Kukleva et al. 2023)", "GH (Zhou et al. 2023)"
    for a, b, source in (("bcl_i", "simclr", bcl), ("bcl_d", "sdclr", bcl), ("simclr_ts", "simclr", ts),
                         ("simclr_gh", "simclr", gh), ("sdclr_gh", "sdclr", gh)):
        out += [Claim(a, b, k, "accuracy", +1, source) for k in KINDS]
        out += [Claim(a, b, k, "minor", +1, source) for k in ("full_shot", "few_shot")]
    out += [Claim(a, b, k, "balancedness", -1, gh) for a, b in (("simclr_gh", "simclr"), ("sdclr_gh", "sdclr"))
            for k in ("full_shot", "few_shot")]
    out += [Claim(m, "random", k, "accuracy", +1, "pretraining helps") for m in METHODS for k in KINDS]
    return out


def load_metrics(metrics_root: Path) -> pd.DataFrame:
    """One row per (method, split, kind) with accuracy, group accuracies and balancedness (fractions)."""
    rows = []
    for path in sorted(Path(metrics_root).glob("*/split*.json")):
        m = json.loads(path.read_text())
        for kind in KINDS:
            r = m[kind]
            rows.append({
                "method": m["method"], "split": m["split"], "kind": kind, "numerics": m.get("numerics", "not recorded"),
                "accuracy": r["accuracy"], "balancedness": r["balancedness"],
                **{g: r["groups"][g] for g in GROUPS},
            })
    if not rows:
        raise DataError(f"no metrics files under {metrics_root}; run the evaluate stages first (`dvc repro`).")
    df = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return df.sort_values(["kind", "method", "split"], key=lambda s: s.map(order) if s.name == "method" else s)


#: decimals kept for fractions in the JSON files (1e-5 = 0.001 accuracy points)
DECIMALS = 5


def _round(x: float) -> float:
    return round(float(x), DECIMALS)


def _round_p(p: float | None) -> float | None:
    """A p-value kept to 4 significant digits: fixed decimals would turn a small p (a clearly
    decided claim, e.g. 2e-7) into 0, which a p-value never is unless the splits all agree exactly."""
    return None if p is None else float(f"{p:.4g}")


def _std(values: pd.Series) -> float | None:
    """Sample std over splits; None with one split (no spread can be measured from one draw)."""
    return _round(values.std(ddof=1)) if len(values) >= 2 else None


def aggregate(df: pd.DataFrame) -> dict:
    """{method: {kind: {metric_mean, metric_std (None for one split), ..., splits}}}, fractions."""
    out: dict = {}
    for (method, kind), g in df.groupby(["method", "kind"], sort=False):
        entry = {"splits": int(len(g))}
        for col in ("accuracy", *GROUPS, "balancedness"):
            entry[f"{col}_mean"] = _round(g[col].mean())
            entry[f"{col}_std"] = _std(g[col])
        entry["balancedness_of_mean_groups"] = _round(np.std([g[x].mean() for x in GROUPS]))
        out.setdefault(method, {})[kind] = entry
    return out


def compare(df: pd.DataFrame) -> list[dict]:
    """Every claim whose two methods are in ``df``: paired difference, interval and verdict, the
    paired t test's p, and the p and verdict family-wise (Holm over the claims of its source)."""
    out, tests = [], []
    for c in claims():
        values = {}
        for method in (c.a, c.b):
            rows = df[(df["method"] == method) & (df["kind"] == c.kind)]
            values[method] = dict(zip(rows["split"].astype(int), rows[c.metric].astype(float)))
        if not values[c.a] or not values[c.b] or not set(values[c.a]) & set(values[c.b]):
            continue
        d = paired_difference(values[c.a], values[c.b])
        tests.append(d)
        out.append({"a": c.a, "b": c.b, "kind": c.kind, "metric": c.metric, "direction": c.direction,
                    "source": c.source, "splits": d.n, "mean": _round(d.mean),
                    "sd": None if d.sd is None else _round(d.sd), "low": None if d.low is None else _round(d.low),
                    "high": None if d.high is None else _round(d.high), "verdict": d.verdict(c.direction),
                    "p": _round_p(d.p)})
    for source in dict.fromkeys(r["source"] for r in out):
        family = [i for i, r in enumerate(out) if r["source"] == source]
        for i, p in zip(family, holm([tests[i].p for i in family])):
            out[i]["p_holm"] = _round_p(p)
            out[i]["verdict_family"] = verdict_from_p(tests[i].mean, p, out[i]["direction"])
    return out


#: the columns of ``dvc metrics show``: a few headline numbers a reader compares across methods
SCORES = {
    "full_shot": ("full_shot", "accuracy_mean"),
    "few_shot": ("few_shot", "accuracy_mean"),
    "knn": ("knn", "accuracy_mean"),
    "full_shot_minor": ("full_shot", "minor_mean"),
    "full_shot_balancedness": ("full_shot", "balancedness_mean"),
}


def scores(agg: dict) -> dict[str, dict]:
    """{method: flat headline numbers}: mean accuracy of each probe, the full-shot Minor-group
    accuracy and balancedness (std of the group accuracies, lower = more balanced), all
    fractions and means over splits, and how many splits they average. Every method of the
    registry has an entry (DVC declares one file each): ``{"splits": 0}`` when it did not run
    (the later methods, while ``later_methods.splits`` is empty)."""
    out = {m: {"splits": 0} for m in METHOD_ORDER}
    for method in _methods(agg):
        kinds = agg[method]
        row = {key: kinds[kind][field] for key, (kind, field) in SCORES.items() if kind in kinds}
        row["splits"] = max(k["splits"] for k in kinds.values())
        out[method] = row
    return out


def loss_table(history_root: Path) -> str:
    """Every ``<method>/split<k>.csv`` history as one long CSV: method, split, epoch, loss.

    One file whatever the methods and splits, so one plot overlays them all (dvc.yaml's
    top-level ``plots``) without naming a split; the values are the histories' own text."""
    files = sorted(Path(history_root).glob("*/split*.csv"))
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    files.sort(key=lambda f: (order.get(f.parent.name, len(order)), f.parent.name, int(f.stem.removeprefix("split"))))
    lines = ["method,split,epoch,loss"]
    for f in files:
        h = pd.read_csv(f, dtype=str)  # no float re-formatting
        split = f.stem.removeprefix("split")
        lines += [f"{f.parent.name},{split},{e},{loss}" for e, loss in zip(h["epoch"], h["loss"])]
    return "\n".join(lines) + "\n"


def _pct(fraction: float) -> float:
    """A fraction of the JSON files in %, for report.md and the figures (3 decimals, as it is stored)."""
    return round(100 * fraction, DECIMALS - 2)


def _pm(mean: float, std: float | None) -> str:
    """A fraction's mean ± std in % (``—`` for no std)."""
    return f"{_pct(mean):.2f} ± {'—' if std is None else f'{_pct(std):.2f}'}"


def _methods(agg: dict) -> list[str]:
    return [m for m in METHOD_ORDER if m in agg] + [m for m in agg if m not in METHOD_ORDER]


def markdown_table(agg: dict, kind: str) -> str:
    head = "| method | accuracy | major | moderate | minor | balancedness ↓ (mean of per-split std) | std of mean groups ↓ | splits |"
    lines = [head, "|" + "---|" * 8]
    for method in _methods(agg):
        e = agg[method].get(kind)
        if e is None:
            continue
        cells = [_pm(e[f"{c}_mean"], e[f"{c}_std"]) for c in ("accuracy", *GROUPS, "balancedness")]
        spread = _pct(e["balancedness_of_mean_groups"])
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {spread:.2f} | {e['splits']} |")
    return "\n".join(lines)


_METRIC_WORDS = {"accuracy": "accuracy", "minor": "Minor-group accuracy", "balancedness": "balancedness (group std)"}
_SHORT_KIND = {"full_shot": "full-shot", "few_shot": "few-shot", "knn": "kNN"}


def _p_text(p: float | None) -> str:
    """A p-value as report.md shows it: 3 decimals, ``< 0.001`` below, ``—`` when not tested."""
    if p is None:
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _tested(rows: list[dict]) -> int:
    """How many claims of ``rows`` have a p-value: the family size Holm's correction counts."""
    return sum(r["p"] is not None for r in rows)


def comparison_table(rows: list[dict]) -> str:
    """One source's claims: the per-claim verdict (interval), then its p-value and the family-wise
    verdict (Holm over these rows)."""
    lines = ["| claim | probe | metric | claimed | mean difference | 95 % interval | splits | verdict | p (paired t) "
             f"| Holm p (family of {_tested(rows)}) | family-wise verdict |", "|" + "---|" * 11]
    for r in rows:
        interval = "—" if r["low"] is None else f"[{_pct(r['low']):+.2f}, {_pct(r['high']):+.2f}]"
        verdict = r["verdict"] + (" (one split)" if r["splits"] == 1 else "")
        lines.append(f"| {r['a']} − {r['b']} | {_SHORT_KIND[r['kind']]} | {_METRIC_WORDS[r['metric']]} | "
                     f"{'> 0' if r['direction'] > 0 else '< 0'} | {_pct(r['mean']):+.2f} | {interval} | {r['splits']} | "
                     f"**{verdict}** | {_p_text(r['p'])} | {_p_text(r['p_holm'])} | **{r['verdict_family']}** |")
    return "\n".join(lines)


def chance_sentence(rows: list[dict]) -> str:
    """How many decided verdicts one family would give by chance alone if no claim were true:
    each tested claim is decided with probability 1 − CONFIDENCE under H0, so N × 0.05 on
    average whatever their dependence; Holm bounds the chance of any false decision instead."""
    n, untested = _tested(rows), len(rows) - _tested(rows)
    if n == 0:
        return "No claim here has a p-value (one split each), so none can be decided, per claim or family-wise."
    level = f"{100 * CONFIDENCE:.0f} %"
    claims_ = f"{n} claims tested at {level} each" if n > 1 else f"1 claim tested at {level}"
    out = (f"With {claims_}, on average {n * ALPHA:.2f} would be decided by chance alone if no method differed; "
           f"Holm's correction keeps the chance of any false decision in this family at most {100 * ALPHA:.0f} %.")
    if untested:
        out += f" The other {untested} claim(s) have one split and no p-value, so they are not counted."
    return out


#: what each source of claims says, in report.md's order (every ``Claim.source`` has a line here)
CLAIM_HEADINGS = {
    "SDCLR paper (Jiang et al. 2021)": "SDCLR should beat SimCLR in accuracy, most on Minor classes, and be more "
    "balanced.",
    "Cao & Wu 2024": "The single-branch method (sbid) should match or beat SimCLR, at about half the compute per image "
    "(its cost is in reports/cost.json: machine-dependent).",
    "BCL (Zhou et al. 2022)": "Boosting the augmentation of the images the network has not memorised should beat the "
    "method it boosts (BCL-I over SimCLR, BCL-D over SDCLR), most on Minor classes.",
    "TS (Kukleva et al. 2023)": "A cosine temperature schedule should beat SimCLR's constant τ, most on Minor classes.",
    "GH (Zhou et al. 2023)": "Geometric Harmonization should beat the method it is added to (SimCLR, SDCLR), most on "
    "Minor classes, and make it more balanced.",
    "pretraining helps": "Every pretrained encoder should beat the untrained one (`random`).",
}


def verdict_sections(rows: list[dict], figure: Path) -> list[str]:
    """report.md's claims sections, one per source, with how the intervals and the family-wise
    verdicts are computed, and a link to the forest figure of every claim (``figure``, drawn by
    :func:`plot_paired_differences`)."""
    md = ["## Claims checked on this run", "",
          f"Paired over splits: for each split k the difference d_k = a_k − b_k (both methods trained on the "
          f"same long-tail subset), then mean(d) with a {CONFIDENCE:.0%} Student-t interval "
          "mean ± t(0.975, n − 1) · s / √n (s = sample std of the d_k, n = splits). Verdict: **agrees** when the "
          "interval lies on the claimed side of 0, **disagrees** when it lies on the other side, **inconclusive** "
          "when it contains 0 or there is only one split (no interval). Differences in accuracy points; "
          "balancedness is the std of the three group accuracies (lower = more balanced). "
          "The paired t test's two-sided p (t = mean / (s / √n)) is below 0.05 exactly when the interval "
          "excludes 0. The claims under one heading below form a family, tested together: Holm's correction "
          "multiplies the smallest of its N p-values by N, the next by N − 1, and so on (kept non-decreasing, "
          "capped at 1), and the **family-wise verdict** decides a claim only when this Holm p is below 0.05, "
          "which keeps the chance of any false decision in the family at most 5 %, however the claims depend "
          "on each other.", "",
          f"![paired differences](figures/{figure.name})", "",
          "Every claim at a glance, each heading on its own scale: the paired mean difference with its 95 % "
          "interval, turned so that right of 0 is the claimed direction; colour is the per-claim verdict, a "
          "filled dot a claim still decided family-wise.", ""]
    for source, what in CLAIM_HEADINGS.items():
        sub = [r for r in rows if r["source"] == source]
        if sub:
            md += [f"### {source}", "", what, "", comparison_table(sub), "", chance_sentence(sub), ""]
    return md


#: a claim's per-claim verdict as the forest figure colours it
VERDICT_COLOURS = {AGREES: "#2ca02c", DISAGREES: "#d62728", INCONCLUSIVE: "#8c8c8c"}


def _claim_label(r: dict) -> str:
    """A figure row's name: ``sdclr − simclr few-shot Minor``; a claim of a − b < 0 says its sign is flipped."""
    metric = {"accuracy": "accuracy", "minor": "Minor", "balancedness": "balancedness"}[r["metric"]]
    return f"{r['a']} − {r['b']} {_SHORT_KIND[r['kind']]} {metric}" + (" (sign flipped)" if r["direction"] < 0 else "")


def plot_paired_differences(rows: list[dict], path: Path) -> None:
    """A forest plot of :func:`compare`'s rows: one panel per claim source (each its own x scale,
    since "pretraining helps" differs by tens of points where the papers' claims differ by one),
    one row per claim with its mean difference and 95 % interval in points, multiplied by the
    claimed direction so that right of 0 always reads "as claimed". Colour: the per-claim verdict;
    a filled dot: still decided family-wise (Holm), hollow: not."""
    plt = _pyplot()
    sources = list(dict.fromkeys(r["source"] for r in rows))
    if not sources:
        _message_figure(path, "no claim could be checked: no two methods of a claim ran on a common split")
        return
    sizes = [sum(r["source"] == s for r in rows) for s in sources]
    # every row the same height: the panels' heights follow their rows, titles and ticks add 0.75 in each
    fig, axes = plt.subplots(len(sources), 1, figsize=(9, 1.1 + sum(0.27 * n + 0.75 for n in sizes)),
                             gridspec_kw={"height_ratios": sizes}, squeeze=False)
    for ax, source in zip(axes[:, 0], sources):
        sub = [r for r in rows if r["source"] == source]
        for y, r in enumerate(sub):
            colour, x = VERDICT_COLOURS[r["verdict"]], r["direction"] * _pct(r["mean"])
            if r["low"] is not None:
                low, high = sorted(r["direction"] * _pct(v) for v in (r["low"], r["high"]))
                ax.errorbar(x, y, xerr=[[x - low], [high - x]], fmt="none", ecolor=colour, elinewidth=2, capsize=3)
            filled = r["verdict_family"] != INCONCLUSIVE
            ax.plot(x, y, "o", ms=7, mew=1.8, mec=colour, mfc=colour if filled else "white")
        ax.axvline(0, color="black", lw=1)
        ax.set_yticks(range(len(sub)), [_claim_label(r) for r in sub], fontsize=8)
        ax.set_ylim(len(sub) - 0.5, -0.5)
        tested = f"Holm family of {_tested(sub)}" if _tested(sub) else "one split: no interval, nothing tested"
        ax.set_title(f"{source} ({tested})", fontsize=9, loc="left", fontweight="bold")
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("paired mean difference in the claimed direction, accuracy points, with 95 % interval\n"
                           "(right of 0 = as claimed; sign flipped where lower is claimed, i.e. balancedness)",
                           fontsize=8)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="s", ms=8, color=c, label=v) for v, c in VERDICT_COLOURS.items()]
    handles += [Line2D([], [], ls="", marker="o", ms=7, mew=1.8, color="black", label="decided family-wise (Holm)"),
                Line2D([], [], ls="", marker="o", ms=7, mew=1.8, color="black", mfc="white",
                       label="not decided family-wise")]
    height = fig.get_figheight()
    fig.legend(handles=handles, loc="upper center", ncol=5, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))
    save_figure(fig, path)


def undecided_section(rows: list[dict], n_splits: int) -> list[str]:
    """The published claims this run leaves inconclusive, and why, from the measured spread.

    An interval's half-width is t · s / √n (s: the split-to-split std of the paired
    difference), so a claim stays open when its mean difference is small against s. For
    each, the splits the same mean and s would need before the interval excluded 0.
    """
    open_ = [r for r in rows if r["source"] != "pretraining helps" and r["verdict"] == "inconclusive"
             and r["sd"] is not None]
    published = [r for r in rows if r["source"] != "pretraining helps"]
    if n_splits < 2 or not published:
        return []
    md = ["## What this run cannot decide", "",
          f"{len(open_)} of the {len(published)} published claims checked here stay *inconclusive* on {n_splits} "
          "splits. A paired interval is mean ± t · s / √n, with s the split-to-split std of the difference: a claim "
          "stays open while its mean difference is small against s. The last column is how many splits the same "
          "mean difference and spread would need before the interval excluded 0 (a rough guide: both are "
          "estimated from these few splits).", ""]
    if not open_:
        return md[:2] + [f"Every published claim checked here is decided on {n_splits} splits.", ""]
    means, sds = [abs(_pct(r["mean"])) for r in open_], [_pct(r["sd"]) for r in open_]
    md[2] += (f" Here the open mean differences are {min(means):.2f}–{max(means):.2f} points, against a "
              f"split-to-split std of {min(sds):.2f}–{max(sds):.2f} points.")
    md += ["| claim | probe | metric | mean difference | split-to-split std | 95 % half-width | splits to exclude 0 "
           "| verdict it would reach |", "|" + "---|" * 8]
    for r in open_:
        need = splits_to_decide(r["mean"], r["sd"])
        half = (r["high"] - r["low"]) / 2
        then = "—" if need is None else ("agrees" if r["mean"] * r["direction"] > 0 else "disagrees")
        md.append(f"| {r['a']} − {r['b']} | {_SHORT_KIND[r['kind']]} | {_METRIC_WORDS[r['metric']]} | "
                  f"{_pct(r['mean']):+.2f} | {_pct(r['sd']):.2f} | {_pct(half):.2f} | "
                  f"{'more than 1000' if need is None else f'≈ {need}'} | {then} |")
    return md + [""]


def numerics_note(df: pd.DataFrame) -> list[str]:
    """Which numerics made the evaluations' numbers: bytes-portable or tied to a machine."""
    kinds = sorted(set(df["numerics"]))
    if all(k.startswith("portable") for k in kinds):
        return [f"Numerics: {kinds[0]} per stage, so every number here comes out the same, byte for byte, on any "
                "x86-64 CPU with AVX2 (`numerics: portable`); a GPU, or `numerics: native`, gives numbers of its own.",
                ""]
    return [f"Numerics: {'; '.join(kinds)}. These numbers belong to that hardware: another CPU or GPU gives "
            "different digits (`numerics: portable` makes a CPU run the same on any x86-64 CPU).", ""]


def _legend_outside(fig, ax, ncol: int) -> None:
    """One legend above the axes, outside every bar and curve."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=ncol, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1.0))


def plot_group_bars(agg: dict, path: Path) -> None:
    """Accuracy per group and probe; y zoomed to the data; error bars (± std) only with ≥ 2 splits."""
    plt = _pyplot()
    methods = _methods(agg)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharey=True)
    width = 0.8 / max(1, len(methods))
    cols = ("accuracy", *GROUPS)
    lows, highs = [], []
    for ax, kind in zip(axes, KINDS):
        for i, m in enumerate(methods):
            e = agg[m][kind]
            means = np.array([_pct(e[f"{c}_mean"]) for c in cols])
            stds = None if e["splits"] < 2 else np.array([_pct(e[f"{c}_std"]) for c in cols])
            ax.bar(np.arange(4) + i * width, means, width, yerr=stds, capsize=2, label=m)
            lows.append((means - (0 if stds is None else stds)).min())
            highs.append((means + (0 if stds is None else stds)).max())
        ax.set_xticks(np.arange(4) + width * (len(methods) - 1) / 2)
        ax.set_xticklabels(["all", *GROUPS])
        ax.set_title(KINDS[kind], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    pad = max(1.0, 0.08 * (max(highs) - min(lows)))
    axes[0].set_ylim(max(0.0, min(lows) - pad), min(100.0, max(highs) + pad))
    n_splits = max(agg[m][k]["splits"] for m in methods for k in KINDS)
    axes[0].set_ylabel("test accuracy (%)" + (", ± std over splits" if n_splits >= 2 else ", one split"))
    _legend_outside(fig, axes[0], len(methods))
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    save_figure(fig, path)


def plot_loss_curves(history_root: Path, path: Path) -> bool:
    files = sorted(Path(history_root).glob("*/split*.csv"))
    if not files:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for f in files:
        h = pd.read_csv(f)
        ax.plot(h["epoch"], h["loss"], marker="o", ms=3, label=f"{f.parent.name} split {f.stem.removeprefix('split')}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("pretraining loss (each method its own)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    save_figure(fig, path)
    return True


def write_scores(rows: dict[str, dict], folder: Path) -> None:
    """One small JSON per method, keys in :data:`SCORES` order (the columns of ``dvc metrics show``);
    files of methods no longer reported are removed."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.json"):
        if stale.stem not in rows:
            stale.unlink()
    for method, row in rows.items():
        write_bytes(folder / f"{method}.json", (json.dumps(row, indent=2) + "\n").encode())


def load_per_image(history_root: Path) -> pd.DataFrame:
    """The per-image state of the methods that keep one (BCL's w and score, GH's cluster) at the
    last epoch: method, split, image, class, group and the method's columns (``per_image_split<k>.csv``)."""
    frames = []
    for f in sorted(Path(history_root).glob("*/per_image_split*.csv")):
        frame = pd.read_csv(f)
        frames.append(frame.assign(method=f.parent.name, split=int(f.stem.removeprefix("per_image_split"))))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _rows_with(per_image: pd.DataFrame, column: str) -> pd.DataFrame:
    """The rows of the methods whose per-image state has ``column`` (BCL's w, GH's cluster)."""
    return per_image[per_image[column].notna()] if column in per_image else pd.DataFrame()


def _not_run(figure: Path, method: str) -> None:
    """dvc.yaml declares every figure: one whose method did not run says so."""
    _message_figure(figure, f"{method} did not run: later_methods.splits is empty (--preset later_methods runs it)")


def _message_figure(figure: Path, text: str) -> None:
    """A figure that only says why it has nothing to show (dvc.yaml declares every figure)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9)
    save_figure(fig, figure)


def _axes_per_method(frame: pd.DataFrame, width: float):
    """One panel per method of ``frame`` (in its order), sharing the y axis: (pyplot, methods, figure, axes)."""
    plt = _pyplot()
    methods = list(dict.fromkeys(frame["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(width * len(methods), 3.6), sharey=True, squeeze=False)
    return plt, methods, fig, axes[0]


def bcl_weight_section(weights: pd.DataFrame, figure: Path) -> list[str]:
    """BCL's premise checked on this data: do Minor-class images get a higher w than Major ones?
    (``weights``: :func:`load_per_image`'s table; the rows with a w are BCL's.)

    Mean w per group and method (over splits), the paired Minor − Major difference over splits
    with its interval, and a figure of w's distribution per group (box plots over images)."""
    weights = _rows_with(weights, "w")
    if weights.empty:
        _not_run(figure, "BCL")
        return []
    plt, methods, fig, axes = _axes_per_method(weights, 4.2)
    for ax, m in zip(axes, methods):
        sub = weights[weights["method"] == m]
        ax.boxplot([sub.loc[sub["group"] == g, "w"] for g in GROUPS], showfliers=False)
        ax.set_xticks(range(1, len(GROUPS) + 1), GROUPS)
        ax.set_title(f"{m}: w at the last epoch ({sub['split'].nunique()} split(s))", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("w (RandAugment probability)")
    fig.tight_layout()
    save_figure(fig, figure)

    lines = ["| method | Major | Moderate | Minor | Minor − Major | 95 % interval | splits | premise |", "|" + "---|" * 8]
    for m in methods:
        sub = weights[weights["method"] == m]
        by_split = sub.groupby(["split", "group"])["w"].mean().unstack()
        d = paired_difference(by_split["minor"].to_dict(), by_split["major"].to_dict())
        interval = "—" if d.low is None else f"[{d.low:+.3f}, {d.high:+.3f}]"
        means = [f"{by_split[g].mean():.3f}" for g in GROUPS]
        lines.append(f"| {m} | {' | '.join(means)} | {d.mean:+.3f} | {interval} | {d.n} | **{d.verdict(+1)}** |")
    return ["## BCL: which images get the stronger augmentation", "",
            "BCL's premise: images whose loss stays high (not yet memorised) are more often tail images, so "
            "Minor classes should get a higher w, the probability and strength of their extra RandAugment. "
            "Mean w per group over each split's training images at the last epoch, then over splits; the "
            "Minor − Major difference is paired over splits like the claims above.", "",
            *lines, "", f"![BCL w by group](figures/{figure.name})", ""]


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """½ Σ |p − q| of two distributions over ranks (the shorter padded with zeros)."""
    n = max(len(p), len(q))
    return 0.5 * float(np.abs(np.pad(p, (0, n - len(p))) - np.pad(q, (0, n - len(q)))).sum())


def gh_prior_section(per_image: pd.DataFrame, num_targets: int, figure: Path) -> list[str]:
    """GH's premise checked on this data: does π, the share of images per target, recover the
    long tail? Each split's π and class frequencies, both sorted from the largest, are compared
    by their total-variation distance, beside the distance of the uniform prior a balanced
    assignment (SwAV's) would impose; the gain is paired over splits."""
    clusters = _rows_with(per_image, "cluster")
    if clusters.empty:
        _not_run(figure, "GH")
        return []
    plt, methods, fig, axes = _axes_per_method(clusters, 4.6)
    lines = ["| method | targets used | largest π | TV(π, classes) | TV(uniform, classes) | gain | 95 % interval "
             "| splits | premise |", "|" + "---|" * 9]
    for ax, m in zip(axes, methods):
        sub = clusters[clusters["method"] == m]
        tv_prior, tv_uniform, largest, used = {}, {}, [], []
        for split, rows in sub.groupby("split"):
            prior = np.sort(np.bincount(rows["cluster"].astype(int), minlength=num_targets) / len(rows))[::-1]
            classes = np.sort(rows["class"].value_counts(normalize=True).to_numpy())[::-1]
            tv_prior[split], tv_uniform[split] = total_variation(prior, classes), total_variation(
                np.full(num_targets, 1 / num_targets), classes)
            largest.append(prior[0])
            used.append(int((prior > 0).sum()))
            first = split == sub["split"].min()
            ax.plot(range(1, len(prior) + 1), prior, "o-", color="C0", alpha=0.7, label="π (sorted)" if first else None)
            ax.plot(range(1, len(classes) + 1), classes, "s--", color="C3", alpha=0.7,
                    label="class frequency (sorted)" if first else None)
        ax.axhline(1 / num_targets, color="grey", lw=0.8, ls=":", label="uniform prior")
        ax.set_title(f"{m}: {len(tv_prior)} split(s)", fontsize=10)
        ax.set_xlabel("rank")
        ax.grid(alpha=0.3)
        d = paired_difference(tv_uniform, tv_prior)
        interval = "—" if d.low is None else f"[{d.low:+.3f}, {d.high:+.3f}]"
        lines.append(f"| {m} | {np.mean(used):.1f} of {num_targets} | {np.mean(largest):.3f} | "
                     f"{np.mean(list(tv_prior.values())):.3f} | {np.mean(list(tv_uniform.values())):.3f} | "
                     f"{d.mean:+.3f} | {interval} | {d.n} | **{d.verdict(+1)}** |")
    axes[0].set_ylabel("share of the training images")
    _legend_outside(fig, axes[0], 3)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    save_figure(fig, figure)
    return ["## GH: does the estimated prior π recover the long tail?", "",
            "GH's premise: π, the share of training images whose smoothed logits point to each target at the "
            "last epoch, should follow the classes' frequencies instead of the uniform prior a balanced "
            "assignment imposes. Both sorted from the largest and compared by total-variation distance (0 = "
            "the same shares); the gain is TV(uniform) − TV(π), paired over splits like the claims above.", "",
            *lines, "", f"![GH prior](figures/{figure.name})", ""]


def uncertainty_note(n_splits: int) -> list[str]:
    if n_splits >= 2:
        return [f"{n_splits} splits: every table shows mean ± sample std over splits, and each claim a paired "
                f"{CONFIDENCE:.0%} interval.", ""]
    return ["**One split: this run measures no uncertainty.** The ± column shows `—`, and no claim can be "
            "decided (every verdict is *inconclusive*): a difference between two methods on one long-tail draw "
            "cannot be told from split-to-split noise. For intervals and verdicts, run several splits, e.g. "
            "`bash scripts/reproduce.sh --preset fmnist_gpu` (Fashion-MNIST-LT, 5 splits, the paper's ResNet-18 "
            "width on a GPU) or `dvc exp run -S 'subsample.splits=[0,1,2,3,4]'` on this configuration.", ""]


def reference_section(dataset: str) -> list[str]:
    """Published numbers for the same dataset only (its row's); nothing beside other datasets' results."""
    ref = DATASETS[dataset].paper_reference if dataset in DATASETS else None
    if ref is None:
        return []
    md = [f"## Reference: {ref.title}", "", "| method | " + " | ".join(ref.columns) + " |",
          "|" + "---|" * (len(ref.columns) + 1)]
    md += [f"| {m} | " + " | ".join(cells) + " |" for m, cells in ref.rows.items()]
    return md + [""]


def write_report(metrics_root: Path, history_root: Path, splits_summary: Path, params, out_dir: Path,
                 deviations: list[str]) -> dict:
    """scores/<method>.json, summary.json, pretrain_loss.csv, report.md and figures/*.png under
    ``out_dir``; returns the aggregate."""
    df = load_metrics(metrics_root)
    agg = aggregate(df)
    paired = compare(df)
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    plot_group_bars(agg, figures / "group_accuracy.png")
    has_loss = plot_loss_curves(history_root, figures / "pretrain_loss.png")
    summary = json.loads(Path(splits_summary).read_text())
    plot_class_counts(summary, figures / "class_counts.png")
    write_json(out_dir / "summary.json", {**agg, "paired_differences": paired})
    write_scores(scores(agg), out_dir / "scores")
    write_bytes(out_dir / "pretrain_loss.csv", loss_table(history_root).encode())

    n_splits = int(df["split"].nunique())
    lt = summary["splits"][0]
    md = [
        f"# SDCLR reproduction report — {params.data.dataset}",
        "",
        f"Long-tail subsets: imbalance ratio {summary['imbalance_ratio']:g}, {lt['longtail_total']} images per split, "
        f"{n_splits} split(s) evaluated; probes trained on the balanced pool ({summary['pool_total']} images) "
        f"or its few-shot subset ({lt['fewshot_total']} images), epoch chosen on the validation hold-out "
        f"({summary['val_total']} images), reported on the official test set. Accuracy is the mean of per-class "
        "accuracies (%); groups are the long-tail Major/Moderate/Minor classes; mean ± sample std over splits.",
        "",
        *numerics_note(df),
        *uncertainty_note(n_splits),
    ]
    for kind, title in KINDS.items():
        md += [f"## {title}", "", markdown_table(agg, kind), ""]
    plot_paired_differences(paired, figures / "paired_differences.png")
    md += verdict_sections(paired, figures / "paired_differences.png")
    md += undecided_section(paired, n_splits)
    per_image = load_per_image(history_root)
    md += bcl_weight_section(per_image, figures / "bcl_w_by_group.png")
    md += gh_prior_section(per_image, params.gh.num_targets, figures / "gh_prior.png")
    md += reference_section(params.data.dataset)
    md += ["## Figures", "", "![group accuracy](figures/group_accuracy.png)", ""]
    if has_loss:
        md += ["![pretraining loss](figures/pretrain_loss.png)", ""]
    md += ["![class counts](figures/class_counts.png)", "",
           "## Cost", "", "Pretraining and evaluation times depend on the machine, so they are kept out of this "
           "file (which must not change when nothing it depends on did): see `reports/cost.json` "
           "(`python -m sdclr.cost` prints it as a table) and the MLflow runs.", "",
           "## Deviations from the paper's recipe", "", *[f"- {d}" for d in deviations], "",
           "## Settings", "", "| param | value |", "|---|---|",
           *[f"| `{k}` | `{v}` |" for k, v in as_flat_dict(params).items()], ""]
    write_bytes(out_dir / "report.md", "\n".join(md).encode())
    return agg


#: params that are not part of a paper's recipe (where the data is, how fast it runs) or that
#: depend on the dataset's size; the deviations list ignores them
NOT_RECIPE = {"device", "numerics", "data.dataset", "data.source_dir", "data.download", "subsample.val_per_class",
              "subsample.n_max", "pretrain.checkpoint_every", "pretrain.amp", "pretrain.channels_last",
              "pretrain.compile", "pretrain.compile_mode", "pretrain.nproc", "pretrain.sync_bn", "evaluate.feature_batch_size",
              "sbid.bank_momentum", "sbid.bank_step"}
#: the probe's own settings, compared only when ours is the authors' probe too
AUTHORS_PROBE = {"evaluate.probe.lr", "evaluate.probe.weight_decay", "evaluate.probe.batch_size",
                 "evaluate.probe.full_shot_milestones", "evaluate.probe.few_shot_milestones"}
#: how a differing key reads in the report (``{ours}`` / ``{paper}``); others get a generic line
WORDING = {
    "model.width": "ResNet-18 base width {ours} instead of {paper}.",
    "pretrain.epochs": "{ours} pretraining epochs instead of {paper}.",
    "pretrain.batch_size": "Batch size {ours} instead of {paper}.",
    "pretrain.temperature": "NT-Xent temperature {ours} instead of {paper}.",
    "pretrain.lr": "Peak lr {ours} instead of {paper}.",
    "pretrain.warmup_epochs": "{ours} warm-up epoch(s) instead of {paper}.",
    "augment.crop_scale": "Random resized crop scale {ours} instead of {paper}.",
    "augment.interpolation": "{ours} interpolation in the crop instead of {paper}.",
    "subsample.splits": "{ours} split(s) instead of {paper}.",
    "evaluate.probe.full_shot_epochs": "Full-shot probe epochs {ours} instead of {paper}.",
    "evaluate.probe.few_shot_epochs": "Few-shot probe epochs {ours} instead of {paper}.",
    "sbid.head_hidden": "sbid: head width {ours} instead of {paper}.",
    "sbid.temperature": "sbid: τ {ours} instead of {paper}.",
    "sbid.self_distill_weight": "sbid: self-distillation weight λ {ours} instead of {paper}.",
    "sbid.negatives": "sbid: {ours} random negative bank entries per step instead of the whole bank ({paper}).",
    "sbid.bank_update": "sbid: the {ours} bank update instead of Cao & Wu's {paper} rule.",
    "sbid.cutmix": "sbid: CutMix {ours} instead of {paper}.",
    "sbid.epochs": "sbid: {ours} epochs instead of {paper}.",
    "sbid.lr": "sbid: peak lr {ours} instead of {paper}.",
}


def deviations(params, preset_dir: Path | None = None) -> list[str]:
    """What params.yaml changes from the papers' recipe, in words: every recipe key of the
    dataset row's ``recipe_preset`` (e.g. ``presets/cifar10_paper.yaml``) compared with ours,
    so the recipe has one source. Resolved values are compared (a method's null setting =
    the shared value)."""
    dataset = DATASETS[params.data.dataset]
    name = dataset.recipe_preset
    paper = _flatten(yaml.safe_load(((preset_dir or PRESET_DIR) / f"{name}.yaml").read_text()))
    ours = as_flat_dict(params)
    for name in METHODS:
        ours.update(method_class(name).resolved_params(params))
    ours["subsample.splits"], paper["subsample.splits"] = len(ours["subsample.splits"]), len(paper["subsample.splits"])
    out = []
    if params.data.dataset != paper["data.dataset"]:
        out.append(f"Dataset: {params.data.dataset} instead of {paper['data.dataset']}"
                   + (f"; {dataset.deviation}." if dataset.deviation else "."))
    skip = NOT_RECIPE | (AUTHORS_PROBE if params.evaluate.probe.protocol != "authors" else set())
    for key, theirs in paper.items():
        if key in skip or ours[key] == theirs:
            continue
        if key == "evaluate.probe.protocol":
            out.append(f"Linear probe on standardised features extracted once without augmentation (SGD, lr "
                       f"{params.evaluate.probe.lr}) instead of the authors' probe (lr 30, random crop + flip through "
                       "the frozen backbone).")
        else:
            out.append(WORDING.get(key, "`{key}` = {ours} instead of {paper}.").format(key=key, ours=ours[key], paper=theirs))
    return out


def _flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} → {"a.b": 1}."""
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else key
        out.update(_flatten(value, dotted) if isinstance(value, dict) else {dotted: value})
    return out
