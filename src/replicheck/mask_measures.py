"""Similarity of two binary masks (RELICT's segmentation level): overlap and surface distance.

Every function takes boolean masks of one shape, 2D or 3D (any non-zero value counts as
inside), and checks the shapes first. Conventions for empty masks: two empty masks are
identical (Dice and IoU 1, surface distance 0); one empty mask against a non-empty one shares
nothing (Dice and IoU 0, surface distance infinite).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A and B| / (|A| + |B|) in [0, 1]; higher is more similar.

    Both masks empty gives 1.0 (identical); exactly one empty gives 0.0.
    """
    a, b = _pair(a, b)
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / total


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union (Jaccard index) |A and B| / |A or B| in [0, 1]; higher is more similar.

    Both masks empty gives 1.0; exactly one empty gives 0.0. IoU = Dice / (2 - Dice).
    """
    a, b = _pair(a, b)
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(a & b)) / union


def batch_dice(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Dice of one mask against each of k candidate masks stacked as (k, *query.shape).

    Returns a float64 array of k values in [0, 1], equal to ``[dice(query, c) for c in candidates]``
    (same empty-mask conventions), computed in one vectorised pass.
    """
    query = np.asarray(query).astype(bool, copy=False)
    candidates = np.asarray(candidates).astype(bool, copy=False)
    if candidates.shape[1:] != query.shape:
        raise ValueError(f"candidates have shape {candidates.shape}; expected (k, *{query.shape}) to match the query mask")
    flat = candidates.reshape(len(candidates), -1)
    q = query.reshape(-1)
    inter = np.count_nonzero(flat & q, axis=1)
    total = np.count_nonzero(flat, axis=1) + np.count_nonzero(q)
    return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), 1.0)


def component_dice(a: np.ndarray, b: np.ndarray) -> dict:
    """Dice per connected component after matching the components of ``a`` to those of ``b``.

    Components are labelled with full connectivity (8 neighbours in 2D, 26 in 3D) and paired
    one-to-one to maximise the summed pairwise Dice (Hungarian algorithm). Unmatched components,
    and pairs that do not overlap, count as Dice 0, so ``mean_dice`` is the sum of the matched
    pairs' Dice divided by the number of distinct components (n + m - matched). It is lower than
    the plain Dice when one mask splits, merges, misses or adds lesions.

    Returns ``{"mean_dice", "matched", "components_a", "components_b"}``; two empty masks give
    mean_dice 1.0.
    """
    a, b = _pair(a, b)
    structure = ndimage.generate_binary_structure(a.ndim, a.ndim)
    labels_a, n = ndimage.label(a, structure=structure)
    labels_b, m = ndimage.label(b, structure=structure)
    if n == 0 and m == 0:
        return {"mean_dice": 1.0, "matched": 0, "components_a": 0, "components_b": 0}
    if n == 0 or m == 0:
        return {"mean_dice": 0.0, "matched": 0, "components_a": n, "components_b": m}
    # Pairwise intersections from one bincount over the joint labels (row 0 / column 0 = background).
    joint = np.bincount((labels_a.astype(np.int64) * (m + 1) + labels_b).ravel(), minlength=(n + 1) * (m + 1))
    joint = joint.reshape(n + 1, m + 1)
    size_a, size_b = joint[1:, :].sum(axis=1), joint[:, 1:].sum(axis=0)
    pair_dice = 2.0 * joint[1:, 1:] / (size_a[:, None] + size_b[None, :])
    rows, cols = linear_sum_assignment(pair_dice, maximize=True)
    scores = pair_dice[rows, cols]
    scores = scores[scores > 0]
    matched = len(scores)
    return {
        "mean_dice": float(scores.sum() / (n + m - matched)),
        "matched": matched,
        "components_a": n,
        "components_b": m,
    }


def hausdorff95(a: np.ndarray, b: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric surface distance (HD95), in the units of ``spacing`` (voxels by default).

    Definition (as medpy's ``hd95``): the surface of a mask is the mask minus its binary erosion
    by the face-connected cross (voxels at the image border count as surface). For every surface
    voxel of A, its Euclidean distance to the nearest surface voxel of B, and for every surface
    voxel of B, its distance to the nearest surface voxel of A; HD95 is the 95th percentile
    (NumPy's linear interpolation) of these two sets of directed distances pooled together.
    Lower is more similar; 0 when both masks are empty, infinite when exactly one is.
    """
    a, b = _pair(a, b)
    if spacing is None:
        spacing = (1.0,) * a.ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != a.ndim or any(not s > 0 for s in spacing):
        raise ValueError(f"spacing {spacing} must hold {a.ndim} positive values, one per axis of the masks")
    has_a, has_b = bool(a.any()), bool(b.any())
    if not has_a and not has_b:
        return 0.0
    if not (has_a and has_b):
        return float("inf")
    from scipy.spatial import cKDTree

    # Nearest surface voxel by a k-d tree over surface coordinates (in spacing units): the same
    # distances as a Euclidean distance transform, at a cost that grows with the surface only.
    points_a = np.argwhere(_surface(a)) * np.asarray(spacing)
    points_b = np.argwhere(_surface(b)) * np.asarray(spacing)
    to_b = cKDTree(points_b).query(points_a)[0]
    to_a = cKDTree(points_a).query(points_b)[0]
    return float(np.percentile(np.concatenate([to_b, to_a]), 95))


def _surface(mask: np.ndarray) -> np.ndarray:
    cross = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=0)


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"masks must be 2D or 3D, got shape {a.shape}")
    return a.astype(bool, copy=False), b.astype(bool, copy=False)
