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
worker, so that two cores give two queries at a time without oversubscription; the next chunk's
shortlists are made while its jobs queue behind the current ones, so workers never wait at a
chunk's end. Images are read from their :class:`~replicheck.store.ArrayStore`, a few at a time.

A level's calibration needs four such searches (:func:`search_level`):

- synthetic -> training: each synthetic image's nearest training images (the answer);
- holdout -> training: the null distribution (real images of unseen patients), or, without a
  holdout, training -> training leaving out the query's own subject;
- training -> holdout: Dar et al.'s threshold (95th percentile) and the null for N_mem;
- training -> synthetic, with the synthetic gallery subsampled to the holdout's size: N_mem
  (a gallery of matched size, so that the maximum over it is comparable to the null's).

The last two search a seeded sample of at most ``training_sample`` training images: they give
shares (a percentile, a rate), which a sample estimates as well as the whole set, and at 10^5
training images they would otherwise cost more than the answer itself.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, as_completed, wait
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from threading import Lock

import numpy as np
import pandas as pd
import torch

from .calibrate import matched_subsample, oriented, subject_matched_subsample
from .config import Search
from .index import Index
from .levels import Level
from .progress import Progress
from .shards import Shard
from .stopwatch import Stopwatch
from .store import ArrayStore, StoredRows

QUERY_CHUNK = 64
RESCORE_BATCH = 16  # queries a level with ``rescore_batch`` rescores together (per worker thread)
RESCORE_BYTES = 128 * 2**20  # ... and at most this many bytes of their candidates (float32), so that 3D stays small
MIN_BATCHES = 4  # ... in at least this many batches per chunk, so that up to 4 workers share a small search
IN_FLIGHT = 4  # rescoring jobs queued per worker: the next chunk's jobs wait behind this one's, so no worker idles at a chunk's end
VECTOR_BATCH_BYTES = 64 * 2**20  # analysis-grid images per batch when computing search vectors
INDEX_CHECK = 256  # query vectors on which an approximate index's recall is measured (Index.check)
DATASET_SAMPLE = 1000  # synthetic (and held-out) images the data-set statistics search for, at most
CLUSTER_NEIGHBOURS = 3  # nearest other synthetic images per sampled synthetic image (near-duplicate clusters)


@dataclass
class Side:
    """One set of analysis-grid images as a level sees it: pixels, search vectors, coarse copies."""

    store: ArrayStore
    vectors: np.ndarray
    subjects: np.ndarray
    coarse_queries: ArrayStore | None = None  # the level's coarse rows used as a query
    coarse: ArrayStore | None = None  # ... and used as a candidate
    query_vectors: np.ndarray | None = None  # (n, views, d): several search vectors per image as a query


def build_side(level: Level, store: ArrayStore, rows: pd.DataFrame, workdir: Path, name: str, *,
               progress: Progress | None = None) -> Side:
    """Search vectors (in memory) and coarse rows (on disk) of one set of images for one level.

    ``rows`` are the images' table rows (id, subject, source, role, mask...). A level with its own
    representation (the segmentation level's masks) is searched and rescored on it, kept in a
    store of its own.
    """
    vectors, views, as_query, as_candidate = [], [], None, None
    batch_size = max(1, VECTOR_BATCH_BYTES // (4 * int(np.prod(store.shape))))
    searched = store
    advance = (progress or Progress()).step(f"{name.replace('.', ': ')} vectors", len(store))
    for start, batch in store.batches(batch_size):
        if level.own_representation:
            batch = level.represent(batch, rows.iloc[start:start + len(batch)])
            if searched is store:
                searched = ArrayStore(workdir / f"{name}.level.f32", batch.shape[1:])
            for array in batch:
                searched.append(array)
        n = len(batch)
        # A batch of one image is computed as a pair: torch spreads a lone 3D image's pooling over
        # the threads another way, which changes the last bits, and then images represented in
        # slices (scan --prepare) would differ from a single run's (tests/test_prepared.py).
        work = np.concatenate([batch, batch]) if n == 1 else batch
        vectors.append(level.vectors(work)[:n])
        found = level.query_views(work)
        views.append(None if found is None else found[:n])
        advance(n)
        coarse = level.coarse(work)
        if coarse is None:
            continue
        coarse = (coarse[0][:n], coarse[1][:n])
        if as_query is None:
            as_query = ArrayStore(workdir / f"{name}.coarse-query.f32", coarse[0].shape[1:])
            # A query reads hundreds of candidate rows: gather them through a memory map.
            as_candidate = ArrayStore(workdir / f"{name}.coarse.f32", coarse[1].shape[1:], mapped=True)
        for query_row, candidate_row in zip(*coarse):
            as_query.append(query_row)
            as_candidate.append(candidate_row)
    return Side(searched, np.concatenate(vectors), rows["subject"].to_numpy(), coarse_queries=as_query,
                coarse=as_candidate, query_vectors=None if views[0] is None else np.concatenate(views))


@dataclass(frozen=True)
class Hits:
    """The best ``k`` rescored gallery images per query, ordered by the primary measure.

    ``rows`` are gallery rows (-1 where the gallery ran out); ``values`` hold every measure in
    its own units and per-pair details (such as ``shift``), each shaped like ``rows``.
    """

    rows: np.ndarray
    values: dict[str, np.ndarray]
    index: dict = field(default_factory=dict)  # the index searched (Index.describe), with its measured recall

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
    index: str = "auto",
    all_rows: np.ndarray | None = None,
) -> Hits:
    """The ``k`` nearest of ``gallery`` (or of its ``gallery_rows``) for each of ``query_rows``.

    ``extra_candidates``: an (n queries, m) array of gallery rows (-1 for none) rescored in
    addition to the shortlist; rows outside ``gallery_rows`` or of the query's own subject (with
    ``exclude_own_subject``) are ignored. ``index``: the kind of :class:`~replicheck.index.Index`;
    an approximate one is checked against the exact search on a sample of ``all_rows`` first (the
    query rows of the whole search when ``query_rows`` are one shard's; default: ``query_rows``),
    so that every shard probes as many lists as a single run would.
    """
    query_rows = np.arange(len(queries.vectors)) if query_rows is None else np.asarray(query_rows)
    gallery_rows = np.arange(len(gallery.vectors)) if gallery_rows is None else np.asarray(gallery_rows)
    index = Index(gallery.vectors[gallery_rows], gallery.subjects[gallery_rows] if exclude_own_subject else None,
                  kind=index)
    checked = _check_index(index, queries, query_rows if all_rows is None else np.asarray(all_rows),
                           exclude_own_subject)
    depth = max(k, min(depth, len(gallery_rows)))
    shortlist = max(depth, shortlist) if gallery.coarse is not None else depth
    rescorer = _Rescorer(level, queries, gallery, query_rows, gallery_rows, k=k, depth=depth,
                         exclude_own_subject=exclude_own_subject, keep=0 if primary_only else k,
                         extra_candidates=extra_candidates)
    advance = (progress or Progress()).step(description, len(query_rows))
    with _one_torch_thread(), ThreadPoolExecutor(max(1, workers)) as pool:
        running = set()
        for start in range(0, len(query_rows), QUERY_CHUNK):
            chunk = np.arange(start, min(start + QUERY_CHUNK, len(query_rows)))
            exclude = queries.subjects[query_rows[chunk]] if exclude_own_subject else None
            shortlisted = _shortlist(index, queries, query_rows[chunk], shortlist, exclude)
            if level.rescores_in_batches:
                size = _batch_size(len(chunk), depth * 4 * int(np.prod(gallery.store.shape)))
                jobs = [(rescorer.batch, chunk[i:i + size], shortlisted[i:i + size]) for i in range(0, len(chunk), size)]
            else:
                jobs = [(rescorer.one, position, row) for position, row in zip(chunk, shortlisted)]
            for job in jobs:
                running.add(pool.submit(*job))
                if len(running) >= IN_FLIGHT * max(1, workers):
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in finished:
                        advance(future.result())
        for future in as_completed(running):
            advance(future.result())
    return replace(rescorer.hits(), index=checked)


def _check_index(index: Index, queries: Side, query_rows: np.ndarray, exclude_own_subject: bool) -> dict:
    """:meth:`Index.check` on the search vectors (every view) of a seeded sample of the queries,
    at most :data:`INDEX_CHECK` vectors; an exact index just describes itself."""
    if not index.approximate:
        return index.describe()
    rows = query_rows[matched_subsample(len(query_rows), INDEX_CHECK, 0)]
    views = queries.vectors[rows][:, None] if queries.query_vectors is None else queries.query_vectors[rows]
    sample = matched_subsample(views.shape[0] * views.shape[1], INDEX_CHECK, 1)
    exclude = np.repeat(queries.subjects[rows], views.shape[1])[sample] if exclude_own_subject else None
    return index.check(views.reshape(-1, views.shape[-1])[sample], exclude=exclude)


class _Rescorer:
    """The exact rescoring of :func:`nearest`: each query's shortlist refined, extra candidates
    added, scored by the level, and its ``k`` best kept in ``rows`` and ``values`` (filled from
    several threads, each query in its own row)."""

    def __init__(self, level: Level, queries: Side, gallery: Side, query_rows: np.ndarray, gallery_rows: np.ndarray,
                 *, k: int, depth: int, exclude_own_subject: bool, keep: int, extra_candidates: np.ndarray | None):
        self.level, self.queries, self.gallery = level, queries, gallery
        self.query_rows, self.gallery_rows = query_rows, gallery_rows
        self.k, self.depth, self.keep, self.exclude_own_subject = k, depth, keep, exclude_own_subject
        self.extra, self.position_of = None, None
        if extra_candidates is not None:
            self.extra = np.asarray(extra_candidates, dtype=np.int64).reshape(len(query_rows), -1)
            self.position_of = np.full(len(gallery.vectors) + 1, -1, dtype=np.int64)  # last entry: row -1
            self.position_of[gallery_rows] = np.arange(len(gallery_rows))
        self.rows = np.full((len(query_rows), k), -1, dtype=np.int64)
        self.values: dict[str, np.ndarray] = {}
        self.created = Lock()

    def candidates_of(self, position: int, shortlisted: np.ndarray) -> np.ndarray:
        """Positions (in ``gallery_rows``) a query's rescoring takes: the refined shortlist, then
        the extra candidates."""
        candidates = shortlisted[shortlisted >= 0]
        query_row = self.query_rows[position]
        if self.gallery.coarse is not None and candidates.size > self.depth:
            candidates = candidates[self.level.refine(
                self.queries.store.shape, self.queries.coarse_queries.read(query_row)[0],
                StoredRows(self.gallery.coarse, self.gallery_rows[candidates]), self.depth)]
        if self.position_of is not None:
            extra = self.position_of[self.extra[position]]
            extra = extra[extra >= 0]
            if self.exclude_own_subject:
                extra = extra[self.gallery.subjects[self.gallery_rows[extra]] != self.queries.subjects[query_row]]
            extra = extra[~np.isin(extra, candidates)]
            candidates = np.concatenate([candidates, extra[np.sort(np.unique(extra, return_index=True)[1])]])
        return candidates

    def one(self, position: int, shortlisted: np.ndarray) -> int:
        """One query rescored on its own (the search vectors themselves for a level whose measure they
        are); returns 1, the queries done."""
        candidates = self.candidates_of(position, shortlisted)
        if candidates.size == 0:
            return 1
        query_row, level = self.query_rows[position], self.level
        if level.scores_from_vectors:  # the search vectors are the measure (an embedding's cosine)
            scores = level.rescore_vectors(self.queries.vectors[query_row],
                                           self.gallery.vectors[self.gallery_rows[candidates]])
        else:
            scores = level.rescore(self.queries.store.read(query_row)[0],
                                   self.gallery.store.read(self.gallery_rows[candidates]), keep=self.keep)
        self.keep_best(position, candidates, scores)
        return 1

    def batch(self, positions: np.ndarray, shortlisted: np.ndarray) -> int:
        """The queries at ``positions`` rescored together (a level with ``rescore_batch``); each
        query's candidate list is padded to the longest with a copy of its first candidate, marked
        absent so that a query's results never depend on the batch it shares."""
        lists = [(position, self.candidates_of(position, row)) for position, row in zip(positions, shortlisted)]
        lists = [(position, found) for position, found in lists if found.size]
        if lists:
            width = max(found.size for _, found in lists)
            padded = np.stack([np.concatenate([found, np.repeat(found[:1], width - found.size)]) for _, found in lists])
            store = self.gallery.store
            images = store.read(self.gallery_rows[padded.reshape(-1)]).reshape(len(lists), width, *store.shape)
            queries = self.queries.store.read(self.query_rows[[position for position, _ in lists]])
            present = np.arange(width)[None, :] < np.array([found.size for _, found in lists])[:, None]
            scores = self.level.rescore_batch(queries, images, keep=self.keep, present=present)
            for number, (position, found) in enumerate(lists):
                self.keep_best(position, found, {name: column[number, : found.size] for name, column in scores.items()})
        return len(positions)

    def keep_best(self, position: int, candidates: np.ndarray, scores: dict[str, np.ndarray]) -> None:
        level = self.level
        primary = oriented(scores[level.primary], level.measures[level.primary])
        order = np.argsort(-np.nan_to_num(primary, nan=-np.inf), kind="stable")[: self.k]
        self.rows[position, : order.size] = self.gallery_rows[candidates[order]]
        for name, column in scores.items():
            with self.created:
                if name not in self.values:
                    self.values[name] = _empty(column.dtype, self.rows.shape)
            self.values[name][position, : order.size] = column[order]

    def hits(self) -> Hits:
        for name in self.level.measures:
            self.values.setdefault(name, np.full(self.rows.shape, np.nan))
        return Hits(self.rows, self.values)


def _batch_size(queries: int, query_bytes: int = 0) -> int:
    """Queries per rescoring batch: at most :data:`RESCORE_BATCH`, at most :data:`RESCORE_BYTES`
    of candidates (``query_bytes`` a query), and small enough that a chunk of queries makes at
    least :data:`MIN_BATCHES` batches, so that every worker has one (15 volumes in one batch of 16
    kept one of two cores idle for the whole search). The byte bound binds in 3D only: the
    alignment and the measures keep about ten copies of a batch's candidates, and 16 queries of
    eight 64x128x128 volumes peaked at 7.3 GiB with two workers. It depends on the number of
    queries and the images' size only, never on the workers: batched arithmetic rounds
    differently in batches of other sizes, and the tables must not change with ``--num-workers``."""
    largest = max(1, min(RESCORE_BATCH, RESCORE_BYTES // max(1, query_bytes)))
    batches = max(-(-queries // largest), min(queries, MIN_BATCHES))
    return max(1, -(-queries // batches))


def _shortlist(index: Index, queries: Side, rows: np.ndarray, shortlist: int, exclude: np.ndarray | None) -> np.ndarray:
    """The index's ``shortlist`` best gallery rows for each query row, best first (-1 pads): for a
    level with several views per query, each view is searched and each gallery row keeps its
    best score over the views."""
    if queries.query_vectors is None:
        return index.search(queries.vectors[rows], shortlist, exclude=exclude)[1]
    views = queries.query_vectors[rows]  # (n, V, d)
    n, count = views.shape[:2]
    scores, ids = index.search(views.reshape(n * count, -1), shortlist,
                               exclude=None if exclude is None else np.repeat(exclude, count))
    return merge_views(scores.reshape(n, -1), ids.reshape(n, -1), shortlist)


def merge_views(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Each query's ``k`` best gallery rows from the results of all its views, (n, views x depth)
    scores and ids side by side: each row at its best score over the views, best first (-1 pads)."""
    out = np.full((len(ids), k), -1, dtype=np.int64)
    for row in range(len(ids)):
        found = ids[row] >= 0
        order = np.argsort(-scores[row][found], kind="stable")
        unique, first = np.unique(ids[row][found][order], return_index=True)
        best = unique[np.argsort(first, kind="stable")][:k]  # each id at its best score, best first
        out[row, : len(best)] = best
    return out


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


SEARCHES = ("found", "null", "train_null", "memorized")  # the hits of a LevelSearches, by attribute


@dataclass(frozen=True)
class LevelSearches:
    """The four searches of one level (see the module docstring). ``train_null`` is ``null``
    itself without a holdout; ``gallery_size`` is the size of the synthetic subsample that
    ``memorized`` searched, ``training_rows`` the training sample it searched for."""

    found: Hits
    null: Hits
    train_null: Hits
    memorized: Hits
    gallery_size: int
    has_holdout: bool
    training_rows: np.ndarray  # the training rows ``memorized`` searched for (and ``train_null`` with a holdout)


def search_level(level: Level, sides: dict[str, Side], search: Search, *, seed: int, workers: int,
                 training_sample: int = 0, shard: Shard | None = None, earlier: list[LevelSearches] = (),
                 progress: Progress | None = None, clock: Stopwatch | None = None) -> LevelSearches:
    """The four searches of ``level`` over ``sides`` (role -> :class:`Side`; "holdout" optional).
    ``training_sample``: at most this many training images search for the Dar threshold and N_mem
    (a seeded sample; 0: all). ``shard``: search only that shard's slice of each search's queries
    (:mod:`replicheck.shards`); the hits then cover the slice, in order.

    ``earlier``: the searches of the levels run before, whose nearest images this level rescores
    too (``union_candidates``). ``search`` gives k and, where set, the shortlist and depth;
    otherwise the level chooses them (:meth:`~replicheck.levels.base.Level.shortlist`, ``depth``).
    """
    options = dict(**_reach(level, search, sides, search.k), workers=workers, progress=progress)
    extra = {kind: np.concatenate([getattr(hits, kind).rows for hits in earlier], axis=1) if earlier else None
             for kind in SEARCHES}
    train, synth, name, k = sides["training"], sides["synthetic"], level.name, search.k
    clock = clock or Stopwatch()

    def queries(rows: np.ndarray) -> dict:
        """The query rows of one search, or of this shard's slice of them."""
        if shard is None:
            return {"query_rows": rows}
        return {"query_rows": rows[shard.positions(len(rows), QUERY_CHUNK)], "all_rows": rows}

    with clock.stage(f"{name}.search_synthetic"):
        found = nearest(level, synth, train, k=k, description=f"{name}: synthetic -> training",
                        extra_candidates=extra["found"], **queries(np.arange(len(synth.vectors))), **options)
    with clock.stage(f"{name}.search_calibration"):
        training_rows = training_sample_rows(len(train.vectors), training_sample, seed)
        null, train_null, memorized, gallery_size = _calibration_searches(level, sides, k, extra, options, seed,
                                                                          training_rows, queries)
    return LevelSearches(found, null, train_null, memorized, gallery_size, "holdout" in sides, training_rows)


def training_sample_rows(n_training: int, sample: int, seed: int) -> np.ndarray:
    """The training rows the Dar and N_mem searches take: all, or a seeded sample of ``sample``
    (the same for every level of a scan, so that their candidates can be shared)."""
    return np.arange(n_training) if sample <= 0 else matched_subsample(n_training, sample, seed + 3)


def _calibration_searches(level: Level, sides: dict[str, Side], k: int, extra: dict, options: dict, seed: int,
                          training_rows: np.ndarray, queries):
    """The three calibration searches of :func:`search_level` and the synthetic subsample's size;
    ``queries(rows)`` gives the query rows of a search (a shard's slice of ``rows``)."""
    train, synth, name = sides["training"], sides["synthetic"], level.name
    if "holdout" in sides:
        holdout = sides["holdout"]
        # Same k as the synthetic search, so that each measure's best is taken over as many candidates.
        null = nearest(level, holdout, train, k=k, description=f"{name}: holdout -> training",
                       extra_candidates=extra["null"], **queries(np.arange(len(holdout.vectors))), **options)
        train_null = nearest(level, train, holdout, k=1, primary_only=True, extra_candidates=extra["train_null"],
                             description=f"{name}: training -> holdout", **queries(training_rows), **options)
        matched = len(holdout.vectors)
    else:
        null = nearest(level, train, train, k=k, exclude_own_subject=True, extra_candidates=extra["null"],
                       description=f"{name}: training -> other subjects", **queries(np.arange(len(train.vectors))),
                       **options)
        train_null = null
        matched = len(train.vectors)
    gallery_rows = matched_subsample(len(synth.vectors), matched, seed)
    memorized = nearest(level, train, synth, k=1, gallery_rows=gallery_rows, primary_only=True,
                        extra_candidates=extra["memorized"], description=f"{name}: training -> synthetic",
                        **queries(training_rows), **options)
    return null, train_null, memorized, len(gallery_rows)


def _reach(level: Level, search: Search, sides: dict[str, Side], k: int) -> dict[str, int]:
    """How far a search for the ``k`` nearest looks: the index candidates the level refines
    (``shortlist``) and those it rescores exactly (``depth``), the user's where set."""
    ndim = len(sides["training"].store.shape)
    return {"shortlist": search.shortlist or level.shortlist(ndim), "depth": search.depth or level.depth(ndim, k),
            "index": search.index}


@dataclass(frozen=True)
class DatasetSearches:
    """The searches the data-set statistics of one level add (:mod:`replicheck.memorization`),
    each with k = 1 and the primary measure only, over at most :data:`DATASET_SAMPLE` synthetic
    images (``synthetic_rows``, a seeded sample) and held-out images (``holdout_rows``):

    - ``to_training`` and ``to_holdout``: the sampled synthetic images against a training subsample
      and a held-out subsample of equal size, both taken subject by subject (the DCR share); None
      without a holdout;
    - ``training_nn``: the training images that are the nearest of a sampled synthetic or held-out
      image, against the training images of other patients (authenticity), at ``training_rows``;
    - ``among_synthetic``: the sampled synthetic images against each other (the synthetic set as
      its own gallery, each image its own subject so that it never finds itself): near-duplicate
      clusters, k = :data:`CLUSTER_NEIGHBOURS`.
    """

    synthetic_rows: np.ndarray
    holdout_rows: np.ndarray | None
    to_training: Hits | None
    to_holdout: Hits | None
    training_rows: np.ndarray
    training_nn: np.ndarray  # oriented primary score of each of training_rows to its nearest other patient's image
    among_synthetic: Hits  # each sampled synthetic image's CLUSTER_NEIGHBOURS nearest other sampled synthetic images
    seconds: float


def dataset_searches(level: Level, sides: dict[str, Side], searches: LevelSearches, search: Search, *, seed: int,
                     workers: int, progress: Progress | None = None) -> DatasetSearches:
    """The extra searches of :class:`DatasetSearches` for ``level``, given its four searches."""
    tick = time.perf_counter()
    options = dict(k=1, **_reach(level, search, sides, 1), primary_only=True, workers=workers, progress=progress)
    train, synth, name = sides["training"], sides["synthetic"], level.name
    higher = level.measures[level.primary]
    synthetic_rows = matched_subsample(len(synth.vectors), DATASET_SAMPLE, seed)
    to_training = to_holdout = holdout_rows = None
    nearest_rows = [searches.found.rows[synthetic_rows, 0]]
    if searches.has_holdout:
        holdout = sides["holdout"]
        matched = min(len(train.vectors), len(holdout.vectors))
        to_training = nearest(level, synth, train, query_rows=synthetic_rows,
                              gallery_rows=subject_matched_subsample(train.subjects, matched, seed),
                              description=f"{name}: synthetic -> training subsample", **options)
        to_holdout = nearest(level, synth, holdout, query_rows=synthetic_rows,
                             gallery_rows=subject_matched_subsample(holdout.subjects, matched, seed + 1),
                             description=f"{name}: synthetic -> holdout", **options)
        holdout_rows = matched_subsample(len(holdout.vectors), DATASET_SAMPLE, seed + 2)
        nearest_rows.append(searches.null.rows[holdout_rows, 0])
        training_rows = np.unique(np.concatenate(nearest_rows))
        training_rows = training_rows[training_rows >= 0]
        others = nearest(level, train, train, query_rows=training_rows, exclude_own_subject=True,
                         description=f"{name}: training -> other patients", **options)
        training_nn = oriented(others.values[level.primary][:, 0], higher)
    else:  # the null is already every training image against other patients' images
        training_rows = np.arange(len(train.vectors))
        training_nn = oriented(searches.null.values[level.primary][:, 0], higher)
    alone = replace(synth, subjects=np.arange(len(synth.vectors)).astype(str))
    among = nearest(level, alone, alone, query_rows=synthetic_rows, gallery_rows=synthetic_rows,
                    exclude_own_subject=True, description=f"{name}: synthetic -> synthetic",
                    **{**options, "k": CLUSTER_NEIGHBOURS, "depth": max(options["depth"], CLUSTER_NEIGHBOURS)})
    return DatasetSearches(synthetic_rows, holdout_rows, to_training, to_holdout, training_rows, training_nn,
                           among, time.perf_counter() - tick)
