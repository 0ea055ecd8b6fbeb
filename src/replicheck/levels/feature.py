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
"""

from __future__ import annotations

import numpy as np

from ..embedders import Embedder
from ..embedders.ssim_map import deepssim_class
from ..embedders.views import view_max_cosine
from .base import LevelBase
from .feature_cache import FeatureCache, image_hashes


VIEW_DEPTH = 32  # shortlist rescored by the best-aligned views (several views per image)


class FeatureLevel(LevelBase):
    name = "feature"
    primary = "cosine"
    scores_from_vectors = True  # the index's inner product is the cosine: no image is read back

    def __init__(self, embedder: Embedder, *, cache: FeatureCache | None = None):
        self.embedder = embedder
        self.cache = cache
        self.measures = {"cosine": True}
        if getattr(embedder, "calibration", None) is not None:  # DeepSSIM's calibrated SSIM estimate, for its classes
            self.measures["ssim_estimate"] = True

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
            "ssim_calibration": ({key: value for key, value in self.embedder.calibration.items()
                                  if key not in ("cosine", "ssim")}
                                 if "ssim_estimate" in self.measures else None),
            # Called after the level's vectors are computed, so the counts cover this scan's images.
            "cache": self.cache.describe() if self.cache is not None else None,
        }
