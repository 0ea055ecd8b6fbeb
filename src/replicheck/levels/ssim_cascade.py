"""SSIM of one query against many candidates on a coarse grid, each pair at its best small shift.

The voxel level's SSIM search re-ranks the index's shortlist with two such stages (32, then 64
pixels a side in 2D) before the exact rescoring (``docs/design.md``). At a coarse grid the
shift matters more than the resolution: SSIM without a shift at 64 pixels ranks the exact
(±3 pixel aligned) SSIM-nearest image worse than SSIM at 32 pixels with a ±1 pixel shift.

Everything that depends on one image only (its central region and that region's window means
and variances) is computed once per image and stored as the image's candidate row. Per pair
only the shift (one matrix product per query over all candidates) and the cross term of SSIM
remain, in fused loops (:mod:`replicheck.kernels`) that read the row in place: 5-10x faster
than :func:`replicheck.measures.compare` at the same size (``benchmarks/ssim_search.py``).

The query is the side that moves: its windows at every offset of ``shift`` voxels per axis are
compared with each candidate's central region (:func:`replicheck.measures.compare` moves the
candidate instead). Both orders rank alike; this one lets a candidate's statistics be stored.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ..kernels import batch_moments, ssim_at_offsets
from ..measures import covariance_scale, unit_rows
from ..preprocess import DATA_RANGE

_C1, _C2 = (0.01 * DATA_RANGE) ** 2, (0.03 * DATA_RANGE) ** 2


class CoarseSsim:
    """SSIM with a ``win``-voxel window after the best Pearson shift of at most ``shift`` voxels,
    for images of shape ``grid``."""

    def __init__(self, grid: tuple[int, ...], shift: int, win: int):
        centre = tuple(n - 2 * shift for n in grid)
        if shift < 0 or win < 1 or min(centre) < win:
            raise ValueError(f"a {win}-voxel window with a {shift}-voxel shift does not fit images of shape {grid}")
        self.grid, self.shift, self.win = tuple(grid), shift, win
        self.centre = centre
        self.maps = tuple(n - win + 1 for n in centre)
        self._sizes = (int(np.prod(centre)),) + (int(np.prod(self.maps)),) * 2

    @property
    def row_length(self) -> int:
        return sum(self._sizes)

    def candidate_rows(self, images: torch.Tensor) -> torch.Tensor:
        """(b, *grid) images -> (b, row_length) rows: central region, window means and window
        variances."""
        centre = self._centre(images)
        mean, variance = self._moments(centre)
        flat = centre.reshape(len(centre), -1)
        return torch.cat([flat, mean.flatten(1), variance.flatten(1)], dim=1)

    def scores(self, query: np.ndarray, store: np.ndarray, rows: np.ndarray, start: int = 0) -> np.ndarray:
        """(m,) SSIM of the (*grid) ``query`` with each of the m images stored in ``rows`` of
        ``store`` (an (n, width) array, usually a read-only memory map), whose candidate rows
        begin at column ``start``. Only the rows asked for are read, and only once."""
        q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32)).reshape(self.grid)
        offsets = list(itertools.product(range(2 * self.shift + 1), repeat=len(self.grid)))
        windows = torch.stack([q[tuple(slice(o, o + m) for o, m in zip(offset, self.centre))] for offset in offsets])
        # A window's window statistics are a crop of the whole query's: computed once, not per offset.
        whole_mean, whole_variance = (m[0] for m in self._moments(q[None]))
        q_mean, q_variance = (torch.stack([m[tuple(slice(o, o + n) for o, n in zip(offset, self.maps))] for offset in offsets])
                              for m in (whole_mean, whole_variance))
        length = self._sizes[0]
        rows = np.asarray(rows, dtype=np.int64)
        # Pearson r of a zero-mean unit window w with a candidate c is (c . w) / |c - mean(c)|: the
        # denominator is the same for every window, so the argmax needs only the raw products.
        centres = torch.from_numpy(store[rows, start:start + length])
        best = (unit_rows(windows.reshape(len(windows), -1)) @ centres.T).argmax(dim=0).numpy()
        out = np.empty(len(rows), dtype=np.float64)
        depth = (1,) * (3 - len(self.grid))  # 2D images are 3D images one voxel deep
        ssim_at_offsets(store, rows, start, best,
                        windows.reshape(len(windows), *depth, *self.centre).numpy(),
                        q_mean.reshape(len(windows), *depth, *self.maps).numpy(),
                        q_variance.reshape(len(windows), *depth, *self.maps).numpy(),
                        depth + (self.win,) * len(self.grid),
                        np.float32(_C1), np.float32(_C2), np.float32(covariance_scale(self.win ** len(self.grid))), out)
        return out

    def _centre(self, images: torch.Tensor) -> torch.Tensor:
        s = self.shift
        return images[(slice(None),) + tuple(slice(s, n - s) for n in self.grid)].contiguous()

    def _moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Window means and sample variances (scikit-image's normalisation) of (b, *shape) images."""
        scale = covariance_scale(self.win ** len(self.grid))
        return tuple(torch.from_numpy(m) for m in batch_moments(images.numpy(), self.win, scale))
