"""Voxel-level similarity of one query image against k candidate images, batched.

Every measure works on 2D images and 3D volumes alike (the spatial axes are all axes of
``query``). The shift search, NCC, MSE and PSNR run in torch because its FFT and strided window
sums are 2-4x faster than SciPy's on a 2-core CPU; SSIM runs in fused numba loops
(:mod:`replicheck.kernels`), 2.5x faster than its torch form. The results are checked against
scikit-image and NumPy in ``tests/test_measures.py``.

Measures (orientation in :data:`HIGHER_IS_SIMILAR`):

- ``ncc``: Pearson correlation in [-1, 1].
- ``ssim``: structural similarity with scikit-image's semantics (uniform ``win_size`` window,
  K1 = 0.01, K2 = 0.03, sample covariance; Wang et al. 2004), in [-1, 1].
- ``mse``: mean squared error, lower is more similar.
- ``psnr``: peak signal-to-noise ratio in dB for ``data_range``; ``inf`` for identical images.

With ``max_shift`` > 0 the candidate is first aligned to the query by the integer translation
(at most ``max_shift`` voxels per axis) that maximises the Pearson correlation between the
query's central region (a border of ``max_shift`` removed) and the candidate's shifted window;
all measures are then computed on that aligned pair. A copy shifted by a few pixels is thereby
scored like an unshifted copy (see ``docs/design.md``).

:func:`compare_aligned` scores candidates that :mod:`replicheck.align` has already warped onto the
query, over the voxels they cover, and adds ``structure``: the Pearson correlation of the two
images' band-passed structure (:func:`replicheck.align.band_pass`), which a copy keeps through
noise, blur and contrast changes and which unrelated images of the same anatomy do not share.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .align import gaussian, separable
from .kernels import ssim_many

HIGHER_IS_SIMILAR = {"ncc": True, "ssim": True, "psnr": True, "mse": False}
MEASURES = tuple(HIGHER_IS_SIMILAR)
ALIGNED_MEASURES = {"structure": True, **HIGHER_IS_SIMILAR}  # compare_aligned's measures
BAND = (1.0, 4.0)  # voxels: the structure's difference of Gaussians

_K1, _K2 = 0.01, 0.03


@dataclass(frozen=True)
class PairScores:
    """Scores of one query against k candidates; every array has k rows."""

    ncc: np.ndarray
    ssim: np.ndarray
    mse: np.ndarray
    psnr: np.ndarray
    shift: np.ndarray  # (k, ndim) integer translation of the candidate relative to the query

    def measure(self, name: str) -> np.ndarray:
        return getattr(self, name)


def compare(
    query: np.ndarray,
    candidates: np.ndarray,
    *,
    data_range: float,
    max_shift: int = 0,
    win_size: int = 7,
    ssim_best: int | None = None,
) -> PairScores:
    """Score ``query`` (shape S) against each of ``candidates`` (shape (k, *S)).

    ``data_range`` is the intensity range of the normalised images (1.0 after replicheck's
    preprocessing); it sets SSIM's stabilising constants and PSNR's peak. SSIM is the costliest
    measure: with ``ssim_best`` = n it is computed only for the n candidates of highest NCC
    (0: for none) and left NaN for the others.
    """
    query = np.asarray(query)
    candidates = np.asarray(candidates)
    if candidates.shape[1:] != query.shape:
        raise ValueError(
            f"candidates must have shape (k, *{query.shape}), got {candidates.shape}"
        )
    _check_options(query.shape, data_range=data_range, max_shift=max_shift, win_size=win_size)
    q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32))
    c = torch.from_numpy(np.ascontiguousarray(candidates, dtype=np.float32))
    if max_shift > 0:
        shifts = _best_shifts(q, c, max_shift)
        q, c = _aligned(q, c, shifts, max_shift)
    else:
        shifts = torch.zeros((c.shape[0], q.ndim), dtype=torch.long)
    flat_q, flat_c = q.reshape(1, -1), c.reshape(c.shape[0], -1)
    mse_ = ((flat_c - flat_q) ** 2).mean(dim=1, dtype=torch.float64)
    with np.errstate(divide="ignore"):
        psnr_ = 10.0 * np.log10(data_range**2 / mse_.numpy())
    ncc_ = _pearson(flat_q, flat_c).numpy()
    ssim_ = np.full(len(c), np.nan)
    rows = np.arange(len(c)) if ssim_best is None else np.argsort(-ncc_, kind="stable")[:ssim_best]
    if rows.size:
        ssim_[rows] = _ssim(q.numpy(), c.numpy()[rows], data_range=data_range, win_size=win_size)
    return PairScores(
        ncc=ncc_,
        ssim=ssim_,
        mse=mse_.numpy(),
        psnr=psnr_,
        shift=shifts.numpy(),
    )


def compare_aligned(queries: np.ndarray, warped: np.ndarray, valid: np.ndarray, *, data_range: float,
                    win_size: int = 7, ssim_best: int | None = None, band: tuple[float, float] = BAND) -> dict:
    """Measures of (Q, *S) ``queries`` against (Q, M, *S) candidates already ``warped`` onto their
    query, over each candidate's ``valid`` voxels (a (Q, M, *S) boolean mask of the voxels its warp
    covers); every measure is a (Q, M) array.

    - ``ncc``, ``mse``, ``psnr`` over the valid voxels;
    - ``ssim``: the mean of scikit-image's SSIM map over the voxels whose whole window is valid;
      with ``ssim_best`` = n only for each query's n candidates of highest ``structure`` (NaN
      otherwise; a scan computes it for the nearest only, the costliest measure at full resolution);
    - ``structure``: the Pearson correlation over the valid voxels of both images band-passed
      between ``band`` voxels (difference of Gaussians, each smoothing normalised by the mask's,
      so that the edge of the valid region adds no structure of its own).

    A candidate with fewer than 16 valid voxels scores NaN.
    """
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    w = torch.from_numpy(np.ascontiguousarray(warped, dtype=np.float32))
    mask = torch.from_numpy(np.ascontiguousarray(valid, dtype=bool))
    if w.shape[:1] + w.shape[2:] != q.shape or mask.shape != w.shape:
        raise ValueError(f"warped and valid must have shape ({q.shape[0]}, M, *{tuple(q.shape[1:])}), got "
                         f"{tuple(w.shape)} and {tuple(mask.shape)}")
    nq, m = w.shape[:2]
    grid = tuple(q.shape[1:])
    pairs_q = q[:, None].expand(nq, m, *grid).reshape(nq * m, *grid)
    w, mask = w.reshape(nq * m, *grid), mask.reshape(nq * m, *grid)
    k = nq * m
    weights = mask.reshape(k, -1).to(torch.float32)
    count = weights.sum(1)
    flat_q, flat_w = pairs_q.reshape(k, -1), w.reshape(k, -1)
    mse_ = (((flat_w - flat_q) ** 2) * weights).sum(1, dtype=torch.float64) / count.double().clamp_min(1)
    with np.errstate(divide="ignore"):
        psnr_ = 10.0 * np.log10(data_range**2 / mse_.numpy())
    ncc_ = _masked_pearson(flat_q, flat_w, weights)
    structure_ = _structure(pairs_q, w, mask, band)
    ssim_ = np.full(k, np.nan)
    if ssim_best is None:
        rows = np.arange(k)
    else:
        best = np.argsort(-np.nan_to_num(structure_.reshape(nq, m), nan=-np.inf), axis=1, kind="stable")[:, :ssim_best]
        rows = (best + (np.arange(nq) * m)[:, None]).reshape(-1)
    if rows.size:
        ssim_[rows] = _masked_ssim(pairs_q[rows], w[rows], mask[rows], data_range=data_range, win_size=win_size)
    few = (count < 16).numpy()
    out = {"structure": structure_, "ncc": ncc_, "ssim": ssim_, "mse": mse_.numpy(), "psnr": psnr_}
    return {name: np.where(few, np.nan, values).reshape(nq, m) for name, values in out.items()}


def _masked_pearson(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Row-wise Pearson correlation of (k, n) ``a`` and ``b`` over the voxels where ``mask`` is 1
    (sums in float64)."""
    count = mask.sum(1, keepdim=True).clamp_min(1)
    first = mask.argmax(dim=1, keepdim=True)  # a valid voxel of each row: see _centred
    a, b = a - a.gather(1, first), b - b.gather(1, first)
    ac = (a - (a * mask).sum(1, keepdim=True) / count) * mask
    bc = (b - (b * mask).sum(1, keepdim=True) / count) * mask
    numerator = (ac * bc).sum(1, dtype=torch.float64)
    denominator = torch.sqrt((ac * ac).sum(1, dtype=torch.float64) * (bc * bc).sum(1, dtype=torch.float64))
    # float32 sums can put r a rounding error beyond +-1 (1.0000001 for proportional rows)
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), 0.0).clamp(-1.0, 1.0).numpy()


