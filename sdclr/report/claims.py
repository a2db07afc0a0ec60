"""Published claims → paired verdicts over splits, per claim and family-wise, and their markdown.

The claims come from the methods themselves (each class's ``claim_source``, ``claim_heading``
and ``claims``, :mod:`sdclr.methods.base`), plus one the report adds for every method: it should
beat the untrained encoder. Each is judged by its paired difference over splits with a Student-t
interval (:mod:`sdclr.stats`), and once more family-wise: each source's claims are one family,
their paired t p-values adjusted by Holm's method.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pandas as pd

from sdclr.methods.base import Claim, claims_against
from sdclr.registry import METHODS, method_class
from sdclr.report.aggregate import pct, round_fraction, round_p
from sdclr.stats import ALPHA, CONFIDENCE, holm, paired_difference, splits_to_decide, verdict_from_p

#: the claim the report adds for every method, and what it says
PRETRAINING_HELPS = "pretraining helps"


class Checked(NamedTuple):
    """A claim about method ``a`` from ``source``."""

    a: str
    claim: Claim
    source: str


def claims(methods: tuple[str, ...] = METHODS) -> list[Checked]:
    """The published claims about ``methods`` (in the registry's order), then pretraining-helps for each."""
    out = [Checked(name, c, method_class(name).claim_source) for name in methods for c in method_class(name).claims]
    out += [Checked(name, c, PRETRAINING_HELPS) for name in methods for c in claims_against("random", minor=False)]
    return out


def claim_headings(methods: tuple[str, ...] = METHODS) -> dict[str, str]:
    """What each source of claims about ``methods`` says, in report.md's order (the registry's,
    pretraining-helps last)."""
    out = {}
    for name in methods:
        cls = method_class(name)
        if cls.claim_source:
            out.setdefault(cls.claim_source, cls.claim_heading)
    return {**out, PRETRAINING_HELPS: "Every pretrained encoder should beat the untrained one (`random`)."}


def compare(df: pd.DataFrame) -> list[dict]:
    """Every claim whose two methods are in ``df``: paired difference, interval and verdict, the
    paired t test's p, and the p and verdict family-wise (Holm over the claims of its source)."""
    out, tests = [], []
    for a, c, source in claims(tuple(m for m in METHODS if m in set(df["method"]))):
        values = {}
        for method in (a, c.b):
            rows = df[(df["method"] == method) & (df["kind"] == c.kind)]
            values[method] = dict(zip(rows["split"].astype(int), rows[c.metric].astype(float)))
        if not values[a] or not values[c.b] or not set(values[a]) & set(values[c.b]):
            continue
        d = paired_difference(values[a], values[c.b])
        tests.append(d)
        out.append({"a": a, "b": c.b, "kind": c.kind, "metric": c.metric, "direction": c.direction,
                    "source": source, "splits": d.n, "mean": round_fraction(d.mean),
                    "sd": None if d.sd is None else round_fraction(d.sd),
                    "low": None if d.low is None else round_fraction(d.low),
                    "high": None if d.high is None else round_fraction(d.high), "verdict": d.verdict(c.direction),
                    "p": round_p(d.p)})
    for source in dict.fromkeys(r["source"] for r in out):
        family = [i for i, r in enumerate(out) if r["source"] == source]
        for i, p in zip(family, holm([tests[i].p for i in family])):
            out[i]["p_holm"] = round_p(p)
            out[i]["verdict_family"] = verdict_from_p(tests[i].mean, p, out[i]["direction"])
    return out


METRIC_WORDS = {"accuracy": "accuracy", "minor": "Minor-group accuracy", "balancedness": "balancedness (group std)"}


SHORT_KIND = {"full_shot": "full-shot", "few_shot": "few-shot", "knn": "kNN"}


def _p_text(p: float | None) -> str:
    """A p-value as report.md shows it: 3 decimals, ``< 0.001`` below, ``—`` when not tested."""
    if p is None:
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def tested(rows: list[dict]) -> int:
    """How many claims of ``rows`` have a p-value: the family size Holm's correction counts."""
    return sum(r["p"] is not None for r in rows)


def comparison_table(rows: list[dict]) -> str:
    """One source's claims: the per-claim verdict (interval), then its p-value and the family-wise
    verdict (Holm over these rows)."""
    lines = ["| claim | probe | metric | claimed | mean difference | 95 % interval | splits | verdict | p (paired t) "
             f"| Holm p (family of {tested(rows)}) | family-wise verdict |", "|" + "---|" * 11]
    for r in rows:
        interval = "—" if r["low"] is None else f"[{pct(r['low']):+.2f}, {pct(r['high']):+.2f}]"
        verdict = r["verdict"] + (" (one split)" if r["splits"] == 1 else "")
        lines.append(f"| {r['a']} − {r['b']} | {SHORT_KIND[r['kind']]} | {METRIC_WORDS[r['metric']]} | "
                     f"{'> 0' if r['direction'] > 0 else '< 0'} | {pct(r['mean']):+.2f} | {interval} | {r['splits']} | "
                     f"**{verdict}** | {_p_text(r['p'])} | {_p_text(r['p_holm'])} | **{r['verdict_family']}** |")
    return "\n".join(lines)


def chance_sentence(rows: list[dict]) -> str:
    """How many decided verdicts one family would give by chance alone if no claim were true:
    each tested claim is decided with probability 1 − CONFIDENCE under H0, so N × 0.05 on
    average whatever their dependence; Holm bounds the chance of any false decision instead."""
    n, untested = tested(rows), len(rows) - tested(rows)
    if n == 0:
        return "No claim here has a p-value (one split each), so none can be decided, per claim or family-wise."
    level = f"{100 * CONFIDENCE:.0f} %"
    claims_ = f"{n} claims tested at {level} each" if n > 1 else f"1 claim tested at {level}"
    out = (f"With {claims_}, on average {n * ALPHA:.2f} would be decided by chance alone if no method differed; "
           f"Holm's correction keeps the chance of any false decision in this family at most {100 * ALPHA:.0f} %.")
    if untested:
        out += f" The other {untested} claim(s) have one split and no p-value, so they are not counted."
    return out


def verdict_sections(rows: list[dict], figure: Path) -> list[str]:
    """report.md's claims sections, one per source, with how the intervals and the family-wise
    verdicts are computed, and a link to the forest figure of every claim (``figure``, drawn by
    :func:`plot_paired_differences`)."""
    md = ["## Claims checked on this run", "",
          f"Paired over splits: for each split k the difference d_k = a_k − b_k (both methods trained on the "
          f"same long-tail subset), then mean(d) with a {CONFIDENCE:.0%} Student-t interval "
          "mean ± t(0.975, n − 1) · s / √n (s = sample std of the d_k, n = splits). Verdict: **agrees** when the "
          "interval lies on the claimed side of 0, **disagrees** when it lies on the other side, **inconclusive** "
          "when it contains 0 or there is only one split (no interval). Differences in accuracy points; "
          "balancedness is the std of the three group accuracies (lower = more balanced). "
          "The paired t test's two-sided p (t = mean / (s / √n)) is below 0.05 exactly when the interval "
          "excludes 0. The claims under one heading below form a family, tested together: Holm's correction "
          "multiplies the smallest of its N p-values by N, the next by N − 1, and so on (kept non-decreasing, "
          "capped at 1), and the **family-wise verdict** decides a claim only when this Holm p is below 0.05, "
          "which keeps the chance of any false decision in the family at most 5 %, however the claims depend "
          "on each other.", "",
          f"![paired differences](figures/{figure.name})", "",
          "Every claim at a glance, each heading on its own scale: the paired mean difference with its 95 % "
          "interval, turned so that right of 0 is the claimed direction; colour is the per-claim verdict, a "
          "filled dot a claim still decided family-wise.", ""]
    for source, what in claim_headings(tuple(m for m in METHODS if m in {r["a"] for r in rows})).items():
        sub = [r for r in rows if r["source"] == source]
        if sub:
            md += [f"### {source}", "", what, "", comparison_table(sub), "", chance_sentence(sub), ""]
    return md


def undecided_section(rows: list[dict], n_splits: int) -> list[str]:
    """The published claims this run leaves inconclusive, and why, from the measured spread.

    An interval's half-width is t · s / √n (s: the split-to-split std of the paired
    difference), so a claim stays open when its mean difference is small against s. For
    each, the splits the same mean and s would need before the interval excluded 0.
    """
    open_ = [r for r in rows if r["source"] != PRETRAINING_HELPS and r["verdict"] == "inconclusive"
             and r["sd"] is not None]
    published = [r for r in rows if r["source"] != PRETRAINING_HELPS]
    if n_splits < 2 or not published:
        return []
    md = ["## What this run cannot decide", "",
          f"{len(open_)} of the {len(published)} published claims checked here stay *inconclusive* on {n_splits} "
          "splits. A paired interval is mean ± t · s / √n, with s the split-to-split std of the difference: a claim "
          "stays open while its mean difference is small against s. The last column is how many splits the same "
          "mean difference and spread would need before the interval excluded 0 (a rough guide: both are "
          "estimated from these few splits).", ""]
    if not open_:
        return md[:2] + [f"Every published claim checked here is decided on {n_splits} splits.", ""]
    means, sds = [abs(pct(r["mean"])) for r in open_], [pct(r["sd"]) for r in open_]
    md[2] += (f" Here the open mean differences are {min(means):.2f}–{max(means):.2f} points, against a "
              f"split-to-split std of {min(sds):.2f}–{max(sds):.2f} points.")
    md += ["| claim | probe | metric | mean difference | split-to-split std | 95 % half-width | splits to exclude 0 "
           "| verdict it would reach |", "|" + "---|" * 8]
    for r in open_:
        need = splits_to_decide(r["mean"], r["sd"])
        half = (r["high"] - r["low"]) / 2
        then = "—" if need is None else ("agrees" if r["mean"] * r["direction"] > 0 else "disagrees")
        md.append(f"| {r['a']} − {r['b']} | {SHORT_KIND[r['kind']]} | {METRIC_WORDS[r['metric']]} | "
                  f"{pct(r['mean']):+.2f} | {pct(r['sd']):.2f} | {pct(half):.2f} | "
                  f"{'more than 1000' if need is None else f'≈ {need}'} | {then} |")
    return md + [""]
