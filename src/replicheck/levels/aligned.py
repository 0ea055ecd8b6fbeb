"""The voxel level with aligned comparison (the default): each shortlisted training image is
flipped, rotated, scaled and moved onto the synthetic image before the pair is scored.

Generators emit copies that are warped, zoomed, moved, flipped and rotated; the shift-only voxel
level (:mod:`.voxel`, ``--align shift``) compares such a copy with its source pixel by pixel and
sees two different images. Here every stage of the search works in each image's moment frame
(:mod:`replicheck.align`: centred on its intensity centroid, scaled by its radius of gyration), which
removes translation and zoom before any comparison:

1. **Index**: the band-passed image at 16 pixels a side (8 voxels in 3D) in its moment frame and
   as it lies on the grid (a plain view, for copies whose intensities changed so much that their
   frame drifts), as Pearson unit vectors side by side; a query is searched under each of its
   flips (4 in 2D, 8 in 3D) and the candidates of all flips are merged (``query_views``).
2. **Refine**: the same views at 32 pixels a side (16 in 3D), the moment-frame view of a query
   also turned by :data:`replicheck.align.VIEW_ANGLES` in 2D, each under two intensity curves
   (identity and square root, :data:`REFINE_CURVES`); each candidate keeps its best view.
3. **Rescore**: :func:`replicheck.align.align` estimates each candidate's flip and similarity
   transform (ECC on smoothed images, bounded to ±20 degrees and 0.87-1.15 in scale), and the
   warped pair is scored over the voxels it covers (:func:`replicheck.measures.compare_aligned`):
   ``structure`` (the correlation of band-passed structure, the default primary measure), ``ncc``,
   ``ssim``, ``mse`` and ``psnr``. The transform is reported per pair (``flip``, ``rotation``,
   ``scale``, ``shift``).

Alignment also raises the scores of unrelated pairs (an optimiser always finds some fit); the
null searches go through exactly the same steps, so the holdout's threshold absorbs that.
"""

from __future__ import annotations

import numpy as np
import torch

from .. import align, measures
from ..preprocess import DATA_RANGE
from ..store import StoredRows
from .base import LevelBase

INDEX_SIDE = {2: 16, 3: 8}  # moment-frame views in the index, voxels a side
REFINE_SIDE = {2: 32, 3: 16}  # ... in the refinement
DEPTH = {2: 12, 3: 8}  # candidates aligned and rescored per query
DEPTH_NEAREST_ONLY = 3  # ... in a search for the nearest alone (k = 1: the data-set tests; the calibration's searches take the scan's k)
FINEST = 4  # candidates aligned at the finest level (at least k), chosen by their coarse alignment
FINEST_NEAREST_ONLY = 2  # ... when only the nearest is kept
SHORTLIST = 256  # index candidates the refinement ranks
INDEX_KEEP = 4  # the index's best candidates, rescored whatever the refinement thinks of them
# Intensity curves under which the refinement compares views, keeping each candidate's better
# correlation: a copy whose contrast was re-mapped (a gamma of 0.7 with a zoom, a shift and lost
# detail) can rank below other patients' images under one curve and not under the other.
REFINE_CURVES = {"identity": lambda images: images, "sqrt": lambda images: images.clamp_min(0.0).sqrt()}


