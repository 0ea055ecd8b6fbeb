"""Every voxel measure against its reference implementation, on real images."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import perturb, shared
from skimage.metrics import (
    mean_squared_error,
    peak_signal_noise_ratio,
    structural_similarity,
)

from replicheck import measures


@pytest.fixture(scope="module")
def ct_slices(ctich):
    return ctich["flat_brain"][::97].astype(np.float32) / 255.0  # 26 slices, many patients


@pytest.fixture(scope="module")
def mri_volumes():
    nib = pytest.importorskip("nibabel")
    files = sorted(shared("ixi_t1_2mm").glob("*.nii.gz"))[:3]
    volumes = [np.asarray(nib.load(f).dataobj, dtype=np.float32)[20:60, 30:90, 30:90] for f in files]
    return [v / v.max() for v in volumes]


def test_ssim_matches_scikit_image_on_ct_slices(ct_slices):
    query, candidates = ct_slices[0], ct_slices[1:]
    ours = measures.compare(query, candidates, data_range=1.0).ssim
    reference = [structural_similarity(query, c, data_range=1.0) for c in candidates]
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_zscored_ssim_is_deepssims_target(ct_slices):
    """DeepSSIM's target (Scardace et al.): scikit-image SSIM of z-scored images, data range = max - min of the first."""
    def z(x):
        return (x - x.mean()) / x.std()

    query, candidates = ct_slices[3], ct_slices[4:9]
    reference = [structural_similarity(z(query), z(c), data_range=float(z(query).max() - z(query).min()))
                 for c in candidates]
    np.testing.assert_allclose(measures.zscored_ssim(query, candidates), reference, atol=1e-4)
    assert np.isnan(measures.zscored_ssim(np.zeros_like(query), candidates)).all()


def test_ssim_matches_scikit_image_in_3d(mri_volumes):
    query, candidates = mri_volumes[0], np.stack(mri_volumes[1:])
    ours = measures.compare(query, candidates, data_range=1.0).ssim
    reference = [structural_similarity(query, c, data_range=1.0) for c in candidates]
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_ncc_matches_numpy_corrcoef(ct_slices, mri_volumes):
    for query, candidates in ((ct_slices[0], ct_slices[1:]), (mri_volumes[0], np.stack(mri_volumes[1:]))):
        ours = measures.compare(query, candidates, data_range=1.0).ncc
        reference = [np.corrcoef(query.ravel().astype(np.float64), c.ravel().astype(np.float64))[0, 1] for c in candidates]
        np.testing.assert_allclose(ours, reference, atol=1e-6)


def test_mse_and_psnr_match_scikit_image(ct_slices):
    query, candidates = ct_slices[3], ct_slices[4:9]
    scores = measures.compare(query, candidates, data_range=1.0)
    np.testing.assert_allclose(scores.mse, [mean_squared_error(query, c) for c in candidates], rtol=1e-5)
    np.testing.assert_allclose(scores.psnr, [peak_signal_noise_ratio(query, c, data_range=1.0) for c in candidates], rtol=1e-5)
    assert measures.psnr(query, query, data_range=1.0) == np.inf


def test_single_pair_helpers_agree_with_batch(ct_slices):
    a, b = ct_slices[5], ct_slices[6]
    batch = measures.compare(a, b[None], data_range=1.0)
    assert measures.ncc(a, b) == pytest.approx(batch.ncc[0])
    assert measures.ssim(a, b, data_range=1.0) == pytest.approx(batch.ssim[0])


def _brute_force_shift(query: np.ndarray, candidate: np.ndarray, s: int) -> tuple[int, ...]:
    centre = query[tuple(slice(s, n - s) for n in query.shape)].ravel().astype(np.float64)
    best, best_r = None, -np.inf
    for shift in itertools.product(range(-s, s + 1), repeat=query.ndim):
        window = candidate[tuple(slice(s + t, n - s + t) for t, n in zip(shift, query.shape))]
        r = np.corrcoef(centre, window.ravel().astype(np.float64))[0, 1]
        if r > best_r + 1e-9 or (abs(r - best_r) <= 1e-9 and not any(shift)):
            best, best_r = shift, r
    return best


def test_shift_search_equals_brute_force_over_translations(ctich):
    rng = np.random.default_rng(0)
    images = ctich["flat_brain"][::211].astype(np.float32) / 255.0
    query = images[0]
    candidates = np.stack([perturb(query, rng) for _ in range(6)] + list(images[1:5]))
    found = measures.compare(query, candidates, data_range=1.0, max_shift=3).shift
    expected = [_brute_force_shift(query, c, 3) for c in candidates]
    assert [tuple(row) for row in found] == expected


def test_shift_search_equals_brute_force_in_3d(mri_volumes):
    """3D volumes take the FFT path (2D images the direct one)."""
    query = mri_volumes[0][::2, ::2, ::2]
    moved = np.roll(query, (1, -2, 0), axis=(0, 1, 2)) + np.random.default_rng(2).normal(0, 0.01, query.shape)
    candidates = np.stack([moved, mri_volumes[1][::2, ::2, ::2], mri_volumes[2][::2, ::2, ::2]]).astype(np.float32)
    found = measures.compare(query, candidates, data_range=1.0, max_shift=2).shift
    assert [tuple(row) for row in found] == [_brute_force_shift(query, c, 2) for c in candidates]
    assert tuple(found[0]) == (1, -2, 0)


def test_shifted_copy_scores_like_an_unshifted_one(ctich):
    image = ctich["flat_brain"][1200].astype(np.float32) / 255.0
    shifted = np.roll(image, (2, -1), axis=(0, 1))
    plain = measures.compare(image, shifted[None], data_range=1.0).ncc[0]
    aligned = measures.compare(image, shifted[None], data_range=1.0, max_shift=3)
    assert tuple(aligned.shift[0]) == (2, -1)
    assert aligned.ncc[0] == pytest.approx(1.0, abs=1e-6)
    assert plain < 0.95


def test_window_sums_equal_explicit_sums():
    x = torch.from_numpy(np.random.default_rng(1).random((2, 13, 11, 9)))
    length, starts = (7, 5, 3), 4
    ours = measures._window_sums(x, length, starts).numpy()
    for a, b, c in itertools.product(range(starts), repeat=3):
        expected = x[:, a:a + length[0], b:b + length[1], c:c + length[2]].sum(dim=(1, 2, 3)).numpy()
        np.testing.assert_allclose(ours[:, a, b, c], expected, rtol=1e-10)


@pytest.mark.parametrize("bad, message", [
    (dict(data_range=0.0), "data_range"),
    (dict(data_range=1.0, max_shift=-1), "max_shift"),
    (dict(data_range=1.0, win_size=4), "win_size"),
    (dict(data_range=1.0, max_shift=5), "too small"),
])
def test_invalid_options_are_explained(bad, message):
    with pytest.raises(ValueError, match=message):
        measures.compare(np.zeros((16, 16)), np.zeros((1, 16, 16)), **bad)
