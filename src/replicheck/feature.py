"""The feature level: images compared through an embedder's unit vectors (RELICT's feature level,
DeepSSIM, Dar et al.).

An embedding's cosine is an inner product, so the index's scores are already the measure: the
level rescores candidates from the search vectors (``rescore_vectors``) and never reads pixels
back. Which network embeds is the embedder's business (:mod:`replicheck.embedders`).
"""

from __future__ import annotations

import numpy as np

from .embedders import Embedder


class FeatureLevel:
    name = "feature"
    primary = "cosine"

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self.measures = {"cosine": True}

    def vectors(self, images: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.embedder.embed(images), dtype=np.float32)

    def rescore_vectors(self, query: np.ndarray, candidates: np.ndarray) -> dict[str, np.ndarray]:
        cosine = candidates.astype(np.float64) @ query.astype(np.float64)
        return {"cosine": np.clip(cosine, -1.0, 1.0)}

    def rescore(self, query: np.ndarray, candidates: np.ndarray, *, keep: int | None = None) -> dict[str, np.ndarray]:
        """Cosine of freshly embedded images (the search uses :meth:`rescore_vectors` instead)."""
        return self.rescore_vectors(self.vectors(query[None])[0], self.vectors(candidates))

    def describe(self) -> dict:
        return {
            "primary_measure": "cosine",
            "embedder": {"name": self.embedder.name, "version": self.embedder.version,
                         "digest": self.embedder.digest, "dim": self.embedder.dim},
            "shortlist": "inner product of L2-normalised embeddings (faiss IndexFlatIP); exact",
        }
