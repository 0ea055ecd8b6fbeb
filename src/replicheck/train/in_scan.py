"""A DeepSSIM model trained on a scan's own training images (``replicheck scan --adapt
train[=MINUTES]``), self-supervised, and kept for later scans of the same training set.

Why: the bundled model was trained on brain MRI; on another modality its feature level finds flipped
and rotated copies only after its whitening is refitted (the default, :mod:`replicheck.levels.feature`),
and best after training on that modality (issue #18: on misaligned CT copies TPR at 1% FPR 0.55
as shipped, 0.80 refitted, 0.975 after 10 minutes of training). Training needs no label: DeepSSIM
learns to predict the SSIM of pairs of training images under augmentations.

The model is cached as ``deepssim-<digest>.pt`` in ``model_cache`` (default: the user's cache
folder, ``$XDG_CACHE_HOME/replicheck/models``), where ``<digest>`` is the training set's
:func:`~replicheck.embedders.common.images_digest` on the scan's grid: a later scan of the same
training images (same files, grid and intensity settings) loads it instead of training again.
Delete the file to train anew (e.g. with more minutes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..config import FeatureOptions
from ..embedders.common import images_digest, resize
from ..embedders.deepssim import DeepSSIMEmbedder, load_checkpoint, save_checkpoint
from ..embedders.fitting import adapted
from ..progress import Progress
from ..records import ReplicheckError
from ..workspace import scratch
from .deepssim import train_deepssim

TRAIN_SIZE = 64  # px: the network's input, as `replicheck train deepssim` trains it
MAX_TRAIN_IMAGES = 20000  # training images (or slices) the model learns from, at most
FIT_IMAGES = 4000  # ... its whitening and cosine -> SSIM map are fitted on, at most
DIGEST_BATCH = 256


def default_model_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "replicheck" / "models"


def scan_trained_embedder(store, subjects: np.ndarray, options: FeatureOptions, *, seed: int = 0,
                          progress: Progress | None = None) -> DeepSSIMEmbedder:
    """The DeepSSIM embedder trained on the images of ``store`` (a scan's training set on its
    analysis grid, with ``subjects``): from the cache when it holds one for these images, else
    trained for ``options.adapt_minutes`` and cached."""
    subjects = np.asarray(subjects).astype(str)
    if len(np.unique(subjects)) < 2:
        raise ReplicheckError("--adapt train needs training images of at least 2 subjects (validation is split by "
                              "subject); give subject ids with a manifest's subject column or --subject-regex")
    digest = images_digest(store.read(np.arange(start, min(start + DIGEST_BATCH, len(store))))
                           for start in range(0, len(store), DIGEST_BATCH))
    folder = Path(options.model_cache) if options.model_cache else default_model_cache()
    path = folder / f"deepssim-{digest[:24]}.pt"
    if path.is_file():
        model, meta = load_checkpoint(path)
        if meta.get("fitted_on") == digest:
            return DeepSSIMEmbedder.from_loaded(model, meta, device=options.device, batch_size=options.batch_size)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ReplicheckError(f"--model-cache {folder}: cannot create the folder for trained models ({error})") from None
    images, image_subjects = _slices(store, subjects, MAX_TRAIN_IMAGES, seed)
    small = resize(torch.from_numpy(images)[:, None], (TRAIN_SIZE, TRAIN_SIZE))[:, 0].numpy()
    with scratch("train") as folder:
        trained = folder / "model.pt"
        train_deepssim(small, image_subjects, out=trained, size=TRAIN_SIZE, epochs=1000, seed=seed,
                       max_seconds=60.0 * options.adapt_minutes, device=options.device, progress=progress,
                       description=f"replicheck scan --adapt train={options.adapt_minutes:g}: the scan's training images")
        model, meta = load_checkpoint(trained)
    raw = DeepSSIMEmbedder.from_loaded(model, meta, device=options.device, batch_size=options.batch_size)
    keep = np.random.default_rng(seed).permutation(len(images))[:FIT_IMAGES]
    fitted, record = adapted(raw, images[np.sort(keep)], image_subjects[np.sort(keep)], digest=digest, seed=seed,
                             whiten=True)
    save_checkpoint(path, fitted.model.cpu(), {key: value for key, value in meta.items() if key != "architecture"}
                    | {"ssim_calibration": fitted.calibration, "whitening": {"images": record["whitening_images"]},
                       "fitted_on": digest, "trained_in_scan": {"minutes": options.adapt_minutes,
                                                                "images": int(len(images))}})
    return fitted


def _slices(store, subjects: np.ndarray, most: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``most`` 2D training images (the axial slices of volumes), in store order."""
    per_image = store.shape[0] if len(store.shape) == 3 else 1
    wanted = max(1, -(-most // per_image))
    rows = np.arange(len(store)) if len(store) <= wanted else np.sort(
        np.random.default_rng(seed).choice(len(store), wanted, replace=False))
    images = store.read(rows)
    subjects = subjects[rows]
    if images.ndim == 4:
        subjects = np.repeat(subjects, images.shape[1])
        images = images.reshape(-1, *images.shape[2:])
    return np.ascontiguousarray(images[:most], dtype=np.float32), subjects[:most]
