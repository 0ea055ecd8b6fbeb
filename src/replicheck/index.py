"""Nearest-neighbour search by inner product over L2-normalised vectors (cosine similarity).

:class:`Index` wraps faiss: the exact ``IndexFlatIP`` for galleries below :data:`EXACT_UP_TO`
images, an inverted-file index (``IndexIVFFlat``) above, whose agreement with the exact search
is measured on a sample of the queries and raised until it reaches :data:`TARGET_RECALL`
(:meth:`Index.check`). :func:`search_exact` is the NumPy twin the tests compare it against. Both
can leave out, for each query, the gallery items of one group (the query's own subject), as
leave-one-subject-out calibration needs.

Why a switch (BENCHMARKS.md, "Approximate index"): an exact search of the voxel level's 512-number
vectors costs 0.9 ms per query against 10,000 images but 14.6 ms against 100,000 on 2 cores, as
much as the alignment that follows it; IVF with 4 sqrt(N) lists and 32 probed finds the same first
candidate for 100% of the measured queries there at 1.3 ms.
"""

from __future__ import annotations

import math

import numpy as np

from .config import INDEX_KINDS

EXACT_UP_TO = 20_000  # gallery images below which "auto" searches exactly (BENCHMARKS.md, "Approximate index")
TARGET_RECALL = 0.99  # recall@1 against the exact search the approximate index must reach on the checked queries
FIRST_NPROBE = 32  # inverted lists probed at first; doubled until the target is met
TRAIN_PER_LIST = 64  # gallery vectors per list that train the IVF's coarse quantiser (a seeded sample) ...
MIN_PER_LIST = 40  # ... and at least this many (faiss's k-means warns below 39 points per centroid)


class Index:
    """Inner-product search over a gallery of unit vectors, with optional group exclusion;
    ``kind`` "exact", "approximate" or "auto" (exact below :data:`EXACT_UP_TO` images)."""

    def __init__(self, vectors: np.ndarray, groups: np.ndarray | None = None, *, kind: str = "auto"):
        import faiss

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be 2D (n, d), got shape {vectors.shape}")
        if kind not in INDEX_KINDS:
            raise ValueError(f"kind must be one of {', '.join(INDEX_KINDS)}, got {kind!r}")
        self.size, self.dim = vectors.shape
        self.approximate = kind == "approximate" or (kind == "auto" and self.size >= EXACT_UP_TO)
        if self.approximate:
            self._vectors = vectors  # the exact answer for the checked queries
            self.lists = max(1, min(self.size // MIN_PER_LIST, int(4 * math.sqrt(self.size))))
            self._index = faiss.IndexIVFFlat(faiss.IndexFlatIP(self.dim), self.dim, self.lists,
                                             faiss.METRIC_INNER_PRODUCT)
            sample = np.random.default_rng(0).permutation(self.size)[: TRAIN_PER_LIST * self.lists]
            self._index.train(vectors[np.sort(sample)])
            self._index.nprobe = min(FIRST_NPROBE, self.lists)
        else:
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

    def describe(self) -> dict:
        """What the index is, for summary.json."""
        if not self.approximate:
            return {"kind": "exact", "gallery": self.size}
        return {"kind": "approximate", "gallery": self.size, "index": f"IVF{self.lists},Flat",
                "nprobe": int(self._index.nprobe)}

    def check(self, queries: np.ndarray, *, exclude: np.ndarray | None = None) -> dict:
        """For an approximate index: the share of ``queries`` (a sample of those to be searched)
        whose first result is the exact search's first (or scores the same), probing twice as many
        lists until it reaches :data:`TARGET_RECALL` (all lists: exact). Returns
        :meth:`describe` with ``recall_at_1`` and the number of ``checked`` queries."""
        if not self.approximate or len(queries) == 0:
            return self.describe()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        similarity = queries @ self._vectors.T
        if exclude is not None:
            similarity[self.groups[None, :] == np.asarray(exclude)[:, None]] = -np.inf
        best = similarity.max(axis=1)
        while True:
            scores, _ = self.search(queries, 1, exclude=exclude)
            found = np.isclose(scores[:, 0], best, rtol=0, atol=1e-5) | (np.isneginf(best) & np.isneginf(scores[:, 0]))
            recall = float(found.mean())
            if recall >= TARGET_RECALL or self._index.nprobe >= self.lists:
                return {**self.describe(), "recall_at_1": recall, "checked": int(len(queries))}
            self._index.nprobe = min(self.lists, 2 * self._index.nprobe)


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
