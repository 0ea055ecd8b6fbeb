"""The voxel level: intensities compared directly (RELICT's image level).

Shortlist: Pearson correlation of area-downsampled images (at most ``search_size`` voxels a
side), which is an inner product of z-scored, unit-norm vectors and so goes through the index.
Downsampling also makes the shortlist tolerant of small shifts. Refinement: the shortlist
is re-ranked by the best Pearson correlation over small translations at half resolution (at
most 64 voxels a side in 2D, 32 in 3D), which brings the exact nearest image into the rescored
candidates for >= 99% of queries (``docs/design.md``). Rescoring: NCC, SSIM, MSE and
PSNR at full analysis resolution after aligning each candidate by up to ``max_shift`` voxels
(:func:`replicheck.measures.compare`).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from . import measures
from .preprocess import DATA_RANGE


class VoxelLevel:
    name = "voxel"

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
        return torch.where(norms > 0, small / norms.clamp_min(1e-12), 0.0).float().numpy()

    def coarse(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Half-resolution copies of (b, *grid) images for :meth:`coarse_scores`, as flat rows.

        Returns the coarse images (used as queries) and their central regions centred and scaled
        to unit norm (used as candidates), so that a candidate's normalisation is paid once per
        image, not once per query.
        """
        small = _pooled(images, self.coarse_size or (64 if images.ndim == 3 else 32))
        self._coarse_shape = tuple(small.shape[1:])  # read back by coarse_scores
        s = _coarse_shift(tuple(small.shape[1:]))
        centre = small[(slice(None),) + tuple(slice(s, n - s) for n in small.shape[1:])].reshape(len(small), -1)
        return small.reshape(len(small), -1).numpy(), _unit_rows(centre).numpy()

    def coarse_scores(self, query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Best Pearson correlation of each coarse candidate with the coarse query over shifts.

        The query's shifted windows (at most 2 voxels per axis in 2D, 1 in 3D) are matched
        against each candidate's normalised central region: one matrix product per query.
        """
        shape = self._coarse_shape
        s = _coarse_shift(shape)
        q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32)).reshape(shape)
        length = [n - 2 * s for n in shape]
        windows = torch.stack([
            q[tuple(slice(o, o + m) for o, m in zip(offset, length))].reshape(-1)
            for offset in itertools.product(range(2 * s + 1), repeat=len(shape))
        ])
        gallery = torch.from_numpy(np.ascontiguousarray(candidates, dtype=np.float32))
        return (_unit_rows(windows) @ gallery.T).max(dim=0).values.numpy()

    def rescore(self, query: np.ndarray, candidates: np.ndarray, *, keep: int | None = None) -> dict[str, np.ndarray]:
        # SSIM, the costliest measure, only for the candidates that can be kept (unless primary).
        ssim_best = None if keep is None or self.primary == "ssim" else keep
        scores = measures.compare(query, candidates, data_range=DATA_RANGE, max_shift=self.max_shift,
                                  ssim_best=ssim_best)
        out = {name: scores.measure(name) for name in self.measures}
        out["shift"] = np.array([" ".join(str(int(v)) for v in row) for row in scores.shift])
        return out

    def describe(self) -> dict:
        return {
            "primary_measure": self.primary,
            "measures": list(self.measures),
            "max_shift_voxels": self.max_shift,
            "search_size": self.search_size,
            "refine_size": self.coarse_size or "64 (2D), 32 (3D)",
            "ssim": {"win_size": 7, "K1": 0.01, "K2": 0.03, "data_range": DATA_RANGE, "covariance": "sample"},
            "shortlist": "Pearson correlation of area-downsampled images (faiss IndexFlatIP)",
            "refine": "best Pearson correlation over +-2 (2D) or +-1 (3D) voxel shifts at refine_size",
        }


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


def _unit_rows(rows: torch.Tensor) -> torch.Tensor:
    """Rows centred and scaled to unit norm (constant rows become 0), so dot products are Pearson r."""
    rows = rows - rows.mean(dim=1, keepdim=True)
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    return torch.where(norms > 0, rows / norms.clamp_min(1e-12), 0.0)
