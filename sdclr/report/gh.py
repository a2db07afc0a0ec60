"""GH's own report section: does the estimated prior π recover the long tail?

Named by :class:`sdclr.methods.gh.Harmonized` (``report_section = "gh"``) and kept with the report,
so that editing the section or its figure re-runs the report stage only, never a pretraining.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sdclr.report.aggregate import rows_with
from sdclr.report.figures import axes_per_method, legend_outside, message_figure, save_figure
from sdclr.stats import paired_difference


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """½ Σ |p − q| of two distributions over ranks (the shorter padded with zeros)."""
    n = max(len(p), len(q))
    return 0.5 * float(np.abs(np.pad(p, (0, n - len(p))) - np.pad(q, (0, n - len(q)))).sum())


def prior_section(per_image: pd.DataFrame, params, figures: Path) -> list[str]:
    """GH's premise checked on this data: does π, the share of images per target, recover the
    long tail? Each split's π and class frequencies, both sorted from the largest, are compared
    by their total-variation distance, beside the distance of the uniform prior a balanced
    assignment (SwAV's) would impose; the gain is paired over splits."""
    figure, num_targets = figures / "gh_prior.png", params.gh.num_targets
    clusters = rows_with(per_image, "cluster")
    if clusters.empty:
        message_figure(figure, "GH kept no per-image clusters: its stages have not run on any split")
        return []
    plt, methods, fig, axes = axes_per_method(clusters, 4.6)
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
    legend_outside(fig, axes[0], 3)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    save_figure(fig, figure)
    return ["## GH: does the estimated prior π recover the long tail?", "",
            "GH's premise: π, the share of training images whose smoothed logits point to each target at the "
            "last epoch, should follow the classes' frequencies instead of the uniform prior a balanced "
            "assignment imposes. Both sorted from the largest and compared by total-variation distance (0 = "
            "the same shares); the gain is TV(uniform) − TV(π), paired over splits like the claims above.", "",
            *lines, "", f"![GH prior](figures/{figure.name})", ""]
