"""Adapting a DeepSSIM checkpoint file to a training set without training it: the whitening and
the cosine -> SSIM map of :mod:`replicheck.embedders.fitting`, fitted on the training images and
written into a checkpoint. ``replicheck train deepssim`` ends with it; ``replicheck train
calibrate`` runs it on a model trained before, or on the bundled model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import Preprocessing, Reading
from ..embedders import bundled_deepssim
from ..embedders.common import images_digest
from ..embedders.deepssim import DeepSSIMEmbedder, load_checkpoint, save_checkpoint
from ..embedders.fitting import SSIM_MAP_SIZE, fit_ssim_map, whiten_network
from ..embedders.views import check_views
from ..records import InputError
from .data import read_training_set, require_subjects


def adapt_checkpoint(model_path: str | Path, images: np.ndarray, subjects: np.ndarray, out: str | Path, *,
                     whiten: bool = True, views: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> dict:
    """Fit the whitening (with ``whiten``) and then the cosine -> SSIM map of the DeepSSIM
    checkpoint ``model_path`` on ``images``, and write both, with the same weights, to ``out``
    (which may be the same file; written atomically). ``views`` (rotations, gammas) replaces the
    checkpoint's views first, since the map fits the score of the best-aligned views. Returns
    the map (:func:`fit_ssim_map`)."""
    model, meta = load_checkpoint(model_path)
    if views is not None:
        rotations, gammas = check_views(*views)
        meta = meta | {"embedding": meta.get("embedding", {}) | {"rotations": list(rotations), "gammas": list(gammas)}}
    whitening = {"images": whiten_network(model, images)} if whiten else meta.get("whitening")
    calibration = fit_ssim_map(DeepSSIMEmbedder.from_loaded(model, meta), images, subjects)
    # A scan of these same images (same grid and intensities) then keeps this fit as it is.
    fitted_on = images_digest(images) if whiten else meta.get("fitted_on")
    save_checkpoint(out, model, {key: value for key, value in meta.items() if key != "architecture"}
                    | {"ssim_calibration": calibration, "whitening": whitening, "fitted_on": fitted_on})
    return calibration


def adapt_checkpoint_from(model: str | Path, source: str, *, out: str | Path, reading: Reading = Reading(),
                          whiten: bool = True, rotations: tuple[float, ...] | None = None,
                          gammas: tuple[float, ...] | None = None) -> dict:
    """:func:`adapt_checkpoint` on the images of ``source`` at :data:`SSIM_MAP_SIZE` pixels.
    ``model`` is a checkpoint file or ``"deepssim"`` (the bundled model); ``rotations`` and
    ``gammas`` replace its views where given (None keeps them)."""
    path = bundled_deepssim() if str(model) == "deepssim" else Path(model)
    if not path.is_file():
        raise InputError(str(model), "no such checkpoint")
    _, meta = load_checkpoint(path)  # a clear error for a corrupt or foreign checkpoint before reading images
    views = None
    if rotations is not None or gammas is not None:
        kept = meta.get("embedding", {})
        views = check_views(tuple(kept.get("rotations", ())) if rotations is None else rotations,
                            tuple(kept.get("gammas", ())) if gammas is None else gammas)
    images, subjects = read_training_set(source, Preprocessing(grid=(SSIM_MAP_SIZE,) * 2, slices=True),
                                         reading=reading)
    require_subjects(subjects, source, "the calibration (pairs of different patients)")
    return adapt_checkpoint(path, images, subjects, out, whiten=whiten, views=views)