def _structure(q: torch.Tensor, w: torch.Tensor, mask: torch.Tensor, band: tuple[float, float]) -> np.ndarray:
    """The correlation of each band-passed pair (q[i], w[i]) at half resolution (2 x 2 voxel means,
    each band edge halved with it: the same band, at a quarter of the cost), over voxels whose
    2 x 2 block is valid."""
    k, grid = len(w), tuple(q.shape[1:])
    if min(grid) >= 16:
        pool = F.avg_pool2d if len(grid) == 2 else F.avg_pool3d
        q, w = pool(q[:, None], 2)[:, 0], pool(w[:, None], 2)[:, 0]
        mask = pool(mask[:, None].to(torch.float32), 2)[:, 0] > 1 - 1e-6
        band = (band[0] / 2, band[1] / 2)
    weights = mask.to(torch.float32)
    bands = _masked_band(torch.cat([q, w]), torch.cat([weights, weights]), band).reshape(2 * k, -1)
    return _masked_pearson(bands[:k], bands[k:], weights.reshape(k, -1))


def _masked_band(images: torch.Tensor, weights: torch.Tensor, band: tuple[float, float]) -> torch.Tensor:
    """Difference of Gaussians of (k, *S) ``images`` by normalised convolution with (k, *S) ``weights``:
    each smoothing of ``images * weights`` divided by the same smoothing of ``weights``."""
    low, high = band
    smoothed = []
    for sigma in (low, high):
        both = gaussian(torch.cat([images * weights, weights]), sigma)
        smoothed.append(both[: len(images)] / both[len(images):].clamp_min(1e-6))
    return smoothed[0] - smoothed[1]


