"""Levels are plug-ins: each turns analysis-grid images into search vectors and rescores pairs
(:mod:`.base` says what a level supplies). The pipeline never branches on a level's name.

Register a new level in :data:`LEVELS` (name -> factory taking the scan configuration).
"""

from __future__ import annotations

from typing import Callable

from ..config import ScanConfig
from ..records import OptionError, ReplicheckError
from .base import Level, LevelBase

__all__ = ["Level", "LevelBase", "LEVELS", "make_level"]


def _voxel(config: ScanConfig) -> Level:
    options = config.voxel
    if options.align == "similarity":
        from .aligned import AlignedVoxelLevel

        return AlignedVoxelLevel(primary=options.primary)
    from .voxel import VoxelLevel

    return VoxelLevel(max_shift=options.max_shift, search_size=options.search_size, primary=options.primary)


def _feature(config: ScanConfig) -> Level:
    from ..embedders import load_embedder
    from .feature import FeatureLevel
    from .feature_cache import FeatureCache

    options = config.feature
    embedder = load_embedder(options.embedder, device=options.device, batch_size=options.batch_size,
                             max_slices=options.volume_slices)
    return FeatureLevel(embedder, cache=FeatureCache(options.cache, embedder) if options.cache else None,
                        adapt=options.adapt, seed=config.calibration.seed)


def _segmentation(config: ScanConfig) -> Level:
    from .segmentation import SegmentationLevel

    return SegmentationLevel(config.segmentation.masks, ct_window=config.preprocessing.ct_window,
                             workers=config.num_workers)


LEVELS: dict[str, Callable[[ScanConfig], Level]] = {"voxel": _voxel, "feature": _feature,
                                                    "segmentation": _segmentation}


def make_level(name: str, config: ScanConfig) -> Level:
    """The level called ``name``, built from the scan configuration."""
    try:
        factory = LEVELS[name]
    except KeyError:
        raise OptionError("levels", f"names an unknown level {name!r}; known levels: {', '.join(LEVELS)}") from None
    try:
        return factory(config)
    except OptionError:
        raise
    except ValueError as error:
        raise ReplicheckError(f"level {name}: {error}") from None
