"""The pipeline's statistics on inputs whose answers are known: bootstrap intervals against a
known distribution and against brute force (further tests per section live beside them)."""
import itertools

import numpy as np
import pytest

from cortex_nb.tables import bootstrap_ci, mean_ci


def test_bootstrap_interval_covers_the_true_mean_at_about_its_level():
    """Percentile bootstrap of the mean of n = 60 draws from N(0.3, 1), 300 independent samples.
    Its coverage for this n is close to the nominal 95 % (slightly below: ~93-94 %); with 300 trials
    the binomial standard error of a coverage of 0.94 is 0.014, so [0.88, 0.985] is > 4 se either
    side of the expected value: the test fails only if the interval is really mis-sized (a 90 %
    interval covers ~0.89, an 80 % one ~0.79, a 99 % one ~0.99)."""
    rng = np.random.default_rng(12345)
    hits = 0
    for trial in range(300):
        x = rng.normal(0.3, 1.0, size=60)
        _, lo, hi = bootstrap_ci(x, n_boot=1000, seed=trial)
        hits += lo <= 0.3 <= hi
    assert 0.88 <= hits / 300 <= 0.985


def test_bootstrap_interval_width_shrinks_like_one_over_sqrt_n():
    rng = np.random.default_rng(0)
    w = {}
    for n in (100, 1600):
        x = rng.normal(size=n)
        _, lo, hi = bootstrap_ci(x, n_boot=4000, seed=1)
        w[n] = hi - lo
    # normal theory: width = 2 * 1.96 / sqrt(n); ratio 4 for 16x the data
    assert w[100] / w[1600] == pytest.approx(4.0, rel=0.15)
    assert w[1600] == pytest.approx(2 * 1.96 / 40, rel=0.1)


def test_bootstrap_matches_the_exact_resampling_distribution_on_a_tiny_sample():
    """For 4 values all 4^4 = 256 resamples are equally likely: the bootstrap quantiles must
    approach the exact quantiles of that distribution (brute force over every resample)."""
    x = np.array([0.0, 1.0, 3.0, 10.0])
    means = np.array([x[list(i)].mean() for i in itertools.product(range(4), repeat=4)])
    lo_exact, hi_exact = np.quantile(means, [0.025, 0.975])
    m, lo, hi = bootstrap_ci(x, n_boot=200_000, seed=3)
    assert m == pytest.approx(3.5)
    assert lo == pytest.approx(lo_exact, abs=0.26) and hi == pytest.approx(hi_exact, abs=0.26)  # grid step 0.25


def test_mean_ci_of_a_constant_is_degenerate_and_empty_is_nan():
    assert mean_ci(np.full(7, 0.25)) == {"mean": 0.25, "lo": 0.25, "hi": 0.25}
    assert all(np.isnan(v) for v in bootstrap_ci(np.array([])))
