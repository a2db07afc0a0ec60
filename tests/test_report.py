"""Uncertainty and verdicts of the report, on hand-made per-split metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sdclr.registry import parse_params
from sdclr.report import write_report
from sdclr.report.aggregate import aggregate, load_metrics
from sdclr.report.claims import compare
from sdclr.report.markdown import markdown_table
from sdclr.stats import AGREES, DISAGREES, INCONCLUSIVE, paired_difference
from tests.dvc_project import splits_summary


def test_interval_is_student_t_over_the_paired_differences():
    d = paired_difference({0: 3.0, 1: 4.0, 2: 5.0}, {0: 1.0, 1: 2.0, 2: 2.0})  # differences 2, 2, 3
    half = 4.302652729911275 * math.sqrt(1 / 3) / math.sqrt(3)  # t(0.975, 2) · s / √n, s = √(1/3)
    assert d.n == 3 and d.mean == pytest.approx(7 / 3)
    assert (d.low, d.high) == (pytest.approx(7 / 3 - half), pytest.approx(7 / 3 + half))


def test_only_common_splits_are_paired():
    d = paired_difference({0: 1.0, 1: 2.0, 3: 9.0}, {0: 0.0, 1: 0.0, 2: 5.0})
    assert d.n == 2 and d.mean == pytest.approx(1.5)


@pytest.mark.parametrize("a, b, direction, verdict", [
    ({0: 80, 1: 82, 2: 81}, {0: 78, 1: 79, 2: 79}, +1, AGREES),         # a > b on every split
    ({0: 76, 1: 77, 2: 75}, {0: 78, 1: 79, 2: 78}, +1, DISAGREES),      # a < b on every split
    ({0: 80, 1: 75, 2: 79}, {0: 78, 1: 78, 2: 78}, +1, INCONCLUSIVE),   # interval spans 0
    ({0: 85}, {0: 70}, +1, INCONCLUSIVE),                              # one split: no interval
    ({0: 5, 1: 6, 2: 5}, {0: 9, 1: 9, 2: 8}, -1, AGREES),               # a lower, and lower is claimed
    ({0: 9, 1: 9, 2: 8}, {0: 5, 1: 6, 2: 5}, -1, DISAGREES),
])
def test_verdicts(a, b, direction, verdict):
    assert paired_difference(a, b).verdict(direction) == verdict


def test_one_split_has_no_interval():
    d = paired_difference({0: 85.0}, {0: 70.0})
    assert (d.n, d.mean, d.low, d.high) == (1, 15.0, None, None)


def _metrics(method: str, split: int, acc: float, minor: float = 0.7) -> dict:
    groups = {"major": acc - 0.05, "moderate": acc, "minor": minor}
    kind = {"accuracy": acc, "balancedness": 0.05, "groups": groups, "per_class": [acc] * 10}
    return {"method": method, "split": split, "dataset": "fashion_mnist", "full_shot": kind, "few_shot": kind,
            "knn": kind}


def _write_metrics(root: Path, table: dict[str, list[float]]) -> Path:
    for method, accs in table.items():
        for split, acc in enumerate(accs):
            path = root / method / f"split{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(_metrics(method, split, acc)))
    return root


def test_std_is_a_dash_with_one_split_and_sample_std_with_more(tmp_path):
    one = aggregate(load_metrics(_write_metrics(tmp_path / "one", {"simclr": [0.80]})))
    assert one["simclr"]["full_shot"]["accuracy_std"] is None
    assert "| simclr | 80.00 ± — |" in markdown_table(one, "full_shot")
    three = aggregate(load_metrics(_write_metrics(tmp_path / "three", {"simclr": [0.80, 0.82, 0.84]})))
    assert three["simclr"]["full_shot"]["accuracy_std"] == pytest.approx(0.02)  # sample std (n − 1), a fraction
    assert "| simclr | 82.00 ± 2.00 |" in markdown_table(three, "full_shot")


def test_claims_are_judged_pairwise(tmp_path):
    df = load_metrics(_write_metrics(tmp_path, {"random": [0.60, 0.61, 0.59], "simclr": [0.80, 0.81, 0.79],
                                                "sdclr": [0.78, 0.79, 0.775], "sbid": [0.81, 0.79, 0.80]}))
    rows = {(r["a"], r["b"], r["kind"], r["metric"]): r for r in compare(df)}
    assert rows[("sdclr", "simclr", "full_shot", "accuracy")]["verdict"] == DISAGREES
    assert rows[("sbid", "simclr", "knn", "accuracy")]["verdict"] == INCONCLUSIVE
    assert rows[("simclr", "random", "few_shot", "accuracy")]["verdict"] == AGREES
    assert rows[("sdclr", "simclr", "full_shot", "balancedness")]["direction"] == -1
    assert rows[("sdclr", "simclr", "full_shot", "accuracy")]["splits"] == 3


def _report(tmp_path: Path, raw_params: dict, dataset: str, table: dict) -> str:
    raw_params["data"]["dataset"] = dataset
    params = parse_params(raw_params)
    splits = tmp_path / "splits"
    splits.mkdir(parents=True, exist_ok=True)
    summary = splits_summary()
    (splits / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "out"
    write_report(_write_metrics(tmp_path / "metrics", table), tmp_path / "none", splits / "summary.json", params, out,
                 [])
    return (out / "report.md").read_text()


def test_one_split_report_says_so_and_decides_nothing(tmp_path, raw_params):
    md = _report(tmp_path, raw_params, "fashion_mnist", {"simclr": [0.80], "sdclr": [0.90]})
    assert "One split: this run measures no uncertainty" in md and "fmnist_gpu" in md
    assert "**inconclusive (one split)** |" in md and "**agrees** |" not in md
    assert "Student-t" in md
    assert "Reference" not in md and "86.44" not in md  # CIFAR-10 numbers never beside Fashion-MNIST
    assert "images/s" not in md and "reports/cost.json" in md


def test_reference_rows_only_for_their_dataset(tmp_path, raw_params):
    md = _report(tmp_path, raw_params, "cifar10", {"simclr": [0.80, 0.81], "sdclr": [0.82, 0.84]})
    assert "## Reference: SDCLR paper, CIFAR-10-LT" in md and "86.44 ± 3.12" in md and "55.0" not in md
    assert "2 splits: every table shows mean ± sample std" in md


def test_report_bytes_depend_on_the_metrics_only(tmp_path, raw_params):
    table = {"random": [0.6, 0.62], "simclr": [0.80, 0.81], "sdclr": [0.82, 0.84]}
    first = _report(tmp_path / "a", raw_params, "fashion_mnist", table)
    second = _report(tmp_path / "b", raw_params, "fashion_mnist", table)
    assert first == second
    for name in ("summary.json", "scores/simclr.json", "pretrain_loss.csv", "figures/group_accuracy.png"):
        assert (tmp_path / "a/out" / name).read_bytes() == (tmp_path / "b/out" / name).read_bytes()


def test_json_files_hold_fractions_and_the_scores_a_few_headline_numbers(tmp_path, raw_params):
    table = {"random": [0.6, 0.62], "simclr": [0.80, 0.81], "sdclr": [0.82, 0.84], "sbid": [0.79, 0.80]}
    _report(tmp_path, raw_params, "fashion_mnist", table)
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["simclr"]["knn"]["accuracy_mean"] == pytest.approx(0.805)  # one unit: fractions
    diff = next(r for r in summary["paired_differences"]
                if (r["a"], r["b"], r["kind"], r["metric"]) == ("sdclr", "simclr", "full_shot", "accuracy"))
    assert diff["mean"] == pytest.approx(0.025)
    # a file for each method params.yaml lists (DVC declares them), none for the others
    assert sorted(p.name for p in (out / "scores").iterdir()) == sorted(f"{m}.json" for m in {"random", *table})
    sdclr = json.loads((out / "scores/sdclr.json").read_text())
    assert list(sdclr) == ["full_shot", "few_shot", "knn", "full_shot_minor", "full_shot_balancedness", "splits"]
    assert sdclr["full_shot"] == pytest.approx(0.83) and sdclr["full_shot_minor"] == pytest.approx(0.7)
    assert sdclr["full_shot_balancedness"] == pytest.approx(0.05) and sdclr["splits"] == 2
    assert all(0 <= v <= 1 for k, v in sdclr.items() if k != "splits")
    md = (out / "report.md").read_text()
    assert "| sdclr | 83.00 ± 1.41 |" in md and "| +2.50 |" in md  # the markdown shows %


def test_loss_table_gathers_every_method_and_split(tmp_path):
    from sdclr.report.aggregate import loss_table

    for method, split, losses in (("simclr", 0, "5.1,4.2"), ("sdclr", 0, "5.3,4.4"), ("sdclr", 1, "5.2,4.3"),
                                  ("sbid", 10, "7.5,6.25")):
        path = tmp_path / method / f"split{split}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("epoch,loss,lr\n" + "".join(f"{e + 1},{v},0.5\n" for e, v in enumerate(losses.split(","))))
    lines = loss_table(tmp_path).splitlines()
    assert lines[0] == "method,split,epoch,loss"
    assert lines[1:3] == ["simclr,0,1,5.1", "simclr,0,2,4.2"]  # registry order, then split number
    assert lines[3:] == ["sdclr,0,1,5.3", "sdclr,0,2,4.4", "sdclr,1,1,5.2", "sdclr,1,2,4.3",
                         "sbid,10,1,7.5", "sbid,10,2,6.25"]
    assert loss_table(tmp_path / "none") == "method,split,epoch,loss\n"


def test_cost_file_collects_entries_and_survives_damage(tmp_path):
    from sdclr.runtime.cost import markdown, record

    path = tmp_path / "reports/cost.json"
    record("pretrain/simclr/split0", {"seconds": 12.5, "images_per_s": 800.0, "epochs": 6, "device": "cpu"}, path)
    record("evaluate/simclr/split0", {"seconds": 3.0, "device": "cpu"}, path)
    table = json.loads(path.read_text())
    assert list(table) == ["evaluate/simclr/split0", "pretrain/simclr/split0"]
    assert "| pretrain/simclr/split0 | 12.5 | 800 | 6 | cpu |" in markdown(path)
    path.write_text("{ not json")
    record("evaluate/sdclr/split0", {"seconds": 1.0, "device": "cpu"}, path)
    assert list(json.loads(path.read_text())) == ["evaluate/sdclr/split0"]
    assert [p.name for p in path.parent.iterdir()] == ["cost.json"]  # no lock or temporary file left behind


def test_deviations_come_from_the_recipe_preset(tmp_path, root):
    import shutil

    from sdclr.pipeline.presets import apply_preset
    from sdclr.registry import load_params
    from sdclr.report.deviations import deviations

    default = deviations(load_params(root / "params.yaml"))
    assert "Batch size 128 instead of 512." in default and "ResNet-18 base width 8 instead of 64." in default
    assert any(d.startswith("Dataset: fashion_mnist instead of cifar10") for d in default)
    params_path = tmp_path / "params.yaml"
    shutil.copy(root / "params.yaml", params_path)
    apply_preset("cifar10_paper", params_path)
    assert deviations(load_params(params_path)) == []  # the recipe itself deviates from nothing
    apply_preset("fmnist_gpu", params_path)
    assert deviations(load_params(params_path)) == [
        "Dataset: fashion_mnist instead of cifar10; colour jitter and grayscale are skipped for its 1-channel images.",
        "200 pretraining epochs instead of 2000.",
        "Linear probe on standardised features extracted once without augmentation (SGD, lr 0.1) instead of the "
        "authors' probe (lr 30, random crop + flip through the frozen backbone).",
    ]


def test_splits_to_decide_follows_the_student_t_half_width():
    from sdclr.stats import splits_to_decide, t_quantile

    n = splits_to_decide(0.01, 0.02)  # a mean difference of half the split-to-split std
    assert t_quantile(0.975, n - 1) * 0.02 / math.sqrt(n) < 0.01 <= t_quantile(0.975, n - 2) * 0.02 / math.sqrt(n - 1)
    assert splits_to_decide(0.0, 0.02) is None
    assert splits_to_decide(-0.05, 0.001) == 2  # a large difference with little spread: the smallest n


def test_the_report_names_the_open_claims_with_their_spread_and_the_numerics(tmp_path, raw_params):
    # sdclr − simclr: +0.5, +(-1.5), +2.5 points: mean +0.5, open; simclr − random: decided
    table = {"random": [0.60, 0.61, 0.59], "simclr": [0.80, 0.81, 0.79], "sdclr": [0.805, 0.795, 0.815]}
    md = _report(tmp_path, raw_params, "fashion_mnist", table)
    section = md.split("## What this run cannot decide")[1].split("\n## ")[0]
    assert "stay *inconclusive* on 3 splits" in section
    row = next(line for line in section.splitlines() if line.startswith("| sdclr − simclr | full-shot | accuracy"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "+0.50" and cells[4] == "2.00"  # mean and sample std of the differences, in points
    assert cells[5] == f"{4.302652729911275 * 2 / math.sqrt(3):.2f}" and cells[6].startswith("≈ ")
    assert cells[7] == "agrees"  # the mean lies on the claimed side: more splits would confirm it
    assert "open mean differences are 0.00–" in section and "split-to-split std of 0.00–2.00 points" in section
    assert "simclr − random" not in section  # decided, and not a published claim
    assert "Numerics: not recorded" in md  # hand-made metrics carry no numerics
    # metrics files written in portable numerics: the report says the bytes are the same on any AVX2 CPU
    for path in (tmp_path / "metrics").rglob("*.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "numerics": "portable (AVX2 kernels, 1 thread)"}))
    write_report(tmp_path / "metrics", tmp_path / "none", tmp_path / "splits/summary.json",
                 parse_params(raw_params), tmp_path / "out", [])
    assert "byte for byte, on any x86-64 CPU with AVX2" in (tmp_path / "out/report.md").read_text()


def test_the_comparison_line_says_identical_or_by_how_much_and_which_verdicts_moved(tmp_path, raw_params):
    import subprocess

    from sdclr.pipeline.compare import comparison_line

    table = {"random": [0.60, 0.61, 0.59], "simclr": [0.80, 0.81, 0.79], "sdclr": [0.78, 0.79, 0.775]}
    _report(tmp_path, raw_params, "fashion_mnist", table)
    repo = tmp_path / "repo"
    (repo / "reports").mkdir(parents=True)
    for name in ("scores", "summary.json"):
        src = tmp_path / "out" / name
        subprocess.run(["cp", "-r", str(src), str(repo / "reports" / name)], check=True)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "report"], cwd=repo, check=True)
    assert comparison_line(repo) == "compare: identical to the committed report (every score and verdict)."
    (repo / "reports/scores/new_method.json").write_text('{"splits": 0}')  # registered since, not run
    assert comparison_line(repo) == "compare: identical to the committed report (every score and verdict)."
    (repo / "reports/scores/new_method.json").unlink()

    table["sdclr"] = [0.80, 0.82, 0.81]  # now level with SimCLR (mean +2.83 points): the DISAGREES verdicts open
    _report(tmp_path / "b", raw_params, "fashion_mnist", table)
    for name in ("scores", "summary.json"):
        subprocess.run(["rm", "-r", str(repo / "reports" / name)], check=True)
        subprocess.run(["cp", "-r", str(tmp_path / "b/out" / name), str(repo / "reports" / name)], check=True)
    (repo / "reports/cost.json").write_text(json.dumps({"pretrain/sdclr/split0": {
        "device": "cpu: X (AVX2), 2 threads", "numerics": "native (X, AVX2 kernels, 2 threads)"}}))
    line = comparison_line(repo)
    assert line.startswith("compare: different from the committed report (made on cpu: X (AVX2), 2 threads, "
                           "native (X, AVX2 kernels, 2 threads)) by up to 2.83 points (sdclr full_shot)")
    assert "verdicts changed: sdclr − simclr full-shot accuracy: disagrees → inconclusive" in line
    assert "\n" not in line


def test_splits_to_decide_at_its_edges():
    from sdclr.stats import splits_to_decide, t_quantile

    # t(0.975; 5)/√6 = 1.050 > 1 and t(0.975; 6)/√7 = 0.925 < 1: a mean of one std needs 7 splits
    assert splits_to_decide(1.0, 1.0) == 7 and splits_to_decide(-1.0, 1.0) == 7
    assert splits_to_decide(1.0, 1.0, most=7) == 7 and splits_to_decide(1.0, 1.0, most=6) is None
    assert splits_to_decide(0.5, 0.0) == 2 and splits_to_decide(0.0, 0.0) is None  # no spread at all
    assert splits_to_decide(0.0, 1.0) is None
    # the interval must exclude 0 strictly: a half-width equal to the mean is not enough
    assert splits_to_decide(t_quantile(0.975, 1) * 1.0 / math.sqrt(2), 1.0) == 3
