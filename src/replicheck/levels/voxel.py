"""The voxel level: intensities compared directly (RELICT's image level).

Shortlist: Pearson correlation of area-downsampled images (at most ``search_size`` voxels a
side), which is an inner product of z-scored, unit-norm vectors and so goes through the index.
Downsampling also makes the shortlist tolerant of small shifts. Refinement: the shortlist
is re-ranked by the best Pearson correlation over small translations at half resolution (at
most 64 voxels a side in 2D, 32 in 3D), which brings the exact nearest image into the rescored
candidates for >= 99% of queries (``docs/design.md``). Rescoring: NCC, SSIM, MSE and
PSNR at full analysis resolution after aligning each candidate by up to ``max_shift`` voxels
(:func:`replicheck.measures.compare`).

With SSIM as the primary measure the NCC shortlist misses the SSIM-nearest image of about one
novel query in five, so an SSIM search uses its own cascade: the search vectors add an SSIM
proxy (:func:`_ssim_proxy`) to the Pearson vectors, the index keeps 1,024 candidates in 2D,
and the refinement is SSIM itself after a small shift, at 32, 64 and then 96 pixels a side
(:mod:`replicheck.levels.ssim_cascade`), before 10 candidates are rescored exactly (``docs/design.md``).
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import torch

from .. import measures
from ..kernels import batch_moments
from ..measures import unit_rows
from ..preprocess import DATA_RANGE
from ..store import StoredRows
from .base import LevelBase
from .ssim_cascade import CoarseSsim


PROXY_CHUNK_VOXELS = 2**21  # images per SSIM-proxy batch: 128 of 128x128 (about 200 MB of temporaries)
SSIM_PROXY_WEIGHT = 2.0  # weight of the SSIM proxy against Pearson r in an SSIM search (docs/design.md)


class VoxelLevel(LevelBase):
    name = "voxel"
    sliceable = True  # pooling, flips and coarse rows act on each image alone (tests/test_prepared.py)

    def __init__(self, *, max_shift: int = 3, search_size: int = 32, coarse_size: int | None = None, primary: str = "ncc"):
        if primary not in measures.MEASURES:
            raise ValueError(f"unknown voxel measure {primary!r}; choose one of {', '.join(measures.MEASURES)}")
        if search_size < 2:
            raise ValueError(f"search_size must be at least 2, got {search_size}")
        self.max_shift = max_shift
        self.search_size = search_size
        self.coarse_size = coarse_size
        self.primary = primary
        self.measures = dict(measures.HIGHER_IS_SIMILAR)

    def vectors(self, images: np.ndarray) -> np.ndarray:
        small = _pooled(images, self.search_size).reshape(len(images), -1).double()
        small = small - small.mean(dim=1, keepdim=True)
        norms = torch.linalg.vector_norm(small, dim=1, keepdim=True)
        unit = torch.where(norms > 0, small / norms.clamp_min(1e-12), 0.0).float()
        if self.primary != "ssim":
            return unit.numpy()
        # Inner product = Pearson r at search_size + SSIM_PROXY_WEIGHT x the SSIM proxy.
        side = 32 if images.ndim == 3 else 16
        step = max(1, PROXY_CHUNK_VOXELS // int(np.prod(images.shape[1:])))  # its temporaries are ~20x the input
        proxy = torch.cat([_ssim_proxy(images[i:i + step], side) for i in range(0, len(images), step)])
        weight = (SSIM_PROXY_WEIGHT * 4 / proxy.shape[1]) ** 0.5
        return torch.cat([unit, weight * proxy], dim=1).numpy()

    def coarse(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coarse copies of (b, *grid) images for :meth:`refine`, as flat rows (as a query, as a candidate).

        NCC search: the half-resolution images, and their central regions centred and scaled to
        unit norm, so that a candidate's normalisation is paid once per image, not once per query.
        SSIM search: each stage's coarse image, and its stored statistics
        (:meth:`replicheck.levels.ssim_cascade.CoarseSsim.candidate_rows`), side by side.
        """
        if self.primary == "ssim":
            stages = [stage for stage, _ in _ssim_stages(tuple(images.shape[1:]))]
            small = [_pooled(images, max(stage.grid)) for stage in stages]
            return (torch.cat([s.reshape(len(s), -1) for s in small], dim=1).numpy(),
                    torch.cat([stage.candidate_rows(s) for stage, s in zip(stages, small)], dim=1).numpy())
        small = _pooled(images, self._refine_side(images.ndim - 1))
        s = _coarse_shift(tuple(small.shape[1:]))
        centre = small[(slice(None),) + tuple(slice(s, n - s) for n in small.shape[1:])].reshape(len(small), -1)
        return small.reshape(len(small), -1).numpy(), unit_rows(centre).numpy()

    def refine(self, grid: tuple[int, ...], query: np.ndarray, candidates: StoredRows, keep: int) -> np.ndarray:
        """Positions of the ``keep`` best coarse ``candidates`` rows for one coarse ``query`` row, best first.

        NCC search: the best Pearson correlation over shifts (at most 2 voxels per axis in 2D,
        1 in 3D) of the query's shifted windows with each candidate's normalised central region:
        one matrix product per query. SSIM search: SSIM after a small shift at ever finer grids
        (:data:`SSIM_STAGES_2D`, :data:`SSIM_STAGES_3D`), each stage keeping fewer candidates.
        """
        if self.primary == "ssim":
            return _ssim_refine(_ssim_stages(grid), query, candidates, keep)
        shape = _coarse_grid(grid, self._refine_side(len(grid)))
        s = _coarse_shift(shape)
        q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32)).reshape(shape)
        length = [n - 2 * s for n in shape]
        windows = torch.stack([
            q[tuple(slice(o, o + m) for o, m in zip(offset, length))].reshape(-1)
            for offset in itertools.product(range(2 * s + 1), repeat=len(shape))
        ])
        gallery = torch.from_numpy(candidates.read())
        scores = (unit_rows(windows) @ gallery.T).max(dim=0).values.numpy()
        return np.argsort(-scores, kind="stable")[:keep]

    def _refine_side(self, ndim: int) -> int:
        return self.coarse_size or (64 if ndim == 2 else 32)

    def rescore(self, query: np.ndarray, candidates: np.ndarray, *, keep: int | None = None) -> dict[str, np.ndarray]:
        # SSIM, the costliest measure, only for the candidates that can be kept (unless primary).
        ssim_best = None if keep is None or self.primary == "ssim" else keep
        scores = measures.compare(query, candidates, data_range=DATA_RANGE, max_shift=self.max_shift,
                                  ssim_best=ssim_best)
        out = {name: scores.measure(name) for name in self.measures}
        # Reported as the aligned level reports it: how far the training image moved to match.
        out["shift"] = np.array([" ".join(str(-int(v)) for v in row) for row in scores.shift])
        return out

    def shortlist(self, ndim: int) -> int:
        """Index candidates per query that the refinement re-ranks (docs/design.md): an SSIM
        proxy ranks worse than Pearson r ranks for NCC, so an SSIM search in 2D looks deeper."""
        return 1024 if self.primary == "ssim" and ndim == 2 else 256

    def depth(self, ndim: int, k: int) -> int:
        """Candidates rescored at full resolution per query: enough that the refinement's top
        holds the exact nearest image for >= 99% of 2D queries (tests/levels/test_voxel.py)."""
        if ndim != 2:
            return k
        return max(k, 10 if self.primary == "ssim" else 20)

    def describe(self) -> dict:
        return {
            "primary_measure": self.primary,
            "measures": list(self.measures),
            "max_shift_voxels": self.max_shift,
            "search_size": self.search_size,
            "refine_size": (f"{', '.join(str(stage[0]) for stage in SSIM_STAGES_2D)} (2D), "
                            f"{', '.join(str(stage[0]) for stage in SSIM_STAGES_3D)} (3D)" if self.primary == "ssim"
                            else self.coarse_size or "64 (2D), 32 (3D)"),
            "ssim": {"win_size": 7, "K1": 0.01, "K2": 0.03, "data_range": DATA_RANGE, "covariance": "sample"},
            **(self._ssim_search() if self.primary == "ssim" else {
                "shortlist": "Pearson correlation of area-downsampled images (faiss IndexFlatIP)",
                "refine": "best Pearson correlation over +-2 (2D) or +-1 (3D) voxel shifts at refine_size",
            }),
        }

    @staticmethod
    def _ssim_search() -> dict:
        return {
            "shortlist": f"Pearson correlation of area-downsampled images + {SSIM_PROXY_WEIGHT} x an SSIM proxy "
                         "(local luminance and contrast-structure features pooled to 32 (2D) or 16 (3D) voxels a side; "
                         "faiss IndexFlatIP)",
            "refine": "SSIM after the best-Pearson shift at ever finer grids, keeping fewer candidates; (pixels "
                      f"a side, shift, window, kept): {SSIM_STAGES_2D} in 2D, {SSIM_STAGES_3D} in 3D",
        }


