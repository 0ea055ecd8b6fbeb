"""Thresholds, p-values, intervals, the holdout floor and the matched subsample against
hand-computed values and SciPy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from replicheck import calibrate


def test_threshold_and_p_values():
    null = np.arange(1, 101, dtype=float)  # 1..100
    limit = calibrate.threshold(null, 0.99)
    assert limit.value == pytest.approx(np.quantile(null, 0.99)) and limit.n_null == 100
    p = calibrate.p_values(np.array([100.5, 100.0, 50.0, 0.0]), null)
    np.testing.assert_allclose(p, [1 / 101, 2 / 101, 52 / 101, 1.0])
    assert np.isnan(calibrate.p_values(np.array([np.nan]), null)[0])
    assert calibrate.exceeds(np.array([99.02, 99.0]), limit).tolist() == [True, False]


def test_oriented_turns_distances_into_similarities():
    assert calibrate.oriented(np.array([0.1, 0.3]), False).tolist() == [-0.1, -0.3]


def test_wilson_interval_matches_scipy():
    for count, total in ((0, 50), (3, 40), (40, 40), (23, 1000)):
        expected = stats.binomtest(count, total).proportion_ci(method="wilson")
        assert calibrate.wilson(count, total) == pytest.approx((expected.low, expected.high), abs=1e-9)


def test_holdout_floor_is_near_the_nominal_rate_for_exchangeable_scores():
    null = np.random.default_rng(2).normal(size=2000)
    floor = calibrate.holdout_floor(null, 0.95)
    assert 0.04 <= floor.rate <= 0.06


def test_matched_subsample_is_sorted_unique_and_reproducible():
    a = calibrate.matched_subsample(1000, 100, seed=5)
    assert len(np.unique(a)) == 100 and (np.diff(a) > 0).all()
    np.testing.assert_array_equal(a, calibrate.matched_subsample(1000, 100, seed=5))
    np.testing.assert_array_equal(calibrate.matched_subsample(10, 100, seed=5), np.arange(10))

