"""BCL's own report section: does its premise hold on this data (Minor images get a higher w)?

Named by :class:`sdclr.methods.bcl.Boosted` (``report_section = "bcl"``) and kept with the report,
so that editing the section or its figure re-runs the report stage only, never a pretraining.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sdclr.report.aggregate import GROUPS, rows_with
from sdclr.report.figures import axes_per_method, message_figure, save_figure
from sdclr.stats import paired_difference


def weight_section(weights: pd.DataFrame, params, figures: Path) -> list[str]:
    """BCL's premise checked on this data: do Minor-class images get a higher w than Major ones?
    (``weights``: :func:`load_per_image`'s table; the rows with a w are BCL's.)

    Mean w per group and method (over splits), the paired Minor − Major difference over splits
    with its interval, and a figure of w's distribution per group (box plots over images)."""
    figure = figures / "bcl_w_by_group.png"
    weights = rows_with(weights, "w")
    if weights.empty:
        message_figure(figure, "BCL kept no per-image weights: its stages have not run on any split")
        return []
    plt, methods, fig, axes = axes_per_method(weights, 4.2)
    for ax, m in zip(axes, methods):
        sub = weights[weights["method"] == m]
        ax.boxplot([sub.loc[sub["group"] == g, "w"] for g in GROUPS], showfliers=False)
        ax.set_xticks(range(1, len(GROUPS) + 1), GROUPS)
        ax.set_title(f"{m}: w at the last epoch ({sub['split'].nunique()} split(s))", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("w (RandAugment probability)")
    fig.tight_layout()
    save_figure(fig, figure)

    lines = ["| method | Major | Moderate | Minor | Minor − Major | 95 % interval | splits | premise |",
             "|" + "---|" * 8]
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
