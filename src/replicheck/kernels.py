"""Fused loops (numba) for the voxel measures of one query against many candidates.

SSIM is the costliest measure of the voxel level, and its vectorised torch form makes about
25 passes over memory per pair (products, window sums, the formula), each through a fresh
temporary. Here each pair is one pass whose buffers stay in cache, with inner loops along the
last axis so that they vectorise (``docs/design.md``). The kernels take 3D arrays; 2D images
are 3D images one voxel deep.

The results are checked against ``skimage.metrics.structural_similarity`` in
``tests/test_measures.py`` and ``tests/levels/test_ssim_cascade.py``.
"""

from __future__ import annotations

import numba
import numpy as np

_JIT = dict(nogil=True, cache=True, fastmath=True, error_model="numpy")


@numba.njit(**_JIT)
def window_sums(volume, win, along_x, along_y, out):  # pragma: no cover
    """Sums of ``volume`` (D, H, W) over every complete (wd, wh, ww) window, into ``out``
    (D - wd + 1, H - wh + 1, W - ww + 1); ``along_x`` and ``along_y`` are scratch buffers of
    shapes (D, H, w) and (D, h, w)."""
    wd, wh, ww = win
    D, H, _ = volume.shape
    d, h, w = out.shape
    along_x[:] = 0
    for z in range(D):
        for y in range(H):
            source, target = volume[z, y], along_x[z, y]
            for k in range(ww):
                for x in range(w):
                    target[x] += source[x + k]
    along_y[:] = 0
    for z in range(D):
        for y in range(h):
            target = along_y[z, y]
            for k in range(wh):
                source = along_x[z, y + k]
                for x in range(w):
                    target[x] += source[x]
    out[:] = 0
    for z in range(d):
        for k in range(wd):
            for y in range(h):
                source, target = along_y[z + k, y], out[z, y]
                for x in range(w):
                    target[x] += source[x]


@numba.njit(**_JIT)
def ssim_mean(mq, vq, mc, vc, cross, inverse, c1, c2, covariance_scale):  # pragma: no cover
    """Mean of the SSIM map, from the window means (``mq``, ``mc``) and sample variances
    (``vq``, ``vc``) of query and candidate and the window sums of their product (all (d, h, w))."""
    d, h, w = mq.shape
    total = 0.0
    for z in range(d):
        for y in range(h):
            a, b, va, vb, ab = mq[z, y], mc[z, y], vq[z, y], vc[z, y], cross[z, y]
            line = np.float32(0.0)
            for x in range(w):
                covariance = covariance_scale * (ab[x] * inverse - a[x] * b[x])
                numerator = (2 * a[x] * b[x] + c1) * (2 * covariance + c2)
                line += numerator / ((a[x] * a[x] + b[x] * b[x] + c1) * (va[x] + vb[x] + c2))
            total += line
    return total / (d * h * w)


@numba.njit(**_JIT)
def moments(volume, win, along_x, along_y, covariance_scale, mean, variance):  # pragma: no cover
    """Window means and sample variances (scikit-image's normalisation) of ``volume`` (D, H, W)
    into ``mean`` and ``variance`` (d, h, w)."""
    inverse = np.float32(1.0 / (win[0] * win[1] * win[2]))
    window_sums(volume, win, along_x, along_y, mean)
    window_sums(volume * volume, win, along_x, along_y, variance)
    d, h, w = mean.shape
    for z in range(d):
        for y in range(h):
            for x in range(w):
                m = mean[z, y, x] * inverse
                mean[z, y, x] = m
                variance[z, y, x] = covariance_scale * (variance[z, y, x] * inverse - m * m)


