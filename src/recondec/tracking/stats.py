"""The statistics of a comparison across seeds: paired and Welch t-tests, Holm's correction, and what a test could
have detected (its minimum detectable effect at a given power, from the noncentral t distribution).

A grid whose seeds pair its runs (same start, same labelled images, same data order) is a paired design: the
verdict uses the paired t-test on the per-seed differences, whose noise excludes everything the seed fixes. Welch's
test (unequal variances) is the test for runs that do not pair. A "no difference" is worth what the test could have
seen: every row reports the smallest true difference its test finds with 80 % power, and whether the data show the
difference to lie within a margin that does not matter (two one-sided tests, TOST). Planning a grid from a pilot
uses an upper confidence bound of the pilot's spread: a few seeds' standard deviation is often an underestimate,
and planning on it gives grids too small to detect what they were sized for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import mean, stdev
from typing import Sequence

POWER = 0.8
CONFIDENCE = 0.95
EQUIVALENCE_MARGIN = 1.0  # points of top-1: a difference smaller than this is too small to matter here
PLANNING_CONFIDENCE = 0.8  # the one-sided confidence of the spread a grid is planned on


@dataclass(frozen=True)
class TestResult:
    diff: float                  # mean difference (row - reference)
    ci: tuple[float, float]      # its confidence interval
    p: float                     # two-sided
    n: int                       # pairs (paired) or the row's seeds (Welch)
    df: float                    # degrees of freedom of the t statistic
    se: float                    # standard error of the difference


def paired_test(diffs: Sequence[float], confidence: float = CONFIDENCE) -> TestResult:
    """One-sample t-test of the per-seed differences against 0."""
    from scipy import stats

    n = len(diffs)
    if n < 2:
        return TestResult(diffs[0] if diffs else math.nan, (math.nan, math.nan), math.nan, n, math.nan, math.nan)
    d, sd = mean(diffs), stdev(diffs)
    if sd == 0:  # identical differences: no noise to test against
        return TestResult(d, (d, d), 1.0 if d == 0 else 0.0, n, n - 1, 0.0)
    se = sd / math.sqrt(n)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * se
    p = 2 * stats.t.sf(abs(d / se), n - 1)
    return TestResult(d, (d - half, d + half), float(p), n, n - 1, se)


def welch_test(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE) -> TestResult:
    """Welch's t-test of mean(a) - mean(b) (unequal variances, Welch-Satterthwaite degrees of freedom)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return TestResult(mean(a) - mean(b) if a and b else math.nan, (math.nan, math.nan), math.nan, len(a),
                          math.nan, math.nan)
    diff = mean(a) - mean(b)
    va, vb = stdev(a) ** 2 / len(a), stdev(b) ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return TestResult(diff, (diff, diff), 1.0 if diff == 0 else 0.0, len(a), math.nan, 0.0)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    p = 2 * stats.t.sf(abs(diff / se), df)
    return TestResult(diff, (diff - half, diff + half), float(p), len(a), df, se)


def power(delta: float, se: float, df: float, alpha: float) -> float:
    """Power of a two-sided t-test at level `alpha` to detect a true difference `delta` whose estimate has standard
    error `se` (noncentral t with noncentrality delta / se)."""
    from scipy import stats

    crit = stats.t.ppf(1 - alpha / 2, df)
    ncp = abs(delta) / se
    upper, lower = stats.nct.sf(crit, df, ncp), stats.nct.cdf(-crit, df, ncp)
    # scipy's noncentral t returns NaN far out in a tail, where the probability is ~0
    return float((0.0 if math.isnan(upper) else upper) + (0.0 if math.isnan(lower) else lower))


