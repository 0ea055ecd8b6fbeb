"""The SSIM search's coarse stages against scikit-image, and the partial row reads they rely on."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from replicheck.levels.ssim_cascade import CoarseSsim
from replicheck.levels.voxel import VoxelLevel, _pooled, _ssim_stages
from replicheck.store import ArrayStore, StoredRows


@pytest.fixture(scope="module")
def slices(ctich):
    return ctich["flat_brain"][::61].astype(np.float32) / 255.0  # 42 slices of many patients


def _reference(query: np.ndarray, candidate: np.ndarray, shift: int, win: int) -> float:
    """scikit-image's SSIM of the candidate's central region with the query window (over all
    offsets of ``shift`` voxels per axis) of highest Pearson correlation with it."""
    centre = tuple(n - 2 * shift for n in query.shape)
    region = candidate[tuple(slice(shift, shift + n) for n in centre)].astype(np.float64)
    windows = [query[tuple(slice(o, o + n) for o, n in zip(offset, centre))].astype(np.float64)
               for offset in itertools.product(range(2 * shift + 1), repeat=query.ndim)]
    best = max(windows, key=lambda w: np.corrcoef(w.ravel(), region.ravel())[0, 1])
    return structural_similarity(best, region, win_size=win, data_range=1.0)


@pytest.mark.parametrize("side, shift", [(32, 1), (64, 2)])
def test_coarse_ssim_matches_scikit_image_on_ct_slices(slices, side, shift):
    small = _pooled(slices, side)
    stage = CoarseSsim((side, side), shift, win=3)
    rows = stage.candidate_rows(small).numpy()
    query = small[0].numpy()
    ours = stage.scores(query, rows, np.arange(1, len(rows)))
    reference = [_reference(query, small[j].numpy(), shift, 3) for j in range(1, len(rows))]
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_coarse_ssim_matches_scikit_image_in_3d(rng=np.random.default_rng(4)):
    smooth = torch.nn.functional.avg_pool3d(torch.from_numpy(rng.random((6, 1, 14, 18, 18), dtype=np.float32)), 3, 1)
    volumes = smooth[:, 0]
    stage = CoarseSsim(tuple(volumes.shape[1:]), 1, win=3)
    ours = stage.scores(volumes[0].numpy(), stage.candidate_rows(volumes).numpy(), np.arange(1, 6))
    reference = [_reference(volumes[0].numpy(), volumes[j].numpy(), 1, 3) for j in range(1, 6)]
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_scores_read_the_stage_columns_of_the_rows_asked_for(slices):
    small = _pooled(slices, 32)
    stage = CoarseSsim((32, 32), 1, win=3)
    rows = stage.candidate_rows(small).numpy()
    padded = np.concatenate([np.full((len(rows), 7), np.nan, np.float32), rows, np.full((len(rows), 3), np.nan, np.float32)], 1)
    picked = np.array([5, 2, 9])
    np.testing.assert_array_equal(stage.scores(small[0].numpy(), padded, picked, start=7),
                                  stage.scores(small[0].numpy(), rows[picked], np.arange(3)))


@pytest.mark.parametrize("mapped", [False, True])
def test_store_rows_are_read_back_as_written(tmp_path, mapped):
    data = np.arange(5 * 12, dtype=np.float32).reshape(5, 3, 4)
    store = ArrayStore(tmp_path / "rows.f32", (3, 4), mapped=mapped)
    for row in data:
        store.append(row)
    np.testing.assert_array_equal(store.read([4, 1]), data[[4, 1]])
    np.testing.assert_array_equal(StoredRows(store, np.array([0, 3, 2])).read(), data[[0, 3, 2]])
    np.testing.assert_array_equal(store.mapped_rows(), data.reshape(5, 12))


def test_ssim_refinement_keeps_the_exact_nearest_of_a_copy(slices, tmp_path):
    """A noisy, shifted copy of one slice among 41 others: both stages rank its source first."""
    level = VoxelLevel(primary="ssim")
    copy = np.roll(slices[17], (2, -1), axis=(0, 1)) + np.random.default_rng(0).normal(0, 0.02, slices[17].shape)
    query_rows, _ = level.coarse(copy[None].astype(np.float32))
    _, candidate_rows = level.coarse(slices)
    store = ArrayStore(tmp_path / "coarse.f32", candidate_rows.shape[1:], mapped=True)
    for row in candidate_rows:
        store.append(row)
    order = level.refine(slices.shape[1:], query_rows[0], StoredRows(store, np.arange(len(slices))), keep=5)
    assert order[0] == 17 and len(order) == 5
    assert [stage.grid for stage, _ in _ssim_stages((128, 128))] == [(32, 32), (64, 64), (96, 96)]
