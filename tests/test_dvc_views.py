"""`dvc metrics show` and `dvc plots show` on this project's dvc.yaml, run for real.

A temporary copy of the project gets hand-written per-split metrics and pretraining histories
(what the evaluate and pretrain stages write, for two splits); the report code writes the rest,
as the report stage would. Then the real DVC CLI must print one metrics row per method with the
few headline columns, and write a plots page that loads no script from the network, carries
vega's code inline, and overlays every method's and split's loss curve in one vega spec. Where a
headless Chromium is installed, it opens the page offline and vega must draw it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sdclr.registry import METHODS
from tests.dvc_project import dvc, make_project, splits_summary

ROOT = Path(__file__).resolve().parents[1]
ALL = ("random", *METHODS)
SPLITS = (0, 1)
COLUMNS = ["full_shot", "few_shot", "knn", "full_shot_minor", "full_shot_balancedness", "splits"]
PAGE = ROOT / ".dvc/plots/offline_page.html"


def _metrics(method: str, split: int, acc: float) -> dict:
    groups = {"major": acc - 0.05, "moderate": acc, "minor": acc + 0.02}
    kind = {"accuracy": acc, "balancedness": 0.04, "groups": groups, "per_class": [acc] * 10}
    return {"method": method, "split": split, "dataset": "fashion_mnist",
            "full_shot": kind, "few_shot": kind, "knn": kind}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from sdclr.registry import load_params
    from sdclr.report import write_report

    proj = make_project(tmp_path_factory.mktemp("views") / "proj",
                        {"subsample": {"splits": list(SPLITS)}, "methods": list(METHODS)})
    reports = proj / "reports"
    for i, method in enumerate(ALL):
        for split in SPLITS:
            path = reports / "metrics" / method / f"split{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(_metrics(method, split, 0.6 + 0.05 * i + 0.01 * split)))
    for i, method in enumerate(METHODS):  # the pretrain stages' histories, a different loss level per method
        for split in SPLITS:
            path = reports / "pretrain" / method / f"split{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = [f"{e},{5 + i - 0.4 * e - 0.1 * split:.4f},0.5" for e in range(1, 5)]
            path.write_text("\n".join(["epoch,loss,lr", *rows]) + "\n")
    splits = proj / "data/splits/fashion_mnist"
    splits.mkdir(parents=True)
    (splits / "summary.json").write_text(json.dumps(splits_summary()))
    write_report(reports / "metrics", reports / "pretrain", splits / "summary.json", load_params(proj / "params.yaml"),
                 reports, [])
    return proj


@pytest.mark.slow
def test_metrics_show_prints_one_row_per_method_with_the_headline_columns(project):
    shown = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    (workspace,) = shown.values()  # one revision: the workspace
    files = workspace["data"]
    assert sorted(files) == sorted(f"reports/scores/{m}.json" for m in ALL)
    for i, method in enumerate(ALL):
        row = files[f"reports/scores/{method}.json"]["data"]
        assert list(row) == COLUMNS
        assert row["full_shot"] == pytest.approx(0.6 + 0.05 * i + 0.005)  # mean over the two splits, a fraction
        assert row["full_shot_minor"] == pytest.approx(row["full_shot"] + 0.02) and row["splits"] == len(SPLITS)

    table = dvc(project, "metrics", "show").stdout.splitlines()
    header, rows = table[0].split(), [line.split() for line in table[1:] if line.strip()]
    assert header == ["Path", *sorted(COLUMNS)]  # DVC sorts the columns
    assert sorted(r[0] for r in rows) == sorted(f"reports/scores/{m}.json" for m in ALL)
    assert all(len(r) == 1 + len(COLUMNS) for r in rows)


def _specs(html: str) -> list[dict]:
    return [json.loads(s) for s in re.findall(r"var spec = (\{.*?\});\s*vegaEmbed\(", html, re.S)]


@pytest.fixture(scope="module")
def page(project, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plots") / "page"
    dvc(project, "plots", "show", "-o", str(out))
    return out / "index.html"


@pytest.mark.slow
def test_plots_page_loads_nothing_from_the_network_and_inlines_vega(page):
    html = page.read_text()
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.I), "a script is loaded from elsewhere"
    assert "cdn.jsdelivr" not in html
    template = PAGE.read_text()
    inline = re.findall(r"<script>\n.*?\n</script>", template, re.S)
    assert len(inline) == 3 and all(code in html for code in inline)  # vega, vega-lite, vega-embed, verbatim
    for name, version in (("vega", "5.20.2"), ("vega-lite", "5.2.0"), ("vega-embed", "6.18.2")):
        assert f"{name} {version}: build/{name}.min.js" in html
    assert 'var e="5.20.2"' in html and "vegaEmbed=" in html  # the code itself, not only its name


@pytest.mark.slow
def test_one_plot_overlays_every_methods_and_splits_loss(page):
    html = page.read_text()
    with_loss = [s for s in _specs(html) if any("method" in row for row in s["data"]["values"])]
    assert len(with_loss) == 1, "the loss curves must share one plot"
    spec = with_loss[0]
    rows = spec["data"]["values"]
    assert {(r["method"], r["split"]) for r in rows} == {(m, str(k)) for m in METHODS for k in SPLITS}
    assert len(rows) == len(METHODS) * len(SPLITS) * 4  # four epochs each
    assert spec["encoding"]["color"]["field"] == "method" and spec["encoding"]["detail"]["field"] == "split"
    assert (spec["encoding"]["x"]["field"], spec["encoding"]["y"]["field"]) == ("epoch", "loss")
    # the per-split history files are no plots of their own; the report's PNGs still are
    assert "reports/pretrain/" not in html
    for fig in ("group_accuracy", "pretrain_loss", "class_counts"):
        assert f"reports_figures_{fig}.png" in html or f"reports/figures/{fig}.png" in html


def test_the_page_template_is_the_vendored_one():
    template = PAGE.read_text()
    assert "{scripts}" not in template and template.count("{plot_divs}") == 1
    assert not re.search(r"<script[^>]*\bsrc\s*=", template, re.I)
    config = (ROOT / ".dvc/config").read_text()
    assert re.search(r"^\s*html_template\s*=\s*plots/offline_page\.html\s*$", config, re.M)


CHROMIUM = next((c for c in ("chromium-headless-shell", "chromium", "chromium-browser") if shutil.which(c)), None)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless Chromium")
def test_vega_draws_the_page_offline(page, tmp_path):
    # No network for the browser: a proxy that does not exist, so any remote load would fail.
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
                          page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    drawn = re.findall(r'class="vega-embed[^"]*"><div class="chart-wrapper"[^>]*><(canvas|svg)\b', dom)
    assert len(drawn) == len(_specs(page.read_text())) >= 1, dom[-2000:]
