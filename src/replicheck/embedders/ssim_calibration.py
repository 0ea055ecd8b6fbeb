"""A monotone map from a DeepSSIM cosine to an SSIM estimate, fitted on training images alone.

DeepSSIM regresses SSIM with an embedding cosine, and its classes (Different / Similar /
Duplicate at 0.60 / 0.85) read that cosine as an SSIM. Ours orders pairs well but overestimates
their SSIM on the pairs a scan meets, the nearest ones: on the 2D CT-ICH benchmark's training
slices the nearest pairs had a median cosine of 0.972 and a median true SSIM of 0.625 (a model
trained on those slices), so nearly every pair fell in Duplicate (BENCHMARKS-feature.md). An
isotonic regression of the true SSIM on the cosine, fitted on exactly such pairs of the training
set (each image's nearest image of another subject and of its own subject, plus identical pairs
at (1, 1)), corrects the classes without changing any ranking; no synthetic image or label is used.

The SSIM is DeepSSIM's target (:func:`replicheck.measures.zscored_ssim`) computed on the images
as given, so give them on the grid a scan compares (``train calibrate`` reads them at 128 px, a
scan's default): the estimate is then the SSIM a user would compute on the scanned images. On the
CT benchmark, fitting at the network's 64-px input instead gave macro F1 0.607 (stepwise fit) on
misaligned pairs against 0.668 at 128 px, where the benchmark's labels are defined. The
calibration is a list of knots stored in the checkpoint's ``meta["ssim_calibration"]``: the
centres of the isotonic fit's steps, joined by straight lines, so that the map is strictly
increasing (:func:`estimate`) and orders images as the cosine does. The steps themselves tie
replicas with negatives: they cost TPR at 1% FPR 0.454 -> 0.360 on that benchmark.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import measures

MAX_IMAGES = 2000  # images whose nearest pairs are used: the cosine matrix is MAX_IMAGES^2
IDENTICAL_ANCHORS = 50  # weight of the (1, 1) point: an image against itself


def fit(embedder, images: np.ndarray, subjects: np.ndarray, *, seed: int = 0) -> dict:
    """Knots of the cosine -> SSIM map from ``images`` ((n, H, W) in [0, 1]) and their subject ids."""
    from sklearn.isotonic import IsotonicRegression

    images = np.asarray(images, dtype=np.float32)
    subjects = np.asarray(subjects).astype(str)
    if images.ndim != 3 or len(images) != len(subjects):
        raise ValueError(f"images must be (n, H, W) with one subject each, got {images.shape} and {subjects.shape}")
    if len(images) > MAX_IMAGES:
        keep = np.sort(np.random.default_rng(seed).choice(len(images), MAX_IMAGES, replace=False))
        images, subjects = images[keep], subjects[keep]
    similarity = _similarity(embedder, images)
    cosine, ssim = [], []
    for same_subject in (False, True):
        pair_cosine, partner = _nearest(similarity, subjects, same_subject)
        rows = np.flatnonzero(partner >= 0)
        cosine.append(pair_cosine[rows])
        ssim.append(np.array([measures.zscored_ssim(images[i], images[partner[i]][None])[0] for i in rows]))
    cosine, ssim = np.concatenate(cosine), np.concatenate(ssim)
    finite = np.isfinite(ssim)
    if finite.sum() < 2:
        raise ValueError("too few image pairs with an SSIM to fit a calibration (constant images?)")
    x = np.concatenate([cosine[finite], np.ones(IDENTICAL_ANCHORS)])
    y = np.concatenate([ssim[finite], np.ones(IDENTICAL_ANCHORS)])
    model = IsotonicRegression(y_min=-1.0, y_max=1.0, out_of_bounds="clip").fit(x, y)
    knots_x, knots_y = _step_centres(model.X_thresholds_, model.y_thresholds_)
    return {"cosine": knots_x, "ssim": knots_y,
            "pairs": int(finite.sum()), "images": int(len(images)),
            "median_cosine": float(np.median(cosine[finite])), "median_ssim": float(np.median(ssim[finite]))}


def estimate(calibration: dict, cosine: np.ndarray) -> np.ndarray:
    """The calibrated SSIM estimate of each cosine (NaN stays NaN): strictly increasing between the
    first and the last knot, constant beyond them."""
    cosine = np.asarray(cosine, dtype=np.float64)
    return np.interp(cosine, calibration["cosine"], calibration["ssim"])


def calibrate_checkpoint(model_path: str | Path, images: np.ndarray, subjects: np.ndarray, out: str | Path, *,
                         whiten: bool = True, views: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> dict:
    """Fit the whitening (with ``whiten``, :mod:`replicheck.embedders.whitening`) and then the
    calibration of the DeepSSIM checkpoint ``model_path`` on ``images``, and write both, with the
    same weights, to ``out`` (which may be the same file; written atomically). ``views``
    (rotations, gammas) replaces the checkpoint's views first, since the calibration fits the
    score of the best-aligned views."""
    from .deepssim import DeepSSIMEmbedder, check_views, load_checkpoint, save_checkpoint
    from .whitening import whiten_network

    model, meta = load_checkpoint(model_path)
    if views is not None:
        rotations, gammas = check_views(*views)
        meta = meta | {"embedding": meta.get("embedding", {}) | {"rotations": list(rotations), "gammas": list(gammas)}}
    whitening = {"images": whiten_network(model, images)} if whiten else meta.get("whitening")
    calibration = fit(DeepSSIMEmbedder.from_loaded(model, meta), images, subjects)
    save_checkpoint(out, model, {key: value for key, value in meta.items() if key != "architecture"}
                    | {"ssim_calibration": calibration, "whitening": whitening})
    return calibration


def _similarity(embedder, images: np.ndarray) -> np.ndarray:
    """The scan's cosine between every two of ``images``: the plain cosine, or with several views
    per image (DeepSSIM's rotations and gammas) that of the best-aligned views (``view_max_cosine``)."""
    if getattr(embedder, "views", 1) == 1:
        vectors = embedder.embed(images).astype(np.float64)
        return vectors @ vectors.T
    from .deepssim import view_max_cosine

    views = embedder.embed_views(images)  # (n, V, d)
    return view_max_cosine(views, views)


def _step_centres(xs: np.ndarray, ys: np.ndarray) -> tuple[list[float], list[float]]:
    """One knot per step of an isotonic fit (its thresholds ``xs``, values ``ys``): the mean x of
    the step and its value, so that consecutive knots rise strictly."""
    knots_x, knots_y, start = [], [], 0
    for end in range(1, len(xs) + 1):
        if end == len(xs) or ys[end] != ys[start]:
            knots_x.append(float(np.mean(xs[start:end])))
            knots_y.append(float(ys[start]))
            start = end
    return knots_x, knots_y


def _nearest(similarity: np.ndarray, subjects: np.ndarray, same_subject: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per image (row of the cosine matrix ``similarity``): the largest cosine with another image
    of another subject (or of its own), and that image's row (-1 when there is none)."""
    n = len(similarity)
    own = subjects[:, None] == subjects[None, :]
    allowed = (own & ~np.eye(n, dtype=bool)) if same_subject else ~own
    cosine = np.where(allowed, similarity, -np.inf)
    partner = cosine.argmax(axis=1)
    best = cosine[np.arange(n), partner]
    return best, np.where(np.isfinite(best), partner, -1)
