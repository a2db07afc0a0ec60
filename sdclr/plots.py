"""Figures as PNG (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

from sdclr.io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_class_counts(summary: dict, path: Path) -> None:
    """Long-tail class counts per split, classes in rank order, groups shaded."""
    plt = _pyplot()
    splits = summary["splits"]
    fig, axes = plt.subplots(1, len(splits), figsize=(max(5.0, 4.5 * len(splits)), 3.6), squeeze=False, sharey=True)
    colors = {"major": "#4c72b0", "moderate": "#dd8452", "minor": "#c44e52"}
    for ax, s in zip(axes[0], splits):
        rank_of = {c: r for r, c in enumerate(s["class_order"])}
        group_of = {c: g for g, cs in s["groups"].items() for c in cs}
        counts = s["longtail_counts_by_rank"]
        bar_colors = [colors[group_of[c]] for c in s["class_order"]]
        ax.bar(range(len(counts)), counts, color=bar_colors)
        ax.axhline(s["balanced_total"] / summary["num_classes"], color="k", ls="--", lw=1, label="balanced D_b per class")
        ax.set_yscale("log")
        ax.set_title(f"split {s['split_id']}: {s['longtail_total']} images")
        ax.set_xlabel("class rank")
        if len(counts) <= 20:
            ax.set_xticks(range(len(counts)))
            ax.set_xticklabels([summary["class_names"][c] for c in sorted(rank_of, key=rank_of.get)], rotation=60, ha="right", fontsize=7)
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
    _pyplot().close(fig)
