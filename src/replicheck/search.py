"""Nearest training images for many query images at one level: shortlist, refine, rescore.

For each query image:

1. the index returns the ``shortlist`` gallery images with the highest inner product of the
   level's search vectors (optionally leaving out the query's own subject);
2. if the level has a coarse representation, the shortlist is re-ranked by it and cut to
   ``depth`` (otherwise the index's order is kept);
3. the ``depth`` survivors are rescored exactly at the analysis resolution with every measure
   of the level, ordered by the primary measure, and the best ``k`` kept. ``extra_candidates``
   (gallery rows per query, e.g. other levels' nearest images) join the survivors before step 3.

Queries run in a thread pool (torch and faiss release the GIL) with one torch thread per
worker, so that two cores give two queries at a time without oversubscription. Images are
read from their :class:`~replicheck.store.ArrayStore`, a few at a time.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from threading import Lock

import numpy as np
import torch

from .calibrate import oriented
from .index import Index
from .levels import Level
from .progress import Progress
from .store import ArrayStore, StoredRows

QUERY_CHUNK = 64


@dataclass
class Side:
    """One set of analysis-grid images as a level sees it: pixels, search vectors, coarse copies."""

    store: ArrayStore
    vectors: np.ndarray
    subjects: np.ndarray
    coarse_queries: ArrayStore | None = None  # the level's coarse rows used as a query
    coarse: ArrayStore | None = None  # ... and used as a candidate


@dataclass
class Hits:
    """The best ``k`` rescored gallery images per query, ordered by the primary measure.

    ``rows`` are gallery rows (-1 where the gallery ran out); ``values`` hold every measure in
    its own units and per-pair details (such as ``shift``), each shaped like ``rows``.
    """

    rows: np.ndarray
    values: dict[str, np.ndarray]

    def best(self, measure: str, higher_is_similar: bool) -> tuple[np.ndarray, np.ndarray]:
        """Per query: the gallery row that is closest under ``measure``, and its value."""
        scores = np.where(self.rows >= 0, oriented(self.values[measure], higher_is_similar), -np.inf)
        scores = np.where(np.isnan(scores), -np.inf, scores)
        column = np.argmax(scores, axis=1)
        picked = np.arange(len(self.rows))
        return self.rows[picked, column], self.values[measure][picked, column]


def nearest(
    level: Level,
    queries: Side,
    gallery: Side,
    *,
    k: int,
    shortlist: int,
    depth: int,
    query_rows: np.ndarray | None = None,
    gallery_rows: np.ndarray | None = None,
    exclude_own_subject: bool = False,
    primary_only: bool = False,
    extra_candidates: np.ndarray | None = None,
    workers: int = 2,
    progress: Progress | None = None,
    description: str = "searching",
) -> Hits:
    """The ``k`` nearest of ``gallery`` (or of its ``gallery_rows``) for each of ``query_rows``.

    ``extra_candidates``: an (n queries, m) array of gallery rows (-1 for none) rescored in
    addition to the shortlist; rows outside ``gallery_rows`` or of the query's own subject (with
    ``exclude_own_subject``) are ignored.
    """
    query_rows = np.arange(len(queries.vectors)) if query_rows is None else np.asarray(query_rows)
    gallery_rows = np.arange(len(gallery.vectors)) if gallery_rows is None else np.asarray(gallery_rows)
    position_of = None
    if extra_candidates is not None:
        extra_candidates = np.asarray(extra_candidates, dtype=np.int64).reshape(len(query_rows), -1)
        position_of = np.full(len(gallery.vectors) + 1, -1, dtype=np.int64)  # last entry: row -1
        position_of[gallery_rows] = np.arange(len(gallery_rows))
    index = Index(gallery.vectors[gallery_rows], gallery.subjects[gallery_rows] if exclude_own_subject else None)
    depth = max(k, min(depth, len(gallery_rows)))
    shortlist = max(depth, shortlist) if gallery.coarse is not None else depth
    rows = np.full((len(query_rows), k), -1, dtype=np.int64)
    values: dict[str, np.ndarray] = {}
    created = Lock()
    advance = (progress or Progress()).step(description, len(query_rows))

    def one(position: int, candidates: np.ndarray) -> None:
        candidates = candidates[candidates >= 0]
        query_row = query_rows[position]
        if gallery.coarse is not None and candidates.size > depth:
            candidates = candidates[level.refine(queries.store.shape, queries.coarse_queries.read(query_row)[0],
                                                 StoredRows(gallery.coarse, gallery_rows[candidates]), depth)]
        if position_of is not None:
            extra = position_of[extra_candidates[position]]
            extra = extra[extra >= 0]
            if exclude_own_subject:
                extra = extra[gallery.subjects[gallery_rows[extra]] != queries.subjects[query_row]]
            extra = extra[~np.isin(extra, candidates)]
            candidates = np.concatenate([candidates, extra[np.sort(np.unique(extra, return_index=True)[1])]])
        if candidates.size == 0:
            return
        if hasattr(level, "rescore_vectors"):  # the search vectors are the measure (an embedding's cosine)
            scores = level.rescore_vectors(queries.vectors[query_row], gallery.vectors[gallery_rows[candidates]])
        else:
            scores = level.rescore(queries.store.read(query_row)[0], gallery.store.read(gallery_rows[candidates]),
                                   keep=0 if primary_only else k)
        primary = oriented(scores[level.primary], level.measures[level.primary])
        order = np.argsort(-np.nan_to_num(primary, nan=-np.inf), kind="stable")[:k]
        rows[position, : order.size] = gallery_rows[candidates[order]]
        for name, column in scores.items():
            with created:
                if name not in values:
                    values[name] = _empty(column.dtype, rows.shape)
            values[name][position, : order.size] = column[order]

    with _one_torch_thread(), ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(query_rows), QUERY_CHUNK):
            chunk = np.arange(start, min(start + QUERY_CHUNK, len(query_rows)))
            exclude = queries.subjects[query_rows[chunk]] if exclude_own_subject else None
            _, shortlisted = index.search(queries.vectors[query_rows[chunk]], shortlist, exclude=exclude)
            for _ in pool.map(one, chunk, shortlisted):
                advance()
    for name in level.measures:
        values.setdefault(name, np.full(rows.shape, np.nan))
    return Hits(rows, values)


def _empty(dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if np.issubdtype(dtype, np.floating):
        return np.full(shape, np.nan, dtype=np.float64)
    return np.full(shape, "", dtype=object)


@contextmanager
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
