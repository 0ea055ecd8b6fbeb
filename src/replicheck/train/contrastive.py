"""Training Dar et al.'s contrastive copy detector on the user's training images
(``replicheck train contrastive``).

The recipe of Dar et al. (Nature Biomedical Engineering 2025; arXiv 2402.01054): each training image and an augmented copy of it (rotation +-5 degrees, flips) are a
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

from pathlib import Path

import numpy as np
import torch

from ..config import Preprocessing, Reading, check_choice, check_device, check_range
from ..embedders.contrastive import DEFAULTS, TEMPERATURE, ContrastiveNet, minmax, nt_xent, save_checkpoint, to_input_size
from ..images import discover
from ..progress import Progress
from ..records import ReplicheckError
from .augment import DAR_ROTATE, dar_augment
from .data import read_prepared, require_subjects
from .loop import Budget, TrainingReport, check_training_data, split_subjects, train, training_meta, validation_record

__all__ = ["train_contrastive", "train_contrastive_from", "read_training_images"]


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
    command: str | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> TrainingReport:
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
    A :class:`~replicheck.train.loop.TrainingReport` whose ``best`` holds ``val_loss`` (the
    selection criterion) and ``val_top1`` at the kept epoch; ``details`` the network's ``ndim``
    and input ``size``.
    """
    budget = Budget(max_seconds=max_seconds, max_steps=max_steps)
    images, subjects = check_training_data(images, subjects, (2, 3))
    check_range("batch_size", batch_size, low=2)  # in-batch negatives
    require_subjects(subjects, "the training images", "training")
    ndim = images.ndim - 1
    size = int(DEFAULTS[ndim]["input_size"] if size is None else size)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    split = split_subjects(subjects, val_fraction, rng)
    train_rows, val_rows = split.train_rows, split.val_rows
    if len(train_rows) < 2 or len(val_rows) < 2:
        raise ReplicheckError(f"training needs at least 2 training and 2 validation images after the split by subject, "
                              f"got {len(train_rows)} and {len(val_rows)}; add images or subjects")
    x = to_input_size(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), size)  # (n, 1, s, ...) in [0, 1]
    val_batches = _batches(rng.permutation(val_rows), batch_size)
    model = ContrastiveNet(ndim=ndim, input_size=size, widths=widths, dim=dim).to(device)

    def loss(rows: np.ndarray) -> torch.Tensor:
        a = minmax(dar_augment(x[rows], generator=generator)).to(device)
        b = minmax(dar_augment(x[rows], generator=generator)).to(device)
        emb = model(torch.cat([a, b]))
        return nt_xent(emb[: len(rows)], emb[len(rows):], temperature=temperature)

    meta = training_meta(
        "contrastive copy detector (Dar et al., arXiv 2402.01054): NT-Xent over an image and its "
        "augmented copy (rotation +-5 degrees, flips) with in-batch negatives; similarity = Pearson correlation",
        description=description, images=images, split=split, seed=seed, command=command,
        settings={"ndim": ndim, "size": size, "epochs": epochs, "batch_size": batch_size, "temperature": temperature,
                  "lr": lr, "weight_decay": weight_decay, "clip": clip, "val_fraction": val_fraction,
                  "augmentation": {"rotate_degrees": DAR_ROTATE, "flip_probability_per_axis": 0.5},
                  "preprocessing": f"resized to {size} a side, each image min-max scaled to [-1, 1]"})
    return train(model, epochs=epochs, epoch_batches=lambda: _batches(rng.permutation(train_rows), batch_size),
                 loss=loss, evaluate=lambda: _evaluate(model, x, val_batches, temperature=temperature, seed=seed + 1,
                                                       device=device),
                 criterion="val_loss",
                 save=lambda metrics: save_checkpoint(out, model, {**meta, "validation": validation_record(metrics)},
                                                      flip_average=flip_average),
                 split=split, out=Path(out), lr=lr, weight_decay=weight_decay, clip=clip, budget=budget,
                 label="training contrastive", progress=progress, details={"ndim": ndim, "size": size})


def train_contrastive_from(source: str, *, out: str | Path, reading: Reading = Reading(), ndim: int | None = None,
                           size: int | None = None, progress: Progress | None = None, **options) -> TrainingReport:
    """Train the contrastive detector on the images of ``source`` (:func:`read_training_images`);
    ``options`` are those of :func:`train_contrastive`."""
    if ndim is not None:
        check_choice("ndim", ndim, (2, 3))
    if size is not None:
        check_range("size", size, low=8)
    check_range("batch_size", options.get("batch_size", 64), low=2)  # in-batch negatives
    check_range("epochs", options.get("epochs", 20), low=1)
    check_device("device", options.get("device", "cpu"))
    images, subjects = read_training_images(source, ndim=ndim, size=size, reading=reading)
    return train_contrastive(images, subjects, out=out, size=size, progress=progress,
                             description=options.pop("description", f"replicheck train contrastive {source}"), **options)


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


def read_training_images(source: str, *, ndim: int | None = None, size: int | None = None,
                         reading: Reading = Reading(), intensity: str = "auto",
                         num_workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The training images of ``source`` for a ``ndim``-D network, intensities in [0, 1], with subject ids.

    ``ndim`` 2: every 2D image and every non-constant slice of every volume on a size x size grid
    (as DeepSSIM's training reads them). ``ndim`` 3: every volume on a
    size^3 grid. By default ``ndim`` is the images' own (3 when every image is a volume) and
    ``size`` is ``DEFAULTS[ndim]["input_size"]``. Rows are in file (and slice) order.
    """
    image_set = discover(source, role="training", subject_regex=reading.subject_regex, image_ndim=reading.image_ndim)
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
