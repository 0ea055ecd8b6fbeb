"""Training Dar et al.'s contrastive copy detector on the user's training images
(``replicheck train contrastive``).

The recipe of Dar et al. (Nature Biomedical Engineering 2025; arXiv 2402.01054; METHODS.md
section 3): each training image and an augmented copy of it (rotation +-5 degrees, flips) are a
positive pair, the other images of the batch are negatives, and the loss is NT-Xent at
temperature 0.07 (:func:`replicheck.embedders.contrastive.nt_xent`). Both views are augmented
independently. The network (:class:`~replicheck.embedders.contrastive.ContrastiveNet`) is 2D or
3D by the dimensionality of ``images``.

Images are split into training and validation **by subject**, so no patient is in both; the
checkpoint kept is the one with the lowest validation loss, computed on views drawn from a fixed
seed so that every epoch is scored on the same views and batches. Validation also reports the
share of held-out images whose augmented copy is most similar to the image itself among all
held-out images (``val_top1``), the copy-retrieval rate the loss is a proxy for.
"""

from __future__ import annotations

import copy
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .augment import _warp
from .embedders.contrastive import DEFAULTS, TEMPERATURE, ContrastiveNet, minmax, nt_xent, resize, save_checkpoint
from .progress import Progress
from .records import ReplicheckError
from .train_deepssim import _split_subjects, read_prepared

__all__ = ["train_contrastive", "dar_augment", "read_training_images", "ROTATE"]

logger = logging.getLogger(__name__)

ROTATE = 5.0  # largest rotation in degrees (Dar et al.)


