"""The equivalence test is two of scipy's one-sided t-tests, and a grid planned from a pilot is planned on the upper
confidence bound of the pilot's spread, which asks for more seeds than the spread itself."""
import math

import numpy as np
import pytest
from scipy import stats

from recondec.tracking.stats import paired_test, power, sd_upper_bound, seeds_for_mde, seeds_for_power, tost, welch_test


def test_tost_of_a_paired_design_is_the_larger_of_two_one_sided_paired_tests():
    close, far = [0.1, -0.2, 0.15, 0.05, -0.1], [0.9, 1.4, 0.7, 1.1, 1.3]
    for d in (close, far):
        e = tost(paired_test(d), margin=1.0)
        lower = stats.ttest_1samp(d, -1.0, alternative="greater").pvalue
        upper = stats.ttest_1samp(d, 1.0, alternative="less").pvalue
        assert e.p == pytest.approx(max(lower, upper), rel=1e-9) and e.margin == 1.0
    assert tost(paired_test(close)).equivalent and not tost(paired_test(far)).equivalent


def test_tost_of_an_unpaired_design_is_the_larger_of_two_one_sided_welch_tests():
    a, b = [80.2, 80.9, 79.5, 80.4, 81.0], [80.0, 81.5, 79.0, 80.8]
    for margin in (0.5, 1.0, 3.0):
        e = tost(welch_test(a, b), margin=margin)
        lower = stats.ttest_ind(a, [y - margin for y in b], equal_var=False, alternative="greater").pvalue
        upper = stats.ttest_ind(a, [y + margin for y in b], equal_var=False, alternative="less").pvalue
        assert e.p == pytest.approx(max(lower, upper), rel=1e-9)
        assert e.equivalent == (max(lower, upper) < 0.05)


def test_the_upper_bound_of_a_spread_is_the_chi_square_one():
    for sd, n in [(0.7, 3), (1.3, 5), (0.25, 12)]:
        assert sd_upper_bound(sd, n) == pytest.approx(sd * math.sqrt((n - 1) / stats.chi2.ppf(0.2, n - 1)))
        assert sd_upper_bound(sd, n) > sd
    assert math.isnan(sd_upper_bound(0.5, 1))
    # it covers the true spread in about 80 % of pilots of normal data
    rng = np.random.default_rng(1)
    sds = rng.normal(0.0, 1.0, size=(4000, 5)).std(axis=1, ddof=1)
    covered = np.mean([sd_upper_bound(float(s), 5) >= 1.0 for s in sds])
    assert abs(covered - 0.8) < 0.03


def test_seeds_planned_on_the_bound_are_more_than_planned_on_the_spread_and_the_fewest_that_suffice():
    sd, n, alpha = 0.6, 4, 0.05 / 3
    on_spread, on_bound = seeds_for_power(sd, 1.0, alpha), seeds_for_mde(sd, n, alpha, mde=1.0)
    assert on_bound > on_spread
    bound = sd_upper_bound(sd, n)
    assert power(1.0, bound / math.sqrt(on_bound), on_bound - 1, alpha) >= 0.8
    assert power(1.0, bound / math.sqrt(on_bound - 1), on_bound - 2, alpha) < 0.8
    with pytest.raises(ValueError, match="more than 50 seeds"):
        seeds_for_mde(5.0, n, alpha, mde=1.0, most=50)
