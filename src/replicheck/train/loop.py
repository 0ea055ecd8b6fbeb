"""What every training run of replicheck shares: a split by subject, a time and step budget,
AdamW with gradient clipping, the best checkpoint by a validation criterion, and a
:class:`TrainingReport` at the end.

A method (:mod:`.deepssim`, :mod:`.contrastive`) supplies only what is its own: the batches of an
epoch, the loss of a batch, the validation metrics and how to save a checkpoint.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from .._version import __version__
from ..progress import Progress

logger = logging.getLogger(__name__)

LICENCE = "derived from the training images: the training data's licence terms apply"


@dataclass(frozen=True)
class SubjectSplit:
    """Training and validation subjects; no subject's images are on both sides."""

    train_subjects: tuple[str, ...]
    val_subjects: tuple[str, ...]
    is_val: np.ndarray  # per image: does it belong to a validation subject?

    @property
    def train_rows(self) -> np.ndarray:
        return np.flatnonzero(~self.is_val)

    @property
    def val_rows(self) -> np.ndarray:
        return np.flatnonzero(self.is_val)


def split_subjects(subjects: np.ndarray, val_fraction: float, rng: np.random.Generator) -> SubjectSplit:
    """A random ``val_fraction`` of the subjects (at least one, never all) held out for validation."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    subjects = np.asarray(subjects)
    unique = np.unique(subjects)
    if len(unique) < 2:
        raise ValueError(f"need images of at least 2 subjects to hold some out for validation, got {len(unique)}")
    unique = unique[rng.permutation(len(unique))]
    n_val = min(len(unique) - 1, max(1, round(val_fraction * len(unique))))
    train, val = np.sort(unique[n_val:]), np.sort(unique[:n_val])
    return SubjectSplit(tuple(str(s) for s in train), tuple(str(s) for s in val), np.isin(subjects, val))


@dataclass(frozen=True)
class Budget:
    """When training stops early: after ``max_seconds`` of wall time or ``max_steps`` optimiser steps."""

    max_seconds: float | None = None
    max_steps: int | None = None
    started: float = field(default_factory=time.perf_counter)

    def exhausted(self, steps: int) -> bool:
        return ((self.max_seconds is not None and time.perf_counter() - self.started > self.max_seconds)
                or (self.max_steps is not None and steps >= self.max_steps))


@dataclass(frozen=True)
class TrainingReport:
    """The outcome of a training run. ``best`` and ``initial`` are the validation metrics at the
    kept epoch and before training; ``history`` has one entry per epoch (``train_loss``, the
    validation metrics, ``steps``, ``elapsed_s``); ``details`` what only one method reports
    (DeepSSIM's pairs per SSIM band, the contrastive network's dimensionality and input size,
    the cosine -> SSIM map fitted after training)."""

    checkpoint: Path
    checkpoint_bytes: int
    parameters: int
    best_epoch: int
    epochs_run: int
    steps: int
    wall_s: float
    best: dict
    initial: dict
    history: tuple[dict, ...]
    split: SubjectSplit
    details: dict = field(default_factory=dict)

    @property
    def n_train_images(self) -> int:
        return int((~self.split.is_val).sum())

    @property
    def n_val_images(self) -> int:
        return int(self.split.is_val.sum())


def training_meta(method: str, *, description: str, images: np.ndarray, split: SubjectSplit, seed: int,
                  settings: dict, command: str | None = None, licence: str = LICENCE) -> dict:
    """The checkpoint's record of how it was trained (plain JSON values)."""
    return {
        "method": method, "data": description, "images": int(len(images)), "image_shape": list(images.shape[1:]),
        "train_subjects": list(split.train_subjects), "val_subjects": list(split.val_subjects),
        "seed": int(seed), "command": " ".join(sys.argv) if command is None else command, "licence": licence,
        "settings": settings, "replicheck": __version__, "torch": torch.__version__,
    }


def check_training_data(images: np.ndarray, subjects: np.ndarray, ndims: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``images`` as an array of (n, *spatial) with one of the allowed spatial ``ndims``, and one subject each."""
    images, subjects = np.asarray(images), np.asarray(subjects)
    if images.ndim - 1 not in ndims:
        shapes = " or ".join("(n, H, W)" if d == 2 else "(n, Z, Y, X)" for d in ndims)
        raise ValueError(f"images must have shape {shapes}, got {images.shape}")
    if subjects.shape != (len(images),):
        raise ValueError(f"subjects must have shape ({len(images)},), got {subjects.shape}")
    return images, subjects


def train(
    model: torch.nn.Module,
    *,
    epochs: int,
    epoch_batches: Callable[[], Iterable],
    loss: Callable[[object], torch.Tensor],
    evaluate: Callable[[], dict],
    criterion: str,
    save: Callable[[dict], None],
    split: SubjectSplit,
    out: Path,
    lr: float,
    weight_decay: float,
    clip: float,
    budget: Budget,
    label: str,
    progress: Progress | None = None,
    details: dict | None = None,
) -> TrainingReport:
    """Train ``model`` with AdamW for up to ``epochs`` epochs and keep the epoch whose validation
    ``criterion`` (a key of ``evaluate()``, lower is better) is lowest.

    ``epoch_batches()`` gives an epoch's batches (called before the model is set to training
    mode, so it may run the model to mine pairs); ``loss(batch)`` the loss of one batch;
    ``save(metrics)`` writes a checkpoint, each time validation improves and, if training never
    beats the untrained network, once at the end. The model ends with the kept epoch's weights.
    """
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    initial = evaluate()
    history: list[dict] = []
    best = {"epoch": 0, **initial}
    best_state = copy.deepcopy(model.state_dict())
    advance = (progress or Progress()).step(label, total=epochs)
    steps, stop = 0, False
    for epoch in range(1, epochs + 1):
        batches = epoch_batches()
        model.train()
        losses = []
        for batch in batches:
            value = loss(batch)
            optimiser.zero_grad(set_to_none=True)
            value.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimiser.step()
            losses.append(float(value.detach()))
            steps += 1
            stop = budget.exhausted(steps)
            if stop:
                break
        metrics = {"epoch": epoch, "train_loss": float(np.mean(losses)), **evaluate(), "steps": steps,
                   "elapsed_s": time.perf_counter() - budget.started}
        history.append(metrics)
        logger.info("%s, epoch %d: %s", label, epoch,
                    ", ".join(f"{key} {value:.4f}" for key, value in metrics.items() if isinstance(value, float)))
        if metrics[criterion] < best[criterion]:
            best = metrics
            best_state = copy.deepcopy(model.state_dict())
            save(best)
        advance()
        if stop:
            break
    model.load_state_dict(best_state)
    if best["epoch"] == 0:  # training never beat the untrained network: still write a checkpoint
        save(best)
    return TrainingReport(
        checkpoint=Path(out), checkpoint_bytes=Path(out).stat().st_size,
        parameters=sum(p.numel() for p in model.parameters()), best_epoch=best["epoch"], epochs_run=len(history),
        steps=steps, wall_s=time.perf_counter() - budget.started,
        best={key: value for key, value in best.items() if key != "elapsed_s"}, initial=initial,
        history=tuple(history), split=split, details=dict(details or {}))


def validation_record(metrics: dict) -> dict:
    """The metrics a checkpoint stores as its ``meta["validation"]``."""
    return {key: value for key, value in metrics.items() if key != "elapsed_s"}