def _ssim_proxy(images: np.ndarray, max_side: int, win_size: int = 7) -> torch.Tensor:
    """Per-image features whose inner product, over the pooled voxels, approximates SSIM.

    SSIM averages l * cs over windows, with l = (2 mx my + C1) / (mx^2 + my^2 + C1) and
    cs = (2 sxy + C2) / (sx^2 + sy^2 + C2). Each factor is bounded by the cosine of a per-image
    vector (geometric for arithmetic mean of the denominators): [sqrt(C1/2), m] / |.| for l and
    [sqrt(C2/2), x - m] / sqrt(s^2 + C2/2) for cs (the patch replaced by its centre voxel). The
    product of two cosines is the inner product of the outer products: 4 channels per voxel,
    area-pooled to at most ``max_side`` a side. Used only to shortlist for an SSIM search.
    """
    c1, c2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2
    side = min(images.shape[1:])
    win = min(win_size, side if side % 2 else side - 1)
    # Over the voxels whose whole window lies inside the image, in fused loops (5x faster than avg_pool).
    mean, var = (torch.from_numpy(m)[:, None] for m in batch_moments(images, win, covariance_scale=1.0))
    var = var.clamp_min(0)
    half = win // 2
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    x = x[(slice(None), slice(None)) + tuple(slice(half, n - half) for n in images.shape[1:])]
    luminance_norm = torch.sqrt(mean * mean + c1 / 2)
    contrast_norm = torch.sqrt(var + c2 / 2)
    luminance = torch.cat([torch.full_like(mean, (c1 / 2) ** 0.5), mean], 1) / luminance_norm
    structure = torch.cat([torch.full_like(mean, (c2 / 2) ** 0.5), x - mean], 1) / contrast_norm
    features = (luminance[:, :, None] * structure[:, None, :]).flatten(1, 2)
    grid = tuple(images.shape[1:])
    shape = _coarse_grid(grid, max_side)
    if shape != grid:
        adaptive = torch.nn.functional.adaptive_avg_pool2d if images.ndim == 3 else torch.nn.functional.adaptive_avg_pool3d
        features = adaptive(features, shape)
    return features.flatten(1)


