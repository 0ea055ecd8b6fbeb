"""Aligning a training image onto a synthetic one before comparing them: flips, rotation,
isotropic scale and translation (a similarity transform), in 2D and 3D, for a batch of
candidates at once.

Generators emit copies that are moved, zoomed, rotated and flipped; a pixel-wise comparison of
such a copy with its source sees two different images. :func:`align` estimates, for each
candidate, the flip and the similarity transform that best maps it onto the query, in three steps:

1. **A moment frame.** Each image's intensity centroid and radius of gyration (:func:`moments`)
   fix translation and scale; the query is compared with the candidate in this frame under every
   flip and (in 2D) at rotations of :data:`VIEW_ANGLES` degrees (:func:`moment_views`), and the
   best view starts the optimisation.
2. **ECC refinement.** The enhanced correlation coefficient method (Evangelidis and Psarakis,
   IEEE TPAMI 2008; OpenCV's ``findTransformECC``): Gauss-Newton steps that maximise the
   correlation of the query and the warped candidate over their overlap, invariant to the
   candidate's brightness and contrast. Steps are affine and are projected back onto a similarity
   (nearest rotation times mean scale) and into :class:`Bounds` after each one, so that alignment
   cannot turn one patient into another by stretching. Coarse to fine, on smoothed images.
3. **The transform** (:class:`Transform`) is read back in voxels: the synthetic image equals the
   training image flipped, then rotated and scaled about its centre and shifted.

Everything runs in torch on batches: many queries, each with its candidates, in one set of tensor
operations, so that the cost per pair is arithmetic rather than Python overhead. The reference is
SimpleITK's ``ImageRegistrationMethod`` with a similarity transform (:func:`register_sitk`);
``tests/test_align.py`` checks that both find the same transform on real pairs.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

VIEW_ANGLES = (-10.0, -5.0, 0.0, 5.0, 10.0)  # 2D: rotations (degrees) at which views start alignment
MOMENT_RADIUS = 0.5  # the radius of gyration a moment frame maps to, in normalised units
MOMENT_SIDE = 32  # pixels (2D) of a moment-frame view; 16 voxels a side in 3D
# (largest side, Gauss-Newton steps, Gaussian smoothing in voxels) of each resolution, coarse first;
# the coarse level is smoothed to widen the basin of convergence, the fine one only area-averaged.
LEVELS_2D = ((32, 10, 1.0), (64, 5, 0.0))
LEVELS_3D = ((16, 10, 1.0), (32, 5, 0.0))
INIT_SIDE = {2: 16, 3: 8}  # voxels a side of the moment-frame views that choose each candidate's start
STEP_TOLERANCE = 1e-4  # ECC stops when no parameter moves more than this (normalised units)


@dataclass(frozen=True)
class Bounds:
    """How far alignment may go from the identity: rotation in degrees (any axis), scale as the
    smallest and largest factor, translation as a share of the image's half-size per axis."""

    rotation: float = 20.0
    scale: tuple[float, float] = (0.87, 1.15)
    translation: float = 0.3