class AlignedVoxelLevel(LevelBase):
    name = "voxel"
    sliceable = True  # pooling, flips and coarse rows act on each image alone (tests/test_prepared.py)
    rescores_in_batches = True  # alignment pays off its tensor operations over many queries at once

    def __init__(self, *, primary: str = "structure", bounds: align.Bounds = align.Bounds()):
        if primary not in measures.ALIGNED_MEASURES:
            raise ValueError(f"unknown voxel measure {primary!r}; choose one of {', '.join(measures.ALIGNED_MEASURES)}")
        self.primary = primary
        self.bounds = bounds
        self.measures = dict(measures.ALIGNED_MEASURES)

    def vectors(self, images: np.ndarray) -> np.ndarray:
        return self._index_views(images, ((),))[:, 0]

    def query_views(self, images: np.ndarray) -> np.ndarray:
        return self._index_views(images, align.flips_of(images.ndim - 1))

    def coarse(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(as a query: the moment frame, to flip and turn in :meth:`refine`; as a candidate: its
        moment-frame view and its plain view at the refinement's size, side by side), once for each
        of :data:`REFINE_CURVES`, one after the other."""
        side = REFINE_SIDE[images.ndim - 1]
        as_query, as_candidate = [], []
        for curve in REFINE_CURVES.values():
            frames = align.moment_frames(curve(_tensor(images)), side)
            as_query.append(frames.rows())
            as_candidate += [align.frame_views(frames, side=side)[:, 0], align.plain_views(frames, side=side)[:, 0]]
        return torch.cat(as_query, 1).numpy(), torch.cat(as_candidate, 1).numpy()

    def refine(self, grid: tuple[int, ...], query: np.ndarray, candidates: StoredRows, keep: int) -> np.ndarray:
        """Positions of the ``keep`` candidates to rescore: the index's first :data:`INDEX_KEEP`, then
        those that correlate best with the query under any flip (and, in 2D, turn) of its moment-frame
        view, or under any flip of its plain view, under either intensity curve of
        :data:`REFINE_CURVES`. Why keep the index's best: at 32 voxels a side the views see a
        compound copy's zoom, shift and gamma more sharply than at 16 and can drop its source (on
        the 2D CT benchmark, 15% of compound copies lost their source in refinement; keeping the
        index's top 4 brought 6 of those 9 back; the index alone loses translated copies).
        A search that keeps no more than :data:`INDEX_KEEP` (the data-set tests', at
        :data:`DEPTH_NEAREST_ONLY`) takes the index's order as it is, without reading or comparing
        any view."""
        if keep <= INDEX_KEEP:
            return np.arange(min(keep, len(candidates)))
        ndim = len(grid)
        side = REFINE_SIDE[ndim]
        shape = align.coarse_shape(tuple(grid), 2 * side)
        flips = align.flips_of(ndim)
        angles = align.VIEW_ANGLES if ndim == 2 else (0.0,)
        curves = len(REFINE_CURVES)
        frames = align.Frames.from_rows(torch.from_numpy(np.asarray(query, dtype=np.float32)).reshape(curves, -1), shape)
        moment = align.frame_views(frames, flips=flips, angles=angles, side=side)  # (curves, views, d)
        plain = align.plain_views(frames, flips=flips, side=side)
        rows = torch.from_numpy(candidates.read())
        rows = rows.reshape(len(rows), curves, -1)  # (candidates, curves, moment view and plain view)
        size = moment.shape[2]
        scores = torch.maximum(torch.einsum("ncd,cvd->ncv", rows[:, :, :size], moment).amax((1, 2)),
                               torch.einsum("ncd,cvd->ncv", rows[:, :, size:], plain).amax((1, 2)))
        order = np.argsort(-scores.numpy(), kind="stable")
        first = np.arange(min(INDEX_KEEP, len(order)))
        return np.concatenate([first, order[~np.isin(order, first)]])[:keep]

    def rescore(self, query: np.ndarray, candidates: np.ndarray, *, keep: int | None = None) -> dict[str, np.ndarray]:
        scores = self.rescore_batch(query[None], candidates[None], keep=keep)
        return {name: values[0] for name, values in scores.items()}

    def rescore_batch(self, queries: np.ndarray, candidates: np.ndarray, *, keep: int | None = None,
                      present: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Measures of each of the (Q, D, *grid) candidates aligned onto its query among the (Q, *grid)
        ``queries``, (Q, D) each. Only each query's ``FINEST`` (at least ``keep``) candidates that
        correlate best after the coarse alignment are aligned finely and scored; the others score
        NaN (ranked last). ``present`` (Q, D): False for padding, which is never chosen before a
        real candidate."""
        q, d = candidates.shape[:2]
        finest = None if keep is None else (FINEST_NEAREST_ONLY if keep <= 1 else max(FINEST, keep))
        found = align.align(_tensor(queries), _tensor(candidates), bounds=self.bounds, finest=finest,
                            present=None if present is None else torch.from_numpy(np.asarray(present, dtype=bool)))
        ssim_best = None if keep is None or self.primary == "ssim" else min(keep, 1)  # SSIM of the nearest only
        scored = measures.compare_aligned(queries, found.warped.numpy(), found.valid.numpy(), data_range=DATA_RANGE,
                                          ssim_best=ssim_best)
        transforms = found.transforms()
        names = "zyx"[-queries.ndim + 1:]
        details = {"flip": lambda t: "".join(names[a] for a in t.flip), "rotation": lambda t: t.rotation,
                   "rotation_axis": lambda t: " ".join(f"{v:.3f}" for v in t.axis),
                   "scale": lambda t: t.scale, "shift": lambda t: " ".join(f"{v:.2f}" for v in t.shift)}
        if queries.ndim - 1 == 2:
            del details["rotation_axis"]
        for name, read in details.items():
            scored[name] = np.array([[read(t) for t in row] for row in transforms],
                                    dtype=np.float64 if name in ("rotation", "scale") else object)
        rows = found.rows.numpy()
        out = {}
        for name, values in scored.items():
            full = np.full((q, d), "", dtype=object) if values.dtype == object else np.full((q, d), np.nan)
            full[np.arange(q)[:, None], rows] = values
            out[name] = full
        return out

    def shortlist(self, ndim: int) -> int:
        return SHORTLIST

    def depth(self, ndim: int, k: int) -> int:
        return max(k, DEPTH_NEAREST_ONLY if k == 1 else DEPTH.get(ndim, k))

    def describe(self) -> dict:
        return {
            "primary_measure": self.primary,
            "measures": list(self.measures),
            "alignment": "similarity",
            "bounds": {"rotation_degrees": self.bounds.rotation, "scale": list(self.bounds.scale),
                       "translation_share_of_half_size": self.bounds.translation},
            "shortlist": f"moment-frame views (centroid, radius of gyration; band-passed 1-4 voxels) at {INDEX_SIDE[2]} "
                         f"(2D) or {INDEX_SIDE[3]} (3D) voxels a side, every flip of the query (faiss IndexFlatIP)",
            "refine": f"the same views at {REFINE_SIDE[2]} (2D) or {REFINE_SIDE[3]} (3D), turned by "
                      f"{list(align.VIEW_ANGLES)} degrees in 2D, under the intensity curves {list(REFINE_CURVES)}; "
                      f"{SHORTLIST} candidates in, {DEPTH[2]} (2D) or {DEPTH[3]} (3D) out",
            "alignment_method": "ECC (Evangelidis and Psarakis 2008) on smoothed images at "
                                f"{[level[0] for level in align.LEVELS_2D]} (2D) / {[level[0] for level in align.LEVELS_3D]} "
                                "(3D) voxels a side, projected onto similarities",
            "structure": {"band_voxels": list(measures.BAND), "what": "Pearson correlation of the difference of "
                                                                      "Gaussians of the aligned pair over its overlap"},
            "ssim": {"win_size": 7, "K1": 0.01, "K2": 0.03, "data_range": DATA_RANGE, "covariance": "sample",
                     "region": "windows inside the overlap"},
        }

    @staticmethod
    def _index_views(images: np.ndarray, flips: tuple[tuple[int, ...], ...]) -> np.ndarray:
        """(b, flips, 2 x side**d): the moment-frame and plain views side by side, divided by sqrt(2),
        so that an inner product is the mean of the two correlations."""
        side = INDEX_SIDE[images.ndim - 1]
        frames = align.moment_frames(_tensor(images), side)
        views = torch.cat([align.frame_views(frames, flips=flips, side=side), align.plain_views(frames, flips=flips, side=side)], 2)
        return (views / np.sqrt(2.0)).numpy()


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
