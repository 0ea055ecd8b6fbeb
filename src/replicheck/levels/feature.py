"""The feature level: images compared through an embedder's unit vectors (RELICT's feature level,
DeepSSIM, Dar et al.).

An embedding's cosine is an inner product, so the index's scores are already the measure: the
level rescores candidates from the search vectors (``rescore_vectors``) and never reads pixels
back. Which network embeds is the embedder's business (:mod:`replicheck.embedders`); with a
:class:`~replicheck.levels.feature_cache.FeatureCache` an image already embedded by the same network in an
earlier scan is looked up instead of embedded again.

An embedder with several views per image (``views > 1``, ``embed_views``: DeepSSIM's rotations and gammas)
gives each image one search vector that concatenates its V unit views, divided by sqrt(V). The
index's inner product is then the mean cosine of like views, a shortlist; the level rescores the
shortlist by the cosine of the best-aligned views
(:func:`~replicheck.embedders.views.view_max_cosine`), which undoes a rotation or a gamma of the copy.

**Adaptation** (``adapt="fit"``, the default; :meth:`FeatureLevel.prepare`): a DeepSSIM model's
whitening and cosine -> SSIM map describe the images they were fitted on. When those were not this
scan's training images (the bundled model: IXI brain MRI), the level refits both on up to
:data:`ADAPT_IMAGES` of them before embedding anything: no synthetic image and no label is used, the
weights stay, and summary.json records what was fitted. On 2D CT the same refit (as ``train
calibrate``) raised the bundled model's TPR at 1% FPR on flipped, rotated and gamma-changed copies
from 0.71 to 0.89. A model fitted on exactly these images (same pixels on the same grid: their
:func:`~replicheck.embedders.common.images_digest`) is kept as it is, so a scan with a model that
``train deepssim`` or ``train calibrate`` made on the same training set embeds exactly as before.
"""

from __future__ import annotations

import numpy as np

import time

from ..embedders import Embedder
from ..embedders.common import images_digest
from ..embedders.deepssim import DeepSSIMEmbedder
from ..embedders.fitting import adaptation_steps, adapted
from ..embedders.ssim_map import deepssim_class
from ..embedders.views import view_max_cosine
from ..progress import Progress
from .base import LevelBase
from .feature_cache import FeatureCache, image_hashes


VIEW_DEPTH = 32  # shortlist rescored by the best-aligned views (several views per image)
ADAPT_IMAGES = 4000  # training images (2D, or slices of volumes) the whitening and the map are refitted on
DIGEST_BATCH = 256  # training images read at a time to compute their digest


