"""The voxel level: intensities compared directly (RELICT's image level).

Shortlist: Pearson correlation of area-downsampled images (at most ``search_size`` voxels a
side), which is an inner product of z-scored, unit-norm vectors and so goes through the index.
Downsampling also makes the shortlist tolerant of small shifts. Rescoring: NCC, SSIM, MSE and
PSNR at full analysis resolution after aligning each candidate by up to ``max_shift`` voxels
(:func:`replicheck.measures.compare`).
"""

from __future__ import annotations

import numpy as np
import torch

from . import measures
from .preprocess import DATA_RANGE


class VoxelLevel:
    name = "voxel"

    def __init__(self, *, max_shift: int = 3, search_size: int = 32, primary: str = "ncc"):
        if primary not in measures.MEASURES:
            raise ValueError(f"unknown voxel measure {primary!r}; choose one of {', '.join(measures.MEASURES)}")
        if search_size < 2:
            raise ValueError(f"search_size must be at least 2, got {search_size}")
        self.max_shift = max_shift
        self.search_size = search_size
        self.primary = primary
        self.measures = dict(measures.HIGHER_IS_SIMILAR)

    def search_shape(self, grid: tuple[int, ...]) -> tuple[int, ...]:
        """The grid scaled down so that its longest side is at most ``search_size``."""
        scale = min(1.0, self.search_size / max(grid))
        return tuple(max(1, int(round(n * scale))) for n in grid)

    def vectors(self, images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
        pool = torch.nn.functional.adaptive_avg_pool2d if batch.ndim == 4 else torch.nn.functional.adaptive_avg_pool3d
        small = pool(batch, self.search_shape(tuple(images.shape[1:]))).reshape(len(images), -1).double()
        small = small - small.mean(dim=1, keepdim=True)
        norms = torch.linalg.vector_norm(small, dim=1, keepdim=True)
        return torch.where(norms > 0, small / norms.clamp_min(1e-12), 0.0).float().numpy()

    def rescore(self, query: np.ndarray, candidates: np.ndarray) -> dict[str, np.ndarray]:
        scores = measures.compare(query, candidates, data_range=DATA_RANGE, max_shift=self.max_shift)
        out = {name: scores.measure(name) for name in self.measures}
        out["shift"] = np.array([" ".join(str(int(v)) for v in row) for row in scores.shift])
        return out

    def describe(self) -> dict:
        return {
            "primary_measure": self.primary,
            "measures": list(self.measures),
            "max_shift_voxels": self.max_shift,
            "search_size": self.search_size,
            "ssim": {"win_size": 7, "K1": 0.01, "K2": 0.03, "data_range": DATA_RANGE, "covariance": "sample"},
            "shortlist": "Pearson correlation of area-downsampled images (faiss IndexFlatIP)",
        }
