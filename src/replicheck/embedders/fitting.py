"""Adapting a DeepSSIM checkpoint to a training set without training it: the PCA whitening of its
embedding and the cosine -> SSIM map, both fitted on the training images alone (no synthetic
image, no label). ``replicheck train deepssim`` ends with it; ``replicheck train calibrate``
runs it on a model trained before, or on the bundled model, and a scan runs it on its own training
images when the model was fitted on others (:meth:`replicheck.embedders.deepssim.DeepSSIMEmbedder.adapted`).

**Whitening** (:mod:`replicheck.embedders.whitening`): the mean and covariance of the training
images' un-whitened embeddings (and of their four flips, so that the covariance is as
flip-symmetric as the flip-averaged embedding).

**The cosine -> SSIM map** (:mod:`replicheck.embedders.ssim_map`): DeepSSIM's classes read the
cosine as an SSIM. Ours orders pairs well but overestimates the SSIM of the pairs a scan meets,
the nearest ones: on the 2D CT-ICH benchmark's training slices the nearest pairs had a median
cosine of 0.972 and a median true SSIM of 0.625 (a model trained on those slices), so nearly every
pair fell in Duplicate (BENCHMARKS-feature.md). An isotonic regression of the true SSIM on the
cosine, fitted on exactly such pairs of the training set (each image's nearest image of another
subject and of its own subject, plus identical pairs at (1, 1)), corrects the classes without
changing any ranking.

The SSIM is DeepSSIM's target (:func:`replicheck.measures.zscored_ssim`) computed on the images
as given, so give them on the grid a scan compares (:data:`SSIM_MAP_SIZE`, a scan's default): the
estimate is then the SSIM a user would compute on the scanned images. On the CT benchmark,
fitting at the network's 64-px input instead gave macro F1 0.607 (stepwise fit) on misaligned
pairs against 0.668 at 128 px, where the benchmark's labels are defined. The map's knots are the
centres of the isotonic fit's steps, joined by straight lines, so that it is strictly increasing
and orders images as the cosine does; the steps themselves tie replicas with negatives: they cost
TPR at 1% FPR 0.454 -> 0.360 on that benchmark.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from .. import measures
from .common import embed_in_batches, flips
from .deepssim import DeepSSIMEmbedder, DeepSSIMNet, preprocess
from .views import view_max_cosine
from .whitening import fit_whitening

SSIM_MAP_SIZE = 128  # px: the map's SSIM is taken on the grid a scan compares by default
MAX_WHITENING_IMAGES = 20000  # images the covariance is estimated from (a random subset of larger sets)
MAX_MAP_IMAGES = 2000  # images whose nearest pairs fit the map: the cosine matrix is MAX_MAP_IMAGES^2
IDENTICAL_ANCHORS = 50  # weight of the (1, 1) point of the map: an image against itself


def adapted(embedder: DeepSSIMEmbedder, images: np.ndarray, subjects: np.ndarray, *, digest: str, seed: int = 0,
            whiten: bool | None = None, advance=None) -> tuple[DeepSSIMEmbedder, dict]:
    """A copy of ``embedder`` whose whitening and cosine -> SSIM map are refitted on ``images``
    (2D (n, H, W) in [0, 1], with their ``subjects``), which a scan takes from its own training set
    (``digest``: :func:`~replicheck.embedders.common.images_digest` of all of it, recorded as the
    copy's ``fitted_on``), and what was fitted. The weights stay; ``embedder`` is unchanged.
    ``whiten``: fit a whitening (default: only refit one the model has). ``advance(n)``: called as
    images are embedded, :func:`adaptation_steps` in all (a progress bar)."""
    model = copy.deepcopy(embedder.model).cpu()
    whiten = model.whitened if whiten is None else whiten
    whitened = whiten_network(model, images, seed=seed, batch_size=embedder.batch_size, advance=advance) if whiten else 0
    fresh = DeepSSIMEmbedder(model, flip_average=embedder.flip_average, rotations=embedder.rotations,
                             gammas=embedder.gammas, device=str(embedder.device), batch_size=embedder.batch_size,
                             fitted_on=digest, max_slices=embedder.max_slices)
    fresh.remember()  # the map embeds these images with the final whitening: a scan's training set reuses them
    fresh.calibration = fit_ssim_map(fresh, images, subjects, seed=seed, advance=advance)
    fresh.remember(False)
    return fresh, {"whitening_images": whitened, "map_pairs": fresh.calibration["pairs"],
                   "map_images": fresh.calibration["images"]}


def adaptation_steps(n_images: int, whiten: bool = True) -> int:
    """How many images :func:`adapted` embeds for ``n_images`` (its progress bar's total)."""
    return (min(n_images, MAX_WHITENING_IMAGES) if whiten else 0) + min(n_images, MAX_MAP_IMAGES)


def whiten_network(model: DeepSSIMNet, images: np.ndarray, *, seed: int = 0, batch_size: int = 256,
                   advance=None) -> int:
    """Fit ``model``'s whitening on the un-whitened embeddings of ``images`` ((n, H, W) in
    [0, 1]) and of their four flips, and set it. Returns the number of images used (at most
    :data:`MAX_WHITENING_IMAGES`)."""
    images = np.asarray(images)
    if len(images) > MAX_WHITENING_IMAGES:
        images = images[np.sort(np.random.default_rng(seed).choice(len(images), MAX_WHITENING_IMAGES, replace=False))]
    model.eval()
    device = next(model.parameters()).device
    turns = flips(2)

    def rows(chunk: torch.Tensor) -> torch.Tensor:  # each image's un-whitened rows, one per flip, side by side
        x = preprocess(chunk.to(device), model.input_size)
        return torch.cat([model(x.flip(axes) if axes else x, whiten=False) for axes in turns], dim=1)

    embedded = embed_in_batches(images, batch_size, len(turns) * model.dim, rows, advance).numpy()
    model.set_whitening(*fit_whitening(embedded.reshape(-1, model.dim)))
    return len(images)


def fit_ssim_map(embedder, images: np.ndarray, subjects: np.ndarray, *, seed: int = 0, advance=None) -> dict:
    """Knots of the cosine -> SSIM map from ``images`` ((n, H, W) in [0, 1]) and their subject ids,
    with the numbers of pairs and images used and the median cosine and SSIM of those pairs."""
    from sklearn.isotonic import IsotonicRegression

    images = np.asarray(images, dtype=np.float32)
    subjects = np.asarray(subjects).astype(str)
    if images.ndim != 3 or len(images) != len(subjects):
        raise ValueError(f"images must be (n, H, W) with one subject each, got {images.shape} and {subjects.shape}")
    if len(images) > MAX_MAP_IMAGES:
        keep = np.sort(np.random.default_rng(seed).choice(len(images), MAX_MAP_IMAGES, replace=False))
        images, subjects = images[keep], subjects[keep]
    similarity = _similarity(embedder, images, advance)
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


def _similarity(embedder, images: np.ndarray, advance=None) -> np.ndarray:
    """The scan's cosine between every two of ``images``: the plain cosine, or with several views
    per image (DeepSSIM's rotations and gammas) that of the best-aligned views."""
    if getattr(embedder, "views", 1) == 1:
        vectors = embedder.embed(images).astype(np.float64)
        if advance is not None:
            advance(len(images))
        return vectors @ vectors.T
    views = embedder.embed_views(images, advance)  # (n, V, d)
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