class FeatureLevel(LevelBase):
    name = "feature"
    primary = "cosine"
    scores_from_vectors = True  # the index's inner product is the cosine: no image is read back

    def __init__(self, embedder: Embedder, *, cache: FeatureCache | None = None, cache_folder: str | None = None,
                 adapt: str = "fit", seed: int = 0):
        self.cache_folder = cache_folder if cache is None else cache.folder
        self.adapt = adapt
        self.seed = seed
        self.adaptation: dict = {"adapted": False, "why": "not prepared"}
        self.use_embedder(embedder, cache=cache)

    def use_embedder(self, embedder: Embedder, *, cache: FeatureCache | None = None) -> None:
        """Embed with ``embedder`` from now on (a cache, if the scan has one, keyed by its digest)."""
        self.embedder = embedder
        self.cache = cache or (FeatureCache(self.cache_folder, embedder) if self.cache_folder else None)
        self.measures = {"cosine": True}
        if getattr(embedder, "calibration", None) is not None:  # DeepSSIM's calibrated SSIM estimate, for its classes
            self.measures["ssim_estimate"] = True

    def prepare(self, store, subjects: np.ndarray, *, progress=None) -> None:
        """Refit the embedder's whitening and SSIM map on the training images (``store``, with their
        ``subjects``) unless ``adapt`` is "none", the embedder has neither, or it was fitted on
        exactly these images; :attr:`adaptation` says which, and what was fitted."""
        if self.adapt == "none":
            self.adaptation = {"adapted": False, "why": "switched off (--no-adapt)"}
            return
        if not isinstance(self.embedder, DeepSSIMEmbedder):
            self.adaptation = {"adapted": False, "why": f"{self.embedder.name} has no whitening or SSIM map to refit"}
            return
        tick = time.perf_counter()
        digest = images_digest(store.read(np.arange(start, min(start + DIGEST_BATCH, len(store))))
                               for start in range(0, len(store), DIGEST_BATCH))
        if getattr(self.embedder, "fitted_on", None) == digest:
            self.adaptation = {"adapted": False, "why": "fitted on these training images", "training_digest": digest}
            return
        images, subjects = _adaptation_sample(store, np.asarray(subjects), ADAPT_IMAGES, self.seed,
                                              volume_slices=getattr(self.embedder, "volume_slices", None))
        if len(np.unique(subjects)) < 2:
            self.adaptation = {"adapted": False, "why": "the SSIM map needs images of at least 2 subjects"}
            return
        before = self.embedder.digest
        advance = (progress or Progress()).step(f"{self.name}: adapting to training",
                                                adaptation_steps(len(images), self.embedder.model.whitened))
        embedder, fitted = adapted(self.embedder, images, subjects, digest=digest, seed=self.seed, advance=advance)
        self.use_embedder(embedder)
        self.adaptation = {"adapted": True, "what": "whitening and cosine -> SSIM map refitted on the training images",
                           **fitted, "training_digest": digest, "embedder_digest_before": before,
                           "seconds": round(time.perf_counter() - tick, 2)}

    def vectors(self, images: np.ndarray) -> np.ndarray:
        """(b, *grid) images -> (b, dim) unit float32 embeddings, from the cache where it has them.

        Only the images the cache lacks are embedded (each distinct image once), in their order;
        with an empty cache and no repeated image the embedder sees exactly the batch it would
        see without a cache, so a first cached scan gives the same vectors as an uncached one.
        """
        if self.cache is None:
            return self._embed(images)
        keys = image_hashes(images)
        vectors, found = self.cache.get(keys)
        missing = np.flatnonzero(~found)
        if len(missing):
            first = {}  # distinct missing image -> its first row in the batch
            for row in missing:
                first.setdefault(keys[row], int(row))
            rows = np.fromiter(first.values(), dtype=np.int64, count=len(first))
            fresh = self._embed(images if len(rows) == len(images) else images[rows])
            self.cache.put(list(first), fresh)
            position = {key: i for i, key in enumerate(first)}
            vectors[missing] = fresh[[position[keys[row]] for row in missing]]
        return vectors

    def depth(self, ndim: int, k: int) -> int:
        """Candidates rescored per query: the k nearest when the index's score is the measure; with
        several views, :data:`VIEW_DEPTH` from the like-view shortlist, since a rotated copy's
        source can rank below other images there until its views are aligned."""
        return k if self.views == 1 else max(k, VIEW_DEPTH)

    @property
    def views(self) -> int:
        return int(getattr(self.embedder, "views", 1))

    def _embed(self, images: np.ndarray) -> np.ndarray:
        if self.views == 1:
            return np.ascontiguousarray(self.embedder.embed(images), dtype=np.float32)
        rows = self.embedder.embed_views(images)  # (b, V, d) unit rows
        return np.ascontiguousarray(rows.reshape(len(rows), -1) / np.sqrt(self.views), dtype=np.float32)

    def rescore_vectors(self, query: np.ndarray, candidates: np.ndarray) -> dict[str, np.ndarray]:
        if self.views == 1:
            cosine = candidates.astype(np.float64) @ query.astype(np.float64)
        else:
            scale = np.sqrt(self.views)
            cosine = view_max_cosine(query.reshape(self.views, -1) * scale,
                                     candidates.reshape(len(candidates), self.views, -1) * scale)
        cosine = np.clip(cosine, -1.0, 1.0)
        if "ssim_estimate" in self.measures:
            return {"cosine": cosine, "ssim_estimate": self.embedder.estimate_ssim(cosine)}
        return {"cosine": cosine}

    def rescore(self, query: np.ndarray, candidates: np.ndarray, *, keep: int | None = None) -> dict[str, np.ndarray]:
        """Cosine of freshly embedded images (the search uses :meth:`rescore_vectors` instead)."""
        return self.rescore_vectors(self.vectors(query[None])[0], self.vectors(candidates))

    def labels(self, best: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Per synthetic image, DeepSSIM's class of its nearest training image (Different /
        Similar / Duplicate at SSIM 0.60 / 0.85) from the level's best values per measure: from
        the calibrated SSIM estimate when the model has one, else from the cosine read as an
        SSIM (the paper's reading, which runs high: docs/design.md). Other embedders: none."""
        if not hasattr(self.embedder, "estimate_ssim"):
            return {}
        values = best["ssim_estimate" if "ssim_estimate" in self.measures else "cosine"]
        return {"deepssim_class": np.array([deepssim_class(float(v)) for v in values], dtype=object)}

    def describe(self) -> dict:
        return {
            "primary_measure": "cosine",
            "embedder": {"name": self.embedder.name, "version": self.embedder.version,
                         "digest": self.embedder.digest, "dim": self.embedder.dim},
            "shortlist": ("inner product of L2-normalised embeddings (faiss IndexFlatIP); exact" if self.views == 1 else
                          f"mean cosine of like views of {self.views} (faiss IndexFlatIP), rescored by the "
                          f"best-aligned views"),
            "views": ({"count": self.views, "rotations": list(getattr(self.embedder, "rotations", ())),
                       "gammas": list(getattr(self.embedder, "gammas", ()))} if self.views > 1 else None),
            "adaptation": self.adaptation,
            "ssim_calibration": ({key: value for key, value in self.embedder.calibration.items()
                                  if key not in ("cosine", "ssim")}
                                 if "ssim_estimate" in self.measures else None),
            # Called after the level's vectors are computed, so the counts cover this scan's images.
            "cache": self.cache.describe() if self.cache is not None else None,
        }


def _adaptation_sample(store, subjects: np.ndarray, most: int, seed: int,
                       volume_slices=None) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``most`` 2D training images (slices of volumes, each with its volume's subject) in
    [0, 1], chosen at random but reproducibly, in store order. Of a volume only the 2D images the
    embedder embeds (``volume_slices(volumes)``, the embedder's own) are taken: the whitening and
    the map then describe what the embedder sees, and fitting costs no more than embedding."""
    n = len(store)
    volumes = len(store.shape) == 3
    if volumes and volume_slices is not None:
        # how many 2D images the embedder takes of a volume, asked of a zero volume that takes no memory
        per_image = volume_slices(np.broadcast_to(np.float32(0.0), (1, *store.shape))).shape[1]
    else:
        per_image = store.shape[0] if volumes else 1
    images_needed = max(1, -(-most // per_image))
    rows = np.arange(n) if n <= images_needed else np.sort(np.random.default_rng(seed).choice(n, images_needed, replace=False))
    images = store.read(rows)
    if images.ndim == 4:  # volumes: their axial slices, as the embedder sees them
        if volume_slices is not None:
            images = volume_slices(images)
        subjects = np.repeat(subjects[rows], images.shape[1])
        images = images.reshape(-1, *images.shape[2:])
        if len(images) > most:
            keep = np.sort(np.random.default_rng(seed).choice(len(images), most, replace=False))
            images, subjects = images[keep], subjects[keep]
        return np.ascontiguousarray(images, dtype=np.float32), subjects
    return np.ascontiguousarray(images, dtype=np.float32), subjects[rows]

