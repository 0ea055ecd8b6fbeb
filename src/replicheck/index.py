"""Nearest-neighbour search by inner product over L2-normalised vectors (cosine similarity).

:class:`Index` wraps faiss's exact ``IndexFlatIP``; :func:`search_exact` is its NumPy twin,
which the tests compare it against. Both can leave out, for each query, the gallery items of
one group (the query's own subject), as leave-one-subject-out calibration needs.
"""

from __future__ import annotations

import numpy as np


class Index:
    """Exact inner-product search over a gallery of unit vectors, with optional group exclusion."""

    def __init__(self, vectors: np.ndarray, groups: np.ndarray | None = None):
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be 2D (n, d), got shape {vectors.shape}")
        self.size, self.dim = vectors.shape
        self._index = faiss.IndexFlatIP(self.dim)
        self._index.add(vectors)
        self.groups = None if groups is None else np.asarray(groups)
        if self.groups is not None and len(self.groups) != self.size:
            raise ValueError(f"{len(self.groups)} groups for {self.size} vectors")
        self._largest_group = 0 if self.groups is None else int(np.unique(self.groups, return_counts=True)[1].max())

    def search(self, queries: np.ndarray, k: int, *, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` gallery rows per query: ``(scores, ids)``, both (n, k), best first.

        ``exclude`` gives each query a group whose gallery items it must not match; rows that
        run out of candidates are padded with id -1 and score -inf.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {queries.shape}")
        if exclude is None:
            depth = min(k, self.size)
            scores, ids = self._index.search(queries, depth)
            return _pad(scores, ids, k)
        if self.groups is None:
            raise ValueError("exclude needs an index built with groups")
        depth = min(self.size, k + self._largest_group)
        scores, ids = self._index.search(queries, depth)
        keep = self.groups[np.clip(ids, 0, None)] != np.asarray(exclude)[:, None]
        keep &= ids >= 0
        return _first_kept(scores, ids, keep, k)


def search_exact(gallery: np.ndarray, queries: np.ndarray, k: int, *, groups: np.ndarray | None = None,
                 exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force twin of :meth:`Index.search` in NumPy (float64 products)."""
    similarity = np.asarray(queries, dtype=np.float64) @ np.asarray(gallery, dtype=np.float64).T
    if exclude is not None:
        similarity[np.asarray(groups)[None, :] == np.asarray(exclude)[:, None]] = -np.inf
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(similarity, order, axis=1)
    ids = np.where(np.isfinite(scores), order, -1)
    return _pad(scores.astype(np.float32), ids, k)


def _first_kept(scores: np.ndarray, ids: np.ndarray, keep: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    out_scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(ids), k), -1, dtype=np.int64)
    for row in range(len(ids)):
        kept = np.flatnonzero(keep[row])[:k]
        out_scores[row, : len(kept)] = scores[row, kept]
        out_ids[row, : len(kept)] = ids[row, kept]
    return out_scores, out_ids


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.where(ids < 0, -1, ids).astype(np.int64)
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    if ids.shape[1] < k:
        extra = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, extra)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf)
    return scores, ids
