"""Stage `report`: every metrics file and history → scores/<method>.json (the DVC metrics), summary.json,
pretrain_loss.csv (the DVC loss plot), report.md and figures/ under ``--out``."""

from sdclr.runtime.numerics import pin_before_torch

pin_before_torch()  # first: torch reads its kernel level once, when it loads (sdclr/runtime/numerics.py)

from pathlib import Path

from sdclr.config import as_flat_dict
from sdclr.errors import DataError
from sdclr.registry import declared
from sdclr.report import write_report
from sdclr.report.deviations import deviations
from sdclr.report.markdown import markdown_table
from sdclr.runtime import tracking
from sdclr.stage import run_stage


def main(params, args):
    tracking.check_store()
    missing = [m for m in params.methods if not (args.metrics / m).is_dir()]
    if missing:
        raise DataError(f"params.yaml lists {', '.join(missing)} in methods, but {args.metrics} has no metrics for "
                        "them: dvc.yaml has no stages for them yet; run `python -m sdclr.pipeline.dvc_stages`, then "
                        "`dvc repro`.")
    agg = write_report(args.metrics, args.history, args.splits / "summary.json", params, args.out, deviations(params))
    tags = {"dataset": params.data.dataset, "stage": "report"}
    with tracking.Run(tracking.report_experiment_name(params.data.dataset), "report", as_flat_dict(params), tags,
                      "stages/report.py") as run:
        for m, kinds in agg.items():
            run.log_metrics({f"{m}_{k}_accuracy": v["accuracy_mean"] for k, v in kinds.items()}, step=0)
        run.log_artifact(args.out / "report.md")
        run.log_artifact(args.out / "summary.json")
        run.log_artifact(args.out / "scores")
        run.log_artifact(args.out / "figures")
    print(markdown_table(agg, "full_shot"))
    print(f"→ {args.out / 'report.md'}")


def add_arguments(p):
    for name, what in (("metrics", "the evaluate stages' metrics folder"), ("history", "the pretraining histories"),
                       ("splits", "the splits folder (summary.json, class_counts.png)"), ("out", "the reports folder")):
        p.add_argument(f"--{name}", required=True, type=Path, help=what)


if __name__ == "__main__":
    run_stage(main, __doc__, add_arguments, outputs=("out",), declared=lambda args: declared())
