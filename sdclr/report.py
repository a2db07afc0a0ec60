"""Aggregate metrics files into tables, figures and report.md.

Every number is mean ± std over splits (population std, as ``np.std``). Balancedness is
reported both ways PAPERS.md describes: the authors' mean over splits of the per-split
group std, and the std of the split-averaged group accuracies.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

KINDS = {"full_shot": "Linear probe, full-shot", "few_shot": "Linear probe, few-shot (1 % per class)", "knn": "kNN"}
GROUPS = ("major", "moderate", "minor")
METHOD_ORDER = ("random", "simclr", "sdclr", "sbid")

#: SDCLR paper, CIFAR-10-LT, Table 4 (per-group linear-probe accuracy, mean ± std over 5 splits).
PAPER_CIFAR10_GROUPS = {
    "simclr": {"major": (78.18, 4.18), "moderate": (76.23, 5.33), "minor": (71.37, 7.07)},
    "sdclr": {"major": (86.44, 3.12), "moderate": (81.84, 4.78), "minor": (76.23, 6.29)},
}


def load_metrics(metrics_root: Path) -> pd.DataFrame:
    """One row per (method, split, kind) with accuracy, group accuracies and balancedness (in %)."""
    rows = []
    for path in sorted(Path(metrics_root).glob("*/split*.json")):
        m = json.loads(path.read_text())
        for kind in KINDS:
            r = m[kind]
            rows.append({
                "method": m["method"], "split": m["split"], "kind": kind,
                "accuracy": 100 * r["accuracy"], "balancedness": 100 * r["balancedness"],
                **{g: 100 * r["groups"][g] for g in GROUPS},
            })
    if not rows:
        from sdclr.errors import DataError

        raise DataError(f"no metrics files under {metrics_root}; run the evaluate stages first (`dvc repro`).")
    df = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    return df.sort_values(["kind", "method", "split"], key=lambda s: s.map(order) if s.name == "method" else s)


def aggregate(df: pd.DataFrame) -> dict:
    """{method: {kind: {metric_mean, metric_std, ..., splits}}} — what reports/metrics.json holds."""
    out: dict = {}
    for (method, kind), g in df.groupby(["method", "kind"], sort=False):
        entry = {"splits": int(len(g))}
        for col in ("accuracy", *GROUPS, "balancedness"):
            entry[f"{col}_mean"] = round(float(g[col].mean()), 3)
            entry[f"{col}_std"] = round(float(g[col].std(ddof=0)), 3)
        entry["balancedness_of_mean_groups"] = round(float(np.std([g[x].mean() for x in GROUPS])), 3)
        out.setdefault(method, {})[kind] = entry
    return out


def _pm(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"


def markdown_table(agg: dict, kind: str) -> str:
    head = "| method | accuracy | major | moderate | minor | balancedness ↓ (mean of per-split std) | std of mean groups ↓ | splits |"
    lines = [head, "|" + "---|" * 8]
    for method in [m for m in METHOD_ORDER if m in agg] + [m for m in agg if m not in METHOD_ORDER]:
        e = agg[method].get(kind)
        if e is None:
            continue
        cells = [_pm(e[f"{c}_mean"], e[f"{c}_std"]) for c in ("accuracy", *GROUPS, "balancedness")]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {e['balancedness_of_mean_groups']:.2f} | {e['splits']} |")
    return "\n".join(lines)


def claim_check(agg: dict) -> list[str]:
    """The paper's claimed direction, checked on our numbers (SDCLR vs SimCLR)."""
    if "sdclr" not in agg or "simclr" not in agg:
        return ["SDCLR and SimCLR are not both in this run: no comparison."]
    lines = []
    for kind in ("full_shot", "few_shot"):
        a, b = agg["sdclr"][kind], agg["simclr"][kind]
        d_acc = a["accuracy_mean"] - b["accuracy_mean"]
        d_minor = a["minor_mean"] - b["minor_mean"]
        d_bal = a["balancedness_mean"] - b["balancedness_mean"]
        verdict = "agrees" if d_acc > 0 and d_bal < 0 else "does not agree"
        lines.append(
            f"- {KINDS[kind]}: SDCLR − SimCLR = {d_acc:+.2f} accuracy, {d_minor:+.2f} on Minor classes, "
            f"{d_bal:+.2f} balancedness (negative = more balanced) → {verdict} with the paper's direction."
        )
    if "random" in agg:
        for m in ("simclr", "sdclr", "sbid"):
            if m in agg:
                gain = agg[m]["full_shot"]["accuracy_mean"] - agg["random"]["full_shot"]["accuracy_mean"]
                lines.append(f"- {m} vs the untrained encoder (full-shot probe): {gain:+.2f} accuracy.")
    return lines


