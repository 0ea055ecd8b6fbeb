"""Bring every image onto one footing: intensities in [0, 1], one analysis grid, optional slicing.

Intensity normalisation (``intensity``):

- ``ct``: a Hounsfield window (level, width; default 40, 400) mapped to [0, 1];
- ``percentile``: clip to the (0.5, 99.5) percentiles of the image, then scale to [0, 1]
  (MR, X-ray, ultrasound: any modality without absolute units);
- ``8bit``: value / 255, for images already windowed to 8 bits (PNG exports, MedMNIST);
- ``ct8``: value / 255 as well, for 8-bit exports of a CT window: the files were cut to the
  window ``ct_window`` (level, width), so value / 255 is the position in it and the CT
  segmenters can invert it (HU = level - width / 2 + value / 255 x width). Reading such files
  as ``ct`` would take 0-255 for Hounsfield units;
- ``minmax``: the image's minimum and maximum mapped to 0 and 1;
- ``auto``: chosen per image from what the reader saw (DICOM CT with a rescale: ``ct``;
  unscaled uint8: ``8bit``; values below -500, as air in HU: ``ct``; otherwise ``percentile``).

Every method ends in [0, 1], so the SSIM data range is 1 for all images (a z-score has no
fixed range, which SSIM's constants need; see ``docs/design.md``).

Resampling to the grid: axes that shrink are area-averaged (no aliasing), axes that grow are
linearly interpolated; an image already on the grid is left untouched.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .config import INTENSITIES, Preprocessing
from .records import ImageRef, InputError, LoadedImage

CT_METHODS = ("ct", "ct8")  # normalisations whose [0, 1] is the CT window ``ct_window``
DATA_RANGE = 1.0
MAX_STRETCH_2D = 4.0  # how much more a 2D image may be stretched along one axis than along the other


@dataclass
class Prepared:
    """The analysis-grid arrays made from one loaded image (one, or one per kept slice)."""

    arrays: list[np.ndarray]
    slice_positions: list[int | None]
    method: str
    dropped_slices: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)


def choose_grid(refs: Sequence[ImageRef], *, slices: bool, max_side: int = 128) -> tuple[int, ...]:
    """The training set's most common image shape, scaled down so that no side exceeds ``max_side``."""
    shapes = Counter(ref.shape[1:] if slices and ref.ndim == 3 else ref.shape for ref in refs)
    shape = max(shapes.items(), key=lambda item: (item[1], item[0]))[0]
    scale = min(1.0, max_side / max(shape))
    return tuple(max(1, int(round(n * scale))) for n in shape)


def prepare(image: LoadedImage, settings: Preprocessing) -> Prepared:
    """Normalise one image, then resample it (or each of its slices) to the analysis grid."""
    method = image.intensity if settings.intensity == "auto" else settings.intensity
    array = normalise(image.array, method, settings)
    source = image.ref.source
    if settings.slices and array.ndim == 3:
        check_stretch(source, array.shape[1:], settings.grid)
        kept, positions = [], []
        for z, plane in enumerate(array):
            if plane.max() > plane.min():
                kept.append(resample(plane, settings.grid))
                positions.append(z)
        if not kept:
            raise InputError(source, f"every slice is constant after {_describe(method, settings)} normalisation")
        return Prepared(kept, positions, method, dropped_slices=len(array) - len(kept), notes=image.notes)
    if array.ndim != len(settings.grid):
        raise InputError(source, f"is {array.ndim}D but the analysis grid {settings.grid} is {len(settings.grid)}D")
    check_stretch(source, array.shape, settings.grid)
    resampled = resample(array, settings.grid)
    if not resampled.max() > resampled.min():
        raise InputError(source, f"image is constant after {_describe(method, settings)} normalisation; try another --intensity")
    return Prepared([resampled], [None], method, notes=image.notes)


def normalise(array: np.ndarray, method: str, settings: Preprocessing) -> np.ndarray:
    """Intensities mapped to [0, 1] by ``method`` (see the module docstring)."""
    if method == "ct":
        level, width = settings.ct_window
        low, high = level - width / 2.0, level + width / 2.0
    elif method == "percentile":
        low, high = np.percentile(array, settings.percentiles)
        if high <= low:  # mostly one value (e.g. a black background): fall back to the full range
            low, high = float(array.min()), float(array.max())
    elif method in ("8bit", "ct8"):
        low, high = 0.0, 255.0
    elif method == "minmax":
        low, high = float(array.min()), float(array.max())
    else:
        raise ValueError(f"unknown normalisation {method!r}; expected one of {', '.join(INTENSITIES[1:])}")
    scaled = (array.astype(np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(scaled, 0.0, 1.0, out=scaled)


def check_stretch(source: str, shape: tuple[int, ...], grid: tuple[int, ...]) -> None:
    """Refuse to invent an image: an axis of one voxel stretched to many, or a 2D image stretched
    along one axis more than :data:`MAX_STRETCH_2D` times as much as along the other (a 1x128 strip
    on a 128x128 grid). Volumes may be stretched unevenly: thick slices are resampled to the grid."""
    size = "x".join(map(str, shape))
    for axis, (n, g) in enumerate(zip(shape, grid)):
        if n == 1 and g > 1:
            raise InputError(source, f"is {size} voxels: a single voxel along axis {axis} cannot be resampled to the "
                                     f"analysis grid {'x'.join(map(str, grid))}")
    if len(shape) == 2:
        factors = [g / n for n, g in zip(shape, grid)]
        if max(factors) / min(factors) > MAX_STRETCH_2D:
            raise InputError(source, f"is {size} pixels but the analysis grid is {'x'.join(map(str, grid))}: it would be "
                                     f"stretched {max(factors) / min(factors):.0f}x more along one axis than the other "
                                     f"(at most {MAX_STRETCH_2D:g}x); give a --grid of the images' proportions")


def resample(array: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """``array`` on ``grid``: area averaging along shrinking axes, linear along growing ones."""
    if tuple(array.shape) == tuple(grid):
        return np.ascontiguousarray(array, dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    shrunk = tuple(min(n, g) for n, g in zip(array.shape, grid))
    if shrunk != tuple(array.shape):
        tensor = torch.nn.functional.interpolate(tensor, size=shrunk, mode="area")
    if shrunk != tuple(grid):
        mode = "bilinear" if len(grid) == 2 else "trilinear"
        tensor = torch.nn.functional.interpolate(tensor, size=tuple(grid), mode=mode, align_corners=False)
    return tensor[0, 0].numpy().copy()


def describe(settings: Preprocessing, methods: dict[str, Counter]) -> dict:
    """The preprocessing as recorded in summary.json."""
    return {
        "grid": list(settings.grid),
        "intensity": settings.intensity,
        "intensity_used": {role: dict(counts) for role, counts in methods.items()},
        "ct_window_hu": {"level": settings.ct_window[0], "width": settings.ct_window[1]},
        "percentiles": list(settings.percentiles),
        "range_after_normalisation": [0.0, DATA_RANGE],
        "resampling": "area averaging along shrinking axes, linear interpolation along growing axes",
        "slices": settings.slices,
        "axis_order": "(z, y, x) for volumes, (y, x) for images; no reorientation between formats",
    }


def _describe(method: str, settings: Preprocessing) -> str:
    if method == "ct":
        return f"CT window (level {settings.ct_window[0]:g}, width {settings.ct_window[1]:g} HU)"
    if method == "ct8":
        return f"8-bit export of the CT window (level {settings.ct_window[0]:g}, width {settings.ct_window[1]:g} HU)"
    return method