def _masked_ssim(q: torch.Tensor, w: torch.Tensor, mask: torch.Tensor, *, data_range: float, win_size: int) -> np.ndarray:
    """scikit-image's SSIM map (uniform window, sample covariance) of each pair (q[i], w[i]), averaged
    over the voxels whose whole window lies inside the mask (and inside the image)."""
    ndim = q.ndim - 1
    x, y = q, w
    box = torch.full((win_size,), 1.0 / win_size, dtype=torch.float32)
    window = lambda t: separable(t, box, pad=False)  # noqa: E731 (means over whole windows only)
    mx, my = window(x), window(y)
    scale = covariance_scale(win_size ** ndim)
    vx = (window(x * x) - mx * mx) * scale
    vy = (window(y * y) - my * my) * scale
    vxy = (window(x * y) - mx * my) * scale
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    ssim_map = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    inside = (window(mask.to(torch.float32)) > 1 - 1e-6).to(torch.float32)  # the whole window is valid
    count = inside.reshape(len(w), -1).sum(1)
    total = (ssim_map * inside).reshape(len(w), -1).sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.nan).numpy()


def zscored_ssim(query: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """DeepSSIM's target (Scardace et al., arXiv 2509.16582): SSIM of per-image z-scored images with
    ``data_range`` = max - min of the z-scored query; NaN for all when the query is constant."""
    def zscored(x):
        x = np.asarray(x, dtype=np.float32)
        axes = tuple(range(x.ndim - np.ndim(query), x.ndim))
        std = x.std(axis=axes, keepdims=True)
        return (x - x.mean(axis=axes, keepdims=True)) / np.where(std > 0, std, 1.0)

    q, c = zscored(query), zscored(candidates)
    data_range = float(q.max() - q.min())
    if not data_range > 0:
        return np.full(len(c), np.nan)
    return compare(q, c, data_range=data_range).ssim


def ncc(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images of equal shape, in [-1, 1]; higher is more similar."""
    return float(compare(a, np.asarray(b)[None], data_range=1.0).ncc[0])


def ssim(a: np.ndarray, b: np.ndarray, *, data_range: float, win_size: int = 7) -> float:
    """Mean structural similarity with scikit-image's default semantics, in [-1, 1]."""
    return float(compare(a, np.asarray(b)[None], data_range=data_range, win_size=win_size).ssim[0])


def mse(a: np.ndarray, b: np.ndarray) -> float:
    """Mean squared error; 0 for identical images, lower is more similar."""
    return float(compare(a, np.asarray(b)[None], data_range=1.0).mse[0])


def psnr(a: np.ndarray, b: np.ndarray, *, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    return float(compare(a, np.asarray(b)[None], data_range=data_range).psnr[0])


def smallest_side(max_shift: int, win_size: int = 7) -> int:
    """The fewest voxels an axis needs for SSIM's window at every shift of at most ``max_shift``."""
    return max(win_size + 2 * max_shift, 4 * max_shift + 1)


def _check_options(shape: tuple[int, ...], *, data_range: float, max_shift: int, win_size: int) -> None:
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be an odd integer >= 3, got {win_size}")
    needed = smallest_side(max_shift, win_size)
    if min(shape) < needed:
        raise ValueError(
            f"images of shape {shape} are too small for win_size={win_size} with max_shift={max_shift}: "
            f"every axis needs at least {needed} voxels"
        )


def _pearson(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of a (1, n) row with each of (k, n) rows; 0 where one side is constant.

    Float32 products of centred rows with torch's cascaded float32 sums, which stay within
    1e-7 of ``numpy.corrcoef`` on real images at a third of the cost of float64 sums.
    """
    qc, cc = _centred(q), _centred(c)
    q_var = (qc * qc).sum(dim=1).double()
    c_var = (cc * cc).sum(dim=1).double()
    numerator = (qc * cc).sum(dim=1).double()
    denominator = torch.sqrt(q_var * c_var)
    # float32 sums can put r a rounding error beyond +-1 (1.0000001 for proportional rows)
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1e-300), 0.0).clamp(-1.0, 1.0)


def unit_rows(rows: torch.Tensor) -> torch.Tensor:
    """Rows centred and scaled to unit norm (constant rows become 0), so dot products are Pearson r."""
    rows = _centred(rows)
    return rows.div_(torch.linalg.vector_norm(rows, dim=1, keepdim=True).clamp_min_(1e-12))  # 0 / 1e-12 = 0


def _centred(rows: torch.Tensor) -> torch.Tensor:
    """Rows minus their mean, exactly 0 for a constant row. Each row first loses its first value
    (exact where the values are equal): a float32 mean of equal values is not always that value,
    and the residue, divided by its own tiny norm, became a direction (a Pearson r of 0.76
    between a constant image and a near-constant one)."""
    rows = rows - rows[:, :1]
    return rows - rows.mean(dim=1, keepdim=True)


def _ssim(q: np.ndarray, c: np.ndarray, *, data_range: float, win_size: int) -> np.ndarray:
    """SSIM of q (S) against each of c (k, *S), as scikit-image computes it (float32 arithmetic
    in fused loops, :func:`replicheck.kernels.ssim_many`).

    scikit-image filters with reflection at the borders and then drops a border of
    (win_size - 1) // 2; the 'valid' window means used here are exactly those kept voxels.
    """
    if q.ndim > 3:
        raise ValueError(f"SSIM needs 2D or 3D images, got {q.ndim} axes")
    depth = (1,) * (3 - q.ndim)  # 2D images are 3D images one voxel deep
    out = np.empty(len(c), dtype=np.float64)
    ssim_many(np.ascontiguousarray(q).reshape(depth + q.shape), np.ascontiguousarray(c).reshape((len(c),) + depth + q.shape),
              depth + (win_size,) * q.ndim, np.float32((_K1 * data_range) ** 2), np.float32((_K2 * data_range) ** 2),
              np.float32(covariance_scale(win_size ** q.ndim)), out)
    return out


def covariance_scale(n: int) -> float:
    """scikit-image's sample-covariance factor n / (n - 1) for windows of n voxels (1 for n = 1)."""
    return n / (n - 1.0) if n > 1 else 1.0


def _window_sums(x: torch.Tensor, length: tuple[int, ...], starts: int) -> torch.Tensor:
    """Sums of x over windows of ``length`` starting at 0..starts-1 on each spatial axis.

    Every window shares the same core, so each axis costs one plain sum plus cumulative sums
    over the ``starts - 1`` planes at either edge (not a cumulative sum of the whole array).
    """
    d = len(length)
    edge = starts - 1
    for i, axis in enumerate(range(x.ndim - d, x.ndim)):
        core = x.narrow(axis, edge, length[i] - edge).sum(dim=axis, keepdim=True)
        head = x.narrow(axis, 0, edge)  # window t includes head planes t..edge-1
        tail = x.narrow(axis, length[i], edge)  # window t includes tail planes 0..t-1
        zero = torch.zeros_like(core)
        head_part = torch.cat([torch.flip(torch.cumsum(torch.flip(head, (axis,)), dim=axis), (axis,)), zero], dim=axis)
        tail_part = torch.cat([zero, torch.cumsum(tail, dim=axis)], dim=axis)
        x = core + head_part + tail_part
    return x


def _best_shifts(q: torch.Tensor, c: torch.Tensor, s: int) -> torch.Tensor:
    """Integer translation in [-s, s] per axis maximising Pearson(query centre, candidate window).

    The cross-correlation with the zero-mean, unit-norm query centre comes from one FFT of
    size S (the window never wraps around), the window norms from window sums. Float32 is
    enough: only the arg-max is kept, and the candidates are centred first so that the window
    variances do not cancel catastrophically.
    """
    d = q.ndim
    dims = tuple(range(1, d + 1))
    centre = q[tuple(slice(s, n - s) for n in q.shape)]
    length = tuple(centre.shape)
    n = centre.numel()
    centre = _centred(centre.reshape(1, -1)).reshape(centre.shape)
    norm = torch.linalg.vector_norm(centre)
    if norm == 0:
        return torch.zeros((c.shape[0], d), dtype=torch.long)
    padded = torch.zeros(q.shape, dtype=torch.float32)
    padded[tuple(slice(0, m) for m in length)] = centre / norm
    c = c - c.mean(dim=dims, keepdim=True)
    spectrum = torch.fft.rfftn(c, dim=dims) * torch.conj(torch.fft.rfftn(padded))
    corr = _leading_inverse(spectrum, q.shape, 2 * s + 1)
    sums = _window_sums(c, length, 2 * s + 1)
    squares = _window_sums(c * c, length, 2 * s + 1)
    spread = torch.sqrt((squares - sums * sums / n).clamp_min(0.0))
    r = torch.where(spread > 1e-6, corr / spread.clamp_min(1e-6), -2.0)
    # Prefer the unshifted alignment when correlations tie.
    centre_index = np.ravel_multi_index((s,) * d, (2 * s + 1,) * d)
    flat = r.reshape(r.shape[0], -1)
    flat[:, centre_index] += 1e-6
    best = flat.argmax(dim=1).numpy()
    offsets = np.stack(np.unravel_index(best, (2 * s + 1,) * d), axis=1) - s
    return torch.from_numpy(offsets.astype(np.int64))


def _leading_inverse(spectrum: torch.Tensor, shape: tuple[int, ...], count: int) -> torch.Tensor:
    """The first ``count`` values per axis of ``irfftn(spectrum, s=shape)`` over the last axes.

    The inverse transform is separable, so each axis is inverted and cut to ``count`` before
    the next: only the first axis costs a full-size transform (3x less work than ``irfftn``).
    """
    d = len(shape)
    for axis in range(spectrum.ndim - d, spectrum.ndim - 1):
        spectrum = torch.fft.ifft(spectrum, dim=axis).narrow(axis, 0, count)
    return torch.fft.irfft(spectrum, n=shape[-1], dim=-1).narrow(-1, 0, count)


def _aligned(q: torch.Tensor, c: torch.Tensor, shifts: torch.Tensor, s: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The query's central region and each candidate's window at its shift."""
    centre = q[tuple(slice(s, n - s) for n in q.shape)]
    windows = [
        c[i][tuple(slice(s + int(t), s + int(t) + m) for t, m in zip(shift, centre.shape))]
        for i, shift in enumerate(shifts)
    ]
    return centre.contiguous(), torch.stack(windows)

