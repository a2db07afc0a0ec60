"""The report's figures as PNG (matplotlib, headless Agg backend), each written atomically.

Shared figure mechanics (:func:`pyplot`, :func:`save_figure`, :func:`message_figure`,
:func:`axes_per_method`) and the figures of every run: class counts, group accuracy, the loss
curves and the forest plot of every claim. A method's own figure is drawn by its report section
(e.g. :mod:`sdclr.methods.bcl_report`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sdclr.report.aggregate import GROUPS, HEADLINE, pct, reported_methods
from sdclr.report.claims import SHORT_KIND, tested
from sdclr.stats import AGREES, DISAGREES, INCONCLUSIVE
from sdclr.storage.io import atomic_path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_class_counts(summary: dict, path: Path) -> None:
    """Long-tail class counts per split, classes in rank order, groups shaded."""
    plt = pyplot()
    splits = summary["splits"]
    fig, axes = plt.subplots(1, len(splits), figsize=(max(5.0, 4.5 * len(splits)), 3.6), squeeze=False, sharey=True)
    colors = {"major": "#4c72b0", "moderate": "#dd8452", "minor": "#c44e52"}
    for ax, s in zip(axes[0], splits):
        rank_of = {c: r for r, c in enumerate(s["class_order"])}
        group_of = {c: g for g, cs in s["groups"].items() for c in cs}
        counts = s["longtail_counts_by_rank"]
        bar_colors = [colors[group_of[c]] for c in s["class_order"]]
        ax.bar(range(len(counts)), counts, color=bar_colors)
        ax.axhline(s["balanced_total"] / summary["num_classes"], color="k", ls="--", lw=1,
                   label="balanced D_b per class")
        ax.set_yscale("log")
        ax.set_title(f"split {s['split_id']}: {s['longtail_total']} images")
        ax.set_xlabel("class rank")
        if len(counts) <= 20:
            ax.set_xticks(range(len(counts)))
            ax.set_xticklabels([summary["class_names"][c] for c in sorted(rank_of, key=rank_of.get)], rotation=60,
                               ha="right", fontsize=7)
    from matplotlib.patches import Patch

    handles = [Patch(color=col, label=g) for g, col in colors.items()]  # the bars' own colours
    handles += axes[0][0].get_legend_handles_labels()[0]
    axes[0][0].set_ylabel("images (log scale)")
    fig.suptitle(f"Long-tail subsets, imbalance ratio {summary['imbalance_ratio']:g}")
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, 0.93))
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:
    """Write ``fig`` as a PNG atomically (a full disk leaves the previous figure, not half of one) and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    pyplot().close(fig)


def message_figure(figure: Path, text: str) -> None:
    """A figure that only says why it has nothing to show (dvc.yaml declares every figure)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9)
    save_figure(fig, figure)


def axes_per_method(frame: pd.DataFrame, width: float):
    """One panel per method of ``frame`` (in its order), sharing the y axis: (pyplot, methods, figure, axes)."""
    plt = pyplot()
    methods = list(dict.fromkeys(frame["method"]))
    fig, axes = plt.subplots(1, len(methods), figsize=(width * len(methods), 3.6), sharey=True, squeeze=False)
    return plt, methods, fig, axes[0]


def legend_outside(fig, ax, ncol: int) -> None:
    """One legend above the axes, outside every bar and curve."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=ncol, fontsize=8, frameon=False, bbox_to_anchor=(0.5, 1.0))


