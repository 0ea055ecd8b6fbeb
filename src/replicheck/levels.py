"""Levels are plug-ins: each turns analysis-grid images into search vectors and rescores pairs.

The scan pipeline is the same for every level (shortlist by inner product of the vectors,
exact rescoring of the top-k, calibration against the null, flags); a level only supplies

- ``vectors(images)``: unit-norm float32 vectors whose inner product shortlists candidates;
- ``rescore(query, candidates)``: its measures for one query against k candidates;
- ``measures``: measure name -> True when higher is more similar; ``primary``: the measure
  whose calibrated threshold sets the level's flag;
- optionally ``coarse(images)`` and ``refine(grid, query, candidates, keep)``: a cheaper second
  look that re-ranks the index's shortlist before the exact rescoring (``None`` to skip);
- optionally ``shortlist(ndim)``: how many index candidates to refine (default 256);
- optionally ``depth(ndim, k)``: how many refined candidates to rescore exactly (default k);
- optionally ``rescore_vectors(query_vector, candidate_vectors)``: measures computed from the
  search vectors alone (an embedding's cosine), so that no image is read back to rescore.
- optionally ``represent(images, rows)``: the level's own representation of a batch of
  analysis-grid images (``rows``: their table rows with source, role, mask, ...), computed once
  per image and stored; vectors, coarse rows and rescoring then work on it (segmentation masks);
- optionally ``labels(best)``: extra per-synthetic-image columns (e.g. DeepSSIM's class) from the
  level's best value per measure, counted in summary.json;
- optionally ``union_candidates = True``: the level runs after the others and also rescores the
  nearest images they found.

Register a new level in :data:`LEVELS` (name -> factory taking the scan configuration).
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from .records import ReplicheckError
from .store import StoredRows


class Level(Protocol):
    name: str
    measures: dict[str, bool]
    primary: str

    def vectors(self, images: np.ndarray) -> np.ndarray:
        """(b, *grid) images -> (b, d) unit-norm float32 search vectors."""

    def rescore(self, query: np.ndarray, candidates: np.ndarray, *, keep: int | None = None) -> dict[str, np.ndarray]:
        """Measures of ``query`` against (n, *grid) ``candidates``: name -> (n,) array.

        Keys not in ``measures`` are per-pair details (e.g. ``shift``) written to pairs.csv.
        With ``keep`` = k only the k best candidates by the primary measure will be kept, so the
        other measures may be left NaN for the rest (0: only the primary measure is needed).
        """

    def describe(self) -> dict:
        """Settings of the level, for summary.json."""

    def coarse(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(b, *grid) images -> (as query, as candidate): two (b, d) arrays for
        :meth:`refine`, or None for a level without a coarse stage."""

    def refine(self, grid: tuple[int, ...], query: np.ndarray, candidates: StoredRows, keep: int) -> np.ndarray:
        """Positions of the ``keep`` closest of the coarse ``candidates`` rows (read as needed) to
        one coarse query row (images of shape ``grid``), closest first."""


def _voxel(config) -> Level:
    from .voxel import VoxelLevel

    return VoxelLevel(max_shift=config.max_shift, search_size=config.search_size, primary=config.voxel_measure)


def _feature(config) -> Level:
    from .embedders import load_embedder
    from .feature import FeatureLevel
    from .feature_cache import FeatureCache

    embedder = load_embedder(config.embedder, device=config.device, batch_size=config.batch_size)
    return FeatureLevel(embedder, cache=FeatureCache(config.cache, embedder) if config.cache else None)


def _segmentation(config) -> Level:
    from .segmentation import SegmentationLevel

    return SegmentationLevel(config.masks, ct_window=config.ct_window, workers=config.num_workers)


LEVELS: dict[str, Callable[[object], Level]] = {"voxel": _voxel, "feature": _feature, "segmentation": _segmentation}


def make_level(name: str, config) -> Level:
    """The level called ``name``, built from the scan configuration."""
    try:
        factory = LEVELS[name]
    except KeyError:
        raise ReplicheckError(f"--levels: unknown level {name!r}; known levels: {', '.join(LEVELS)}") from None
    try:
        return factory(config)
    except ValueError as error:
        raise ReplicheckError(f"--levels {name}: {error}") from None