# The SSIM search's refinement stages (docs/design.md): (pixels a side, shift, window, candidates
# kept); the first keeps at most a quarter of the shortlist, the last one keeps the search's depth.
SSIM_STAGES_2D = ((32, 1, 3, 96), (64, 2, 3, 40), (96, 2, 5, None))
SSIM_STAGES_3D = ((16, 1, 3, 128), (32, 1, 3, None))


@functools.lru_cache(maxsize=8)
def _ssim_stages(grid: tuple[int, ...]) -> tuple[tuple[CoarseSsim, int | None], ...]:
    """The SSIM search's refinement stages for images of shape ``grid``, each no larger than
    the image, with the number of candidates each keeps (None: the search's depth)."""
    stages = []
    for side, shift, win, keep in SSIM_STAGES_2D if len(grid) == 2 else SSIM_STAGES_3D:
        shape = _coarse_grid(grid, side)
        shift = max(0, min(shift, (min(shape) - 3) // 2))
        stages.append((CoarseSsim(shape, shift, win=min(win, min(shape) - 2 * shift)), keep))
    return tuple(stages)


def _ssim_refine(stages, query: np.ndarray, candidates: StoredRows, depth: int) -> np.ndarray:
    """Positions of the ``depth`` best candidates after the coarse SSIM stages, best first; each
    stage reads its own columns of the candidates that are left, in place."""
    query_parts = np.split(query, np.cumsum([int(np.prod(stage.grid)) for stage, _ in stages])[:-1])
    ends = np.cumsum([stage.row_length for stage, _ in stages])
    stored = candidates.store.mapped_rows()
    positions = np.arange(len(candidates))
    for number, ((stage, keep), q, end) in enumerate(zip(stages, query_parts, ends)):
        scores = stage.scores(q, stored, candidates.rows[positions], start=int(end) - stage.row_length)
        cut = depth if keep is None else max(depth, min(keep, len(positions) // 4) if number == 0 else keep)
        positions = positions[np.argsort(-scores, kind="stable")[:cut]]
    return positions


def _coarse_grid(grid: tuple[int, ...], max_side: int) -> tuple[int, ...]:
    scale = min(1.0, max_side / max(grid))
    return tuple(max(1, int(round(n * scale))) for n in grid)


def _coarse_shift(shape: tuple[int, ...]) -> int:
    """Shift range of the coarse search: 2 voxels in 2D, 1 in 3D, less for tiny images."""
    return max(0, min(2 if len(shape) == 2 else 1, (min(shape) - 3) // 2))


def _pooled(images: np.ndarray, max_side: int) -> torch.Tensor:
    """(b, *grid) images area-averaged so that the longest side is at most ``max_side``."""
    grid = tuple(images.shape[1:])
    shape = _coarse_grid(grid, max_side)
    batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    if shape == grid:
        return batch[:, 0]
    pool = torch.nn.functional.adaptive_avg_pool2d if len(grid) == 2 else torch.nn.functional.adaptive_avg_pool3d
    return pool(batch, shape)[:, 0]