def dar_augment(x: torch.Tensor, *, generator: torch.Generator | None = None, degrees: float = ROTATE) -> torch.Tensor:
    """Dar et al.'s augmentation of a (b, 1, H, W) or (b, 1, Z, Y, X) batch; ``x`` is not changed.

    Each image is rotated by an angle uniform in [-``degrees``, ``degrees``] about its centre, in
    the (y, x) plane (every slice of a volume by the same angle; bilinear, border padding; the
    resampler of :mod:`replicheck.augment`), then each spatial axis is flipped with probability
    1/2. Random numbers come from ``generator`` on the CPU, so a seeded generator repeats a batch.
    """
    if x.ndim not in (4, 5) or x.shape[1] != 1:
        raise ValueError(f"x must have shape (b, 1, H, W) or (b, 1, Z, Y, X), got {tuple(x.shape)}")
    b, ndim = x.shape[0], x.ndim - 2
    angle = (2 * torch.rand(b, generator=generator, dtype=torch.float64) - 1) * degrees
    flip = torch.rand((b, ndim), generator=generator, dtype=torch.float64) < 0.5
    planes = x.reshape((-1, 1) + tuple(x.shape[-2:]))  # 3D: (b * Z, 1, Y, X), volume-major
    per_plane = angle.repeat_interleave(planes.shape[0] // b).to(x.device)
    out = _warp(planes, per_plane, torch.zeros((len(planes), 2), dtype=torch.float64, device=x.device),
                torch.ones(len(planes), dtype=torch.float64, device=x.device)).reshape(x.shape)
    shape = (-1,) + (1,) * (x.ndim - 1)
    for axis in range(ndim):
        out = torch.where(flip[:, axis].to(x.device).view(shape), out.flip(2 + axis), out)
    return out


def train_contrastive(
    images: np.ndarray,
    subjects: np.ndarray,
    *,
    out: str | Path,
    size: int | None = None,
    epochs: int = 20,
    batch_size: int = 64,
    temperature: float = TEMPERATURE,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    clip: float = 1.0,
    val_fraction: float = 0.15,
    seed: int = 0,
    widths: tuple[int, ...] | None = None,
    dim: int | None = None,
    flip_average: bool = True,
    max_seconds: float | None = None,
    max_steps: int | None = None,
    description: str = "",
    licence: str = "derived from the training images: the training data's licence terms apply",
    command: str | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> dict:
    """Train a :class:`~replicheck.embedders.contrastive.ContrastiveNet` and save the best checkpoint to ``out``.

    Parameters
    ----------
    images : (n, H, W) images (a 2D network) or (n, Z, Y, X) volumes (a 3D network), intensities in [0, 1].
    subjects : (n,) subject (patient) ids; the train/validation split keeps each subject whole.
    out : checkpoint file to write (``model.pt``), written atomically each time validation improves.
    size : side of the network's input (default 64 pixels in 2D, 32 voxels in 3D); images are
        resized to it once, before augmentation.
    epochs, batch_size : passes over the training images, and images per step (each gives a
        positive pair; the other 2 * batch_size - 2 views are its negatives). The last partial
        batch is merged into nearly equal batches. ``max_seconds`` / ``max_steps`` stop early.
    temperature : NT-Xent temperature (Dar et al.: 0.07).
    lr, weight_decay, clip : AdamW settings and the gradient-norm clip.
    val_fraction : share of subjects held out for validation (at least one subject).
    widths, dim : encoder widths and embedding dimension (default: ``DEFAULTS[ndim]``).
    flip_average : whether the saved embedder averages over axis flips (see the embedder).

    Returns
    -------
    dict with ``val_loss`` and ``val_top1`` at the best epoch, ``initial`` (the same before
    training), ``history`` (per epoch: ``train_loss``, ``val_loss``, ``val_top1``), ``best_epoch``,
    ``steps``, ``wall_s``, ``parameters``, ``checkpoint``, ``checkpoint_bytes`` and the split.
    """
    started = time.perf_counter()
    images = np.asarray(images)
    subjects = np.asarray(subjects)
    if images.ndim not in (3, 4):
        raise ValueError(f"images must have shape (n, H, W) or (n, Z, Y, X), got {images.shape}")
    if subjects.shape != (len(images),):
        raise ValueError(f"subjects must have shape ({len(images)},), got {subjects.shape}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2 (in-batch negatives), got {batch_size}")
    if len(np.unique(subjects)) < 2:
        raise ReplicheckError("training needs images of at least 2 subjects (validation is split by subject); "
                              "give subject ids with a manifest's subject column or --subject-regex")
    ndim = images.ndim - 1
    size = int(DEFAULTS[ndim]["input_size"] if size is None else size)
    out = Path(out)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    train_subjects, val_subjects = _split_subjects(subjects, val_fraction, rng)
    is_val = np.isin(subjects, val_subjects)
    train_rows, val_rows = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if len(train_rows) < 2 or len(val_rows) < 2:
        raise ReplicheckError(f"training needs at least 2 training and 2 validation images after the split by subject, "
                              f"got {len(train_rows)} and {len(val_rows)}; add images or subjects")
    x = resize(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), size)  # (n, 1, s, ...) in [0, 1]
    val_batches = _batches(rng.permutation(val_rows), batch_size)

    model = ContrastiveNet(ndim=ndim, input_size=size, widths=widths, dim=dim).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def evaluate() -> dict:
        return _evaluate(model, x, val_batches, temperature=temperature, seed=seed + 1, device=device)

    initial = evaluate()
    history: list[dict] = []
    best = {"epoch": 0, **initial}
    best_state = copy.deepcopy(model.state_dict())
    meta = {
        "method": "contrastive copy detector (Dar et al., arXiv 2402.01054): NT-Xent over an image and its "
                  "augmented copy (rotation +-5 degrees, flips) with in-batch negatives; similarity = Pearson correlation",
        "data": description, "images": int(len(images)), "image_shape": list(images.shape[1:]),
        "train_subjects": [str(s) for s in train_subjects], "val_subjects": [str(s) for s in val_subjects],
        "seed": int(seed), "command": " ".join(sys.argv) if command is None else command, "licence": licence,
        "settings": {
            "ndim": ndim, "size": size, "epochs": epochs, "batch_size": batch_size, "temperature": temperature,
            "lr": lr, "weight_decay": weight_decay, "clip": clip, "val_fraction": val_fraction,
            "augmentation": {"rotate_degrees": ROTATE, "flip_probability_per_axis": 0.5},
            "preprocessing": f"resized to {size} a side, each image min-max scaled to [-1, 1]",
        },
        "replicheck": __version__, "torch": torch.__version__,
    }
    advance = (progress or Progress()).step("training contrastive", total=epochs)
    steps, stop = 0, False
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        for rows in _batches(rng.permutation(train_rows), batch_size):
            a = minmax(dar_augment(x[rows], generator=generator)).to(device)
            b = minmax(dar_augment(x[rows], generator=generator)).to(device)
            emb = model(torch.cat([a, b]))
            loss = nt_xent(emb[: len(rows)], emb[len(rows):], temperature=temperature)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimiser.step()
            losses.append(float(loss.detach()))
            steps += 1
            stop = (max_seconds is not None and time.perf_counter() - started > max_seconds) or \
                   (max_steps is not None and steps >= max_steps)
            if stop:
                break
        metrics = {"epoch": epoch, "train_loss": float(np.mean(losses)), **evaluate(), "steps": steps,
                   "elapsed_s": time.perf_counter() - started}
        history.append(metrics)
        logger.info("epoch %d: train NT-Xent %.4f, val NT-Xent %.4f, val top-1 %.3f", epoch,
                    metrics["train_loss"], metrics["val_loss"], metrics["val_top1"])
        if metrics["val_loss"] < best["val_loss"]:
            best = metrics
            best_state = copy.deepcopy(model.state_dict())
            _save(out, model, meta, best, flip_average)
        advance()
        if stop:
            break
    model.load_state_dict(best_state)
    if best["epoch"] == 0:  # training never beat the untrained network: still write a checkpoint
        _save(out, model, meta, best, flip_average)
    return {
        "checkpoint": str(out),
        "checkpoint_bytes": out.stat().st_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "ndim": ndim,
        "size": size,
        "best_epoch": best["epoch"],
        "epochs_run": len(history),
        "steps": steps,
        "val_loss": best["val_loss"],
        "val_top1": best["val_top1"],
        "initial": initial,
        "history": history,
        "wall_s": time.perf_counter() - started,
        "train_subjects": [str(s) for s in train_subjects],
        "val_subjects": [str(s) for s in val_subjects],
        "n_train_images": int(len(train_rows)),
        "n_val_images": int(len(val_rows)),
    }


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """``order`` (n >= 2) cut into ceil(n / batch_size) nearly equal batches, each of at least 2 (NT-Xent needs a negative)."""
    return np.array_split(order, min(-(-len(order) // batch_size), len(order) // 2))


def _evaluate(model: ContrastiveNet, x: torch.Tensor, batches: list[np.ndarray], *, temperature: float, seed: int,
              device: str) -> dict:
    """Validation NT-Xent (mean over images) on fixed views and batches, and the copy-retrieval rate.

    ``val_top1``: share of validation images whose first view's most similar second view, among
    the second views of all validation images, is its own.
    """
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    total, first, second = 0.0, [], []
    with torch.no_grad():
        for rows in batches:
            a = model(minmax(dar_augment(x[rows], generator=generator)).to(device))
            b = model(minmax(dar_augment(x[rows], generator=generator)).to(device))
            total += float(nt_xent(a, b, temperature=temperature)) * len(rows)
            first.append(a.float().cpu())
            second.append(b.float().cpu())
    first, second = torch.cat(first), torch.cat(second)
    top1 = (first @ second.T).argmax(dim=1) == torch.arange(len(first))
    return {"val_loss": total / len(first), "val_top1": float(top1.float().mean())}


def _save(out: Path, model: ContrastiveNet, meta: dict, metrics: dict, flip_average: bool) -> None:
    validation = {key: value for key, value in metrics.items() if key != "elapsed_s"}
    save_checkpoint(out, model, {**meta, "validation": validation}, flip_average=flip_average)


def read_training_images(source: str, *, ndim: int | None = None, size: int | None = None, subject_regex: str | None = None,
                         image_ndim: int | None = None, intensity: str = "auto",
                         num_workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The training images of ``source`` for a ``ndim``-D network, intensities in [0, 1], with subject ids.

    ``ndim`` 2: every 2D image and every non-constant slice of every volume on a size x size grid
    (as :func:`replicheck.train_deepssim.read_training_slices`). ``ndim`` 3: every volume on a
    size^3 grid. By default ``ndim`` is the images' own (3 when every image is a volume) and
    ``size`` is ``DEFAULTS[ndim]["input_size"]``. Rows are in file (and slice) order.
    """
    from .images import discover
    from .preprocess import Preprocessing

    image_set = discover(source, role="training", subject_regex=subject_regex, image_ndim=image_ndim)
    volumes = all(ref.ndim == 3 for ref in image_set.refs)
    ndim = (3 if volumes else 2) if ndim is None else ndim
    if ndim not in DEFAULTS:
        raise ReplicheckError(f"--ndim must be 2 or 3, got {ndim}")
    size = int(DEFAULTS[ndim]["input_size"] if size is None else size)
    if ndim == 2:
        settings = Preprocessing(grid=(size, size), intensity=intensity, slices=True)
    elif not volumes:
        flat = next(ref for ref in image_set.refs if ref.ndim != 3)
        raise ReplicheckError(f"{source}: a 3D model needs volumes, but {flat.id} has shape {flat.shape}; use --ndim 2")
    else:
        settings = Preprocessing(grid=(size,) * 3, intensity=intensity)
    return read_prepared(image_set, settings, num_workers=num_workers)
