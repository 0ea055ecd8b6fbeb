"""Mask similarity (Dice, IoU, component Dice, HD95) against closed forms, SciPy and brute force."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import ndimage
from scipy.spatial import distance

from replicheck.mask_measures import batch_dice, component_dice, dice, hausdorff95, iou


def square(shape, top, left, size=4):
    mask = np.zeros(shape, dtype=bool)
    mask[top: top + size, left: left + size] = True
    return mask


def blobs(rng, shape, sigma=1.5):
    """A random mask of smooth blobs (about 40% of the voxels)."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma)
    return field > np.quantile(field, 0.6)


def test_dice_and_iou_identity_disjoint_and_hand_computed():
    a = square((10, 10), 0, 0)
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0
    assert dice(a, square((10, 10), 5, 5)) == 0.0 and iou(a, square((10, 10), 5, 5)) == 0.0
    b = square((10, 10), 2, 0)  # shares 2 of 4 rows: |A and B| = 8, |A| = |B| = 16, |A or B| = 24
    assert_allclose(dice(a, b), 0.5, rtol=0, atol=1e-12)
    assert_allclose(iou(a, b), 1 / 3, rtol=0, atol=1e-12)
    cube = np.zeros((4, 4, 4), dtype=bool)
    cube[:2] = True
    half = np.zeros_like(cube)
    half[1:3] = True  # 16 of 32 voxels shared
    assert_allclose([dice(cube, half), iou(cube, half)], [0.5, 1 / 3], rtol=0, atol=1e-12)


def test_empty_mask_conventions():
    empty, a = np.zeros((6, 6), dtype=bool), square((6, 6), 1, 1)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert dice(empty, a) == 0.0 and iou(a, empty) == 0.0
    assert hausdorff95(empty, empty) == 0.0 and hausdorff95(a, empty) == np.inf
    assert component_dice(empty, empty)["mean_dice"] == 1.0
    assert component_dice(a, empty)["mean_dice"] == 0.0


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 5\) vs \(5, 4\)"):
        dice(np.ones((4, 5)), np.ones((5, 4)))
    with pytest.raises(ValueError, match=r"\(4, 5\)"):
        batch_dice(np.ones((4, 5)), np.ones((3, 5, 4)))


@pytest.mark.parametrize("shape", [(32, 32), (8, 12, 10)])
def test_dice_matches_scipy_and_iou_relation(shape):
    rng = np.random.default_rng(7)
    for _ in range(5):
        a, b = rng.random(shape) < rng.uniform(0.1, 0.6), rng.random(shape) < rng.uniform(0.1, 0.6)
        expected = 1 - distance.dice(a.ravel(), b.ravel())
        assert_allclose(dice(a, b), expected, rtol=1e-12, atol=0)
        assert_allclose(iou(a, b), 1 - distance.jaccard(a.ravel(), b.ravel()), rtol=1e-12, atol=0)
        assert_allclose(iou(a, b), dice(a, b) / (2 - dice(a, b)), rtol=1e-12, atol=0)


def test_batch_dice_equals_the_loop():
    rng = np.random.default_rng(3)
    query = rng.random((9, 11, 7)) < 0.3
    candidates = rng.random((6, 9, 11, 7)) < rng.uniform(0, 0.6, (6, 1, 1, 1))
    candidates[2] = False  # an empty candidate
    candidates[4] = query  # an exact copy
    got = batch_dice(query, candidates)
    assert got.shape == (6,)
    assert_allclose(got, [dice(query, c) for c in candidates], rtol=1e-12, atol=0)
    assert got[4] == 1.0 and got[2] == 0.0
    empty = np.zeros((9, 11, 7), dtype=bool)
    assert_allclose(batch_dice(empty, np.stack([empty, query])), [1.0, 0.0], rtol=0, atol=0)


def test_component_dice_matches_components_in_any_order():
    a = square((20, 20), 1, 1) | square((20, 20), 12, 12)
    b = square((20, 20), 12, 12) | square((20, 20), 1, 1)  # the same squares, labelled in another order
    assert component_dice(a, b) == {"mean_dice": 1.0, "matched": 2, "components_a": 2, "components_b": 2}


def test_component_dice_counts_a_missing_component_as_zero():
    a = square((20, 20), 1, 1) | square((20, 20), 12, 12)
    b = square((20, 20), 12, 12)
    # one pair with Dice 1, one unmatched component with 0: (1 + 0) / (2 + 1 - 1)
    got = component_dice(a, b)
    assert got["matched"] == 1 and (got["components_a"], got["components_b"]) == (2, 1)
    assert_allclose(got["mean_dice"], 0.5, rtol=0, atol=1e-12)
    # a partly shifted second square: Dice 1 and 0.5 (8 of 16 pixels shared)
    c = square((20, 20), 1, 1) | square((20, 20), 14, 12)
    got = component_dice(a, c)
    assert got["matched"] == 2
    assert_allclose(got["mean_dice"], 0.75, rtol=0, atol=1e-12)


def test_component_dice_uses_the_optimal_assignment():
    # On one row: a1 = [0, 10), a2 = [12, 20); b1 = [3, 16) overlaps both, b2 = [0, 2) only a1.
    # Greedy (best pair first) takes a1-b1 (Dice 14/23) and leaves a2 and b2 unmatched;
    # the optimal one-to-one pairing is a1-b2 (4/12) and a2-b1 (8/21), a larger sum.
    a, b = np.zeros((1, 24), dtype=bool), np.zeros((1, 24), dtype=bool)
    a[0, 0:10] = a[0, 12:20] = True
    b[0, 3:16] = b[0, 0:2] = True
    got = component_dice(a, b)
    assert (got["matched"], got["components_a"], got["components_b"]) == (2, 2, 2)
    assert_allclose(got["mean_dice"], (4 / 12 + 8 / 21) / 2, rtol=0, atol=1e-12)


def hd95_brute_force(a, b, spacing):
    """The definition in hausdorff95's docstring, written out: surfaces by erosion with the
    face-connected cross, all pairwise distances between surface voxels, the minimum per voxel
    in each direction, the 95th percentile of both directions pooled."""
    cross = ndimage.generate_binary_structure(a.ndim, 1)
    points = [np.argwhere(m & ~ndimage.binary_erosion(m, cross, border_value=0)) * np.asarray(spacing) for m in (a, b)]
    pairwise = np.sqrt(((points[0][:, None, :] - points[1][None, :, :]) ** 2).sum(-1))
    return np.percentile(np.concatenate([pairwise.min(axis=1), pairwise.min(axis=0)]), 95)


@pytest.mark.parametrize("shape, spacing", [((24, 20), (1.0, 1.0)), ((24, 20), (0.7, 1.3)), ((8, 12, 10), (2.0, 1.0, 0.5))])
def test_hausdorff95_matches_brute_force(shape, spacing):
    rng = np.random.default_rng(11)
    for _ in range(3):
        a, b = blobs(rng, shape), blobs(rng, shape)
        assert_allclose(hausdorff95(a, b, spacing), hd95_brute_force(a, b, spacing), rtol=0, atol=1e-9)


def test_hausdorff95_of_a_shifted_square_is_the_shift():
    a = square((30, 30), 5, 5, size=10)
    b = np.roll(a, 3, axis=1)
    assert_allclose(hausdorff95(a, b), 3.0, rtol=0, atol=1e-12)
    assert_allclose(hausdorff95(a, b, spacing=(1.0, 0.5)), 1.5, rtol=0, atol=1e-12)
    assert hausdorff95(a, a) == 0.0
    with pytest.raises(ValueError, match="spacing"):
        hausdorff95(a, b, spacing=(1.0,))

