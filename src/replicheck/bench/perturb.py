"""Graded perturbations that turn a real training image into a labelled replica.

Each family has strength levels, weakest first, whose fixed parameters live in :data:`FAMILIES`
so that a table of the benchmark can print them. :func:`perturb` applies one level to a 2D
(y, x) or 3D (z, y, x) image in [0, 1] and returns the replica with every parameter it used,
random draws included, so that a benchmark entry can be audited and rebuilt. Large random arrays
(noise, displacement fields) come from a child generator whose recorded ``seed`` reproduces them.

In 3D the in-plane geometric families (rotation, flip, translation, crop_pad, partial_copy) act
on the last two axes; blur, noise, bias_field, elastic and resample act on all axes; jpeg and
jpeg2000 compress each axial slice ``image[z]`` on its own, as a 2D codec would.

The anatomy-preserving families (:data:`EXTRA_FAMILIES`: heavy_noise, strong_bias_field,
contrast, boundary_noise) change intensities far more than the others but keep the anatomy (and,
for a binary mask, all but a one-voxel seam of its boundary), so that whole-image intensity
measures fail where a segmentation still matches. They act on all axes and are not in
:data:`DEFAULT_FAMILIES`, the families a benchmark uses unless told otherwise.
"""

from __future__ import annotations

import io
import itertools
import math
import warnings
from typing import Callable

import numpy as np
from PIL import Image, features
from scipy import ndimage
from skimage.transform import resize


FAMILIES: dict[str, tuple] = {
    "exact": ({},),
    "gaussian_noise": ({"sigma": 0.01}, {"sigma": 0.03}, {"sigma": 0.06}),
    "rician_noise": ({"sigma": 0.01}, {"sigma": 0.03}, {"sigma": 0.06}),
    "blur": ({"sigma": 0.5}, {"sigma": 1.0}, {"sigma": 2.0}),
    "gamma": ({"r": 1.15}, {"r": 1.4}, {"r": 2.0}),
    "intensity_scale": ({"delta": 0.1}, {"delta": 0.25}, {"delta": 0.5}),
    "bias_field": ({"amplitude": 0.1}, {"amplitude": 0.25}, {"amplitude": 0.5}),
    "rotation": ({"degrees": 2.0}, {"degrees": 5.0}, {"degrees": 10.0}, {"degrees": 15.0}),
    "translation": ({"voxels": 2.0}, {"voxels": 5.0}, {"voxels": 10.0}),
    "flip": ({"direction": "left-right", "axis": -1}, {"direction": "up-down", "axis": -2}),
    "resample": ({"factor": 0.75}, {"factor": 0.5}, {"factor": 0.33}),
    "crop_pad": ({"fraction": 0.05}, {"fraction": 0.1}, {"fraction": 0.2}),
    "jpeg": ({"quality": 90}, {"quality": 70}, {"quality": 40}),
    "jpeg2000": ({"ratio": 10}, {"ratio": 20}, {"ratio": 40}),
    "elastic": ({"max_displacement": 1.0}, {"max_displacement": 2.0}, {"max_displacement": 4.0}),
    "partial_copy": ({"area_fraction": 0.25}, {"area_fraction": 0.5}, {"area_fraction": 0.75}),
    # Several changes at once, as a generator's copy shows them (each drawn up to the level's bound).
    "compound": ({"warp": 0.5, "zoom": 0.02, "shift": 2.0, "resample": 0.75, "gamma": 1.15, "noise": 0.01},
                 {"warp": 1.0, "zoom": 0.04, "shift": 4.0, "resample": 0.6, "gamma": 1.3, "noise": 0.02},
                 {"warp": 1.5, "zoom": 0.06, "shift": 6.0, "resample": 0.5, "gamma": 1.5, "noise": 0.03}),
    "misaligned": ({"degrees": 3.0, "gamma": 1.15, "p_flip": 0.5},
                   {"degrees": 6.0, "gamma": 1.3, "p_flip": 0.5},
                   {"degrees": 10.0, "gamma": 1.5, "p_flip": 0.5}),
    # Anatomy-preserving: far stronger intensity changes (not in DEFAULT_FAMILIES).
    "heavy_noise": ({"sigma": 0.12}, {"sigma": 0.2}),
    "strong_bias_field": ({"amplitude": 1.0}, {"amplitude": 1.5}),
    "contrast": ({"width": 0.1}, {"width": 0.05}),
    "boundary_noise": ({"share": 0.1}, {"share": 0.25}, {"share": 0.5}),
}
EXTRA_FAMILIES = ("heavy_noise", "strong_bias_field", "contrast", "boundary_noise")  # only when asked for by name
DEFAULT_FAMILIES = tuple(f for f in FAMILIES if f not in EXTRA_FAMILIES)  # a benchmark's families by default
CONTRAST_CENTRES = (0.5, 0.95)  # quantiles of the non-zero voxels between which the contrast centre is drawn
BOUNDARY_FIELD_SIGMA = 2.0  # voxels: smoothing of the random field that picks where boundary_noise acts
NEEDS_DONOR = frozenset({"partial_copy"})  # families that paste the image into another patient's