def training_cost(history_root: Path) -> dict[str, dict[str, float]]:
    """Per method, from the pretraining histories: epochs, seconds (summed over epochs), images/s; mean over splits."""
    out: dict[str, dict[str, float]] = {}
    for method_dir in sorted(p for p in Path(history_root).glob("*") if p.is_dir()):
        runs = [pd.read_csv(f) for f in sorted(method_dir.glob("split*.csv"))]
        runs = [h for h in runs if {"epoch_seconds", "images_per_s"} <= set(h.columns) and len(h)]
        if runs:
            out[method_dir.name] = {
                "epochs": float(np.mean([len(h) for h in runs])),
                "seconds": float(np.mean([h["epoch_seconds"].sum() for h in runs])),
                "images_per_s": float(np.mean([h["images_per_s"].mean() for h in runs])),
            }
    return out


def cost_table(cost: dict) -> str:
    order = [m for m in METHOD_ORDER if m in cost] + [m for m in cost if m not in METHOD_ORDER]
    rows = ["| method | epochs | pretraining time (s) | images/s |", "|---|---|---|---|"]
    rows += [f"| {m} | {cost[m]['epochs']:g} | {cost[m]['seconds']:.0f} | {cost[m]['images_per_s']:.0f} |" for m in order]
    return "\n".join(rows)


def sbid_claim_check(agg: dict, cost: dict) -> list[str]:
    """Cao & Wu's claim, checked on our numbers: single-branch beats two-branch methods at less cost."""
    if "sbid" not in agg:
        return ["sbid is not in this run: no comparison."]
    lines = []
    for other in ("simclr", "sdclr"):
        if other not in agg:
            continue
        diffs = ", ".join(f"{agg['sbid'][k]['accuracy_mean'] - agg[other][k]['accuracy_mean']:+.2f} {KINDS[k].lower()}"
                          for k in KINDS)
        time = ""
        if "sbid" in cost and other in cost and cost[other]["seconds"] > 0:
            time = f"; pretraining time ×{cost['sbid']['seconds'] / cost[other]['seconds']:.2f}"
        lines.append(f"- sbid − {other}: {diffs}{time}.")
    return lines