@dataclass(frozen=True)
class Transform:
    """How a synthetic image relates to a training image: the training image flipped along
    ``flip`` (array axes), then rotated by ``rotation`` degrees (2D: counter-clockwise as
    displayed; 3D: about the unit ``axis``, (z, y, x)), scaled by ``scale`` about its centre, and
    shifted by ``shift`` voxels ((dy, dx) or (dz, dy, dx))."""

    flip: tuple[int, ...]
    rotation: float
    scale: float
    shift: tuple[float, ...]
    axis: tuple[float, ...] = ()

    def describe(self) -> str:
        """What was done, for a person: e.g. ``flipped along x, turned 4.8°, zoomed ×1.031, moved
        (2.3, -1.1) voxels``; only the parts that are not negligible; "" for the identity."""
        names = "zyx"[-len(self.shift):]
        parts = []
        if self.flip:
            parts.append("flipped along " + " and ".join(names[axis] for axis in self.flip))
        if abs(self.rotation) >= 0.05:
            about = f" about ({', '.join(f'{v:.2f}' for v in self.axis)})" if self.axis else ""
            parts.append(f"turned {self.rotation:.1f}°{about}")
        if abs(self.scale - 1) >= 5e-4:
            parts.append(f"zoomed ×{self.scale:.3f}")
        if any(abs(v) >= 0.05 for v in self.shift):
            parts.append(f"moved ({', '.join(f'{v:.1f}' for v in self.shift)}) voxels")
        return ", ".join(parts)

    def linear(self) -> np.ndarray:
        """The (d, d) matrix, array axis order, that maps a voxel's offset from the centre of the
        flipped training image to its offset from the centre of the synthetic one (before the shift)."""
        if len(self.shift) == 2:
            theta = math.radians(self.rotation)  # counter-clockwise as displayed, rows pointing down
            turn = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        else:
            from scipy.spatial.transform import Rotation

            turn = Rotation.from_rotvec(np.radians(self.rotation) * np.asarray(self.axis or (1.0, 0.0, 0.0))).as_matrix()
        return self.scale * turn

    def apply(self, training: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The training image (``*grid``) moved onto the synthetic image's grid by this transform
        (linear interpolation, zero outside) and the mask of the voxels it covers: what the report
        shows next to the synthetic image. SciPy's ``affine_transform``, independent of :func:`warp`."""
        from scipy import ndimage

        image = np.flip(training, axis=self.flip) if self.flip else training
        image = np.asarray(image, dtype=np.float64)
        centre = (np.array(image.shape, dtype=np.float64) - 1) / 2
        inverse = np.linalg.inv(self.linear())  # synthetic voxel -> training voxel
        offset = centre - inverse @ (centre + np.asarray(self.shift))
        moved = ndimage.affine_transform(image, inverse, offset=offset, order=1, mode="grid-constant", cval=0.0)
        grid = np.indices(image.shape).reshape(image.ndim, -1)
        source = inverse @ grid + offset[:, None]
        inside = np.all((source > -0.5) & (source < np.array(image.shape)[:, None] - 0.5), axis=0)
        return moved, inside.reshape(image.shape)

    def to_sitk(self, grid: tuple[int, ...]):
        """The SimpleITK ``AffineTransform`` (synthetic -> flipped training points, unit spacing, x
        first) equivalent to this transform: for resampling with ``sitk.Resample``."""
        import SimpleITK as sitk

        inverse = np.linalg.inv(self.linear())[::-1, ::-1]  # x first
        centre = np.array([(n - 1) / 2 for n in reversed(grid)])
        found = sitk.AffineTransform(len(grid))
        found.SetCenter(tuple(centre))
        found.SetMatrix(tuple(inverse.ravel()))
        found.SetTranslation(tuple(-inverse @ np.asarray(self.shift[::-1])))
        return found


@dataclass(frozen=True)
class Alignment:
    """The outcome of :func:`align` for Q queries with M aligned candidates each: which candidate
    each one is (``rows`` (Q, M), positions among the query's candidates), its flip (``flip_codes``
    (Q, M), indices into ``flips``), its similarity in normalised coordinates (``matrix`` (Q, M, d, d)
    and ``offset`` (Q, M, d), x first as in ``torch.nn.functional.affine_grid``: candidate position =
    matrix @ query position + offset), and the candidates warped onto their query's grid with the
    masks of the voxels they cover (``warped``, ``valid``: (Q, M, *grid))."""

    rows: torch.Tensor
    flip_codes: torch.Tensor
    flips: tuple[tuple[int, ...], ...]
    matrix: torch.Tensor
    offset: torch.Tensor
    warped: torch.Tensor
    valid: torch.Tensor

    def transforms(self) -> list[list[Transform]]:
        grid = tuple(self.warped.shape[2:])
        return [[transform_of(self.flips[int(code)], m, o, grid) for code, m, o in zip(codes, matrices, offsets)]
                for codes, matrices, offsets in zip(self.flip_codes, self.matrix, self.offset)]


def flips_of(ndim: int) -> tuple[tuple[int, ...], ...]:
    """Every combination of flipped array axes of a ``ndim``-D image (4 in 2D, 8 in 3D)."""
    return tuple(combo for r in range(ndim + 1) for combo in itertools.combinations(range(ndim), r))


def moments(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroid (b, d; normalised x-first coordinates) and radius of gyration (b,) of the part of
    each of (b, *grid) images brighter than its own mean, weighted by how much brighter: a frame
    that noise, a contrast change or an offset of the background hardly moves (plain intensity
    weights would let a noise floor over a large dark background pull the centroid to the middle)."""
    grid = tuple(images.shape[1:])
    axes = _axes(grid)
    flat = images.reshape(len(images), -1)
    weights = (flat - flat.mean(1, keepdim=True)).clamp_min(0)
    mass = weights.sum(1).clamp_min(1e-12)
    centre = torch.stack([(weights * axis.reshape(-1)).sum(1) / mass for axis in axes], 1)
    spread = sum((weights * (axis.reshape(1, -1) - centre[:, k:k + 1]) ** 2).sum(1)
                 for k, axis in enumerate(axes)) / mass
    return centre, spread.sqrt().clamp_min(1e-3)


@dataclass(frozen=True)
class Frames:
    """Moment frames of a batch of images: centroid (b, d; normalised, x first), radius of
    gyration (b,) and the band-passed images (:func:`band_pass`) shrunk to twice the views' side."""

    centre: torch.Tensor
    radius: torch.Tensor
    filtered: torch.Tensor

    def flipped(self, flip: tuple[int, ...]) -> "Frames":
        """The frames of the images flipped along array axes ``flip``."""
        if not flip:
            return self
        ndim = self.centre.shape[1]
        sign = torch.ones(ndim, dtype=self.centre.dtype)
        for axis in flip:
            sign[ndim - 1 - axis] = -1  # array axis a is coordinate ndim - 1 - a (x first)
        return Frames(self.centre * sign, self.radius, self.filtered.flip([a + 1 for a in flip]))

    def rows(self) -> torch.Tensor:
        """(b, d + 1 + voxels): centroid, radius and filtered image side by side, to store."""
        return torch.cat([self.centre, self.radius[:, None], self.filtered.reshape(len(self.radius), -1)], 1)

    @classmethod
    def from_rows(cls, rows: torch.Tensor, shape: tuple[int, ...]) -> "Frames":
        ndim = len(shape)
        return cls(rows[:, :ndim], rows[:, ndim], rows[:, ndim + 1:].reshape(len(rows), *shape))


def moment_frames(images: torch.Tensor, side: int | None = None) -> Frames:
    """The moment frames of (b, *grid) images, for views ``side`` voxels a side (default
    :data:`MOMENT_SIDE` in 2D, half of it in 3D)."""
    side = side or default_side(images.ndim - 1)
    centre, radius = moments(_shrunk(images, 2 * MOMENT_SIDE))  # at most 64 a side: the frame needs no more
    return Frames(centre, radius, band_pass(_shrunk(images, 2 * side)))


def frame_views(frames: Frames, *, flips: tuple[tuple[int, ...], ...] = ((),), angles: tuple[float, ...] = (0.0,),
                side: int | None = None) -> torch.Tensor:
    """(b, views, side**d) unit rows: each image in its moment frame (centred on its centroid,
    scaled to :data:`MOMENT_RADIUS`), under every flip in ``flips`` and 2D rotation in ``angles``
    (degrees), flips outermost. The inner product of two rows is the Pearson correlation of the
    two views, so that a copy that was moved, zoomed, flipped or turned still matches its source
    under one of the views."""
    ndim = frames.centre.shape[1]
    side = side or default_side(ndim)
    b = len(frames.radius)
    flipped = [frames.flipped(flip) for flip in flips]
    rotations = torch.stack([_rotation_matrix(angle, ndim) for angle in angles]).to(frames.filtered.dtype)  # (A, d, d)
    centre = torch.stack([f.centre for f in flipped], 1)  # (b, F, d)
    scale = (frames.radius / MOMENT_RADIUS)[:, None, None, None, None]
    matrix = scale * rotations[None, None].expand(b, len(flips), -1, -1, -1)  # (b, F, A, d, d)
    theta = torch.cat([matrix, centre[:, :, None, :, None].expand(-1, -1, len(angles), -1, -1)], 4)
    images = torch.stack([f.filtered for f in flipped], 1)  # (b, F, *shape)
    images = images[:, :, None].expand(-1, -1, len(angles), *images.shape[2:]).reshape(-1, 1, *images.shape[2:])
    count = b * len(flips) * len(angles)
    grid = sampling_grid(theta.reshape(count, ndim, ndim + 1), (side,) * ndim)
    sampled = F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
    return _unit(sampled.reshape(count, -1)).reshape(b, len(flips) * len(angles), -1)


def plain_views(frames: Frames, *, flips: tuple[tuple[int, ...], ...] = ((),), side: int | None = None) -> torch.Tensor:
    """(b, flips, side**d) unit rows: each band-passed image as it lies on the grid (no moment
    frame), under every flip, area-averaged to ``side``. The frame of a copy whose intensities
    changed (a gamma, a bias field, heavy blur) can drift from its source's; its plain view
    cannot, so the search and the alignment also start from it."""
    ndim = frames.centre.shape[1]
    side = side or default_side(ndim)
    shrunk = _shrunk(frames.filtered, side)
    view = _unit(shrunk.reshape(len(shrunk), -1)).view(shrunk.shape)
    # Area averaging commutes with a flip (its bins are symmetric): each flip is of the one shrunk view.
    return torch.stack([view.flip([a + 1 for a in flip]) if flip else view for flip in flips], 1).flatten(2)


def moment_views(images: torch.Tensor, *, flips: tuple[tuple[int, ...], ...] = ((),),
                 angles: tuple[float, ...] = (0.0,), side: int | None = None) -> torch.Tensor:
    """:func:`frame_views` of (b, *grid) images."""
    return frame_views(moment_frames(images, side), flips=flips, angles=angles, side=side)


def default_side(ndim: int) -> int:
    return MOMENT_SIDE if ndim == 2 else MOMENT_SIDE // 2


def band_pass(images: torch.Tensor, low: float = 1.0, high: float = 4.0) -> torch.Tensor:
    """Difference of Gaussians of (b, *grid) images (sigmas in voxels): the structure between
    ``low`` and ``high`` voxels, without the outline and brightness every image shares and without
    the finest noise."""
    return gaussian(images, low) - gaussian(images, high)


def gaussian(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of (b, *grid) images along every axis; edges replicated."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    return separable(images, kernel / kernel.sum(), pad=True)


def separable(images: torch.Tensor, kernel: torch.Tensor, *, pad: bool) -> torch.Tensor:
    """(b, *grid) images convolved with the 1D ``kernel`` along every axis: with edges replicated
    (``pad``, the same grid out) or over whole windows only (each axis shorter by len(kernel) - 1).

    Each axis is one matrix product with the filter's banded matrix (:func:`filter_matrix`), which
    BLAS does many times faster than a convolution of a one-channel batch."""
    x = images
    for axis in range(1, images.ndim):
        matrix = filter_matrix(x.shape[axis], tuple(kernel.tolist()), pad).to(x.dtype)
        x = (x.movedim(axis, -1) @ matrix.T).movedim(-1, axis)
    return x


@functools.lru_cache(maxsize=64)
def filter_matrix(size: int, kernel: tuple[float, ...], pad: bool) -> torch.Tensor:
    """The (out, size) matrix of a 1D convolution with ``kernel`` (odd length) along an axis of
    ``size`` samples: with replicated edges (out = size) or over whole windows (out = size - len + 1)."""
    radius = (len(kernel) - 1) // 2
    weights = torch.tensor(kernel, dtype=torch.float64)
    if pad:
        matrix = torch.zeros(size, size, dtype=torch.float64)
        for offset, weight in zip(range(-radius, radius + 1), weights):
            columns = (torch.arange(size) + offset).clamp(0, size - 1)
            matrix[torch.arange(size), columns] += weight
        return matrix
    out = size - len(kernel) + 1
    matrix = torch.zeros(max(out, 0), size, dtype=torch.float64)
    for offset, weight in enumerate(weights):
        matrix[torch.arange(out), torch.arange(out) + offset] = weight
    return matrix


def align(queries: torch.Tensor, candidates: torch.Tensor, *, bounds: Bounds = Bounds(),
          angles: tuple[float, ...] | None = None, flip: bool = True, finest: int | None = None,
          present: torch.Tensor | None = None) -> Alignment:
    """The similarity (and flip) that best maps each of the (Q, D, *grid) ``candidates`` onto its
    query among the (Q, *grid) ``queries``, and the candidates warped by it (see the module
    docstring).

    ``angles``: 2D rotations (degrees) tried as starting points (default :data:`VIEW_ANGLES`);
    ``flip=False`` tries no flip. With ``finest`` = m, only the m candidates of each query that
    correlate best with it after the coarse level go on to the finer levels and are returned
    (:attr:`Alignment.rows` says which): a candidate far from the query needs no precise fit.
    ``present`` (Q, D) bool: False marks a padding candidate, chosen for the finer levels only
    after every real one.
    """
    queries, candidates = queries.to(torch.float32), candidates.to(torch.float32)
    q, d = candidates.shape[:2]
    grid = tuple(queries.shape[1:])
    ndim = len(grid)
    flips = flips_of(ndim) if flip else ((),)
    angles = (VIEW_ANGLES if angles is None else angles) if ndim == 2 else (0.0,)
    starts = _starts(queries, candidates, flips, angles)
    rows, codes, matrix, offset = starts.rows, starts.flip_codes, starts.matrix, starts.offset  # (Q, 2D, ...)
    for number, (side, steps, sigma) in enumerate(LEVELS_2D if ndim == 2 else LEVELS_3D):
        shape = coarse_shape(grid, side)
        ref = _resized(queries, shape)
        if number == 0:  # every candidate, twice (one per start): resize each once
            mov = _flipped(_resized(candidates.reshape(q * d, *grid), shape).view(q, d, *shape), rows, codes, flips)
        else:  # the ``finest`` that go on: resize those only
            chosen = _take(candidates, rows)
            m = chosen.shape[1]
            mov = _flip_each(_resized(chosen.reshape(q * m, *grid), shape).view(q, m, *shape), codes, flips)
        if sigma:
            ref = gaussian(ref, sigma)
            mov = gaussian(mov.reshape(-1, *shape), sigma).view(mov.shape)
        if number == 0:  # each candidate keeps the start that correlates better
            better = _correlation(ref, mov, matrix, offset).view(q, 2, d).argmax(1)
            keep = better * d + torch.arange(d)
            rows, codes, mov, matrix, offset = (_take(t, keep) for t in (rows, codes, mov, matrix, offset))
        matrix, offset, correlation = ecc(ref, mov, matrix, offset, steps=steps, bounds=bounds)
        if number == 0 and finest is not None and finest < d:  # the best ``finest`` go on
            ranked = torch.nan_to_num(correlation, nan=-2.0)
            if present is not None:
                ranked = torch.where(torch.gather(present, 1, rows), ranked, torch.full_like(ranked, -3.0))
            keep = torch.argsort(-ranked, dim=1, stable=True)[:, :finest]
            rows, codes, matrix, offset = (_take(t, keep) for t in (rows, codes, matrix, offset))
    moving = _flipped(candidates, rows, codes, flips)
    warped, valid = warp(moving, matrix, offset, grid)
    return Alignment(rows, codes, flips, matrix, offset, warped, valid)


def ecc(references: torch.Tensor, moving: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor, *,
        steps: int, bounds: Bounds = Bounds()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``steps`` ECC Gauss-Newton steps for (Q, M, *grid) ``moving`` images, M per reference among
    the (Q, *grid) ``references``, from similarities (``matrix`` (Q, M, d, d), ``offset`` (Q, M, d));
    returns the new similarities and each candidate's correlation with its reference before the
    last step, (Q, M).

    The inverse-compositional form: each step finds a small affine map of the reference that best
    correlates it with the currently warped candidate (ECC's closed form, with the candidate's
    brightness and contrast free), composes its inverse into the candidate's transform, and
    projects the result onto a similarity within ``bounds``. The references' gradients and every
    product of their Jacobians are computed once, so a step costs one warp of the candidates and
    two batched matrix products over the voxels. A candidate whose step would not increase the
    correlation (ECC's denominator not positive) keeps its parameters."""
    q, m = moving.shape[:2]
    grid = tuple(moving.shape[2:])
    ndim, n = len(grid), q * m
    points = _homogeneous(grid)[:, :ndim]  # (voxels, d), x first
    gradient = _gradients(references).reshape(q, ndim, -1)  # (Q, d, voxels), per normalised unit
    jacobian = torch.stack([gradient[:, i] * points[:, j] for i in range(ndim) for j in range(ndim)]
                           + [gradient[:, i] for i in range(ndim)], 2)  # (Q, voxels, p)
    params = jacobian.shape[2]
    r = references.reshape(q, -1, 1)
    ones = torch.ones_like(r)
    features = torch.cat([ones, r, r * r, jacobian, r * jacobian,
                          (jacobian[:, :, :, None] * jacobian[:, :, None, :]).reshape(q, -1, params * params)], 2)
    weighted = torch.cat([ones, r, jacobian], 2)
    stack = torch.stack([moving, torch.ones_like(moving)], 2).reshape(n, 2, *grid)  # channel 2 samples to coverage
    inside = _inner(grid).reshape(1, -1)
    matrix, offset = matrix.reshape(n, ndim, ndim), offset.reshape(n, ndim)
    eye = torch.eye(ndim)
    correlation = torch.full((n,), float("nan"))
    for _ in range(steps):
        sampling = sampling_grid(torch.cat([matrix, offset[:, :, None]], 2), grid)
        sampled = F.grid_sample(stack, sampling, align_corners=False, padding_mode="zeros").reshape(n, 2, -1)
        warped, mask = sampled[:, 0], (sampled[:, 1] > 0.999).to(sampled.dtype) * inside  # fully covered
        image = mask * warped
        sums = torch.bmm(mask.view(q, m, -1), features).reshape(n, -1)  # counts and sums over the overlap
        by_image = torch.bmm(image.view(q, m, -1), weighted).reshape(n, -1)
        count = sums[:, 0].clamp_min(1)
        s_r, s_rr = sums[:, 1], sums[:, 2]
        s_g = sums[:, 3:3 + params]
        s_rg = sums[:, 3 + params:3 + 2 * params]
        s_gg = sums[:, 3 + 2 * params:].view(n, params, params)
        s_w, s_wr, s_wg = by_image[:, 0], by_image[:, 1], by_image[:, 2:]
        hessian = s_gg - s_g[:, :, None] * s_g[:, None, :] / count[:, None, None] + 1e-6 * torch.eye(params)
        projected_r = s_rg - s_r[:, None] * s_g / count[:, None]  # G' r, r zero-mean over the overlap
        projected_w = s_wg - s_w[:, None] * s_g / count[:, None]  # G' w
        rr = s_rr - s_r * s_r / count
        rw = s_wr - s_r * s_w / count
        ww = (image * warped).sum(1) - s_w * s_w / count
        correlation = rw / torch.sqrt((rr * ww).clamp_min(1e-24))
        solved = torch.linalg.solve(hessian, torch.stack([projected_r, projected_w], 2))  # (n, p, 2)
        numerator = rr - (projected_r * solved[:, :, 0]).sum(1)
        denominator = rw - (projected_w * solved[:, :, 0]).sum(1)
        improving = denominator > 0
        weight = torch.where(improving, numerator / denominator.clamp_min(1e-12), torch.zeros_like(numerator))
        step = weight[:, None] * solved[:, :, 1] - solved[:, :, 0]
        step = torch.where(improving[:, None], step, torch.zeros_like(step))
        if float(step.abs().max()) < STEP_TOLERANCE:  # every candidate has converged
            break
        # reference(B x + u) ~ warped(x) = moving(A x + t)  =>  moving(A B^-1 y + t - A B^-1 u) ~ reference(y)
        inverse = torch.linalg.inv(eye + step[:, : ndim * ndim].view(n, ndim, ndim))
        matrix = matrix @ inverse
        offset = offset - (matrix @ step[:, ndim * ndim:, None])[:, :, 0]
        matrix, offset = _project(matrix, offset, bounds, grid)
    return matrix.view(q, m, ndim, ndim), offset.view(q, m, ndim), correlation.view(q, m)


def warp(moving: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor,
         grid: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (*batch, *grid) sampled at ``matrix @ p + offset`` (``matrix`` (*batch, d, d), ``offset``
    (*batch, d)) for every voxel p of ``grid`` (bilinear or trilinear, zero outside), and the masks
    of the voxels whose sample lies inside the image."""
    ndim = len(grid)
    batch = tuple(moving.shape[: moving.ndim - ndim])
    n = int(np.prod(batch)) if batch else 1
    theta = torch.cat([matrix.reshape(n, ndim, ndim), offset.reshape(n, ndim, 1)], 2)
    sampling = sampling_grid(theta, grid)
    warped = F.grid_sample(moving.reshape(n, 1, *moving.shape[moving.ndim - ndim:]), sampling, align_corners=False,
                           padding_mode="zeros")[:, 0]
    return warped.view(*batch, *grid), (sampling.abs() < 1).all(-1).view(*batch, *grid)


def transform_of(flip: tuple[int, ...], matrix: torch.Tensor, offset: torch.Tensor,
                 grid: tuple[int, ...]) -> Transform:
    """The :class:`Transform` (in voxels, array axis order) of one alignment.

    Alignment samples the flipped candidate at ``matrix @ p + offset`` (normalised, x first) for
    each query position p; the synthetic image therefore shows the flipped training image moved
    by the inverse map, which is what is reported."""
    ndim = len(grid)
    half = torch.tensor([n / 2 for n in reversed(grid)], dtype=torch.float64)  # x first
    voxel_matrix = torch.diag(half) @ matrix.double() @ torch.diag(1 / half)
    inverse = torch.linalg.inv(voxel_matrix)
    shift = -(inverse @ (half * offset.double()))
    scale = float(abs(torch.linalg.det(inverse)) ** (1 / ndim))
    rotation = inverse / scale
    return _transform(flip, rotation.numpy(), scale, shift.numpy())


def register_sitk(fixed: np.ndarray, moving: np.ndarray, *, flip: tuple[int, ...] = (),
                  shrink: tuple[int, ...] = (4, 2, 1)) -> Transform:
    """The reference: SimpleITK's ``ImageRegistrationMethod`` with a similarity transform
    (``Similarity2DTransform`` / ``Similarity3DTransform``), the correlation metric, a centred
    initialiser and a multi-resolution pyramid (``shrink`` factors), on the ``moving`` image
    flipped along ``flip``. Slow; for tests and for checking :func:`align`."""
    import SimpleITK as sitk

    moving = np.flip(moving, axis=flip).copy() if flip else moving
    fixed_image = sitk.GetImageFromArray(np.asarray(fixed, dtype=np.float32))
    moving_image = sitk.GetImageFromArray(np.asarray(moving, dtype=np.float32))
    ndim = fixed.ndim
    initial = sitk.CenteredTransformInitializer(
        fixed_image, moving_image, sitk.Similarity2DTransform() if ndim == 2 else sitk.Similarity3DTransform(),
        sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsCorrelation()
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-5, numberOfIterations=300,
                                                    gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(shrink))
    method.SetSmoothingSigmasPerLevel([s / 2 for s in shrink])
    method.SetInitialTransform(initial, inPlace=False)
    found = method.Execute(fixed_image, moving_image)
    return transform_from_sitk(found, flip, tuple(fixed.shape))


def transform_from_sitk(found, flip: tuple[int, ...], grid: tuple[int, ...]) -> Transform:
    """A SimpleITK transform (fixed -> moving physical points, unit spacing, x first) as a
    :class:`Transform` relative to the image centres."""
    ndim = len(grid)
    centre = np.array([(n - 1) / 2 for n in reversed(grid)])
    point = np.array(found.TransformPoint(tuple(centre)))
    jacobian = np.stack([np.array(found.TransformPoint(tuple(centre + e))) - point for e in np.eye(ndim)], 1)
    inverse = np.linalg.inv(jacobian)  # moving -> fixed: how the synthetic shows the training image
    shift = inverse @ (centre - point)  # where the training image's centre lands, from the synthetic's
    scale = float(abs(np.linalg.det(inverse)) ** (1 / ndim))
    return _transform(flip, inverse / scale, scale, shift)


def _transform(flip: tuple[int, ...], rotation: np.ndarray, scale: float, shift: np.ndarray) -> Transform:
    """A :class:`Transform` from a rotation matrix and a shift in x-first voxel coordinates."""
    if len(shift) == 2:  # x right, y down: counter-clockwise as displayed is a negative angle in (x, y)
        return Transform(tuple(flip), -math.degrees(math.atan2(rotation[1, 0], rotation[0, 0])), scale,
                         tuple(float(v) for v in reversed(shift)))
    from scipy.spatial.transform import Rotation

    vector = Rotation.from_matrix(np.asarray(rotation, dtype=np.float64)[::-1, ::-1]).as_rotvec()  # array order
    angle = float(np.linalg.norm(vector))
    axis = tuple(float(v) for v in vector / angle) if angle > 1e-9 else (1.0, 0.0, 0.0)
    return Transform(tuple(flip), math.degrees(angle), scale, tuple(float(v) for v in reversed(shift)), axis)


@dataclass(frozen=True)
class _Starts:
    """Two starting points per candidate, (Q, 2D) each, moment starts first: the candidate (its
    position among its query's), its flip (an index into the flips) and the similarity to start from."""

    rows: torch.Tensor
    flip_codes: torch.Tensor
    matrix: torch.Tensor
    offset: torch.Tensor


def _starts(queries: torch.Tensor, candidates: torch.Tensor, flips, angles) -> _Starts:
    """For each candidate: the moment start (the flip and view rotation whose moment-frame views
    correlate best, and the similarity between the two moment frames) and the plain start (the
    flip whose plain view correlates best, and the identity)."""
    q, d = candidates.shape[:2]
    ndim = queries.ndim - 1
    side = INIT_SIDE[ndim]
    query_frames = moment_frames(queries, side)
    candidate_frames = moment_frames(candidates.reshape(q * d, *candidates.shape[2:]), side)
    own = frame_views(candidate_frames, side=side)[:, 0].view(q, d, -1)
    moment = torch.bmm(own, frame_views(query_frames, flips=flips, angles=angles, side=side).transpose(1, 2))
    best = moment.argmax(2)  # (Q, D) over flips x angles
    moment_codes = best // len(angles)
    angle = torch.tensor(angles, dtype=torch.float32)[best % len(angles)]
    matrix, offset = _initial(query_frames, candidate_frames, moment_codes, angle, flips, tuple(queries.shape[1:]))
    plain_own = plain_views(candidate_frames, side=side)[:, 0].view(q, d, -1)
    plain = torch.bmm(plain_own, plain_views(query_frames, flips=flips, side=side).transpose(1, 2))
    plain_codes = plain.argmax(2)
    identity = torch.eye(ndim).expand(q, d, ndim, ndim)
    return _Starts(torch.arange(d).repeat(q, 2), torch.cat([moment_codes, plain_codes], 1),
                   torch.cat([matrix, identity], 1), torch.cat([offset, torch.zeros(q, d, ndim)], 1))


def _initial(queries: Frames, candidates: Frames, codes: torch.Tensor, angles: torch.Tensor,
             flips, grid: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, D) similarities that map each query's moment frame onto its flipped candidates' frames,
    turned by the views' angles: the candidates' centroids and radii against the query's."""
    q, d = codes.shape
    ndim = queries.centre.shape[1]
    signs = torch.ones(len(flips), ndim)
    for number, flip in enumerate(flips):
        for axis in flip:
            signs[number, ndim - 1 - axis] = -1  # array axis a is coordinate d - 1 - a (x first)
    centre = candidates.centre.view(q, d, ndim) * signs[codes]
    scale = candidates.radius.view(q, d) / queries.radius[:, None]
    # The query's view was flipped, then turned by ``angle``; for the flipped candidate, a flip of one
    # axis reverses the sense of rotation.
    odd = torch.tensor([len(flip) % 2 == 1 for flip in flips])[codes]
    turned = torch.deg2rad(torch.where(odd, angles, -angles))
    c, s_ = torch.cos(turned), torch.sin(turned)
    rotation = torch.zeros(q, d, ndim, ndim)
    rotation[..., 0, 0], rotation[..., 0, 1], rotation[..., 1, 0], rotation[..., 1, 1] = c, -s_, s_, c
    if ndim == 3:
        rotation[..., 2, 2] = 1.0
    matrix = scale[..., None, None] * rotation
    offset = centre - (matrix @ queries.centre[:, None, :, None])[..., 0]
    matrix, offset = _project(matrix.reshape(q * d, ndim, ndim), offset.reshape(q * d, ndim),
                              Bounds(rotation=180.0, scale=(0.5, 2.0), translation=1.0), grid)
    return matrix.view(q, d, ndim, ndim), offset.view(q, d, ndim)


def _correlation(references: torch.Tensor, moving: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """(Q, M) Pearson correlation of each reference and its warped candidates over the voxels they cover."""
    q, m = moving.shape[:2]
    warped, valid = warp(moving, matrix, offset, tuple(references.shape[1:]))
    mask = valid.reshape(q, m, -1).to(warped.dtype) * _inner(tuple(references.shape[1:])).reshape(1, 1, -1)
    a = references.reshape(q, 1, -1).expand(q, m, -1)
    b = warped.reshape(q, m, -1)
    count = mask.sum(2, keepdim=True).clamp_min(1)
    a = (a - (a * mask).sum(2, keepdim=True) / count) * mask
    b = (b - (b * mask).sum(2, keepdim=True) / count) * mask
    return (a * b).sum(2) / torch.sqrt(((a * a).sum(2) * (b * b).sum(2)).clamp_min(1e-24))


@functools.lru_cache(maxsize=16)
def _inner(grid: tuple[int, ...]) -> torch.Tensor:
    """1 inside ``grid``, 0 on its outermost voxels: the estimator ignores the query's rim, where a
    generator's or a resampler's edge artefacts (a dark frame, a wrapped row) would pull it."""
    inner = torch.zeros(grid)
    inner[tuple(slice(1, -1) if n > 2 else slice(None) for n in grid)] = 1.0
    return inner


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[q, index[q, j]] for every query q: selects along the candidate axis."""
    return values[torch.arange(len(index))[:, None], index]


def _flipped(images: torch.Tensor, rows: torch.Tensor, codes: torch.Tensor, flips) -> torch.Tensor:
    """(Q, M, *grid): candidate ``rows`` of (Q, D, *grid) ``images``, each flipped by its flip code."""
    return _flip_each(_take(images, rows), codes, flips)


def _flip_each(chosen: torch.Tensor, codes: torch.Tensor, flips) -> torch.Tensor:
    """(Q, M, *grid) images, each flipped by its flip code (a new tensor: ``chosen`` is left as it is)."""
    out = chosen.clone()
    for number, flip in enumerate(flips):
        if flip:
            where = codes == number
            if bool(where.any()):
                out[where] = chosen[where].flip([axis + 1 for axis in flip])
    return out


def _project(matrix: torch.Tensor, offset: torch.Tensor, bounds: Bounds,
             grid: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest similarity (rotation times scale) to each affine ``matrix``, with its rotation
    angle, scale and ``offset`` clamped to ``bounds``: in 2D the nearest matrix [[a, -b], [b, a]]
    in the Frobenius norm, in 3D the nearest rotation times the mean singular value.

    Similar in voxels, not in normalised coordinates: on a grid that is not square, a normalised
    unit is a different number of voxels along each axis, so the matrix is projected after scaling
    each axis by its size (``grid``) and scaled back."""
    offset = offset.clamp(-bounds.translation, bounds.translation)
    sizes = torch.tensor([float(n) for n in reversed(grid)], dtype=matrix.dtype)  # x first
    if bool((sizes != sizes[0]).any()):
        aspect = sizes / sizes.max()
        similar, offset = _project(aspect[:, None] * matrix / aspect[None, :], offset, bounds, grid[:1] * len(grid))
        return similar * aspect[None, :] / aspect[:, None], offset
    if matrix.shape[-1] == 2:
        a = (matrix[:, 0, 0] + matrix[:, 1, 1]) / 2
        b = (matrix[:, 1, 0] - matrix[:, 0, 1]) / 2
        scale = torch.sqrt(a * a + b * b).clamp_min(1e-12)
        limit = math.radians(bounds.rotation)
        angle = torch.atan2(b, a).clamp(-limit, limit)
        scale = scale.clamp(*bounds.scale)
        c, s_ = scale * torch.cos(angle), scale * torch.sin(angle)
        return torch.stack([torch.stack([c, -s_], 1), torch.stack([s_, c], 1)], 1), offset
    u, s, vh = torch.linalg.svd(matrix)
    fix = torch.ones_like(s)
    fix[:, -1] = torch.sign(torch.linalg.det(u @ vh))
    rotation = u @ torch.diag_embed(fix) @ vh
    scale = s.mean(1).clamp(*bounds.scale)
    rotation = _limit_angle(rotation, math.radians(bounds.rotation))
    return scale[:, None, None] * rotation, offset


def _limit_angle(rotation: torch.Tensor, limit: float) -> torch.Tensor:
    """3D rotations whose angle exceeds ``limit`` radians turned back to it about their own axis."""
    cosine = ((rotation.diagonal(dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1, 1)
    angle = torch.acos(cosine)
    too_far = angle > limit
    if not bool(too_far.any()):
        return rotation
    axis = torch.stack([rotation[:, 2, 1] - rotation[:, 1, 2], rotation[:, 0, 2] - rotation[:, 2, 0],
                        rotation[:, 1, 0] - rotation[:, 0, 1]], 1)
    axis = axis / axis.norm(dim=1, keepdim=True).clamp_min(1e-12)
    limited = torch.stack([_axis_angle(a, limit) for a in axis])
    return torch.where(too_far[:, None, None], limited.to(rotation.dtype), rotation)


def _axis_angle(axis: torch.Tensor, angle: float) -> torch.Tensor:
    x, y, z = axis.tolist()
    k = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]], dtype=torch.float64)
    return torch.eye(3, dtype=torch.float64) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def _rotation_matrix(degrees: float, ndim: int) -> torch.Tensor:
    """The rotation by ``degrees`` in the (x, y) plane of normalised coordinates (identity for 0)."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    if ndim == 2:
        return torch.tensor([[c, -s], [s, c]])
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def sampling_grid(theta: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """``torch.nn.functional.affine_grid(theta, [n, 1, *grid], align_corners=False)`` for (n, d, d + 1)
    ``theta``: one matrix product with a cached grid of homogeneous voxel coordinates. affine_grid
    builds that grid anew for every image of the batch, which made it the alignment's costliest call
    (a third of ECC's time in 2D)."""
    points = _homogeneous(tuple(grid))
    return torch.matmul(points, theta.to(points.dtype).transpose(1, 2)).view(len(theta), *grid, len(grid))


@functools.lru_cache(maxsize=16)
def _homogeneous(grid: tuple[int, ...]) -> torch.Tensor:
    """(voxels, d + 1): each voxel's normalised coordinates, x first, and a 1."""
    axes = _axes(grid)
    return torch.stack([axis.reshape(-1) for axis in axes] + [torch.ones(int(np.prod(grid)))], 1)


def _axes(grid: tuple[int, ...]) -> list[torch.Tensor]:
    """Normalised coordinate of every voxel along x, y (and z), each shaped like ``grid``."""
    ranges = [(torch.arange(n, dtype=torch.float32) * 2 + 1) / n - 1 for n in grid]
    mesh = torch.meshgrid(*ranges, indexing="ij")  # array order: (z,) y, x
    return list(reversed(mesh))


def _gradients(images: torch.Tensor) -> torch.Tensor:
    """Central differences of (n, *grid) images per normalised unit, x first: (n, d, *grid)."""
    ndim = images.ndim - 1
    out = []
    for axis in reversed(range(ndim)):
        size = images.shape[1 + axis]
        g = torch.zeros_like(images)
        inner = [slice(None)] * (ndim + 1)
        ahead, behind = list(inner), list(inner)
        inner[1 + axis] = slice(1, -1)
        ahead[1 + axis] = slice(2, None)
        behind[1 + axis] = slice(None, -2)
        g[tuple(inner)] = (images[tuple(ahead)] - images[tuple(behind)]) * (size / 4)
        out.append(g)
    return torch.stack(out, 1)


def coarse_shape(grid: tuple[int, ...], side: int) -> tuple[int, ...]:
    """``grid`` scaled so that its longest side is at most ``side`` (each side at least 4)."""
    factor = min(1.0, side / max(grid))
    return tuple(max(4, int(round(n * factor))) for n in grid)


def _resized(images: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if tuple(images.shape[1:]) == tuple(shape):
        return images
    pool = F.adaptive_avg_pool2d if len(shape) == 2 else F.adaptive_avg_pool3d
    return pool(images[:, None], shape)[:, 0]


def _shrunk(images: torch.Tensor, side: int) -> torch.Tensor:
    return _resized(images, coarse_shape(tuple(images.shape[1:]), side))


def _unit(rows: torch.Tensor) -> torch.Tensor:
    rows = rows - rows.mean(1, keepdim=True)
    return rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
