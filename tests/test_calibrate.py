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



def test_the_guard_keeps_a_small_nulls_false_positive_rate_near_nominal():
    """2,000 nulls of 15 correlation-like scores, each judged by a new score from the same source:
    the null's own 0.99 quantile lets about 6% through, the guarded threshold about 1%."""
    rng = np.random.default_rng(0)
    draws = np.tanh(rng.normal(0.8, 0.15, size=(2000, 16)))
    exceeded = {tail: np.mean([row[-1] > calibrate.threshold(row[:-1], 0.99, tail=tail).value for row in draws])
                for tail in ("empirical", "guarded")}
    assert exceeded["empirical"] > 0.04
    assert 0.005 <= exceeded["guarded"] <= 0.016


def test_the_guard_is_a_student_t_prediction_bound_on_fishers_z():
    rng = np.random.default_rng(1)
    null = np.tanh(rng.normal(0.5, 0.2, 40))
    z = np.arctanh(null)
    expected = np.tanh(z.mean() + stats.t.ppf(0.99, 39) * np.sqrt(1 + 1 / 40) * z.std(ddof=1))
    limit = calibrate.threshold(null, 0.99, tail="guarded")
    assert limit.gaussian == pytest.approx(expected, abs=1e-12)
    assert limit.value == max(limit.gaussian, limit.empirical) and limit.empirical == np.quantile(null, 0.99)
    assert calibrate.threshold(null, 0.99).value == limit.empirical  # the empirical rule ignores the fit
    # scores on no bounded scale (PSNR) are fitted as they are
    psnr = rng.normal(30, 3, 40)
    assert calibrate.gaussian_quantile(psnr, 0.99) == pytest.approx(
        psnr.mean() + stats.t.ppf(0.99, 39) * np.sqrt(1 + 1 / 40) * psnr.std(ddof=1))
    # float32 cosines that overshoot 1 by rounding are still correlations: the bound stays below 1
    ceiling = np.concatenate([np.full(10, 1.0000001), 1 - rng.random(30) * 1e-3])
    assert calibrate.threshold(ceiling, 0.99, tail="guarded").value <= 1.0000001
    assert np.isnan(calibrate.gaussian_quantile(np.array([0.1, 0.2]), 0.99))  # too few to fit


def test_the_guarded_holdout_floor_leaves_each_score_out_of_its_fit():
    rng = np.random.default_rng(2)
    null = np.tanh(rng.normal(0.6, 0.2, 30))
    flags = calibrate.leave_one_out_flags(null, 0.99, tail="guarded")
    expected = [null[i] > calibrate.threshold(np.delete(null, i), 0.99, tail="guarded").value for i in range(30)]
    assert flags.tolist() == expected


def test_z_scores_of_correlations_are_taken_on_fishers_z():
    """A copy at 0.999 against a wide null of other patients stands far out, as its evidence deserves."""
    null = np.tanh(np.random.default_rng(3).normal(0.5, 0.25, 200))
    z = calibrate.z_scores(np.array([0.999]), null)[0]
    assert z == pytest.approx((np.arctanh(0.999) - np.arctanh(null).mean()) / np.arctanh(null).std())
    assert z > 10 > (0.999 - null.mean()) / null.std()


def test_subject_matched_subsample_takes_whole_subjects_up_to_the_size():
    from replicheck.calibrate import subject_matched_subsample

    subjects = np.repeat(np.array(["a", "b", "c", "d", "e"]), [4, 4, 4, 4, 4])
    rows = subject_matched_subsample(subjects, 10, seed=3)
    assert len(rows) == 10 and np.all(np.diff(rows) > 0)
    taken = subjects[rows]
    counts = sorted(np.unique(taken, return_counts=True)[1].tolist())
    assert counts == [2, 4, 4]  # two whole subjects and part of a third
    np.testing.assert_array_equal(subject_matched_subsample(subjects, 10, seed=3), rows)  # seeded
    np.testing.assert_array_equal(subject_matched_subsample(subjects, 30, seed=3), np.arange(20))