def perturb(image: np.ndarray, family: str, strength: int, rng: np.random.Generator, *,
            donor: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """A replica of ``image`` made by one strength level of one perturbation family.

    Parameters
    ----------
    image : (H, W) or (Z, Y, X) array with intensities in [0, 1]; never modified.
    family : a key of :data:`FAMILIES`.
    strength : index into ``FAMILIES[family]``, 0 being the weakest level.
    rng : the only source of randomness, so the same generator state gives the same replica.
    donor : another patient's image of the same shape; required by ``partial_copy`` (the
        region copied from ``image`` is pasted into it), ignored by the other families.

    Returns
    -------
    The replica (a new float32 array of the same shape, clipped to [0, 1]) and a JSON-ready dict
    of the family, the strength, the level's fixed parameters and the random draws.
    """
    level = _level(family, strength)
    x = _checked_image(image)
    extra = {"donor": _checked_donor(donor, x.shape)} if family in NEEDS_DONOR else {}
    out, draws = _PERTURBATIONS[family](x, rng, **level, **extra)
    params = {"family": family, "strength": int(strength), **level, **draws}
    return np.clip(out, 0.0, 1.0).astype(np.float32), params


def _level(family: str, strength: int) -> dict:
    if family not in FAMILIES:
        raise ValueError(f"unknown perturbation family {family!r}; choose one of {', '.join(FAMILIES)}")
    levels = FAMILIES[family]
    if isinstance(strength, bool) or not isinstance(strength, (int, np.integer)) or not 0 <= strength < len(levels):
        raise ValueError(f"strength {strength!r} is out of range for {family!r}; choose an integer in "
                         f"0..{len(levels) - 1} ({', '.join(map(str, levels))})")
    return dict(levels[strength])


def _checked_image(image: np.ndarray) -> np.ndarray:
    """A float32 copy of a 2D or 3D image in [0, 1] (a copy, so no family can alter the input)."""
    x = np.array(image, dtype=np.float32)
    if x.ndim not in (2, 3):
        raise ValueError(f"image must be 2D (H, W) or 3D (Z, Y, X), got shape {x.shape}")
    if not (x.min() >= 0.0 and x.max() <= 1.0):  # also catches NaN
        raise ValueError(f"image intensities must lie in [0, 1], got [{x.min()}, {x.max()}]")
    return x


def _checked_donor(donor: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    if donor is None:
        raise ValueError("partial_copy needs donor=, another patient's image of the same shape as image")
    donor = np.array(donor, dtype=np.float32)
    if donor.shape != shape:
        raise ValueError(f"donor shape {donor.shape} differs from image shape {shape}")
    return donor


def _sign(rng: np.random.Generator) -> int:
    return 1 if rng.integers(2) else -1


def _seed(rng: np.random.Generator) -> int:
    """A recorded seed for a child generator, so large random arrays are reproducible from params."""
    return int(rng.integers(2**31))


def _in_plane(x: np.ndarray) -> tuple[int, int]:
    return x.ndim - 2, x.ndim - 1


# Intensity families.

def _exact(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    return x, {}


def _gaussian_noise(x: np.ndarray, rng: np.random.Generator, *, sigma: float) -> tuple[np.ndarray, dict]:
    seed = _seed(rng)
    return x + np.random.default_rng(seed).normal(0.0, sigma, x.shape), {"seed": seed}


def _rician_noise(x: np.ndarray, rng: np.random.Generator, *, sigma: float) -> tuple[np.ndarray, dict]:
    """Magnitude of a complex signal with Gaussian noise in both channels, as in MRI."""
    seed = _seed(rng)
    n1, n2 = np.random.default_rng(seed).normal(0.0, sigma, (2, *x.shape))
    return np.sqrt((x + n1) ** 2 + n2 ** 2), {"seed": seed}


def _blur(x: np.ndarray, rng: np.random.Generator, *, sigma: float) -> tuple[np.ndarray, dict]:
    return ndimage.gaussian_filter(x, sigma), {}


def _gamma(x: np.ndarray, rng: np.random.Generator, *, r: float) -> tuple[np.ndarray, dict]:
    gamma = r if _sign(rng) > 0 else 1.0 / r
    return x ** gamma, {"gamma": float(gamma)}


def _intensity_scale(x: np.ndarray, rng: np.random.Generator, *, delta: float) -> tuple[np.ndarray, dict]:
    """Contrast change a*x + b that keeps the mean (before clipping)."""
    a = 1.0 + _sign(rng) * delta
    b = float(x.mean(dtype=np.float64)) * (1.0 - a)
    return a * x + b, {"scale": float(a), "offset": b}


def _bias_field(x: np.ndarray, rng: np.random.Generator, *, amplitude: float) -> tuple[np.ndarray, dict]:
    """Multiplicative smooth field exp(amplitude * f), f a random mix of low-frequency cosines.

    f sums cos(pi k_1 u_1) ... cos(pi k_d u_d) over frequencies k in {0, 1, 2} per axis (the
    constant term left out, in ``itertools.product`` order) with standard normal coefficients,
    u in (0, 1) along each axis, scaled to max |f| = 1: an MRI-like inhomogeneity.
    """
    freqs = [k for k in itertools.product(range(3), repeat=x.ndim) if any(k)]
    coefficients = rng.normal(size=len(freqs))
    u = [(g + 0.5) / n for g, n in zip(np.ogrid[tuple(slice(n) for n in x.shape)], x.shape)]  # broadcastable
    f = sum(c * math.prod(np.cos(np.pi * kd * ud) for kd, ud in zip(k, u)) for c, k in zip(coefficients, freqs))
    f /= np.abs(f).max()
    return x * np.exp(amplitude * f), {"coefficients": [float(c) for c in coefficients]}


def _contrast(x: np.ndarray, rng: np.random.Generator, *, width: float) -> tuple[np.ndarray, dict]:
    """A monotone non-linear window change: the sigmoid s(v) = 1 / (1 + exp(-(v - centre) / width))
    rescaled so that 0 and 1 stay 0 and 1.

    ``centre`` is the q-quantile of the image's non-zero voxels, q drawn uniformly in
    :data:`CONTRAST_CENTRES` (the median to the 95th percentile), so the steep part of the curve
    falls on tissue whatever the modality (on a CT bone window: from soft tissue up to bone, where
    it leaves a bone-only image); intensities below it are pressed towards 0, those above towards
    1 (width 0.05: nearly a threshold at the centre). The order of intensities, and so every iso-contour, is
    kept; their spacing is not.
    """
    q = float(rng.uniform(*CONTRAST_CENTRES))
    tissue = x[x > 0]
    centre = float(np.quantile(tissue, q)) if tissue.size else 0.5
    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-(v - centre) / width))  # noqa: E731
    low, high = sigmoid(0.0), sigmoid(1.0)
    return (sigmoid(x.astype(np.float64)) - low) / (high - low), {"quantile": q, "centre": centre}


def _boundary_noise(x: np.ndarray, rng: np.random.Generator, *, share: float) -> tuple[np.ndarray, dict]:
    """The boundary moved by one voxel outwards or inwards in random places, as a redrawn mask would be.

    A smooth random field (uniform noise under a Gaussian of :data:`BOUNDARY_FIELD_SIGMA` voxels)
    picks the places: where it lies in its top ``share / 2`` the image is dilated (its maximum over
    the voxel and its face neighbours, all axes), in its bottom ``share / 2`` eroded (the minimum),
    elsewhere kept. On a binary mask this flips, in patches, about ``share / 2`` of the background
    voxels that touch the mask (added) and of the mask voxels that touch the background (removed),
    and nothing else, so the result stays binary (on the 64-voxel AdrenalMNIST3D glands, Dice with
    the source 0.95-0.99, 0.91-0.96 and 0.84-0.91 for the three levels); on a grey image it is a
    patchy one-voxel min/max filter.
    """
    seed = _seed(rng)
    field = ndimage.gaussian_filter(np.random.default_rng(seed).uniform(-1.0, 1.0, x.shape), BOUNDARY_FIELD_SIGMA)
    low, high = np.quantile(field, [share / 2.0, 1.0 - share / 2.0])
    cross = ndimage.generate_binary_structure(x.ndim, 1)
    out = np.where(field > high, ndimage.grey_dilation(x, footprint=cross),
                   np.where(field < low, ndimage.grey_erosion(x, footprint=cross), x))
    return out, {"seed": seed, "field_sigma": BOUNDARY_FIELD_SIGMA}


# Geometric families. Zero outside the field of view, interpolated at its edge (SciPy's
# "grid-constant"): "constant" zeroes every sample that falls a hair outside the image, so the
# smallest rotation would blacken whole border rows, a frame no generator draws.

def _rotation(x: np.ndarray, rng: np.random.Generator, *, degrees: float) -> tuple[np.ndarray, dict]:
    angle = _sign(rng) * degrees
    out = ndimage.rotate(x, angle, axes=_in_plane(x), reshape=False, order=1, mode="grid-constant", cval=0.0)
    return out, {"angle": float(angle)}


def _translation(x: np.ndarray, rng: np.random.Generator, *, voxels: float) -> tuple[np.ndarray, dict]:
    """Sub-voxel in-plane shift of length ``voxels`` in a random direction; zero fill, not a roll."""
    direction = rng.uniform(0.0, 2.0 * np.pi)
    shift = [voxels * math.sin(direction), voxels * math.cos(direction)]  # (dy, dx)
    out = ndimage.shift(x, [0.0] * (x.ndim - 2) + shift, order=1, mode="grid-constant", cval=0.0)
    return out, {"shift": [float(s) for s in shift]}


def _flip(x: np.ndarray, rng: np.random.Generator, *, direction: str, axis: int) -> tuple[np.ndarray, dict]:
    return np.flip(x, axis=axis), {}


def _resample(x: np.ndarray, rng: np.random.Generator, *, factor: float) -> tuple[np.ndarray, dict]:
    """Down-sampled (anti-aliased) on all axes and back up, losing detail finer than 1/factor voxels."""
    small_shape = tuple(max(1, round(n * factor)) for n in x.shape)
    small = resize(x, small_shape, order=1, anti_aliasing=True, preserve_range=True)
    out = resize(small, x.shape, order=1, anti_aliasing=False, preserve_range=True)
    return out, {"small_shape": [int(n) for n in small_shape]}


def _crop_pad(x: np.ndarray, rng: np.random.Generator, *, fraction: float) -> tuple[np.ndarray, dict]:
    """Crop a margin of ``fraction`` of each in-plane axis, then zero-pad back with a new split.

    Content is lost at the borders and shifted by pad_before - crop_before along each axis.
    """
    crop, pad = [], []
    for n in x.shape[-2:]:
        margin = round(fraction * n)
        before = int(rng.integers(margin + 1))
        crop.append([before, margin - before])
        before = int(rng.integers(margin + 1))
        pad.append([before, margin - before])
    kept = x[..., crop[0][0]: x.shape[-2] - crop[0][1], crop[1][0]: x.shape[-1] - crop[1][1]]
    out = np.pad(kept, [(0, 0)] * (x.ndim - 2) + [tuple(p) for p in pad])
    return out, {"crop": crop, "pad": pad}


def _elastic(x: np.ndarray, rng: np.random.Generator, *, max_displacement: float) -> tuple[np.ndarray, dict]:
    """Smooth random warp on all axes, each displacement component scaled to max |d| = max_displacement.

    Each component is uniform noise smoothed by a Gaussian of sigma = max(4, smallest in-plane
    size / 8) voxels, so the warp bends anatomy without tearing it.
    """
    seed = _seed(rng)
    sigma = max(4.0, min(x.shape[-2:]) / 8)
    noise = np.random.default_rng(seed).uniform(-1.0, 1.0, (x.ndim, *x.shape))
    coords = np.indices(x.shape, dtype=np.float64)
    for d in range(x.ndim):
        field = ndimage.gaussian_filter(noise[d], sigma)
        coords[d] += max_displacement * field / np.abs(field).max()
    out = ndimage.map_coordinates(x, coords, order=1, mode="nearest")
    return out, {"seed": seed, "field_sigma": float(sigma)}


# Several changes at once.

def _compound(x: np.ndarray, rng: np.random.Generator, *, warp: float, zoom: float, shift: float, resample: float,
              gamma: float, noise: float) -> tuple[np.ndarray, dict]:
    """A smooth warp, an in-plane zoom and shift (one resampling, zero fill), detail lost by down-
    and up-sampling, a gamma and Gaussian noise, in that order. Each magnitude is drawn between
    half the level's bound and the bound (the zoom's and gamma's direction at random), so that a
    level's copies differ but all are of that level's strength."""
    draw = lambda bound: float(bound * rng.uniform(0.5, 1.0))  # noqa: E731
    displacement = draw(warp)
    out, warped = _elastic(x, rng, max_displacement=displacement)
    factor = 1.0 + _sign(rng) * draw(zoom)
    direction, length = rng.uniform(0.0, 2.0 * np.pi), draw(shift)
    moved = [length * math.sin(direction), length * math.cos(direction)]  # (dy, dx)
    out = in_plane_similarity(out, degrees=0.0, zoom=factor, shift=moved)
    out, resampled = _resample(out, rng, factor=resample)
    exponent = float(gamma ** (_sign(rng) * rng.uniform(0.5, 1.0)))
    out = np.clip(out, 0.0, 1.0) ** exponent
    out, noised = _gaussian_noise(out, rng, sigma=noise)
    return out, {"warp_applied": displacement, "warp_seed": warped["seed"], "zoom_applied": factor,
                 "shift_applied": [float(s) for s in moved], "small_shape": resampled["small_shape"],
                 "gamma_applied": exponent, "noise_seed": noised["seed"]}


def _misaligned(x: np.ndarray, rng: np.random.Generator, *, degrees: float, gamma: float,
                p_flip: float) -> tuple[np.ndarray, dict]:
    """A flip (with probability ``p_flip``, left-right or up-down), an in-plane rotation of between
    half of ``degrees`` and ``degrees`` either way, and a gamma between ``gamma ** 0.5`` and
    ``gamma`` either way: the changes that defeat a pixel-aligned comparison."""
    flip = None
    if rng.random() < p_flip:
        flip = int(rng.integers(2))  # 0: left-right, 1: up-down
        x = np.flip(x, axis=-1 if flip == 0 else -2)
    angle = float(_sign(rng) * degrees * rng.uniform(0.5, 1.0))
    out = in_plane_similarity(x, degrees=angle, zoom=1.0, shift=[0.0, 0.0])
    exponent = float(gamma ** (_sign(rng) * rng.uniform(0.5, 1.0)))
    return np.clip(out, 0.0, 1.0) ** exponent, {"flip": ["none", "left-right", "up-down"][0 if flip is None else flip + 1],
                                                  "angle": angle, "gamma_applied": exponent}


def in_plane_similarity(x: np.ndarray, *, degrees: float, zoom: float, shift: list[float]) -> np.ndarray:
    """Every in-plane slice rotated by ``degrees`` and enlarged by ``zoom`` about its centre, then
    moved by ``shift`` (dy, dx) voxels; linear interpolation, zero fill."""
    theta = math.radians(degrees)
    # output -> input: inverse rotation and zoom about the centre, minus the shift
    inverse = np.array([[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]]) / zoom
    centre = (np.array(x.shape[-2:], dtype=np.float64) - 1) / 2
    offset = centre - inverse @ (centre + np.asarray(shift, dtype=np.float64))
    planes = x.reshape(-1, *x.shape[-2:])
    out = np.stack([ndimage.affine_transform(p, inverse, offset=offset, order=1, mode="grid-constant", cval=0.0)
                    for p in planes])
    return out.reshape(x.shape)


# Codecs.

def _jpeg(x: np.ndarray, rng: np.random.Generator, *, quality: int) -> tuple[np.ndarray, dict]:
    out, achieved = _per_slice(x, format="JPEG", quality=quality)
    return out, {"achieved_ratio": achieved}


def _jpeg2000(x: np.ndarray, rng: np.random.Generator, *, ratio: int) -> tuple[np.ndarray, dict]:
    """Lossy (irreversible wavelet) JPEG 2000 codestream at a target compression ratio.

    OpenJPEG cannot write a codestream under about 200 bytes, so on small slices (64 x 64 and
    below) the higher ratios are not reached and the levels collapse into one: a warning says so,
    and ``achieved_ratio`` records what was reached.
    """
    if not features.check("jpg_2000"):
        raise RuntimeError("Pillow was built without the JPEG 2000 codec (OpenJPEG, feature 'jpg_2000')")
    out, achieved = _per_slice(x, format="JPEG2000", no_jp2=True, quality_mode="rates",
                               quality_layers=[ratio], irreversible=True)
    if achieved < 0.9 * ratio:
        warnings.warn(f"JPEG 2000 reached a compression ratio of {achieved:.1f}, not {ratio}, on "
                      f"{x.shape[-2]}x{x.shape[-1]} slices (the codestream has a floor of about 200 bytes)",
                      stacklevel=3)
    return out, {"achieved_ratio": achieved}


def _per_slice(x: np.ndarray, **save_options) -> tuple[np.ndarray, float]:
    """Each 2D slice quantised to 8 bits, encoded into memory by Pillow, decoded and scaled to [0, 1].

    Also returns the compression ratio reached: 8-bit voxels over bytes written, over all slices.
    """
    slices = x.reshape(-1, *x.shape[-2:])
    out = np.empty(slices.shape, dtype=np.float32)
    written = 0
    for i, s in enumerate(slices):
        buf = io.BytesIO()
        Image.fromarray(np.round(s * 255).astype(np.uint8)).save(buf, **save_options)
        written += buf.tell()
        buf.seek(0)
        with Image.open(buf) as decoded:
            out[i] = np.asarray(decoded, dtype=np.float32) / 255
    return out.reshape(x.shape), float(x.size / written)


# Mixing with another patient.

def _partial_copy(x: np.ndarray, rng: np.random.Generator, *, area_fraction: float,
                  donor: np.ndarray) -> tuple[np.ndarray, dict]:
    """A box of ``area_fraction`` of the in-plane area copied from the image into the donor.

    The box's aspect ratio (its height/width relative to the image's) is drawn in [0.6, 1.6];
    a side that would leave the image is cut to the image and the other widened to keep the
    area. In 3D the box spans all slices.
    """
    h_full, w_full = x.shape[-2:]
    aspect = float(rng.uniform(0.6, 1.6))
    h = min(h_full, round(h_full * math.sqrt(area_fraction * aspect)))
    w = min(w_full, round(area_fraction * h_full * w_full / h))
    h = min(h_full, round(area_fraction * h_full * w_full / w))
    y0 = int(rng.integers(h_full - h + 1))
    x0 = int(rng.integers(w_full - w + 1))
    out = donor.copy()
    out[..., y0: y0 + h, x0: x0 + w] = x[..., y0: y0 + h, x0: x0 + w]
    return out, {"aspect": aspect, "box": [y0, y0 + h, x0, x0 + w]}


_PERTURBATIONS: dict[str, Callable[..., tuple[np.ndarray, dict]]] = {
    "exact": _exact,
    "gaussian_noise": _gaussian_noise,
    "rician_noise": _rician_noise,
    "blur": _blur,
    "gamma": _gamma,
    "intensity_scale": _intensity_scale,
    "bias_field": _bias_field,
    "rotation": _rotation,
    "translation": _translation,
    "flip": _flip,
    "resample": _resample,
    "crop_pad": _crop_pad,
    "jpeg": _jpeg,
    "jpeg2000": _jpeg2000,
    "elastic": _elastic,
    "partial_copy": _partial_copy,
    "compound": _compound,
    "misaligned": _misaligned,
    "heavy_noise": _gaussian_noise,  # the same operations at levels that swamp intensity detail
    "strong_bias_field": _bias_field,  # gains from exp(-1.5) = 0.22 to exp(1.5) = 4.5 at the top level
    "contrast": _contrast,
    "boundary_noise": _boundary_noise,
}
