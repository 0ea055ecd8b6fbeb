"""Several views of one image (our addition to DeepSSIM): the image as given, rotated, and
re-contrasted, each embedded, and a pair scored by its best-aligned views.

A network trained to ignore rotations up to 10 degrees and gamma 0.5-1.5 still lets such a copy
fall below the closest real neighbours; turning or re-contrasting the copy back by the nearest of
a few steps leaves a change it does ignore (BENCHMARKS-feature.md).
"""

from __future__ import annotations

import numpy as np

from ..records import OptionError


def check_views(rotations, gammas) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Rotations (degrees, not 0) and gammas (positive, not 1) as float tuples, each without repeats."""
    rotations, gammas = tuple(float(a) for a in rotations), tuple(float(g) for g in gammas)
    if 0.0 in rotations or len(set(rotations)) != len(rotations) or not all(np.isfinite(rotations)):
        raise OptionError("views", f"need distinct non-zero rotation angles, got {rotations}")
    if 1.0 in gammas or len(set(gammas)) != len(gammas) or not all(np.isfinite(g) and g > 0 for g in gammas):
        raise OptionError("views", f"need distinct positive gammas other than 1, got {gammas}")
    return rotations, gammas


def view_max_cosine(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Cosine of the best-aligned views: for (n, V, d) query views and (m, V, d) candidate views,
    the (n, m) largest cosine of view 0 of one image with any view of the other; a single (V, d)
    query gives (m,).

    A view is undone on either side (query view i against candidate view 0, or query view 0 against
    candidate view j), so the score is symmetric. With one view it is the plain cosine. The
    maximum is kept in place, so memory stays at one (n, m) array whatever V is.
    """
    query = np.asarray(queries, dtype=np.float64)
    candidates = np.asarray(candidates, dtype=np.float64)
    single = query.ndim == 2
    if single:
        query = query[None]
    best = query[:, 0] @ candidates[:, 0].T
    for view in range(1, query.shape[1]):
        np.maximum(best, query[:, view] @ candidates[:, 0].T, out=best)  # query turned
        np.maximum(best, query[:, 0] @ candidates[:, view].T, out=best)  # candidate turned
    return best[0] if single else best
