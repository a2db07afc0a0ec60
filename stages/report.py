"""Stage `report`: every metrics file → reports/metrics.json, reports/report.md, reports/figures/."""

from pathlib import Path

from sdclr.config import as_flat_dict
from sdclr.stage import run_stage


def main(params, args):
    from sdclr import tracking
    from sdclr.report import deviations, markdown_table, write_report

    out = Path(args.out_dir)
    summary = Path(args.splits_root) / params.data.dataset / "summary.json"
    agg = write_report(Path(args.metrics_root), Path(args.history_root), summary, params, out, deviations(params))
    tags = {"dataset": params.data.dataset, "stage": "report"}
    with tracking.Run(f"sdclr-{params.data.dataset}", "report", as_flat_dict(params), tags) as run:
        for m, kinds in agg.items():
            run.log_metrics({f"{m}_{k}_accuracy": v["accuracy_mean"] for k, v in kinds.items()}, step=0)
        run.log_artifact(out / "report.md")
        run.log_artifact(out / "metrics.json")
        run.log_artifact(out / "figures", "figures")
    print(markdown_table(agg, "full_shot"))
    print(f"→ {out / 'report.md'}")


def add_arguments(p):
    p.add_argument("--metrics-root", default="reports/metrics")
    p.add_argument("--history-root", default="reports/pretrain")
    p.add_argument("--splits-root", default="data/splits")
    p.add_argument("--out-dir", default="reports")


if __name__ == "__main__":
    run_stage(main, __doc__, add_arguments)