def plot_group_bars(agg: dict, path: Path) -> None:
    from sdclr.plots import _pyplot

    plt = _pyplot()
    methods = [m for m in METHOD_ORDER if m in agg]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharey=True)
    width = 0.8 / max(1, len(methods))
    for ax, kind in zip(axes, KINDS):
        for i, m in enumerate(methods):
            e = agg[m][kind]
            xs = np.arange(4) + i * width
            means = [e[f"{c}_mean"] for c in ("accuracy", *GROUPS)]
            stds = [e[f"{c}_std"] for c in ("accuracy", *GROUPS)]
            ax.bar(xs, means, width, yerr=stds, capsize=2, label=m)
        ax.set_xticks(np.arange(4) + width * (len(methods) - 1) / 2)
        ax.set_xticklabels(["all", *GROUPS])
        ax.set_title(KINDS[kind], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss_curves(history_root: Path, path: Path) -> bool:
    from sdclr.plots import _pyplot

    files = sorted(Path(history_root).glob("*/split*.csv"))
    if not files:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for f in files:
        h = pd.read_csv(f)
        ax.plot(h["epoch"], h["loss"], marker="o", ms=3, label=f"{f.parent.name} split {f.stem.removeprefix('split')}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("pretraining loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(metrics_root: Path, history_root: Path, splits_summary: Path, params, out_dir: Path,
                 deviations: list[str]) -> dict:
    """reports/metrics.json, reports/report.md and reports/figures/*.png."""
    import shutil

    from sdclr.config import as_flat_dict
    from sdclr.io import write_bytes, write_json

    df = load_metrics(metrics_root)
    agg = aggregate(df)
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    plot_group_bars(agg, figures / "group_accuracy.png")
    has_loss = plot_loss_curves(history_root, figures / "pretrain_loss.png")
    shutil.copyfile(splits_summary.parent / "class_counts.png", figures / "class_counts.png")
    write_json(out_dir / "metrics.json", agg)

    summary = json.loads(Path(splits_summary).read_text())
    flat = as_flat_dict(params)
    lt = summary["splits"][0]
    md = [
        f"# SDCLR reproduction report — {params.data.dataset}",
        "",
        f"Long-tail subsets: imbalance ratio {summary['imbalance_ratio']:g}, {lt['longtail_total']} images per split, "
        f"{len(summary['splits'])} split(s); probes trained on the balanced pool ({summary['pool_total']} images) "
        f"or its few-shot subset ({lt['fewshot_total']} images), epoch chosen on the validation hold-out "
        f"({summary['val_total']} images), reported on the official test set. Accuracy is the mean of per-class "
        "accuracies (%); groups are the long-tail Major/Moderate/Minor classes; mean ± std over splits.",
        "",
    ]
    for kind, title in KINDS.items():
        md += [f"## {title}", "", markdown_table(agg, kind), ""]
    md += ["## The paper's claimed direction", "",
           "SDCLR should beat SimCLR in accuracy *and* be more balanced (lower group std), with the largest gain on "
           "Minor classes and in the few-shot setting. On this run:", "", *claim_check(agg), ""]
    cost = training_cost(history_root)
    if cost:
        md += ["## Pretraining cost", "", "Measured on this run's machine (sum of epoch times; the sbid memory-bank "
               "fill pass is not included).", "", cost_table(cost), ""]
    md += ["## Cao & Wu's claim (single-branch vs two-branch)", "",
           "sbid should match or beat SimCLR/SDCLR in accuracy at a fraction of their pretraining time. "
           "On this run (accuracy differences in points):", "", *sbid_claim_check(agg, cost), ""]
    md += ["## Reference numbers (SDCLR paper, CIFAR-10-LT, Table 4, full-shot probe)", "",
           "| method | major | moderate | minor |", "|---|---|---|---|"]
    for m, groups in PAPER_CIFAR10_GROUPS.items():
        md.append(f"| {m} | " + " | ".join(_pm(*groups[g]) for g in GROUPS) + " |")
    md += ["", "## Figures", "", "![group accuracy](figures/group_accuracy.png)", ""]
    if has_loss:
        md += ["![pretraining loss](figures/pretrain_loss.png)", ""]
    md += ["![class counts](figures/class_counts.png)", "",
           "## Deviations from the paper's recipe", "", *[f"- {d}" for d in deviations], "",
           "## Settings", "", "| param | value |", "|---|---|",
           *[f"| `{k}` | `{v}` |" for k, v in flat.items()], ""]
    write_bytes(out_dir / "report.md", "\n".join(md).encode())
    return agg


def deviations(params) -> list[str]:
    """What this configuration changes from the paper's CIFAR recipe, in words."""
    p, m = params.pretrain, params.model
    out = []
    if params.data.dataset == "fashion_mnist":
        out.append("Dataset: Fashion-MNIST-LT (28×28 grey) instead of CIFAR-10/100-LT; colour jitter and grayscale "
                   "are skipped for 1-channel images.")
    if m.width != 64:
        out.append(f"Backbone width {m.width} instead of 64 (ResNet-18 with {m.width * 8}-d features).")
    if p.epochs != 2000:
        out.append(f"{p.epochs} pretraining epochs instead of 2000.")
    if p.batch_size != 512:
        out.append(f"Batch size {p.batch_size} instead of 512.")
    if p.temperature != 0.2:
        out.append(f"NT-Xent temperature {p.temperature} instead of 0.2.")
    if p.lr != 0.5 or p.warmup_epochs != 10:
        out.append(f"Peak lr {p.lr} with {p.warmup_epochs} warm-up epoch(s) instead of lr 0.5 with 10.")
    a = params.augment
    if list(a.crop_scale) != [0.1, 1.0] or a.interpolation != "bicubic":
        out.append(f"Random resized crop scale {list(a.crop_scale)} ({a.interpolation}) instead of [0.1, 1] (bicubic).")
    if len(params.subsample.splits) != 5:
        out.append(f"{len(params.subsample.splits)} split(s) instead of 5.")
    probe = params.evaluate.probe
    if probe.protocol == "features":
        out.append("Linear probe on standardised features extracted once without augmentation (SGD, cosine, "
                   f"lr {probe.lr}), instead of the authors' probe (SGD lr 30 with random crop + flip "
                   "through the frozen backbone).")
    elif (probe.lr, probe.batch_size, probe.weight_decay) != (30.0, 128, 0.0) or (
            probe.full_shot_milestones, probe.few_shot_milestones) != ([10, 20], [40, 60]):
        out.append(f"The authors' probe with lr {probe.lr}, batch {probe.batch_size}, weight decay "
                   f"{probe.weight_decay}, milestones {probe.full_shot_milestones} / {probe.few_shot_milestones} "
                   "instead of lr 30, batch 128, no weight decay, milestones [10, 20] / [40, 60].")
    if (probe.full_shot_epochs, probe.few_shot_epochs) != (30, 100):
        out.append(f"Probe epochs {probe.full_shot_epochs} (full-shot) / {probe.few_shot_epochs} (few-shot) "
                   "instead of 30 / 100.")
    out += sbid_deviations(params)
    return out


def sbid_deviations(params) -> list[str]:
    """What sbid's settings change from Cao & Wu's recipe (../shared/PAPERS.md)."""
    s, p = params.sbid, params.pretrain
    out = []
    if s.head_hidden != 2048:
        out.append(f"sbid: head width {s.head_hidden} instead of 2048.")
    if s.temperature != 0.2 or s.self_distill_weight != 20:
        out.append(f"sbid: τ {s.temperature}, λ {s.self_distill_weight} instead of τ 0.2, λ 20.")
    if s.negatives != "all":
        out.append(f"sbid: {s.negatives} random negative bank entries per step instead of the whole bank.")
    if s.bank_update != "gradient":
        out.append("sbid: the classic momentum bank update instead of Cao & Wu's gradient-derived rule.")
    if not s.cutmix or s.cutmix_alpha != 0.5:
        out.append("sbid: CutMix off." if not s.cutmix else f"sbid: CutMix α {s.cutmix_alpha} instead of 0.5.")
    epochs, lr = s.epochs or p.epochs, s.lr or p.lr
    if (epochs, lr, p.batch_size) != (200, 1.0, 512):
        out.append(f"sbid: {epochs} epochs at lr {lr}, batch {p.batch_size} instead of 200 epochs at lr 1.0, batch 512.")
    return out
