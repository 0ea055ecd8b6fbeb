"""PCA whitening of an embedding, fitted on the training images (our addition to DeepSSIM).

A DeepSSIM network trained on one modality puts all of that modality's images in a narrow cone:
on the CT-ICH benchmark the nearest other-patient or neighbouring slice of a training image had a
cosine of 0.998-0.999, and a copy rotated by 5 degrees or blurred slightly fell below that. The
cone's directions are what every image shares; the differences that tell one slice from the next
live in the small-variance directions. Centring the embeddings on their mean and scaling every
principal direction to unit variance (Jegou and Chum, ECCV 2012, for image retrieval) spreads the
cone, so that the cosine of two whitened vectors compares what is particular to each image.

The fit needs no labels: the mean and covariance of the training images' own embeddings
(:func:`replicheck.embedders.fitting.whiten_network` embeds them). The shrinkage ``SHRINKAGE`` (a share
of the mean eigenvalue added to every eigenvalue) keeps directions with almost no variance from
being amplified into noise.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["fit_whitening", "SHRINKAGE"]

SHRINKAGE = 0.01  # share of the mean eigenvalue added to each eigenvalue before 1/sqrt


def fit_whitening(rows: np.ndarray, *, shrinkage: float = SHRINKAGE) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, projection) such that ``(x - mean) @ projection`` has (nearly) identity covariance
    over ``rows`` ((n, d) embeddings); float32 tensors of shapes (d,) and (d, d)."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or len(rows) < 2:
        raise ValueError(f"whitening needs at least 2 embeddings as an (n, d) array, got shape {rows.shape}")
    if shrinkage <= 0:
        raise ValueError(f"shrinkage must be positive, got {shrinkage}")
    mean = rows.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(rows - mean, rowvar=False, bias=True))
    eigenvalues = np.clip(eigenvalues, 0.0, None)
    scale = 1.0 / np.sqrt(eigenvalues + shrinkage * max(eigenvalues.mean(), 1e-12))
    projection = eigenvectors * scale  # columns: principal directions, each scaled to unit variance
    return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(projection.astype(np.float32))