def plot_group_bars(agg: dict, path: Path, titles: dict[str, str]) -> None:
    """Accuracy per group and headline probe (``titles``: their titles); y zoomed to the data;
    error bars (± std) only with ≥ 2 splits."""
    plt = pyplot()
    methods = reported_methods(agg)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), sharey=True)
    width = 0.8 / max(1, len(methods))
    cols = ("accuracy", *GROUPS)
    lows, highs = [], []
    for ax, kind in zip(axes, HEADLINE):
        for i, m in enumerate(methods):
            e = agg[m][kind]
            means = np.array([pct(e[f"{c}_mean"]) for c in cols])
            stds = None if e["splits"] < 2 else np.array([pct(e[f"{c}_std"]) for c in cols])
            ax.bar(np.arange(4) + i * width, means, width, yerr=stds, capsize=2, label=m)
            lows.append((means - (0 if stds is None else stds)).min())
            highs.append((means + (0 if stds is None else stds)).max())
        ax.set_xticks(np.arange(4) + width * (len(methods) - 1) / 2)
        ax.set_xticklabels(["all", *GROUPS])
        ax.set_title(titles[kind], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    pad = max(1.0, 0.08 * (max(highs) - min(lows)))
    axes[0].set_ylim(max(0.0, min(lows) - pad), min(100.0, max(highs) + pad))
    n_splits = max(agg[m][k]["splits"] for m in methods for k in HEADLINE)
    axes[0].set_ylabel("test accuracy (%)" + (", ± std over splits" if n_splits >= 2 else ", one split"))
    legend_outside(fig, axes[0], len(methods))
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    save_figure(fig, path)


def plot_loss_curves(history_root: Path, path: Path) -> bool:
    files = sorted(Path(history_root).glob("*/split*.csv"))
    if not files:
        return False
    plt = pyplot()
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


#: a claim's per-claim verdict as the forest figure colours it
VERDICT_COLOURS = {AGREES: "#2ca02c", DISAGREES: "#d62728", INCONCLUSIVE: "#8c8c8c"}


def _claim_label(r: dict) -> str:
    """A figure row's name: ``sdclr − simclr few-shot Minor``; a claim of a − b < 0 says its sign is flipped."""
    metric = {"accuracy": "accuracy", "minor": "Minor", "balancedness": "balancedness"}[r["metric"]]
    return f"{r['a']} − {r['b']} {SHORT_KIND[r['kind']]} {metric}" + (" (sign flipped)" if r["direction"] < 0 else "")


def plot_paired_differences(rows: list[dict], path: Path) -> None:
    """A forest plot of :func:`compare`'s rows: one panel per claim source (each its own x scale,
    since "pretraining helps" differs by tens of points where the papers' claims differ by one),
    one row per claim with its mean difference and 95 % interval in points, multiplied by the
    claimed direction so that right of 0 always reads "as claimed". Colour: the per-claim verdict;
    a filled dot: still decided family-wise (Holm), hollow: not."""
    plt = pyplot()
    sources = list(dict.fromkeys(r["source"] for r in rows))
    if not sources:
        message_figure(path, "no claim could be checked: no two methods of a claim ran on a common split")
        return
    sizes = [sum(r["source"] == s for r in rows) for s in sources]
    # every row the same height: the panels' heights follow their rows, titles and ticks add 0.75 in each
    fig, axes = plt.subplots(len(sources), 1, figsize=(9, 1.1 + sum(0.27 * n + 0.75 for n in sizes)),
                             gridspec_kw={"height_ratios": sizes}, squeeze=False)
    for ax, source in zip(axes[:, 0], sources):
        sub = [r for r in rows if r["source"] == source]
        for y, r in enumerate(sub):
            colour, x = VERDICT_COLOURS[r["verdict"]], r["direction"] * pct(r["mean"])
            if r["low"] is not None:
                low, high = sorted(r["direction"] * pct(v) for v in (r["low"], r["high"]))
                ax.errorbar(x, y, xerr=[[x - low], [high - x]], fmt="none", ecolor=colour, elinewidth=2, capsize=3)
            filled = r["verdict_family"] != INCONCLUSIVE
            ax.plot(x, y, "o", ms=7, mew=1.8, mec=colour, mfc=colour if filled else "white")
        ax.axvline(0, color="black", lw=1)
        ax.set_yticks(range(len(sub)), [_claim_label(r) for r in sub], fontsize=8)
        ax.set_ylim(len(sub) - 0.5, -0.5)
        family = f"Holm family of {tested(sub)}" if tested(sub) else "one split: no interval, nothing tested"
        ax.set_title(f"{source} ({family})", fontsize=9, loc="left", fontweight="bold")
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
