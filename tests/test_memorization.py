"""Data-set level memorization statistics (issue #22): Meehan et al.'s C_T on the paper's kind of
example, a Gaussian mixture and a "copier" that returns a training point at some rate; the DCR
share and authenticity on copies and on fresh samples."""

from __future__ import annotations

import numpy as np
import pytest

from replicheck import memorization

DIM, COMPONENTS = 8, 5


def _mixture(n: int, rng: np.random.Generator, spread: float = 1.0) -> np.ndarray:
    centres = np.random.default_rng(99).normal(0.0, 4.0, (COMPONENTS, DIM))  # the same mixture every call
    return centres[rng.integers(0, COMPONENTS, n)] + spread * rng.normal(size=(n, DIM))


def _copier(train: np.ndarray, n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Meehan et al.'s copier: with probability ``rate`` a training point (plus a little noise),
    otherwise a fresh draw from the true distribution."""
    fresh = _mixture(n, rng)
    copies = train[rng.integers(0, len(train), n)] + 0.02 * rng.normal(size=(n, DIM))
    return np.where((rng.random(n) < rate)[:, None], copies, fresh)


def _nearest(queries: np.ndarray, train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: each query's score (negative Euclidean distance) to its nearest training point and its row."""
    distances = np.sqrt(((queries[:, None, :] - train[None, :, :]) ** 2).sum(axis=2))
    rows = distances.argmin(axis=1)
    return -distances[np.arange(len(queries)), rows], rows


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    train, holdout = _mixture(1500, rng), _mixture(600, rng)
    cells = memorization.training_cells(train, 10, seed=0)
    return rng, train, cells, _nearest(holdout, train)


def _c_t(world, generated: np.ndarray, reading: str | None = None) -> float:
    _, train, cells, (holdout_scores, holdout_rows) = world
    scores, rows = _nearest(generated, train)
    result = memorization.meehan_ct(cells, scores, rows, holdout_scores, holdout_rows)
    assert result["available"] and result["cells"] == 10
    if reading:
        assert result["reading"].startswith(reading), result
    return result["C_T"]


def test_c_t_is_near_zero_for_a_generator_that_samples_the_true_distribution(world):
    rng, train, *_ = world
    assert abs(_c_t(world, _mixture(600, rng), "no evidence")) < 0.8  # a weighted mean of 10 cells' Z: sd about 0.32


def test_c_t_falls_with_the_copying_rate_and_flags_copying(world):
    rng, train, *_ = world
    values = [_c_t(world, _copier(train, 600, rate, rng), reading)
              for rate, reading in ((0.0, "no evidence"), (0.1, None), (0.3, "data copying"), (0.6, "data copying"))]
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert values[2] < -3 and values[3] < values[2]  # 30% copies: far below the paper's "C_T << 0"


def test_c_t_is_positive_for_an_underfitting_generator(world):
    rng, *_ = world
    assert _c_t(world, _mixture(600, rng, spread=1.6), "underfitting") > 3


def test_c_t_matches_a_hand_computed_single_cell():
    """One cell: C_T is the Mann-Whitney Z of synthetic against held-out distances."""
    synthetic = np.array([-0.1, -0.2, -0.3, -0.9, -1.0, -1.1])  # scores: higher is closer
    holdout = np.array([-0.5, -0.6, -0.7, -0.8, -1.2, -1.3, -1.4])
    result = memorization.meehan_ct(np.zeros(3, dtype=int), synthetic, np.zeros(6, int), holdout, np.zeros(7, int))
    u = sum(float(-s > -h) + 0.5 * float(s == h) for s in synthetic for h in holdout)  # pairs: synthetic farther
    z = (u - 6 * 7 / 2) / np.sqrt(6 * 7 * (6 + 7 + 1) / 12)
    assert result["C_T"] == pytest.approx(z, abs=1e-4)
    assert result["cells_used"] == 1 and result["synthetic_used"] == 6 and result["holdout_used"] == 7


def test_the_dcr_share_separates_copies_from_fresh_samples():
    rng = np.random.default_rng(1)
    train, holdout = _mixture(800, rng), _mixture(800, rng)
    fresh = _mixture(300, rng)
    copies = _copier(train, 300, 1.0, rng)
    honest = memorization.dcr_share(_nearest(fresh, train)[0], _nearest(fresh, holdout)[0])
    copying = memorization.dcr_share(_nearest(copies, train)[0], _nearest(copies, holdout)[0])
    assert 0.4 < honest["share"] < 0.6 and honest["p_value"] > 0.01
    assert copying["share"] > 0.95 and copying["p_value"] < 1e-6
    assert copying["ci95"][0] < copying["share"] <= copying["ci95"][1]
    assert "memorization" in copying["reading"]


def test_authenticity_of_copies_stands_out_against_held_out_images():
    rng = np.random.default_rng(2)
    train, holdout = _mixture(800, rng), _mixture(300, rng)
    subjects_nn = _nearest_other(train)
    copies, fresh = _copier(train, 300, 1.0, rng), _mixture(300, rng)
    reference = memorization.authenticity(*_nearest(holdout, train), subjects_nn)
    copied = memorization.compare_authenticity(memorization.authenticity(*_nearest(copies, train), subjects_nn), reference)
    honest = memorization.compare_authenticity(memorization.authenticity(*_nearest(fresh, train), subjects_nn), reference)
    assert copied["synthetic"]["share"] > 0.95 and copied["p_value"] < 1e-6 and "copying" in copied["reading"]
    assert abs(honest["synthetic"]["share"] - reference["share"]) < 0.12 and honest["p_value"] > 0.01


def _nearest_other(train: np.ndarray) -> np.ndarray:
    distances = np.sqrt(((train[:, None, :] - train[None, :, :]) ** 2).sum(axis=2))
    np.fill_diagonal(distances, np.inf)
    return -distances.min(axis=1)


def test_near_duplicate_pairs_join_into_clusters_largest_first():
    rows = np.array([10, 11, 12, 13, 14, 15])
    neighbours = np.array([[11, 12], [10, -1], [13, 10], [12, 14], [15, 13], [14, -1]])
    scores = np.array([[0.9, 0.95], [0.9, np.nan], [0.2, 0.95], [0.2, 0.1], [0.99, 0.1], [0.99, np.nan]])
    groups = memorization.clusters(rows, neighbours, scores, threshold=0.5)
    assert [group.tolist() for group in groups] == [[10, 11, 12], [14, 15]]
    summary = memorization.cluster_summary(groups, np.array([f"s{i}" for i in range(20)]), 6, 0.5)
    assert summary["sizes"] == [3, 2] and summary["images_in_clusters"] == 5
    assert summary["largest"][1] == ["s14", "s15"] and "mode collapse" in summary["reading"]
