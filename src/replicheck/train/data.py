"""The training images a training command reads: every image of a source, prepared on the
network's grid, stacked in memory with its subject id (training sets are read whole: a network
trains on all of them every epoch)."""

from __future__ import annotations

import numpy as np

from ..config import Preprocessing, Reading
from ..images import discover, stream
from ..preprocess import prepare
from ..records import ReplicheckError


def read_training_set(source: str, settings: Preprocessing, *, reading: Reading = Reading(),
                      num_workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Every image of ``source`` prepared with ``settings`` (each slice kept by ``slices=True`` a
    row of its own), in file and slice order, as float32 in [0, 1], with its subject id."""
    image_set = discover(source, role="training", subject_regex=reading.subject_regex, image_ndim=reading.image_ndim)
    return read_prepared(image_set, settings, num_workers=num_workers)


def read_prepared(image_set, settings: Preprocessing, *, num_workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Every image of ``image_set`` (:func:`replicheck.images.discover`) prepared with ``settings``,
    stacked as float32, with subject ids."""
    arrays, subjects = [], []
    for ref, image in stream(image_set.refs, workers=num_workers):
        prepared = prepare(image, settings)
        arrays.extend(prepared.arrays)
        subjects.extend([ref.subject] * len(prepared.arrays))
    return np.stack(arrays).astype(np.float32), np.asarray(subjects)


def require_subjects(subjects: np.ndarray, source: str, what: str) -> None:
    """At least two subjects: validation and the calibration pairs are split by subject."""
    if len(np.unique(subjects)) < 2:
        raise ReplicheckError(f"{source}: {what} needs images of at least 2 subjects (validation is split by "
                              f"subject); give subject ids with a manifest's subject column or --subject-regex")
