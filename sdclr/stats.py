"""Paired comparisons of two methods over long-tail splits, and the verdict on a claim.

Two methods trained on the same split share its class order and its images, so the
honest comparison is *paired*: the per-split differences d_k = a_k − b_k, their mean,
and a 95 % Student-t interval mean ± t(0.975, n − 1) · s / √n (s = sample std of the
d_k). With one split there is no interval, and no verdict can be drawn from it.

A claim is a direction (the difference should be > 0, or < 0 for balancedness, where
lower is better). Its verdict is *agrees* when the interval lies entirely on the
claimed side of 0, *disagrees* when it lies entirely on the other side, and
*inconclusive* when it contains 0 or there is only one split.

Each claim also gets the paired t test's two-sided p-value (H0: mean difference 0), which is
below 0.05 exactly when the 95 % interval excludes 0. A report tests many claims at once, and
at 95 % each some would be decided by chance alone; :func:`holm` adjusts the p-values of one
family of claims (one paper's) so that the chance of *any* false decision in it stays at most
5 %, whatever the dependence between the claims (Holm 1979). :func:`verdict_from_p` is the
verdict such an adjusted p-value gives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

AGREES, DISAGREES, INCONCLUSIVE = "agrees", "disagrees", "inconclusive"
CONFIDENCE = 0.95
#: the significance level that goes with :data:`CONFIDENCE` (0.05)
ALPHA = round(1 - CONFIDENCE, 10)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, df))


@dataclass(frozen=True)
class PairedDifference:
    """Mean of per-split differences a − b, with its interval and paired t test (None with one split)."""

    n: int
    mean: float
    low: float | None
    high: float | None
    sd: float | None = None  # sample std of the per-split differences (None with one split)
    p: float | None = None  # two-sided p-value of the paired t test, H0: mean difference 0 (None with one split)

    def verdict(self, direction: int) -> str:
        """``direction`` +1: the claim is a − b > 0; −1: a − b < 0."""
        if self.low is None or self.high is None:
            return INCONCLUSIVE
        low, high = (self.low, self.high) if direction > 0 else (-self.high, -self.low)
        if low > 0:
            return AGREES
        if high < 0:
            return DISAGREES
        return INCONCLUSIVE


def paired_difference(a: dict[int, float], b: dict[int, float], confidence: float = CONFIDENCE) -> PairedDifference:
    """Paired difference over the splits both ``a`` and ``b`` have ({split id: value})."""
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("no split in common: nothing to compare")
    d = np.array([a[k] - b[k] for k in common], dtype=np.float64)
    mean = float(d.mean())
    if len(d) < 2:
        return PairedDifference(1, mean, None, None)
    sd = float(d.std(ddof=1))
    half = t_quantile(0.5 + confidence / 2, len(d) - 1) * sd / math.sqrt(len(d))
    return PairedDifference(len(d), mean, mean - half, mean + half, sd, paired_t_p(mean, sd, len(d)))


def paired_t_p(mean: float, sd: float, n: int) -> float:
    """Two-sided p-value of the paired t test on ``n`` ≥ 2 differences: t = mean / (sd / √n),
    n − 1 degrees of freedom. Without spread (sd = 0) there is no t: every split moved by the
    same amount, which is certain evidence of a difference unless that amount is 0."""
    if sd == 0:
        return 1.0 if mean == 0 else 0.0
    from scipy.stats import t

    return float(2 * t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values, in the order given; None (a claim not tested, e.g. on
    one split) stays None and does not count in the family size m.

    Step-down: the i-th smallest p (i = 0, 1, …) is multiplied by m − i, the products are made
    non-decreasing in that order (a claim is never easier to decide than a smaller-p one) and
    capped at 1. An adjusted p < α decides a claim with a chance of any false decision in the
    family of at most α: Bonferroni's guarantee, with less loss of power."""
    tested = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        out[i] = running
    return out


def verdict_from_p(mean: float, p: float | None, direction: int, alpha: float = ALPHA) -> str:
    """The verdict an (adjusted) p-value gives: decided when p < ``alpha``, on the side of 0 the
    mean difference lies (``direction`` as in :meth:`PairedDifference.verdict`); inconclusive
    otherwise or without a p-value."""
    if p is None or not p < alpha:
        return INCONCLUSIVE
    return AGREES if mean * direction > 0 else DISAGREES


def splits_to_decide(mean: float, sd: float, confidence: float = CONFIDENCE, most: int = 1000) -> int | None:
    """The fewest splits whose interval would exclude 0 if the mean difference and its
    split-to-split std stayed as measured: min n with t(n − 1) · sd / √n < |mean|; None
    when even ``most`` splits would not do (a mean difference of about 0)."""
    if sd == 0:
        return 2 if mean != 0 else None
    for n in range(2, most + 1):
        if t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n) < abs(mean):
            return n
    return None
