"""Segmenters that need no trained model: thresholds, connected components and ridge filters.

Each takes a 2D (y, x) or 3D (z, y, x) image and returns a boolean mask of the same shape.
3D images are taken as stacks of axial slices along axis 0 (as CT is acquired, often with
slices much thicker than the pixels): structuring elements for dilation, erosion and opening
act within each slice, and holes are filled both in 3D and slice by slice. Connected components
use full connectivity (8 neighbours in 2D, 26 in 3D). These are crude, transparent baselines
for RELICT's segmentation level (Aydin et al., arXiv 2502.17360); a trained model (for example
nnU-Net) can be plugged in instead through :mod:`replicheck.segmenters.external`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
from scipy import ndimage


def foreground(image: np.ndarray) -> np.ndarray:
    """The imaged object (head, body) against the background.

    Otsu threshold over all finite voxels, largest connected component, holes filled. Works on
    any intensity scale (HU, MR, 8-bit windows). Failure modes: when the background is not the
    darkest class (bright padding, a bright table larger than the head) Otsu splits the wrong
    classes; objects touching each other (head and headrest) are kept together; a constant image
    gives an empty mask.
    """
    from skimage.filters import threshold_otsu

    x = _image(image)
    finite = np.isfinite(x)
    if not finite.any() or np.ptp(x[finite]) == 0:
        return np.zeros(x.shape, dtype=bool)
    mask = finite & (x > threshold_otsu(x[finite]))
    return _fill_holes(_largest_component(mask))


def ct_bone(hu: np.ndarray, *, threshold: float = 300.0, min_fraction: float = 0.001) -> np.ndarray:
    """Bone in a CT image in Hounsfield units: HU > ``threshold``, small specks removed.

    Components smaller than ``min_fraction`` of all voxels are dropped (noise, calcifications,
    metal streak fragments). Failure modes: needs true HU (an 8-bit brain window clips at about
    100 HU and then finds nothing); contrast-filled vessels, dense calcifications and metal
    (dental fillings, clips) above the threshold are kept as bone; thin bone blurred by
    downsampling falls below it.
    """
    x = _image(hu)
    mask = np.isfinite(x) & (x > threshold)
    return _remove_small(mask, int(np.ceil(min_fraction * x.size)))


def skull(image: np.ndarray, *, smoothing: float = 1.0, min_fraction: float = 0.001) -> np.ndarray:
    """The densest tissue class inside the head (skull on CT), on any intensity scale.

    In-plane Gaussian smoothing (``smoothing`` voxels), the head by :func:`foreground`, then the
    voxels of the head above the Otsu threshold of the head's own intensities; components under
    ``min_fraction`` of all voxels are dropped. No fixed threshold: a monotone window or
    contrast change, or heavy noise, moves the mask far less than it moves :func:`ct_bone`'s
    300 HU cut, and 8-bit window exports need no conversion. Failure modes: a strong bias field
    (one global threshold cannot follow a varying gain); on MR, where the skull is dark, it marks
    the brightest class (fat, white matter) instead; a head with little bone in the field of view
    (a slice above the vault) splits soft tissue into two classes.
    """
    from skimage.filters import threshold_otsu

    x = _image(image)
    finite = np.isfinite(x)
    x = np.where(finite, x, x[finite].min() if finite.any() else 0.0)
    sigma = (0.0, smoothing, smoothing) if x.ndim == 3 else (smoothing, smoothing)
    smooth = ndimage.gaussian_filter(x, sigma) if smoothing > 0 else x
    head = foreground(smooth)
    if not head.any() or np.ptp(smooth[head]) == 0:
        return np.zeros(x.shape, dtype=bool)
    dense = head & (smooth > threshold_otsu(smooth[head]))
    return _remove_small(dense, int(np.ceil(min_fraction * x.size)))


def ct_haemorrhage(
    hu: np.ndarray,
    *,
    blood: tuple[float, float] = (50.0, 90.0),
    brain: tuple[float, float] = (0.0, 80.0),
    head: float = -300.0,
    skull: float = 300.0,
    skull_margin: int = 3,
    opening: int = 1,
    min_size: int = 10,
    intracranial: Literal["enclosed", "largest"] = "enclosed",
) -> np.ndarray:
    """Acute intracranial blood in non-contrast head CT (HU): a crude intensity heuristic.

    Steps: head = largest component of HU > ``head``, holes filled; skull = HU > ``skull``,
    dilated by ``skull_margin`` voxels in-plane (the brain is kept that far from the skull);
    brain, with ``intracranial="enclosed"``: the head voxels enclosed in-plane by the dilated
    skull (its holes, per axial slice); with ``"largest"``: the largest component of head
    voxels with HU in ``brain`` outside the dilated skull, holes filled (dense blood above the
    brain range lies in its holes). Blood = brain voxels with HU in ``blood``, opened with a
    disc of radius ``opening`` voxels, components under ``min_size`` voxels removed.

    It is not a validated haemorrhage detector; read its mask as "hyperdense tissue in the
    brain". It finds large planted blood pools reliably, but on the 2,501 CT-ICH slices at
    128 px, run as a scan runs it (``benchmarks/segmenters.py``, BENCHMARKS-segmentation.md),
    it marks something in 18% of haemorrhage-free slices and in only 26% of slices labelled
    with haemorrhage ("largest": 35% and 26%; ``blood=(60, 90)``: 4% and 15%).
    Known failure modes: below the skull vault (orbits, skull base) the largest brain-range
    component of ``"largest"`` is often face or neck muscle (50-60 HU), which is then marked;
    ``"enclosed"`` avoids that but finds nothing in slices where the skull is not closed
    in-plane (orbit level, skull base, craniectomy, thin bone lost to downsampling); noisy or
    hyperdense grey matter reaches 50 HU; extra-axial bleeds (subdural, epidural) lie against
    the skull and are cut away by the margin; thin subarachnoid and intraventricular blood
    falls below the opening and size limits; calcifications and partial-volume voxels pass the
    HU window. The limits are in HU: convert 8-bit window images back to HU first. A brain
    window alone clips bone at its upper end (about 100 HU for L40/W120): pass a ``skull``
    threshold just under that value.
    """
    modes = ("enclosed", "largest")
    if intracranial not in modes:
        raise ValueError(f"unknown intracranial mode {intracranial!r}; choose one of {', '.join(modes)}")
    x = _image(hu)
    x = np.where(np.isfinite(x), x, -1024.0)
    head_mask = _fill_holes(_largest_component(x > head))
    near_skull = ndimage.binary_dilation(x > skull, structure=_disc(x.ndim, skull_margin))
    if intracranial == "enclosed":
        brain_mask = head_mask & _fill_holes(near_skull) & ~near_skull
    else:
        tissue = head_mask & (x >= brain[0]) & (x <= brain[1]) & ~near_skull
        brain_mask = _fill_holes(_largest_component(tissue)) & ~near_skull
    bleed = brain_mask & (x >= blood[0]) & (x <= blood[1])
    if opening > 0:
        bleed = ndimage.binary_opening(bleed, structure=_disc(x.ndim, opening))
    return _remove_small(bleed, min_size)


def bright_vessels(
    image: np.ndarray,
    *,
    sigmas: tuple[float, ...] = (1.0, 2.0, 3.0),
    percentile: float = 97.0,
    min_size: int = 10,
    method: Literal["sato", "frangi"] = "sato",
) -> np.ndarray:
    """Bright tubular structures (vessels in TOF-MRA or CT angiography) by a Hessian ridge filter.

    The image is min-max scaled to [0, 1] and filtered for bright ridges (skimage ``sato`` or
    ``frangi``, ``black_ridges=False``) at scales ``sigmas`` (voxels; 2D filter for 2D images,
    3D for 3D); voxels of the :func:`foreground` whose response exceeds its ``percentile``
    inside the foreground are kept, components under ``min_size`` voxels removed.

    Failure modes: the percentile threshold always marks about (100 - percentile)% of the
    foreground, vessels or not; in an image without bright vessels (T1 MRI, non-contrast CT)
    it marks the brightest ridges instead (scalp fat, skull edges, the falx, gyral crowns);
    the filter response grows with contrast, so a vessel no brighter than the brightest
    tissue loses to the scalp-fat ridge against the dark skull (a tube planted in IXI T1 slices
    at the head's 99.5th percentile is mostly missed; at the slice maximum above the
    tissue, which the default percentile clip of MR normalisation never produces, so only with
    ``--intensity minmax``, it is found); vessels thinner than the smallest sigma or wider than the largest are weak; the foreground
    mask decides what can be found.
    """
    from skimage.filters import frangi, sato

    filters = {"sato": sato, "frangi": frangi}
    if method not in filters:
        raise ValueError(f"unknown ridge filter {method!r}; choose one of {', '.join(filters)}")
    if not 0 < percentile < 100:
        raise ValueError(f"percentile must lie in (0, 100), got {percentile}")
    x = _image(image)
    inside = foreground(x)
    if not inside.any():
        return inside
    x = np.where(np.isfinite(x), x, np.nanmin(x[inside]))
    x = (x - x.min()) / np.ptp(x)
    response = filters[method](x, sigmas=list(sigmas), black_ridges=False)
    threshold = np.percentile(response[inside], percentile)
    return _remove_small(inside & (response > threshold), min_size)


Segmenter = Callable[..., np.ndarray]

SEGMENTERS: dict[str, Segmenter] = {
    "foreground": foreground,
    "ct_bone": ct_bone,
    "skull": skull,
    "ct_haemorrhage": ct_haemorrhage,
    "bright_vessels": bright_vessels,
}


def segment(name: str, image: np.ndarray, **params) -> np.ndarray:
    """Run the built-in segmenter ``name`` on ``image`` with keyword ``params``; a boolean mask."""
    try:
        segmenter = SEGMENTERS[name]
    except KeyError:
        raise ValueError(f"unknown segmenter {name!r}; choose one of {', '.join(SEGMENTERS)}") from None
    return segmenter(image, **params)


# ---------------------------------------------------------------- helpers


def _image(image: np.ndarray) -> np.ndarray:
    x = np.asarray(image, dtype=np.float32)
    if x.ndim not in (2, 3):
        raise ValueError(f"expected a 2D (y, x) or 3D (z, y, x) image, got shape {x.shape}")
    return x


def _full(ndim: int) -> np.ndarray:
    return ndimage.generate_binary_structure(ndim, ndim)


def _disc(ndim: int, radius: int) -> np.ndarray:
    """A disc of ``radius`` voxels in the (y, x) plane; one slice thick for 3D images."""
    r = max(int(radius), 0)
    yy, xx = np.mgrid[-r: r + 1, -r: r + 1]
    disc = yy**2 + xx**2 <= r * r + r  # r*r + r: the 3x3 square for r=1, rounder discs above
    return disc[None] if ndim == 3 else disc


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=_full(mask.ndim))
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def _remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """``mask`` without its connected components of fewer than ``min_size`` voxels."""
    if min_size <= 1 or not mask.any():
        return mask
    labels, _ = ndimage.label(mask, structure=_full(mask.ndim))
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    filled = ndimage.binary_fill_holes(mask)
    if mask.ndim == 3:  # also per axial slice: cavities open at the top or bottom of a cropped stack
        for z in range(len(mask)):
            filled[z] |= ndimage.binary_fill_holes(mask[z])
    return filled
