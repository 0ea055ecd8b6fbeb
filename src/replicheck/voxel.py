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
proxy (:func:`_ssim_proxy`) to the Pearson vectors, and the refinement is SSIM itself at half
resolution over small shifts. It costs about four times an NCC search (``docs/design.md``).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from . import measures
from .preprocess import DATA_RANGE


PROXY_CHUNK_VOXELS = 2**21  # images per SSIM-proxy batch: 128 of 128x128 (about 200 MB of temporaries)
SSIM_PROXY_WEIGHT = 2.0  # weight of the SSIM proxy against Pearson r in an SSIM search (docs/design.md)


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
        """Half-resolution copies of (b, *grid) images for :meth:`coarse_scores`, as flat rows.

        Returns the coarse images (used as queries) and their central regions centred and scaled
        to unit norm (used as candidates), so that a candidate's normalisation is paid once per
        image, not once per query.
        """
        small = _pooled(images, self.coarse_size or (64 if images.ndim == 3 else 32))
        self._coarse_shape = tuple(small.shape[1:])  # read back by coarse_scores
        self._coarse_scale = small.shape[-1] / images.shape[-1]
        if self.primary == "ssim":
            flat = small.reshape(len(small), -1).numpy()
            return flat, flat
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
        if self.primary == "ssim":
            return measures.compare(query.reshape(shape), candidates.reshape(-1, *shape), data_range=DATA_RANGE,
                                    max_shift=s, win_size=_coarse_window(shape, s, self._coarse_scale)).ssim
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

    def depth(self, ndim: int, k: int) -> int:
        """Candidates rescored at full resolution per query: enough that the refinement's top
        holds the exact nearest image for >= 99% of 2D queries (tests/test_search_accuracy.py)."""
        if ndim != 2:
            return k
        return max(k, 32 if self.primary == "ssim" else 20)

    def describe(self) -> dict:
        return {
            "primary_measure": self.primary,
            "measures": list(self.measures),
            "max_shift_voxels": self.max_shift,
            "search_size": self.search_size,
            "refine_size": self.coarse_size or "64 (2D), 32 (3D)",
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
            "refine": "SSIM after the best-Pearson shift of +-2 (2D) or +-1 (3D) voxels at refine_size",
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
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))[:, None]
    pool = torch.nn.functional.avg_pool2d if images.ndim == 3 else torch.nn.functional.avg_pool3d
    side = min(images.shape[1:])
    win = min(win_size, side if side % 2 else side - 1)
    mean = pool(x, win, 1, padding=win // 2, count_include_pad=False)
    var = (pool(x * x, win, 1, padding=win // 2, count_include_pad=False) - mean * mean).clamp_min(0)
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


def _coarse_window(shape: tuple[int, ...], shift: int, scale: float) -> int:
    """SSIM's 7-voxel window scaled to the coarse grid (3 at half resolution), at least 3 and
    no larger than the image allows: a 7-voxel window at half resolution spans twice the
    anatomy and ranks the exact nearest image lower (docs/design.md)."""
    scaled = max(3, int(7 * scale) | 1)
    largest = min(shape) - 2 * shift
    return max(1, min(scaled, largest if largest % 2 else largest - 1))


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