def batch_moments(images: np.ndarray, win: int, covariance_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Window means and variances (scaled by ``covariance_scale``: n / (n - 1) for scikit-image's
    sample variance, 1 for the population's) of (b, *shape) 2D or 3D images over every complete
    ``win``-wide window: two (b, *valid) float32 arrays."""
    spatial = images.shape[1:]
    depth = (1,) * (3 - len(spatial))  # 2D images are 3D images one voxel deep
    volumes = np.ascontiguousarray(images, dtype=np.float32).reshape((len(images),) + depth + spatial)
    grid, window = volumes.shape[1:], depth + (win,) * len(spatial)
    valid = tuple(n - w + 1 for n, w in zip(grid, window))
    mean = np.empty((len(images),) + valid, dtype=np.float32)
    variance = np.empty_like(mean)
    along_x = np.empty(grid[:2] + valid[2:], dtype=np.float32)
    along_y = np.empty(grid[:1] + valid[1:], dtype=np.float32)
    for i in range(len(images)):
        moments(volumes[i], window, along_x, along_y, np.float32(covariance_scale), mean[i], variance[i])
    shape = (len(images),) + valid[len(depth):]
    return mean.reshape(shape), variance.reshape(shape)


@numba.njit(**_JIT)
def ssim_many(query, candidates, win, c1, c2, covariance_scale, out):  # pragma: no cover
    """SSIM of ``query`` (D, H, W) with each of ``candidates`` (k, D, H, W) into ``out`` (k,),
    over the 'valid' windows (scikit-image drops the same border)."""
    D, H, W = query.shape
    wd, wh, ww = win
    d, h, w = D - wd + 1, H - wh + 1, W - ww + 1
    along_x = np.empty((D, H, w), dtype=np.float32)
    along_y = np.empty((D, h, w), dtype=np.float32)
    inverse = np.float32(1.0 / (wd * wh * ww))
    mq, vq = np.empty((d, h, w), dtype=np.float32), np.empty((d, h, w), dtype=np.float32)
    mc, vc = np.empty((d, h, w), dtype=np.float32), np.empty((d, h, w), dtype=np.float32)
    cross = np.empty((d, h, w), dtype=np.float32)
    product = np.empty((D, H, W), dtype=np.float32)
    moments(query, win, along_x, along_y, covariance_scale, mq, vq)
    for j in range(candidates.shape[0]):
        moments(candidates[j], win, along_x, along_y, covariance_scale, mc, vc)
        np.multiply(candidates[j], query, product)
        window_sums(product, win, along_x, along_y, cross)
        out[j] = ssim_mean(mq, vq, mc, vc, cross, inverse, c1, c2, covariance_scale)


@numba.njit(**_JIT)
def ssim_at_offsets(store, rows, start, best, qx, qm, qv, win, c1, c2, covariance_scale, out):  # pragma: no cover
    """SSIM of query window ``best[j]`` with the candidate stored in ``store[rows[j]]``, for
    every j, into ``out``; the candidate's statistics are read in place from ``store``.

    ``qx`` (offsets, D, H, W): the query's windows; ``qm``, ``qv`` (offsets, d, h, w): their
    window means and sample variances (contiguous copies: crops of the whole query's would be
    strided views, which vectorise worse and made this 40% slower). A candidate row holds, from
    column ``start``, its central region (D*H*W) and its window means and sample variances
    (d*h*w each) (:meth:`replicheck.levels.ssim_cascade.CoarseSsim.candidate_rows`).
    """
    _, D, H, W = qx.shape
    _, d, h, w = qm.shape
    wd, wh, ww = win
    length, size = D * H * W, d * h * w
    along_x = np.empty((D, H, w), dtype=np.float32)
    along_y = np.empty((D, h, w), dtype=np.float32)
    cross = np.empty((d, h, w), dtype=np.float32)
    product = np.empty((D, H, W), dtype=np.float32)
    inverse = np.float32(1.0 / (wd * wh * ww))
    for j in range(rows.size):
        row = store[rows[j]]
        o = best[j]
        np.multiply(qx[o], row[start:start + length].reshape((D, H, W)), product)
        window_sums(product, win, along_x, along_y, cross)
        means = row[start + length:start + length + size].reshape((d, h, w))
        variances = row[start + length + size:start + length + 2 * size].reshape((d, h, w))
        out[j] = ssim_mean(qm[o], qv[o], means, variances, cross, inverse, c1, c2, covariance_scale)