def minimum_detectable_effect(se: float, df: float, alpha: float, target: float = POWER) -> float:
    """The true difference a two-sided t-test at `alpha` detects with probability `target`, for an estimate with
    standard error `se` and `df` degrees of freedom: NaN when the noise is unknown, 0 when there is none."""
    from scipy.optimize import brentq

    if not (se >= 0) or not (df > 0):
        return math.nan
    if se == 0:
        return 0.0
    hi = se
    while power(hi, se, df, alpha) < target:
        hi *= 2
    return float(brentq(lambda delta: power(delta, se, df, alpha) - target, 0.0, hi, xtol=1e-10 * se))


def seeds_for_power(sd_diff: float, delta: float, alpha: float, target: float = POWER, most: int = 1000) -> int:
    """The fewest seeds with which a paired t-test at `alpha` detects `delta` with probability `target`, given
    the standard deviation `sd_diff` of the per-seed differences (a pilot's)."""
    if math.isnan(sd_diff):
        raise ValueError("no spread to plan on: a pilot needs at least 2 paired seeds")
    if sd_diff == 0:
        return 2  # no noise: the fewest a t-test takes

    def enough(n: int) -> bool:
        return power(delta, sd_diff / math.sqrt(n), n - 1, alpha) >= target

    if not enough(most):
        raise ValueError(f"more than {most} seeds needed for {delta} with a per-seed spread of {sd_diff}")
    low, high = 1, most  # power grows with n: bisect for the first n that is enough (low: not enough, or none)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def sd_upper_bound(sd: float, n: int, confidence: float = PLANNING_CONFIDENCE) -> float:
    """The upper one-sided `confidence` bound of a standard deviation estimated as `sd` from `n` values (normal data:
    (n - 1) s^2 / sigma^2 is chi-square with n - 1 degrees of freedom); NaN from fewer than 2 values."""
    from scipy import stats

    if n < 2 or math.isnan(sd):
        return math.nan
    return sd * math.sqrt((n - 1) / stats.chi2.ppf(1 - confidence, n - 1))


def seeds_for_mde(sd_diff: float, n: int, alpha: float, mde: float = EQUIVALENCE_MARGIN, target: float = POWER,
                  most: int = 1000, confidence: float = PLANNING_CONFIDENCE) -> int:
    """The seeds a paired grid needs to detect `mde` with probability `target` at two-sided `alpha`, planned on the
    upper `confidence` bound of the per-seed differences' spread `sd_diff` measured over `n` pilot seeds."""
    return seeds_for_power(sd_upper_bound(sd_diff, n, confidence), mde, alpha, target, most)


@dataclass(frozen=True)
class Equivalence:
    margin: float                # the difference too small to matter, in the test's units
    p: float                     # the larger of the two one-sided p-values
    equivalent: bool             # p < 1 - CONFIDENCE: the difference lies within +- margin


def tost(result: TestResult, margin: float = EQUIVALENCE_MARGIN, alpha: float = 1 - CONFIDENCE) -> Equivalence:
    """Two one-sided t-tests of `result`'s difference (paired or Welch: its standard error and degrees of freedom):
    H0 diff <= -margin against diff > -margin, and H0 diff >= margin against diff < margin. Both rejected: the
    difference is shown to lie within +- margin."""
    from scipy import stats

    if math.isnan(result.se) or math.isnan(result.diff):
        return Equivalence(margin, math.nan, False)
    if result.se == 0:  # no noise: the difference is what it is
        p = 0.0 if abs(result.diff) < margin else 1.0
    else:
        above_lower = stats.t.sf((result.diff + margin) / result.se, result.df)
        below_upper = stats.t.cdf((result.diff - margin) / result.se, result.df)
        p = float(max(above_lower, below_upper))
    return Equivalence(margin, p, p < alpha)


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjustment (family: the keys given; NaN p-values are left out of it and stay NaN)."""
    ranked = sorted((p, name) for name, p in pvalues.items() if not math.isnan(p))
    adjusted, running, m = {name: math.nan for name in pvalues}, 0.0, len(ranked)
    for i, (p, name) in enumerate(ranked):
        running = max(running, min(1.0, (m - i) * p))
        adjusted[name] = running
    return adjusted
