"""What a level is: the :class:`Level` protocol, and :class:`LevelBase`, which supplies the
defaults of every optional part so that the pipeline never asks a level what it has.

The scan pipeline is the same for every level (shortlist by inner product of the vectors,
exact rescoring of the top-k, calibration against the null, flags); a level supplies

- ``vectors(images)``: unit-norm float32 vectors whose inner product shortlists candidates;
- ``query_views(images)``: several vectors per image when it is the query (flips, turns), each
  searched, the candidates merged (default: none; the image's one vector);
- ``rescore(query, candidates, keep=...)``: its measures for one query against k candidates;
- ``measures``: measure name -> True when higher is more similar; ``primary``: the measure
  whose calibrated threshold sets the level's flag;
- ``coarse(images)`` and ``refine(grid, query, candidates, keep)``: a cheaper second look that
  re-ranks the index's shortlist before the exact rescoring (default: none);
- ``shortlist(ndim)``: how many index candidates to refine (default 256);
- ``depth(ndim, k)``: how many refined candidates to rescore exactly (default k);
- ``rescores_in_batches`` and ``rescore_batch(queries, candidates, keep=..., present=...)``:
  rescoring several queries with their candidates in one call, (Q, D) measures; ``present``
  marks the real candidates among the padding (default: off, one query at a time);
- ``scores_from_vectors`` and ``rescore_vectors(query_vector, candidate_vectors)``: measures
  computed from the search vectors alone (an embedding's cosine), so that no image is read
  back to rescore (default: off);
- ``own_representation`` and ``represent(images, rows)``: the level's own representation of a
  batch of analysis-grid images (``rows``: their table rows with source, role, mask, ...),
  computed once per image and stored; vectors, coarse rows and rescoring then work on it
  (segmentation masks; default: the images themselves);
- ``labels(best)``: extra per-synthetic-image columns (e.g. DeepSSIM's class) from the level's
  best value per measure, counted in summary.json (default: none);
- ``union_candidates``: the level runs after the others and also rescores the nearest images
  they found (default: off);
- ``sliceable``: an image's vectors, views and coarse rows depend on that image alone, not on
  the batch it is computed in nor on anything learned from the training set, so that slices of
  the inputs represented apart join into exactly what one run computes (``scan --prepare``,
  :mod:`replicheck.prepared`; default: off);
- ``cache``: an embedding cache the level reads and fills, or None;
- ``prepare(store, subjects, progress=None)``: learn from the training images (analysis grid, with
  subject ids) before any vector is computed, e.g. refit an embedder's whitening (default:
  nothing); a level whose fitting takes long shows it on ``progress``.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import numpy as np
import pandas as pd

from ..store import StoredRows

DEFAULT_SHORTLIST = 256  # index candidates a coarse stage re-ranks per query


class Level(Protocol):
    name: str
    measures: dict[str, bool]
    primary: str
    scores_from_vectors: bool
    rescores_in_batches: bool
    own_representation: bool
    union_candidates: bool
    sliceable: bool
    cache: object | None

    def vectors(self, images: np.ndarray) -> np.ndarray:
        """(b, *grid) images -> (b, d) unit-norm float32 search vectors."""

    def query_views(self, images: np.ndarray) -> np.ndarray | None:
        """(b, *grid) images -> (b, views, d) search vectors of each image as a query, or None."""

    def rescore_batch(self, queries: np.ndarray, candidates: np.ndarray, *, keep: int | None = None,
                      present: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Measures of (Q, D, *grid) candidates against their (Q, *grid) queries: name -> (Q, D)
        (``rescores_in_batches``)."""

    def rescore(self, query: np.ndarray, candidates: np.ndarray, *, keep: int | None = None) -> dict[str, np.ndarray]:
        """Measures of ``query`` against (n, *grid) ``candidates``: name -> (n,) array.

        Keys not in ``measures`` are per-pair details (e.g. ``shift``) written to pairs.csv.
        With ``keep`` = k only the k best candidates by the primary measure will be kept, so the
        other measures may be left NaN for the rest (0: only the primary measure is needed).
        """

    def rescore_vectors(self, query: np.ndarray, candidates: np.ndarray) -> dict[str, np.ndarray]:
        """Measures from the search vectors of a query and (n, d) candidates (``scores_from_vectors``)."""

    def represent(self, images: np.ndarray, rows: pd.DataFrame) -> np.ndarray:
        """The level's representation of (b, *grid) images (``own_representation``)."""

    def coarse(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(b, *grid) images -> (as query, as candidate): two (b, d) arrays for :meth:`refine`,
        or None for a level without a coarse stage."""

    def refine(self, grid: tuple[int, ...], query: np.ndarray, candidates: StoredRows, keep: int) -> np.ndarray:
        """Positions of the ``keep`` closest of the coarse ``candidates`` rows (read as needed) to
        one coarse query row (images of shape ``grid``), closest first."""

    def shortlist(self, ndim: int) -> int:
        """Index candidates per query that :meth:`refine` re-ranks."""

    def depth(self, ndim: int, k: int) -> int:
        """Candidates per query rescored exactly."""

    def labels(self, best: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Extra per-synthetic-image columns from the level's best value per measure."""

    def describe(self) -> dict:
        """Settings of the level, for summary.json."""


class LevelBase:
    """Defaults of a :class:`Level`'s optional parts; a level subclasses it and overrides what it has."""

    scores_from_vectors: ClassVar[bool] = False
    rescores_in_batches: ClassVar[bool] = False
    own_representation: ClassVar[bool] = False
    union_candidates: ClassVar[bool] = False
    sliceable: ClassVar[bool] = False
    cache = None

    def query_views(self, images: np.ndarray) -> np.ndarray | None:
        return None

    def prepare(self, store, subjects: np.ndarray, *, progress=None) -> None:
        return None

    def rescore_batch(self, queries: np.ndarray, candidates: np.ndarray, *, keep: int | None = None,
                      present: np.ndarray | None = None) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"the {self.name} level rescores one query at a time")

    def rescore_vectors(self, query: np.ndarray, candidates: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"the {self.name} level scores images, not vectors")

    def represent(self, images: np.ndarray, rows: pd.DataFrame) -> np.ndarray:
        return images

    def coarse(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        return None

    def refine(self, grid: tuple[int, ...], query: np.ndarray, candidates: StoredRows, keep: int) -> np.ndarray:
        raise NotImplementedError(f"the {self.name} level has no coarse stage")

    def shortlist(self, ndim: int) -> int:
        return DEFAULT_SHORTLIST

    def depth(self, ndim: int, k: int) -> int:
        return k

    def labels(self, best: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {}
