"""The segmentation level: masks of the anatomy or pathology compared by overlap (RELICT's
segmentation level, Aydin et al., arXiv 2502.17360).

Each analysis-grid image is turned into a binary mask once (:meth:`SegmentationLevel.represent`),
from the source that ``masks`` (``--masks``) names (:mod:`replicheck.segmenters.sources`): a
built-in segmenter, the manifest's mask column, a mask folder, or the user's command.

Search vectors are the masks area-pooled to at most 32 pixels a side (16 voxels in 3D) and scaled
to unit norm, so their inner product is the cosine (Ochiai) overlap |A and B| / sqrt(|A| |B|) of
the pooled masks, an upper bound of their Dice that equals it for masks of equal size. Rescoring is
exact at the analysis grid: Dice (primary), IoU = Dice / (2 - Dice), the mean Dice of matched
connected components, and HD95 in analysis-grid voxels as a detail. A pair in which either mask
is empty scores 0 on every overlap measure (HD95 NaN): an image without anatomy shares nothing
with anything, so two empty masks never make a replica (unlike :func:`~replicheck.mask_measures.dice`,
which calls two empty masks identical).

The level also rescores the nearest images the levels before it found (``union_candidates``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import mask_measures
from ..segmenters import MaskSource
from .base import LevelBase

SEARCH_SIDE = {2: 32, 3: 16}  # pooled mask size per side for the search vectors
DEPTH = {2: 64, 3: 32}  # candidates rescored exactly per query (Dice is cheap)


class SegmentationLevel(LevelBase):
    name = "segmentation"
    primary = "dice"
    union_candidates = True  # also rescores the nearest images of the levels run before it
    own_representation = True  # searched and rescored on masks, not on the images

    def __init__(self, masks: str = "foreground", *, ct_window: tuple[float, float] = (40.0, 400.0),
                 workers: int = 2, cache_dir: str | Path | None = None):
        self.source = MaskSource(masks, ct_window=ct_window, cache_dir=cache_dir)
        self.workers = max(1, int(workers))
        self.measures = {"dice": True, "iou": True, "component_dice": True}
        self.empty = 0  # images whose mask came out empty, for describe()

    # ------------------------------------------------------------------ masks

    def represent(self, images: np.ndarray, rows: pd.DataFrame) -> np.ndarray:
        """(b, *grid) analysis-grid images -> (b, *grid) float32 masks in {0, 1}.

        ``rows`` holds one row per image with ``source``, ``role``, ``root``, ``intensity`` (the
        normalisation used), ``shape`` (stored shape), ``mask`` (manifest column) and, with
        ``--slices``, ``slice``.
        """
        records = rows.to_dict("records")
        with ThreadPoolExecutor(self.workers) as pool:
            masks = list(pool.map(self.source.mask, images, records))
        out = np.stack(masks).astype(np.float32)
        self.empty += int((out.reshape(len(out), -1).max(axis=1) == 0).sum())
        return out

    # ------------------------------------------------------------------ search and measures

    def vectors(self, masks: np.ndarray) -> np.ndarray:
        """(b, *grid) masks -> unit-norm area-pooled masks; an empty mask gives the zero vector."""
        side = SEARCH_SIDE[masks.ndim - 1]
        grid = tuple(masks.shape[1:])
        scale = min(1.0, side / max(grid))
        shape = tuple(max(1, int(round(n * scale))) for n in grid)
        batch = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[:, None]
        if shape != grid:
            pool = torch.nn.functional.adaptive_avg_pool2d if len(grid) == 2 else torch.nn.functional.adaptive_avg_pool3d
            batch = pool(batch, shape)
        flat = batch.reshape(len(masks), -1).double()
        norms = torch.linalg.vector_norm(flat, dim=1, keepdim=True)
        return torch.where(norms > 0, flat / norms.clamp_min(1e-12), 0.0).float().numpy()

    def rescore(self, query: np.ndarray, candidates: np.ndarray, *, keep: int | None = None) -> dict[str, np.ndarray]:
        """Dice, IoU and component Dice of the query mask against k candidate masks; HD95 as a detail.

        Component Dice and HD95 are computed for the ``keep`` best candidates by Dice only.
        """
        q = np.asarray(query) > 0.5
        c = np.asarray(candidates) > 0.5
        sizes = c.reshape(len(c), -1).sum(axis=1)
        empty = (sizes == 0) | (not q.any())
        dice = np.where(empty, 0.0, mask_measures.batch_dice(q, c))
        component = np.full(len(c), np.nan)
        hd95 = np.full(len(c), np.nan)
        best = np.argsort(-dice, kind="stable")[: len(c) if keep is None else min(keep, len(c))]
        for i in best:
            if empty[i]:
                component[i] = 0.0
                continue
            a, b = _crop(q, c[i])
            component[i] = mask_measures.component_dice(a, b)["mean_dice"]
            hd95[i] = mask_measures.hausdorff95(a, b)
        return {"dice": dice, "iou": dice / (2.0 - dice), "component_dice": component, "hd95": hd95}

    def depth(self, ndim: int, k: int) -> int:
        return max(k, DEPTH.get(ndim, k))

    def describe(self) -> dict:
        return {
            "primary_measure": "dice",
            "measures": list(self.measures),
            "masks": self.source.spec,
            "mask_source": self.source.describe(),
            "segmenter_parameters": self.source.params,
            "ct_window_hu": {"level": self.source.ct_window[0], "width": self.source.ct_window[1]},
            "empty_masks": self.empty,
            "empty_mask_rule": "a pair with an empty mask scores 0 on every overlap measure (never a replica)",
            "shortlist": "inner product of unit-norm masks area-pooled to 32 (2D) or 16 (3D) voxels a side "
                         "(cosine overlap, an upper bound of Dice; faiss IndexFlatIP), unioned with the nearest "
                         "images of the levels run before",
            "details": {"hd95": "95th-percentile symmetric surface distance in analysis-grid voxels"},
        }


def _crop(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union plus one empty voxel on every side:
    component Dice and HD95 are unchanged, and cost scales with the structure, not the grid."""
    union = a | b
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(union))
    return np.pad(a[box], 1), np.pad(b[box], 1)


__all__ = ["SegmentationLevel"]
