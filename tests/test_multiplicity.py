"""Verdicts honest about multiplicity: the paired t test's p, Holm's family-wise adjustment
(checked against statsmodels and scipy), the report's family-wise columns, chance sentence and
forest figure, on hand-made per-split metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sdclr.registry import parse_params
from sdclr.report import write_report
from sdclr.report.aggregate import load_metrics
from sdclr.report.claims import compare
from sdclr.report.figures import plot_paired_differences
from sdclr.stats import AGREES, DISAGREES, INCONCLUSIVE, holm, paired_difference, paired_t_p, verdict_from_p
from tests.dvc_project import splits_summary
from tests.test_report import _write_metrics

_RNG = np.random.default_rng(20240611)

HOLM_VECTORS = [
    [0.01, 0.04, 0.03, 0.005],
    [0.02, 0.02, 0.02, 0.5],  # ties
    [0.001, 0.5, 0.02, 0.02, 0.02, 0.9],  # ties in the middle of the order
    [1.0, 0.01, 1.0],  # a p of 1, and products capped at 1
    [0.3],  # a family of one: nothing to adjust
    [0.04, 0.011, 0.012],  # the step-down keeps order: 2 · 0.012 = 0.024 is lifted to 3 · 0.011 = 0.033
    *[list(_RNG.uniform(0, 0.2, size=n)) for n in (2, 5, 9, 19)],
    *[list(_RNG.uniform(0, 1, size=n)) for n in (3, 7, 24)],
]


@pytest.mark.parametrize("pvalues", HOLM_VECTORS)
def test_holm_matches_statsmodels(pvalues):
    from statsmodels.stats.multitest import multipletests

    expected = multipletests(pvalues, method="holm")[1]
    assert holm(pvalues) == pytest.approx(list(expected), abs=1e-15)


@pytest.mark.parametrize("pvalues", HOLM_VECTORS[:6])
def test_holm_leaves_untested_claims_out_of_the_family(pvalues):
    from statsmodels.stats.multitest import multipletests

    with_gaps = [None, *pvalues[:1], None, *pvalues[1:], None]  # claims without a p-value (one split)
    adjusted = holm(with_gaps)
    assert [adjusted[0], adjusted[2], adjusted[-1]] == [None, None, None]
    tested = [p for p in adjusted if p is not None]
    assert tested == pytest.approx(list(multipletests(pvalues, method="holm")[1]), abs=1e-15)  # m = len(pvalues)
    assert holm([None, None]) == [None, None] and holm([]) == []


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_paired_t_p_matches_scipy(n):
    from scipy.stats import ttest_1samp, ttest_rel

    for _ in range(5):
        a, b = _RNG.normal(0.8, 0.02, n), _RNG.normal(0.8, 0.02, n) + _RNG.normal(0, 0.01)
        d = paired_difference(dict(enumerate(a)), dict(enumerate(b)))
        assert d.p == pytest.approx(ttest_rel(a, b).pvalue, rel=1e-9)
        assert d.p == pytest.approx(ttest_1samp(a - b, 0.0).pvalue, rel=1e-9)
        # two-sided p < 0.05 exactly when the 95 % interval excludes 0: the per-claim verdict is unchanged
        assert (d.p < 0.05) == (d.low > 0 or d.high < 0)


def test_paired_t_p_without_spread_or_with_one_split():
    assert paired_difference({0: 0.9}, {0: 0.8}).p is None  # one split: nothing to test
    assert paired_t_p(0.02, 0.0, 3) == 0.0  # every split moved by the same non-zero amount
    assert paired_t_p(0.0, 0.0, 3) == 1.0  # no difference at all
    assert paired_difference({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6}).p == 1.0


@pytest.mark.parametrize("mean, p, direction, verdict", [
    (0.02, 0.01, +1, AGREES),
    (-0.02, 0.01, +1, DISAGREES),
    (-0.02, 0.01, -1, AGREES),  # lower is claimed (balancedness)
    (0.02, 0.01, -1, DISAGREES),
    (0.02, 0.05, +1, INCONCLUSIVE),  # decided only strictly below 0.05
    (0.02, 0.3, +1, INCONCLUSIVE),
    (0.02, None, +1, INCONCLUSIVE),  # not tested
])
def test_verdict_from_p(mean, p, direction, verdict):
    assert verdict_from_p(mean, p, direction) == verdict


#: sdclr − simclr = +1.0, +2.0, +1.5 points on every probe: decided on its own (p ≈ 0.035), but
#: one of 7 SDCLR claims (the other 4 differ by exactly 0, p = 1), so Holm's p is 7 · p > 0.05
DECIDED_ALONE = {"random": [0.60, 0.61, 0.59], "simclr": [0.80, 0.81, 0.79], "sdclr": [0.81, 0.83, 0.805],
                 "sbid": [0.79, 0.80, 0.78]}


def test_a_claim_decided_alone_is_not_decided_in_its_family(tmp_path):
    from scipy.stats import ttest_rel

    rows = {(r["a"], r["b"], r["kind"], r["metric"]): r
            for r in compare(load_metrics(_write_metrics(tmp_path, DECIDED_ALONE)))}
    p = ttest_rel(DECIDED_ALONE["sdclr"], DECIDED_ALONE["simclr"]).pvalue
    assert 0.01 < p < 0.05 and 7 * p > 0.05
    for kind in ("full_shot", "few_shot", "knn"):
        r = rows[("sdclr", "simclr", kind, "accuracy")]
        assert r["verdict"] == AGREES and r["verdict_family"] == INCONCLUSIVE
        assert r["p"] == pytest.approx(p, rel=1e-3) and r["p_holm"] == pytest.approx(7 * p, rel=1e-3)
    minor = rows[("sdclr", "simclr", "full_shot", "minor")]
    assert (minor["p"], minor["p_holm"], minor["verdict_family"]) == (1.0, 1.0, INCONCLUSIVE)
    sbid = rows[("sbid", "simclr", "knn", "accuracy")]  # −1 point on every split: (almost) no spread
    assert sbid["verdict"] == sbid["verdict_family"] == DISAGREES and sbid["p_holm"] == pytest.approx(0, abs=1e-9)
    helps = rows[("sdclr", "random", "knn", "accuracy")]  # ~21 points: decided either way
    assert helps["verdict"] == helps["verdict_family"] == AGREES and helps["p_holm"] < 0.05


def _report(tmp_path: Path, raw_params: dict, table: dict) -> str:
    params = parse_params(raw_params)
    (tmp_path / "splits").mkdir(parents=True, exist_ok=True)
    (tmp_path / "splits/summary.json").write_text(json.dumps(splits_summary()))
    write_report(_write_metrics(tmp_path / "metrics", table), tmp_path / "none", tmp_path / "splits/summary.json",
                 params, tmp_path / "out", [])
    return (tmp_path / "out/report.md").read_text()


def _section(md: str, heading: str) -> str:
    return md.split(f"### {heading}\n")[1].split("\n#")[0]


def test_the_report_shows_the_family_wise_columns_and_what_chance_alone_would_decide(tmp_path, raw_params):
    md = _report(tmp_path, raw_params, DECIDED_ALONE)
    sdclr = _section(md, "SDCLR paper (Jiang et al. 2021)")
    assert "| verdict | p (paired t) | Holm p (family of 7) | family-wise verdict |" in sdclr
    assert ("| sdclr − simclr | full-shot | accuracy | > 0 | +1.50 | [+0.26, +2.74] | 3 | **agrees** | 0.035 | 0.246 "
            "| **inconclusive** |") in sdclr
    assert ("With 7 claims tested at 95 % each, on average 0.35 would be decided by chance alone if no method "
            "differed; Holm's correction keeps the chance of any false decision in this family at most 5 %.") in sdclr
    assert "With 3 claims tested at 95 % each, on average 0.15 would be decided" in _section(md, "Cao & Wu 2024")
    assert "With 9 claims tested at 95 % each, on average 0.45 would be decided" in _section(md, "pretraining helps")
    assert "Holm" in md.split("## Claims checked on this run")[1].split("###")[0]  # the methods paragraph says how
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert all({"p", "p_holm", "verdict_family"} <= set(r) for r in summary["paired_differences"])


def test_claims_on_one_split_are_left_out_of_their_family(tmp_path, raw_params):
    table = {**DECIDED_ALONE, "sbid": [0.79]}  # sbid on split 0 only: its claims have no p-value
    md = _report(tmp_path, raw_params, table)
    cao = _section(md, "Cao & Wu 2024")
    assert "Holm p (family of 0)" in cao and "| **inconclusive (one split)** | — | — | **inconclusive** |" in cao
    assert "No claim here has a p-value (one split each), so none can be decided" in cao
    helps = _section(md, "pretraining helps")
    assert "Holm p (family of 6)" in helps
    assert ("With 6 claims tested at 95 % each, on average 0.30 would be decided by chance alone if no method "
            "differed; Holm's correction keeps the chance of any false decision in this family at most 5 %. The "
            "other 3 claim(s) have one split and no p-value, so they are not counted.") in helps


def test_the_forest_figure_is_written_shown_and_the_same_bytes_on_a_rerun(tmp_path, raw_params):
    first = _report(tmp_path / "a", raw_params, DECIDED_ALONE)
    figure = tmp_path / "a/out/figures/paired_differences.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 20_000
    intro = first.split("## Claims checked on this run")[1].split("###")[0]
    assert "![paired differences](figures/paired_differences.png)" in intro  # near the top of the claims section
    assert _report(tmp_path / "b", raw_params, DECIDED_ALONE) == first
    assert (tmp_path / "b/out/figures/paired_differences.png").read_bytes() == figure.read_bytes()
    plot_paired_differences([], tmp_path / "none.png")  # no claim: dvc.yaml declares the figure all the same
    assert (tmp_path / "none.png").read_bytes()[:4] == b"\x89PNG"


#: every claim with a moderate p: a family made of all of them would adjust each p otherwise
MODERATE = {"random": [0.600, 0.620, 0.590, 0.610], "simclr": [0.700, 0.740, 0.710, 0.705],
            "sdclr": [0.715, 0.760, 0.720, 0.712], "sbid": [0.690, 0.745, 0.700, 0.716]}


def test_holm_adjusts_within_each_claim_source_not_over_the_whole_report(tmp_path):
    """Each source's claims (a paper's, pretraining-helps) are one family; Holm over every claim of the report
    at once would be another test, with other p-values and verdicts (a change the suite once let through)."""
    rows = compare(load_metrics(_write_metrics(tmp_path, MODERATE)))
    sources = {r["source"] for r in rows}
    assert len(sources) >= 3
    for source in sources:
        family = [r for r in rows if r["source"] == source]
        for r, expected in zip(family, holm([r["p"] for r in family])):
            assert r["p_holm"] == pytest.approx(expected, rel=1e-3), (source, r)
    everything = holm([r["p"] for r in rows])  # not vacuous: one family of all would differ here
    assert any(r["p_holm"] != pytest.approx(p, rel=1e-3) for r, p in zip(rows, everything))
