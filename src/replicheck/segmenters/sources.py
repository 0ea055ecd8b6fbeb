"""Where each image's mask comes from, chosen by ``--masks``:

- a built-in segmenter (``foreground``, ``skull``, ``ct-bone``, ``ct-haemorrhage``, ``vessels``;
  :mod:`.builtin`) run on the analysis-grid image. The CT segmenters need Hounsfield units, so
  the image's CT window is inverted (HU = level - width/2 + value x width); values the window
  clipped are lost, and thresholds outside the window are moved inside it (:func:`ct_parameters`);
- ``manifest``: the file in each image's ``mask`` manifest column;
- a folder ``DIR``: the mask of image ``ROOT/rel/name.ext`` (``ROOT`` the folder given for its
  role) is ``DIR/<role>/rel/name.ext``, or the same path with the image suffix replaced by
  ``.nii.gz``, ``.nii``, ``.png`` or ``.npy``; ``<role>`` is ``training``, ``synthetic`` or
  ``holdout``, so that a synthetic and a training image of the same name never share a mask;
- ``cmd:TEMPLATE``: a user's segmenter (:class:`~.external.ExternalSegmenter`), given the
  analysis-grid image as an uncompressed NIfTI file (in HU for CT-normalised images, in [0, 1]
  otherwise; unit spacing, identity affine) and expected to write a mask on that grid.

User masks must have the stored shape of their image (a 3D mask is cut like its volume with
``--slices``); they are resampled to the analysis grid by nearest neighbour and read as ``> 0``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..preprocess import CT_METHODS
from ..records import InputError, OptionError
from ..workspace import scratch_prefix
from . import builtin
from .external import ExternalSegmenter, load_mask

BUILTIN = {"foreground": "foreground", "skull": "skull", "ct-bone": "ct_bone", "ct-haemorrhage": "ct_haemorrhage",
           "vessels": "bright_vessels"}
CT_SEGMENTERS = ("ct_bone", "ct_haemorrhage")
BLOOD_TOP = 90.0  # HU: upper end of builtin.ct_haemorrhage's default blood range
MASK_SUFFIXES = (".nii.gz", ".nii", ".png", ".npy")


def parse_masks(spec: str) -> tuple[str, str]:
    """``--masks`` as (kind, value): ("builtin", segmenter), ("manifest", ""), ("cmd", template)
    or ("folder", path). Built-in names win over a folder of the same name (write ``./name``)."""
    spec = str(spec).strip()
    names = {**BUILTIN, **{name: name for name in builtin.SEGMENTERS}}
    if spec in names:
        return "builtin", names[spec]
    if spec == "manifest":
        return "manifest", ""
    if spec.startswith("cmd:"):
        if not spec[4:].strip():
            raise OptionError("masks", "cmd: needs a command, e.g. 'cmd:python seg.py {input} {output}'")
        return "cmd", spec[4:].strip()
    if Path(spec).is_dir():
        return "folder", spec
    raise OptionError("masks", f"{spec!r} is neither a built-in segmenter ({', '.join(BUILTIN)}), 'manifest', "
                               "'cmd:TEMPLATE' nor an existing folder of masks")


def ct_parameters(segmenter: str, ct_window: tuple[float, float]) -> dict:
    """Thresholds of a CT segmenter moved inside the window (level, width) the images were cut to.

    A window clips everything above level + width/2 and below level - width/2; a threshold
    outside that range would mark everything or nothing. Bone (> 300 HU) and the skull are
    clipped by the default window (40, 400; top 240 HU), so their threshold becomes
    ``top - 0.1 x width`` (200 HU); the head threshold (-300 HU, air against tissue) becomes
    ``bottom + 0.1 x width`` (-120 HU). Blood (50-90 HU) and brain (0-80 HU) lie inside it.
    A wider window (``--ct-window 300,1600``) keeps bone, a narrower one (``40,120``) loses it;
    there the haemorrhage segmenter's skull threshold is kept above its blood range, halfway
    between 90 HU and the window's top (95 HU for ``40,120``; top - 0.1 x width would be 88 HU).
    """
    level, width = ct_window
    low, high = level - width / 2.0, level + width / 2.0
    dense = min(300.0, high - 0.1 * width)
    if segmenter == "ct_bone":
        return {"threshold": dense}
    if segmenter == "ct_haemorrhage":  # the skull must stay above the blood range (50-90 HU)
        return {"skull": min(300.0, max(dense, (BLOOD_TOP + high) / 2.0)), "head": max(-300.0, low + 0.1 * width)}
    return {}


class MaskSource:
    """The masks of analysis-grid images from one ``--masks`` spec (see the module docstring)."""

    def __init__(self, spec: str, *, ct_window: tuple[float, float] = (40.0, 400.0),
                 cache_dir: str | Path | None = None):
        self.kind, self.value = parse_masks(spec)
        self.spec = spec
        self.ct_window = tuple(float(v) for v in ct_window)
        self.params = ct_parameters(self.value, self.ct_window) if self.kind == "builtin" else {}
        self._temporary = None
        self._external = None
        if self.kind == "cmd":
            if cache_dir is None:
                self._temporary = tempfile.TemporaryDirectory(prefix=scratch_prefix("masks"))
                cache_dir = self._temporary.name
            self._external = ExternalSegmenter(self.value, Path(cache_dir))

    def mask(self, image: np.ndarray, row: dict) -> np.ndarray:
        """The boolean mask of one analysis-grid ``image`` on its grid. ``row`` holds its table
        row: ``source``, ``role``, ``root``, ``intensity`` (the normalisation used), ``shape``
        (stored shape), ``mask`` (manifest column) and, with ``--slices``, ``slice``."""
        grid = tuple(image.shape)
        if self.kind == "builtin":
            return builtin.segment(self.value, self._input(image, row), **self.params)
        if self.kind == "cmd":
            with tempfile.TemporaryDirectory(prefix=scratch_prefix("segment")) as folder:
                path = Path(folder) / "image.nii"
                _write_nifti(path, self._input(image, row) if row["intensity"] in CT_METHODS else image)
                mask = load_mask(self._external.mask(path))
            if mask.shape != grid:
                raise InputError(row["source"], f"the segmenter command wrote a mask of shape {mask.shape} for an "
                                                f"analysis-grid image of shape {grid} (command: {self.value})")
            return mask
        path = self._mask_path(row)
        mask = load_mask(path)
        shape = tuple(row["shape"])
        position = row.get("slice")
        if position is not None and not pd.isna(position) and mask.ndim == 3 and mask.shape == shape:
            mask, shape = mask[int(position)], shape[1:]
        if mask.shape != shape:
            raise InputError(str(path), f"mask has shape {mask.shape} but its image {row['source']} has shape {shape}")
        return _nearest(mask, grid)

    def describe(self) -> str:
        return {"builtin": f"built-in segmenter {self.value} on the analysis-grid image",
                "manifest": "the manifest's mask column, resampled to the analysis grid by nearest neighbour",
                "folder": f"mask files under {self.value}/<role>/ mirroring the image folders, resampled by nearest "
                          "neighbour",
                "cmd": f"external command {self.value!r} on the analysis-grid image written as NIfTI"}[self.kind]

    def _input(self, image: np.ndarray, row: dict) -> np.ndarray:
        """The image a built-in segmenter sees: HU for the CT segmenters (window inverted)."""
        if self.value not in CT_SEGMENTERS and self.kind == "builtin":
            return image
        if row["intensity"] not in CT_METHODS:
            raise InputError(row["source"], f"--masks {self.spec} needs CT images in Hounsfield units, but this image was "
                                            f"normalised with {row['intensity']!r}; scan with --intensity ct (and a "
                                            "--ct-window wide enough for the tissue, e.g. 40,400), or with --intensity "
                                            "ct8 --ct-window LEVEL,WIDTH for 8-bit exports of that CT window")
        level, width = self.ct_window
        return (level - width / 2.0) + image.astype(np.float32) * width

    def _mask_path(self, row: dict) -> Path:
        source = row["source"]
        if self.kind == "manifest":
            mask = row.get("mask")
            if mask is None or pd.isna(mask) or not str(mask):
                raise InputError(source, "--masks manifest: this image has no mask (give every image a path in the "
                                         "manifest's 'mask' column)")
            return Path(mask)
        root = Path(str(row["root"]))
        try:
            relative = Path(source).resolve().relative_to(root.resolve()) if root.is_dir() else None
        except ValueError:
            relative = None
        if relative is None:
            raise InputError(source, f"--masks {self.value}: a mask folder mirrors image folders, but this image is not "
                                     "inside a folder given as input; use a manifest with a 'mask' column instead")
        base = Path(self.value) / str(row["role"]) / relative
        name = base.name
        for suffix in (".nii.gz",) + tuple(s for s in (base.suffix,) if s):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        tried = [base] + [base.with_name(name + suffix) for suffix in MASK_SUFFIXES]
        for path in tried:
            if path.is_file():
                return path
        raise InputError(source, f"no mask found for this image; looked for {base} (or with a suffix "
                                 f"{', '.join(MASK_SUFFIXES)})")


def _nearest(mask: np.ndarray, grid: tuple[int, ...]) -> np.ndarray:
    """``mask`` on ``grid`` by nearest neighbour, sampling at the centres of the output voxels
    (the same cells that area averaging of the image pools)."""
    if mask.shape == tuple(grid):
        return mask
    axes = [np.minimum(((np.arange(g) + 0.5) * n / g).astype(np.int64), n - 1) for n, g in zip(mask.shape, grid)]
    return mask[np.ix_(*axes)]


def _write_nifti(path: Path, image: np.ndarray) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.ascontiguousarray(image.T, dtype=np.float32), np.eye(4)), str(path))
