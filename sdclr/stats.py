"""Paired comparisons of two methods over long-tail splits, and the verdict on a claim.

Two methods trained on the same split share its class order and its images, so the
honest comparison is *paired*: the per-split differences d_k = a_k − b_k, their mean,
and a 95 % Student-t interval mean ± t(0.975, n − 1) · s / √n (s = sample std of the
d_k). With one split there is no interval, and no verdict can be drawn from it.

A claim is a direction (the difference should be > 0, or < 0 for balancedness, where
lower is better). Its verdict is *agrees* when the interval lies entirely on the
claimed side of 0, *disagrees* when it lies entirely on the other side, and
*inconclusive* when it contains 0 or there is only one split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

AGREES, DISAGREES, INCONCLUSIVE = "agrees", "disagrees", "inconclusive"
CONFIDENCE = 0.95


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(p, df))


@dataclass(frozen=True)
class PairedDifference:
    """Mean of per-split differences a − b, with its interval (None with one split)."""

    n: int
    mean: float
    low: float | None
    high: float | None
    sd: float | None = None  # sample std of the per-split differences (None with one split)

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
    half = t_quantile(0.5 + confidence / 2, len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d))
    return PairedDifference(len(d), mean, mean - half, mean + half, float(d.std(ddof=1)))


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
